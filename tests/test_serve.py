"""A REAL Triton Inference Server (the binary of the nvidia-pytriton wheel) on loopback, started and stopped by
vanilladeploy/serve.py, answering tritonclient over HTTP and gRPC. Bounded: every client call has a timeout, request
counts are fixed, and every server is stopped (the fixtures and the lifecycle make sure).

Skipped, with the reason, only where the server binary is not installed; a server that is installed but fails to
start FAILS these tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.load import measure_load, triton_sender_factory
from exporters.runners import OnnxRuntimeRunner
from exporters.triton_repo import RepoOptions
from vanilladeploy.errors import MissingDependencyError
from vanilladeploy.export import ExportOptions, export_checkpoint
from vanilladeploy.repo import write_repository
from vanilladeploy.serve import ServerError, TritonServer, find_tritonserver
from vanilladeploy.serve_bench import free_ports
from vanilladeploy.verify import compare

try:
    find_tritonserver()
    import tritonclient.grpc  # noqa: F401
    import tritonclient.http  # noqa: F401

    MISSING = None
except (MissingDependencyError, ImportError) as e:
    MISSING = f"Triton server cannot start here: {e}"

pytestmark = [pytest.mark.triton, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]
MAX_BATCH = 8
MODEL = "vanillanet_5"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "v5"
    export_checkpoint(MODEL, ExportOptions(out_dir=out, img_size=32))
    return out


@pytest.fixture(scope="module")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    write_repository(export_dir, repo, RepoOptions(backend="python", max_batch=MAX_BATCH, max_queue_delay_us=20000))
    with TritonServer(repo, free_ports(), model=MODEL, start_timeout_s=120) as s:
        yield s
    assert not s.shm_entries()


def _inputs(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 32, 32), dtype=np.float32)


def _reference(export_dir: Path, x: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(export_dir / f"{MODEL}.onnx") as runner:
        return runner.infer(x)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("batch", [1, 4])
def test_logits_equal_in_process_onnxruntime(server: TritonServer, export_dir: Path, protocol: str,
                                             batch: int) -> None:
    x = _inputs(batch, seed=batch)
    url = server.http_url if protocol == "http" else server.grpc_url
    y = triton_sender_factory(url, protocol, MODEL, timeout_s=30)()(x)
    result = compare(y, _reference(export_dir, x), tolerance=1e-5)
    assert y.shape == (batch, 1000) and result, result


def _metric(server: TritonServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{model="{MODEL}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} not in Triton's metrics"
    return float(found.group(1))


def test_concurrent_clients_are_answered_correctly_and_batched(server: TritonServer, export_dir: Path) -> None:
    inputs = [_inputs(1, seed=10 + i) for i in range(8)]
    references = [_reference(export_dir, x) for x in inputs]
    before = {m: _metric(server, m) for m in ("nv_inference_request_success", "nv_inference_exec_count")}
    stats = measure_load(triton_sender_factory(server.grpc_url, "grpc", MODEL, timeout_s=30), inputs,
                         concurrency=8, requests=8 * 16, warmup=0,
                         check=lambda i, y: None if compare(y, references[i]) else "wrong logits")
    assert stats.errors == 0, stats.first_error
    requests = _metric(server, "nv_inference_request_success") - before["nv_inference_request_success"]
    executions = _metric(server, "nv_inference_exec_count") - before["nv_inference_exec_count"]
    assert requests == 128
    assert executions < requests, f"no dynamic batching: {executions:.0f} executions for {requests:.0f} requests"


def _post(server: TritonServer, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.http_url}/v2/models/{MODEL}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _json_request(shape: list[int], datatype: str = "FP32", name: str = "input") -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                   "data": [0.5] * int(np.prod(shape))}]}).encode()


@pytest.mark.parametrize(("case", "body", "status", "message"), [
    ("wrong shape", _json_request([1, 3, 31, 32]), 400, "unexpected shape"),
    ("wrong dtype", _json_request([1, 3, 32, 32], "FP64"), 400, "expects 'FP32'"),
    ("batch above --max-batch", _json_request([MAX_BATCH + 1, 3, 32, 32]), 400, f"must be <= {MAX_BATCH}"),
    ("missing input", json.dumps({"inputs": []}).encode(), 400, "missing required input"),
    ("unknown input name", _json_request([1, 3, 32, 32], name="image"), 400, "unexpected inference input"),
    # Triton 2.51's HTTP front-end answers an unparsable body with 500 (not 4xx): a fact of the server binary
    ("garbage body", b"\x00\xffnot json", 500, "failed to parse the request JSON"),
])
def test_bad_requests_get_an_error_with_a_message(server: TritonServer, export_dir: Path, case: str, body: bytes,
                                                  status: int, message: str) -> None:
    code, text = _post(server, body)
    assert code == status and message in json.loads(text)["error"], (code, text)
    good, answer = _post(server, _json_request([1, 3, 32, 32]))  # the server still answers correct requests
    assert good == 200 and json.loads(answer)["outputs"][0]["shape"] == [1, 1000]


def test_bad_grpc_request_is_invalid_argument(server: TritonServer) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_url)
    tensor = grpcclient.InferInput("input", [MAX_BATCH + 1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((MAX_BATCH + 1, 3, 32, 32), np.float32))
    with pytest.raises(InferenceServerException, match="batch-size must be") as raised:
        client.infer(MODEL, [tensor], client_timeout=30)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_a_model_that_fails_to_load_is_reported_with_the_reason(export_dir: Path, tmp_path: Path) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="python"))
    (result.model_dir / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ServerError, match=r"(?i)load|protobuf|onnx"):
        with TritonServer(tmp_path / "repo", free_ports(), model=MODEL, start_timeout_s=120):
            pass


# --- the CLI: `vanilladeploy serve` as a user runs it -----------------------------------------------------------

def _serve(export_dir: Path, ports: list[int]) -> subprocess.Popen[str]:
    http, grpc, metrics = ports
    return subprocess.Popen([sys.executable, "-m", "vanilladeploy.cli", "serve", str(export_dir), "--http-port",
                             str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--max-batch", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _server_processes(port: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "tritonserver" in cmdline and f"--http-port={port}" in cmdline:
                pids.append(int(entry.name))
    return pids


def _wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    seen, deadline = [], time.monotonic() + timeout_s
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), False)
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if line:
            seen.append(line)
            if needle in line:
                return "".join(seen)
        elif process.poll() is not None:
            break
        else:
            time.sleep(0.1)
    process.kill()
    raise AssertionError(f"{needle!r} never printed: {''.join(seen)}")


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_serve_stops_cleanly_on_signal(export_dir: Path, sig: int, exit_code: int) -> None:
    shm_before = set(os.listdir("/dev/shm"))
    ports = list(vars(free_ports()).values())
    process = _serve(export_dir, ports)
    try:
        output = _wait_for_line(process, "stops the server", timeout_s=120)
        assert f"http://127.0.0.1:{ports[0]}" in output and "python3 -c" in output  # endpoints, example command
        assert _server_processes(ports[0]), "no tritonserver process while serving"
        process.send_signal(sig)
        assert process.wait(timeout=60) == exit_code
    finally:
        if process.poll() is None:
            process.kill()
    assert not _server_processes(ports[0]), "tritonserver left running"
    assert set(os.listdir("/dev/shm")) - shm_before == set(), "shared memory left behind"


def test_serve_on_a_busy_port_exits_2_naming_it(export_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = free_ports()
        result = subprocess.run([sys.executable, "-m", "vanilladeploy.cli", "serve", str(export_dir), "--http-port",
                                 str(others.http), "--grpc-port", str(port), "--metrics-port", str(others.metrics)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--grpc-port {port}" in lines[0] and "in use" in lines[0], result.stderr
    assert not _server_processes(others.http)
