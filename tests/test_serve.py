"""A REAL Triton Inference Server (the binary of the nvidia-pytriton wheel) on loopback, started and stopped by
vanilladeploy/serving/server.py, answering tritonclient over HTTP and gRPC. Bounded: every client call has a
timeout, request counts are fixed, and every server is stopped (the fixtures and the lifecycle make sure).

Skipped, with the reason, only where the server binary is not installed; a server that is installed but fails to
start FAILS these tests.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from triton_helpers import require_triton, serve, server_processes, shm_of, stubs, triton_sender, wait_for_line

import vanilladeploy.serving.process as process_module
import vanilladeploy.serving.serve_bench as bench_module
import vanilladeploy.serving.server as serve_module
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import MissingDependencyError, UsageError
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner, onnx_runner
from vanilladeploy.serving.load import measure_load
from vanilladeploy.serving.process import group_members, parent_death_signal
from vanilladeploy.serving.serve_bench import BASELINE, IN_PROCESS, SERVED, add_ratios, free_ports, run_serve_bench
from vanilladeploy.serving.server import (
    ServerError,
    TritonPorts,
    TritonServer,
    check_ports_free,
    default_kind,
    find_tritonserver,
)
from vanilladeploy.triton import python_model
from vanilladeploy.triton.config import PYTHON_PARAMETERS, RepoOptions, parse_config, python_parameters
from vanilladeploy.triton.repository import write_repository
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton]
MAX_BATCH = 8
MODEL = "vanillanet_5"
UNBATCHED = "vanillanet_5_unbatched"  # the same export at --max-batch 0: dims are the whole shape, [-1, 3, 32, 32]


@pytest.fixture(scope="module")
def export_dir(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(32)


@pytest.fixture(scope="module")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    repo = tmp_path_factory.mktemp("repo")
    labels = repo.parent / "classes.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(1000)))
    write_repository(export_dir, repo, RepoOptions(backend="python", max_batch=MAX_BATCH, max_queue_delay_us=20000,
                                                   labels=str(labels)))
    write_repository(export_dir, repo, RepoOptions(backend="python", max_batch=0, name=UNBATCHED))
    with TritonServer(repo, free_ports(), start_timeout_s=120) as s:
        assert s.shm_entries() and len(stubs(s.shm_prefix)) == 2  # one stub per model, our regions
        group = s.process.pid if s.process else -1
        yield s
    # a graceful stop: Triton removes its Python backend's shared memory itself; stop() had to remove none
    assert s.leaked_shm == [] and not s.shm_entries()
    assert not group_members(group) and not stubs(s.shm_prefix), "processes of the server's group left"


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
    y = triton_sender(url, protocol, MODEL)()(x)
    result = compare(y, _reference(export_dir, x), tolerance=1e-5)
    assert y.shape == (batch, 1000) and result, result


def test_the_stub_makes_its_session_with_vanilladeploys_factory(server: TritonServer) -> None:
    """The server's Python has vanilladeploy (as under ``serve``): each model's session is ``ort_session``'s, not
    model.py's copy (which tests/test_triton_python_model.py holds identical for a stock container)."""
    lines = [line for line in server.log().splitlines() if "made by" in line]
    assert len(lines) == 2 and all("OnnxRuntimeSession made by vanilladeploy.runtimes.runners.ort_session" in line
                                   for line in lines), lines


def _metric(server: TritonServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^{name}{{model="{MODEL}",version="1"}} (\S+)$', text, re.MULTILINE)
    assert found, f"{name} not in Triton's metrics"
    return float(found.group(1))


def _metric_reaching(server: TritonServer, name: str, expected: float, timeout_s: float = 15.0) -> float:
    """``name`` polled until it reaches ``expected`` (Triton updates its counters after the answers go out), or
    its last value once ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    while (value := _metric(server, name)) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_concurrent_clients_are_answered_correctly_and_batched(server: TritonServer, export_dir: Path) -> None:
    inputs = [_inputs(1, seed=10 + i) for i in range(8)]
    references = [_reference(export_dir, x) for x in inputs]
    before = {m: _metric(server, m) for m in ("nv_inference_request_success", "nv_inference_exec_count")}
    stats = measure_load(triton_sender(server.grpc_url, "grpc", MODEL), inputs,
                         concurrency=8, requests=8 * 16, warmup=0,
                         check=lambda i, y: None if compare(y, references[i]) else "wrong logits")
    assert stats.errors == 0, stats.first_error
    requests = _metric_reaching(server, "nv_inference_request_success", before["nv_inference_request_success"] + 128)
    requests -= before["nv_inference_request_success"]
    executions = _metric(server, "nv_inference_exec_count") - before["nv_inference_exec_count"]
    assert requests == 128
    assert executions < requests, f"no dynamic batching: {executions:.0f} executions for {requests:.0f} requests"


def _post(server: TritonServer, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(f"{server.http_url}/v2/models/{MODEL}/infer", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
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
    # (TRITONJSON_STATUSRETURN reports JSON errors as TRITONSERVER_ERROR_INTERNAL); so are valid JSON of the wrong
    # form ('inputs' not an array: 500 "attempt to access JSON non-array as array"; 'data' of the wrong length: 500)
    ("garbage body", b"\x00\xffnot json", 500, "failed to parse the request JSON"),
    # a binary-data request whose JSON header is said to be longer than the whole body: a 400
    ("header longer than the body", _json_request([1, 3, 32, 32]), 400, "inference header size should be in range"),
])
def test_bad_requests_get_an_error_with_a_message(server: TritonServer, export_dir: Path, case: str, body: bytes,
                                                  status: int, message: str) -> None:
    headers = {"Inference-Header-Content-Length": str(len(body) + 1000)} if case.startswith("header") else None
    code, text = _post(server, body, headers)
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


@pytest.mark.parametrize("batch", [1, 3])
def test_an_unbatched_model_takes_the_whole_shape(server: TritonServer, export_dir: Path, batch: int) -> None:
    x = _inputs(batch, seed=20 + batch)
    y = triton_sender(server.http_url, "http", UNBATCHED)()(x)
    result = compare(y, _reference(export_dir, x), tolerance=1e-5)
    assert y.shape == (batch, 1000) and result, result
    from tritonclient.utils import InferenceServerException

    send = triton_sender(server.http_url, "http", UNBATCHED)()
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        send(np.ascontiguousarray(_inputs(1)[:, :, :16]))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_classification_returns_the_top_k_labels(server: TritonServer, export_dir: Path, protocol: str) -> None:
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    module = httpclient if protocol == "http" else grpcclient
    if protocol == "http":
        client = module.InferenceServerClient(server.http_url.removeprefix("http://"), network_timeout=30,
                                              connection_timeout=30)
    else:
        client = module.InferenceServerClient(server.grpc_url)
    x = _inputs(2, seed=30)
    tensor = module.InferInput("input", [2, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(x)
    timeout = {"client_timeout": 30} if protocol == "grpc" else {}  # every call bounded: a stall fails the test
    answer = client.infer(MODEL, [tensor], outputs=[module.InferRequestedOutput("logits", class_count=5)], **timeout)
    top = answer.as_numpy("logits")  # "score:index:label" per class, best first
    logits = _reference(export_dir, x)
    assert top.shape == (2, 5)
    for row, expected in zip(top, logits):
        fields = [item.decode().split(":") for item in row]
        indices = [int(index) for _, index, _ in fields]
        assert indices == list(np.argsort(-expected)[:5]) and indices[0] == int(expected.argmax())
        assert [label for *_, label in fields] == [f"class {i}" for i in indices]
        np.testing.assert_allclose([float(score) for score, *_ in fields], expected[indices], rtol=1e-4)


def test_serve_bench_measures_triton_and_in_process_onnxruntime(export_dir: Path) -> None:
    result = run_serve_bench(export_dir, concurrency=[1, 2], requests=6, protocol="http")
    seen = {(r["backend"], r["concurrency"]): r for r in result.records}
    assert sorted(seen) == [("onnxruntime-inprocess", 1), ("onnxruntime-inprocess", 2), ("triton-http", 1),
                            ("triton-http", 2)]
    for record in seen.values():
        assert record["errors"] == 0 and record["requests"] == 6, record
        assert record["stats"]["iterations"] == 6 and record["throughput_img_s"] > 0
    assert result.config["protocols"] == ["http"] and result.config["triton"] not in ("", "?")
    assert result.config["source_sha256"] == sha256_of(export_dir / f"{MODEL}.onnx")  # what `deploy --bench` matches
    served = parse_config(result.config["model_config"]).parameters
    settings = python_model.ort_settings({k: v.string_value for k, v in served.items()}, os.environ)
    assert {k: result.config["in_process"][k] for k in ("threads", "spinning")} == {
        "threads": settings["intra_op_num_threads"], "spinning": settings["allow_spinning"]}  # what it served with
    for level in (1, 2):  # ONNX Runtime serving its own file: in-process and baseline are one row
        served, local = seen[("triton-http", level)], seen[("onnxruntime-inprocess", level)]
        assert local["roles"] == [IN_PROCESS, BASELINE] and served["roles"] == [SERVED]
        assert served["vs_in_process"] == served["vs_baseline"] == pytest.approx(
            served["throughput_img_s"] / local["throughput_img_s"], abs=1e-3)


def test_serve_bench_shows_served_in_process_and_baseline_per_concurrency(export_dir: Path, tmp_path: Path) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    from typer.testing import CliRunner

    from vanilladeploy.cli import app

    fp32, out = export_dir / f"{MODEL}.onnx", tmp_path / "serve.json"
    done = CliRunner().invoke(app, ["serve-bench", str(fp32), "--runtime", "openvino", "--baseline", str(fp32),
                                    "--protocol", "grpc", "--concurrency", "1,3", "--requests", "4",
                                    "--json-out", str(out)])
    assert done.exit_code == 0, done.output
    document = json.loads(out.read_text())
    for level in (1, 3):
        rows = {r["roles"][0]: r for r in document["records"] if r["concurrency"] == level}
        assert {role: r["backend"] for role, r in rows.items()} == {
            SERVED: "triton-grpc (openvino fp32)", IN_PROCESS: "openvino-inprocess (fp32)",
            BASELINE: "onnxruntime-inprocess"}
        assert all(r["errors"] == 0 and r["requests"] == 4 for r in rows.values())  # every answer checked
        served = rows[SERVED]
        for role, key in ((IN_PROCESS, "vs_in_process"), (BASELINE, "vs_baseline")):
            assert served[key] == pytest.approx(served["throughput_img_s"] / rows[role]["throughput_img_s"], abs=1e-3)
    config = document["config"]
    ort = python_model.ort_settings({}, os.environ)  # an OpenVINO config leaves model.py's ONNX Runtime its defaults
    assert config["in_process"]["runtime"] == "openvino" and config["baseline"] == {
        "runtime": "onnxruntime", "file": str(fp32), "threads": ort["intra_op_num_threads"],
        "spinning": ort["allow_spinning"]}
    assert (config["in_process"]["hint"], config["in_process"]["threads"]) == ("LATENCY", 0)
    served_config = parse_config(config["model_config"])  # what Triton served, as written
    assert served_config.parameters["runtime"].string_value == "openvino"
    assert served_config.parameters["openvino_hint"].string_value == PYTHON_PARAMETERS["openvino"]["openvino_hint"]
    assert "× in-process" in done.output and "openvino-inprocess (fp32)" in done.output


def _threads_and_spinning(session: object) -> tuple[int, int, str | None]:
    options = session.get_session_options()
    try:
        spinning = options.get_session_config_entry("session.intra_op.allow_spinning")
    except RuntimeError:  # never set
        spinning = None
    return options.intra_op_num_threads, options.inter_op_num_threads, spinning


@pytest.mark.parametrize("asked", [{}, {"ort_threads": "1"}, {"ort_threads": "2", "ort_spinning": "1"}])
def test_the_in_process_row_runs_the_served_onnxruntime_settings(export_dir: Path, asked: dict[str, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VANILLADEPLOY_ORT_THREADS", raising=False)
    runners: list[object] = []

    def recording(*args: object, **kwargs: object) -> object:  # the real onnx_runner, kept to read its session
        runners.append(onnx_runner(*args, **kwargs))
        return runners[-1]

    monkeypatch.setattr(bench_module, "onnx_runner", recording)
    onnx_path, parameters = export_dir / f"{MODEL}.onnx", python_parameters(asked)  # as serve-bench writes them
    served = python_model.onnxruntime_session(str(onnx_path), parameters, {}).session  # what model.py runs
    with bench_module._in_process(onnx_path, parameters, [_inputs(1)], "fp32", 1e-5):
        (runner,) = runners
        assert _threads_and_spinning(runner.session) == _threads_and_spinning(served)
    assert _threads_and_spinning(served)[2] == parameters["ort_spinning"]  # "0" unless asked: idle threads sleep


def test_ratios_are_served_over_each_row_at_the_same_concurrency() -> None:
    def row(roles: list[str], level: int, img_s: float) -> dict[str, object]:
        return {"roles": roles, "concurrency": level, "throughput_img_s": img_s}

    records = [row([SERVED], 1, 30.0), row([IN_PROCESS], 1, 40.0), row([BASELINE], 1, 10.0),
               row([SERVED], 4, 20.0), row([SERVED], 4, 36.0), row([IN_PROCESS, BASELINE], 4, 0.0)]
    add_ratios(records)
    assert [(r.get("vs_in_process"), r.get("vs_baseline")) for r in records] == [
        (0.75, 3.0), (None, None), (None, None), (None, None), (None, None), (None, None)]
    records[-1]["throughput_img_s"] = 40.0
    add_ratios(records)
    assert [(r["vs_in_process"], r["vs_baseline"]) for r in records[3:5]] == [(0.5, 0.5), (0.9, 0.9)]


def test_openvino_inside_triton_answers_like_openvino_in_process(export_dir: Path,
                                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    repo = tmp_path_factory.mktemp("ov-repo")
    for hint in ("LATENCY", "THROUGHPUT"):  # one dynamic batch as one inference / each request on its own stream
        write_repository(export_dir, repo, RepoOptions(
            backend="python", name=f"ov_{hint.lower()}", max_batch=MAX_BATCH, max_queue_delay_us=20000,
            parameters={"runtime": "openvino", "openvino_hint": hint}))
    inputs = [_inputs(n, seed=30 + i) for i, n in enumerate([1, 1, 2, 1, 4, 1])]
    with OnnxRuntimeRunner(export_dir / f"{MODEL}.onnx") as ort_runner:
        ort_references = [ort_runner.infer(x) for x in inputs]
    with onnx_runner(export_dir / f"{MODEL}.onnx", "openvino") as runner:
        references = [runner.infer(x) for x in inputs]
    assert all(compare(r, o, tolerance=1e-4) for r, o in zip(references, ort_references))
    with TritonServer(repo, free_ports(), start_timeout_s=120) as server:
        for model in ("ov_latency", "ov_throughput"):
            stats = measure_load(triton_sender(server.grpc_url, "grpc", model), inputs,
                                 concurrency=6, requests=6 * 4, warmup=0,
                                 check=lambda i, y: None if compare(y, references[i]) else "wrong logits")
            assert stats.errors == 0, (model, stats.first_error)
        made = [line for line in server.log().splitlines() if "made by" in line]
        assert len(made) == 2 and all("OpenVinoSession made by vanilladeploy.runtimes.runners.compile_openvino"
                                      in line for line in made), made


def test_a_model_that_fails_to_load_is_reported_with_the_reason(export_dir: Path, tmp_path: Path) -> None:
    result = write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="python"))
    (result.model_dir / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ServerError, match=r"(?i)load|protobuf|onnx"):
        with TritonServer(tmp_path / "repo", free_ports(), model=MODEL, start_timeout_s=120):
            pass


# --- the CLI: `vanilladeploy serve` as a user runs it -----------------------------------------------------------

@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_serve_stops_cleanly_on_signal(export_dir: Path, sig: int, exit_code: int) -> None:
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports)
    try:
        output = wait_for_line(process, "stops the server", timeout_s=120)
        assert f"http://127.0.0.1:{ports[0]}" in output and f"{sys.executable} -c" in output  # example command
        assert len(server_processes(ports[0], process.pid)) == 2, "no tritonserver and stub while serving"
        process.send_signal(sig)
        assert process.wait(timeout=60) == exit_code
    finally:
        if process.poll() is None:
            process.kill()
    assert not server_processes(ports[0], process.pid), "tritonserver or its stub left running"
    assert not shm_of(process.pid), "shared memory left behind"


@pytest.mark.parametrize("phase", ["writing the repository", "starting the server"])
def test_sigterm_during_startup_aborts_it_cleanly(export_dir: Path, tmp_path: Path, phase: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports, env={**os.environ, "TMPDIR": str(scratch)})
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if any(scratch.iterdir()) if phase.startswith("writing") else server_processes(ports[0]):
                break
            time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "stops the server" not in output, output  # aborted before serving
    # ONNX Runtime 1.32 (in the stub) keeps a small `.ses` file in the temp directory, shared by every process
    # that uses it: not ours to remove
    left = [p.name for p in scratch.iterdir() if p.name != ".ses"]
    assert not left, f"scratch repository or server directory left: {left}"
    assert not server_processes(ports[0], process.pid) and not shm_of(process.pid)


def test_serve_on_a_busy_port_exits_2_naming_it(export_dir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        others = free_ports()
        result = subprocess.run([sys.executable, "-m", "vanilladeploy", "serve", str(export_dir), "--http-port",
                                 str(others.http), "--grpc-port", str(port), "--metrics-port", str(others.metrics)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--grpc-port {port}" in lines[0] and "in use" in lines[0], result.stderr
    assert not server_processes(others.http)


# --- the lifecycle's corners ------------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["second Ctrl-C while stopping", "stop timeout"])
def test_stop_kills_the_group_and_cleans_up_on_every_path(export_dir: Path, tmp_path: Path, how: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    write_repository(export_dir, tmp_path / "repo", RepoOptions(backend="python"))
    server = TritonServer(tmp_path / "repo", free_ports(), model=MODEL,
                          stop_timeout_s=60 if how.startswith("second") else 0)
    with server:
        assert server.process is not None
        group, workdir, regions = server.process.pid, server.log_path.parent, server.shm_entries()
        assert regions and stubs(server.shm_prefix)
        if how.startswith("second"):  # Ctrl-C lands while stop() waits for the graceful exit
            graceful = process_module.wait_exited

            def interrupted_wait(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
                if timeout_s > 0:  # the graceful wait: Ctrl-C arrives during it (raised here, so never too late)
                    graceful(process, 0.1)
                    raise KeyboardInterrupt
                return graceful(process, timeout_s)

            monkeypatch.setattr(process_module, "wait_exited", interrupted_wait)
            with pytest.raises(KeyboardInterrupt):
                server.stop()
    assert not group_members(group) and not stubs(server.shm_prefix), "server or stub left running"
    assert not server.shm_entries() and not workdir.exists()
    if how == "stop timeout":  # SIGKILLed at once: Triton had no chance to remove its regions, stop() did
        assert server.leaked_shm == regions


def test_a_port_in_time_wait_reads_as_free_and_a_listening_one_as_busy() -> None:
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers (Triton) do
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        accepted, _ = listener.accept()
        accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
        time.sleep(0.05)
        client.close()
    deadline = time.monotonic() + 5
    while not _in_time_wait(port) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _in_time_wait(port)
    others = free_ports()
    check_ports_free(TritonPorts(port, others.grpc, others.metrics))  # a just-stopped server's port is free
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        busy.bind(("127.0.0.1", port))
        busy.listen()
        with pytest.raises(UsageError, match=f"--http-port {port}: port {port} on 127.0.0.1 is already in use"):
            check_ports_free(TritonPorts(port, others.grpc, others.metrics))


def _in_time_wait(port: int) -> bool:
    rows = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    return any(int(row[1].split(":")[1], 16) == port and row[3] == "06" for row in rows)


def test_parent_death_signal_is_resolved_in_the_parent(monkeypatch: pytest.MonkeyPatch) -> None:
    set_signal = parent_death_signal()
    assert set_signal is not None

    def no_dlopen_after_fork(*args: object, **kwargs: object) -> None:
        raise AssertionError("ctypes.CDLL called in the child")

    monkeypatch.setattr(ctypes, "CDLL", no_dlopen_after_fork)  # the forked child inherits this
    assert subprocess.run(["true"], preexec_fn=set_signal, timeout=30).returncode == 0


def test_a_child_with_the_parent_death_signal_dies_with_its_parent() -> None:
    code = ("import subprocess; from vanilladeploy.serving.process import parent_death_signal; "
            "print(subprocess.Popen(['sleep', '120'], preexec_fn=parent_death_signal()).pid, flush=True)")
    orphan = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                check=True).stdout)
    try:
        deadline = time.monotonic() + 10
        while _running(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(orphan), "the child outlived its parent"
    finally:
        if _running(orphan):
            os.kill(orphan, signal.SIGKILL)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


CPU_WHEEL = ["AzureExecutionProvider", "CPUExecutionProvider"]  # onnxruntime 1.32's CPU wheel, as read here
GPU_WHEEL = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu's


@pytest.mark.parametrize(("providers", "gpus", "kind"), [
    (CPU_WHEEL, 0, "cpu"), (CPU_WHEEL, 1, "cpu"), (GPU_WHEEL, 0, "cpu"), (GPU_WHEEL, 1, "gpu"),
])
def test_default_kind_is_gpu_only_with_a_gpu_and_the_cuda_provider(monkeypatch: pytest.MonkeyPatch,
                                                                   providers: list[str], gpus: int,
                                                                   kind: str) -> None:
    import onnxruntime as ort

    assert set(providers) <= set(ort.get_all_providers())  # names onnxruntime itself defines
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    monkeypatch.setattr(serve_module, "_cuda_devices", lambda: gpus)
    assert default_kind() == kind


def test_a_python_without_a_stub_is_told_which_versions_the_wheel_ships(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    stubs = find_tritonserver().parents[1] / "python_backend_stubs"
    shipped = sorted((p.name for p in stubs.iterdir()), key=lambda v: tuple(map(int, v.split("."))))
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in shipped
    monkeypatch.setattr(sys, "version_info", types.SimpleNamespace(major=3, minor=99))
    with pytest.raises(MissingDependencyError, match=r"no Python-backend stub for Python 3\.99; this wheel ships "
                       rf"stubs for Python {re.escape(', '.join(shipped))}: use one of those"):
        serve_module.prepare_backends(tmp_path)


def test_the_server_version_is_the_wheel_that_carries_the_binary() -> None:
    from importlib.metadata import version

    expected = f"nvidia-pytriton {version('nvidia-pytriton')}"
    assert serve_module.tritonserver_version() == serve_module.tritonserver_version(find_tritonserver()) == expected
    assert serve_module.tritonserver_version(Path("/usr/bin/true")) == "unknown"  # not the wheel's binary


class _Libcuda:
    """The two driver calls ``_cuda_devices`` makes; a CUresult of 0 is success."""

    def __init__(self, *, count: int, init_result: int = 0, count_result: int = 0) -> None:
        self.count, self.init_result, self.count_result = count, init_result, count_result

    def cuInit(self, flags: int) -> int:
        assert flags == 0
        return self.init_result

    def cuDeviceGetCount(self, count: object) -> int:
        count._obj.value = self.count  # type: ignore[attr-defined]  # through ctypes.byref, as the driver writes it
        return self.count_result


@pytest.mark.parametrize(("libcuda", "expected"), [
    (None, 0),  # no NVIDIA driver: libcuda.so.1 does not load
    (_Libcuda(count=2), 2),
    (_Libcuda(count=2, init_result=100), 0),  # cuInit: CUDA_ERROR_NO_DEVICE
    (_Libcuda(count=3, count_result=999), 0),  # a failed count call: its figure is not trusted
])
def test_gpus_are_counted_by_the_driver_and_any_failure_counts_none(monkeypatch: pytest.MonkeyPatch,
                                                                     libcuda: _Libcuda | None, expected: int) -> None:
    def load(name: str) -> _Libcuda:
        assert name == "libcuda.so.1"
        if libcuda is None:
            raise OSError("libcuda.so.1: cannot open shared object file: No such file or directory")
        return libcuda

    monkeypatch.setattr(serve_module.ctypes, "CDLL", load)
    assert serve_module._cuda_devices() == expected


def test_this_machine_counts_its_gpus_like_another_route_to_them() -> None:
    """0 without libcuda; with it, what torch's CUDA runtime (or ``nvidia-smi -L``) counts; never an exception."""
    import shutil

    import torch

    count = serve_module._cuda_devices()
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        assert count == 0
        return
    if torch.version.cuda is not None:
        assert count == torch.cuda.device_count()
    elif shutil.which("nvidia-smi") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=60).stdout
        assert count == len([line for line in listed.splitlines() if line.startswith("GPU ")])
    else:
        pytest.fail("libcuda loads, but neither a CUDA build of torch nor nvidia-smi is here to count against")


def test_leftovers_of_a_dead_owner_are_swept_and_a_live_owners_kept(tmp_path: Path) -> None:
    from vanilladeploy.serving.process import sweep_leftovers

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=30)  # its pid now names no process
    dead = [tmp_path / f"vanilladeploy-repo-{gone.pid}-abc", tmp_path / f"vanilladeploy-triton-{gone.pid}-def"]
    live = [tmp_path / f"vanilladeploy-repo-{os.getpid()}-abc", tmp_path / "vanilladeploy-repo-djo6lo1g"]
    for directory in dead + live:
        (directory / "vanillanet_5" / "1").mkdir(parents=True)
    shm = tmp_path / f"vanilladeploy-{gone.pid}-0a1b2c3d-vanillanet_5_0_0"  # a region's name
    shm.write_bytes(b"\0" * 64)
    other = tmp_path / f"someone-else-{gone.pid}-x"
    other.write_text("not ours")
    assert sorted(sweep_leftovers(tmp_path, tmp_path / "missing")) == sorted([*dead, shm])
    assert sorted(tmp_path.iterdir()) == sorted([*live, other])
