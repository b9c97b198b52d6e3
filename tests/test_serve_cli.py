"""`vanilladeploy serve` as a user runs it, against a REAL Triton server (the nvidia-pytriton wheel's binary) on
loopback: what the README and docs/serving.md promise, and the faults real servers meet — the server killed, a
backend stub killed under load (the model is reloaded, readiness says so meanwhile), a reload that fails, the CLI
itself killed. Bounded: every request and every wait has a deadline, and every process started is stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from triton_helpers import (
    READY,
    assert_nothing_left,
    require_triton,
    rest_of_output,
    serve,
    server_processes,
    shm_of,
    stop,
    stubs,
    tritonservers,
    wait_for_line,
    wait_until,
)

from vanilladeploy.errors import UsageError
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.serving.server import TritonPorts, check_ports_free
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton]
MODEL = "vanillanet_5"
IMG = 64  # the official eval transform resizes and crops above 32 px (the docs client loads a JPEG)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def export_dir(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(IMG)


def _reference(onnx_file: Path, x: np.ndarray) -> np.ndarray:
    with OnnxRuntimeRunner(onnx_file) as runner:
        return runner.infer(x)


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "internal error:"))]


# --- one server on the default ports, as the README's `vanilladeploy serve EXPORT` starts it ------------------

@pytest.fixture(scope="module")
def served_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-tmp")


@pytest.fixture(scope="module")
def served(export_dir: Path, served_tmp: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``vanilladeploy serve EXPORT`` with every default (ports 8000-8002, --max-batch 32; ``served_tmp`` as its
    temp directory), and what it printed."""
    try:
        check_ports_free(TritonPorts())
    except UsageError as e:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the default ports must be free on a CI machine: {e}", pytrace=False)
        pytest.skip(f"the default ports are taken here: {e}")
    process = serve(export_dir, None, max_batch=None, env=os.environ | {"TMPDIR": str(served_tmp)})
    try:
        yield process, wait_for_line(process, READY, timeout_s=120)
    finally:
        stop(process)


def test_the_client_command_serve_prints_answers(served: tuple[subprocess.Popen[str], str]) -> None:
    _, output = served
    (command,) = [line.removeprefix("Try: ") for line in output.splitlines() if line.startswith("Try: ")]
    assert "127.0.0.1:8000" in command and f"'{MODEL}'" in command and f"[1, 3, {IMG}, {IMG}]" in command
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and re.fullmatch(r"\[\d+\]\n", done.stdout), (done.stdout, done.stderr)


def test_the_docs_client_snippet_runs_as_written(served: tuple[subprocess.Popen[str], str], export_dir: Path,
                                                 tmp_path: Path) -> None:
    from PIL import Image

    from vanilladeploy.images import Preprocess, load_image

    docs = (ROOT / "docs" / "serving.md").read_text()
    snippet = docs.split("A client (`pip install", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(tmp_path / "cat.jpg")
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    x = load_image(tmp_path / "cat.jpg", Preprocess(img_size=IMG))[None]
    expected = _reference(export_dir / f"{MODEL}.onnx", x)
    assert done.stdout == f"{expected.argmax(1)}\n"


def _other_local_addresses() -> list[str]:
    """Addresses of this machine other than 127.0.0.1: 127.0.0.2 (all of 127/8 is local on Linux) and every local
    IPv4 address of its interfaces (``/proc/net/fib_trie``'s ``/32 host LOCAL`` entries)."""
    found = {"127.0.0.2"}
    lines = Path("/proc/net/fib_trie").read_text().splitlines() if Path("/proc/net/fib_trie").exists() else []
    for previous, line in zip(lines, lines[1:]):
        if "/32 host LOCAL" in line:
            found.add(previous.split()[-1])
    return sorted(a for a in found if a != "127.0.0.1")


def test_it_binds_to_loopback_only(served: tuple[subprocess.Popen[str], str]) -> None:
    (server,) = tritonservers(8000)
    cmdline = (Path("/proc") / str(server) / "cmdline").read_bytes().decode().split("\0")
    for name in ("http", "grpc", "metrics"):
        assert f"--{name}-address=127.0.0.1" in cmdline, cmdline
    with socket.create_connection(("127.0.0.1", 8000), timeout=5):
        pass  # the server listens on loopback ...
    others = _other_local_addresses()
    for address in others:  # ... and nowhere else
        for port in (8000, 8001, 8002):
            with pytest.raises(ConnectionRefusedError), socket.create_connection((address, port), timeout=5):
                pass
    print(f"\n[serve] loopback only: refused on {', '.join(others)} (ports 8000-8002)")


def test_sigkill_of_serve_leaves_no_server_and_frees_the_ports(export_dir: Path, tmp_path: Path) -> None:
    """Its own serve (no other test's server is killed, so the order of tests does not matter)."""
    ports = free_ports()
    process = serve(export_dir, [ports.http, ports.grpc, ports.metrics], env=os.environ | {"TMPDIR": str(tmp_path)})
    try:
        wait_for_line(process, READY, timeout_s=120)
        assert len(server_processes(ports.http, process.pid)) == 2  # tritonserver and its stub
    finally:
        process.kill()
        process.wait(timeout=10)
    assert_nothing_left(ports.http, process.pid)  # the server got SIGTERM with us (PR_SET_PDEATHSIG), stubs stopped

    def ports_free() -> bool:
        try:
            check_ports_free(ports)
            return True
        except UsageError:
            return False

    assert wait_until(ports_free, 15), "the default ports are still taken"


def test_the_next_start_removes_what_a_killed_serve_left(export_dir: Path, tmp_path: Path) -> None:
    """Nobody is left to remove a SIGKILLed serve's scratch repository and server directory (~60 MB for
    VanillaNet-5): the next server start removes those of owners that are gone. Its own serve, killed here, in
    its own temp directory: it needs no other test to have run."""
    env = os.environ | {"TMPDIR": str(tmp_path)}
    first = list(vars(free_ports()).values())
    killed = serve(export_dir, first, env=env)
    try:
        wait_for_line(killed, READY, timeout_s=120)
    finally:
        killed.kill()
        killed.wait(timeout=10)
    assert_nothing_left(first[0], killed.pid)  # its server got SIGTERM with it (PR_SET_PDEATHSIG) and stopped
    left = sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.glob(f"vanilladeploy-*-{killed.pid}-*"))
    assert left == [f"vanilladeploy-repo-{killed.pid}", f"vanilladeploy-triton-{killed.pid}"]
    process = serve(export_dir, list(vars(free_ports()).values()), env=env)
    try:
        wait_for_line(process, READY, timeout_s=120)
        assert not list(tmp_path.glob(f"vanilladeploy-*-{killed.pid}-*"))
        assert len(list(tmp_path.glob(f"vanilladeploy-*-{process.pid}-*"))) == 2  # its own: kept
    finally:
        stop(process)
    assert process.returncode == 0 and not list(tmp_path.glob("vanilladeploy-*"))


# --- the model's stub killed: reloaded under load, readiness false meanwhile -------------------------------------

class _Load:
    """Clients sending valid requests until stopped, every answer checked; a poller recording readiness."""

    def __init__(self, url: str, onnx_file: Path, clients: int = 4) -> None:
        import tritonclient.http as httpclient

        # events: (sent, answered, outcome, why); ready: (time, server ready, model ready)
        self.url, self.events, self.ready = url, [], []
        self.inputs = [np.random.default_rng(i).standard_normal((1, 3, IMG, IMG), dtype=np.float32) for i in range(4)]
        self.references = [_reference(onnx_file, x) for x in self.inputs]
        self.stopping, self.lock = threading.Event(), threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(httpclient, i)) for i in range(clients)]
        self.threads.append(threading.Thread(target=self._poll))

    def _client(self, httpclient: object, seed: int) -> None:
        client = httpclient.InferenceServerClient(self.url.removeprefix("http://"),  # type: ignore[attr-defined]
                                                  network_timeout=30, connection_timeout=30)
        i = seed
        while not self.stopping.is_set():
            i = (i + 1) % len(self.inputs)
            tensor = httpclient.InferInput("input", [1, 3, IMG, IMG], "FP32")  # type: ignore[attr-defined]
            tensor.set_data_from_numpy(self.inputs[i])
            sent, why = time.monotonic(), ""
            try:
                y = client.infer(MODEL, [tensor]).as_numpy("logits")
                outcome = "ok" if compare(y, self.references[i]) else "wrong"
            except Exception as e:  # the server's 400/500 while the model is down, or a refused connection
                outcome, why = "error", str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            with self.lock:
                self.events.append((sent, time.monotonic(), outcome, why))

    def _status(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.url + path, timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _poll(self) -> None:
        while not self.stopping.wait(0.05):
            asked = time.monotonic()  # when asked, like the requests: an answer may arrive later
            self.ready.append((asked, self._status("/v2/health/ready"), self._status(f"/v2/models/{MODEL}/ready")))

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def count(self, outcome: str, after: float = 0.0, before: float = float("inf")) -> int:
        """Answers with this outcome to requests *sent* in [after, before): one sent while the model was down may
        be answered (with an error) after the reload."""
        return len(self.answers(outcome, after, before))

    def answers(self, outcome: str, after: float = 0.0, before: float = float("inf")) -> list[tuple]:
        with self.lock:
            return [e for e in self.events if e[2] == outcome and after <= e[0] < before]


def test_a_killed_stub_is_reloaded_under_load_with_readiness_false_meanwhile(export_dir: Path) -> None:
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports)
    reload_bound_s = 30.0
    try:
        wait_for_line(process, READY, timeout_s=120)
        url = f"http://127.0.0.1:{ports[0]}"
        with _Load(url, export_dir / f"{MODEL}.onnx") as load:
            time.sleep(2)
            windows = []
            for _ in range(2):  # twice: a reloaded model is watched too
                (stub,) = stubs(f"vanilladeploy-{process.pid}-")
                killed = time.monotonic()
                os.kill(stub, signal.SIGKILL)
                wait_for_line(process, "reloaded in", timeout_s=reload_bound_s)
                back = time.monotonic()
                windows.append((killed, back))
                assert wait_until(lambda: load.count("ok", after=back) >= 4, 30), "no correct answers after the reload"
                time.sleep(1)
            end = time.monotonic()
    finally:
        stop(process)
    assert process.returncode == 0
    assert load.count("wrong") == 0, "a wrong answer"
    for killed, back in windows:
        assert back - killed < reload_bound_s
        down = [(t, server, model) for t, server, model in load.ready if killed <= t <= back]
        assert any(not server for _, server, _ in down) and any(not model for *_, model in down), \
            "readiness never said the model was down"
    (_, last_back) = windows[-1]
    steady = load.count("ok", after=last_back, before=end)
    late_errors = load.answers("error", after=last_back, before=end)
    assert steady > 0 and late_errors == [], f"errors to requests sent after the reload: {late_errors}"
    assert all(server and model for t, server, model in load.ready if t > last_back + 0.5)
    errors = load.count("error")
    print(f"\n[serve] stub killed twice under 4 clients: {load.count('ok')} correct answers, 0 wrong, {errors} "
          f"errors while reloading; reloads took {', '.join(f'{b - k:.1f} s' for k, b in windows)}")
    assert_nothing_left(ports[0], process.pid)


def test_a_reload_that_fails_exits_2_with_the_reason(export_dir: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports, env=os.environ | {"TMPDIR": str(scratch)})
    try:
        wait_for_line(process, READY, timeout_s=120)
        (model_file,) = scratch.glob(f"vanilladeploy-repo-*/{MODEL}/1/model.onnx")
        model_file.write_bytes(b"not an onnx file")  # the reload will read this
        (stub,) = stubs(f"vanilladeploy-{process.pid}-")
        os.kill(stub, signal.SIGKILL)
        output = rest_of_output(process, timeout_s=120)
    finally:
        stop(process)
    assert process.returncode == 2, output
    (error,) = _error_lines(output)
    assert "could not be reloaded after its backend stub died" in error and re.search(r"(?i)onnx|protobuf|pars",
                                                                                      error), error
    assert_nothing_left(ports[0], process.pid)
    assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == []  # (.ses: ONNX Runtime's, shared)


def test_a_killed_server_makes_serve_exit_2_with_one_line_naming_it(export_dir: Path) -> None:
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports)
    try:
        wait_for_line(process, READY, timeout_s=120)
        (server,) = tritonservers(ports[0])
        os.kill(server, signal.SIGKILL)
        output = rest_of_output(process, timeout_s=30)
    finally:
        stop(process)
    assert process.returncode == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines == ["error: Triton Inference Server exited (killed by SIGKILL): no error in its log"], output
    assert_nothing_left(ports[0], process.pid)


# --- a fixed-batch export, and options refused before anything is written or started ---------------------------

def test_a_static_batch_export_is_served_with_max_batch_0(tmp_path: Path) -> None:
    import tritonclient.http as httpclient

    static = tmp_path / "static"
    export_checkpoint(MODEL, ExportOptions(out_dir=static, img_size=IMG, static_batch=2))
    ports = list(vars(free_ports()).values())
    refused = subprocess.run([sys.executable, "-m", "vanilladeploy", "serve", str(static), "--http-port",
                              str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])],
                             capture_output=True, text=True, timeout=60)  # the default --max-batch 32
    assert refused.returncode == 2 and "--max-batch 0" in refused.stderr, refused.stderr
    process = serve(static, ports, max_batch=0)
    try:
        output = wait_for_line(process, READY, timeout_s=120)
        (command,) = [line.removeprefix("Try: ") for line in output.splitlines() if line.startswith("Try: ")]
        assert f"[2, 3, {IMG}, {IMG}]" in command  # the whole fixed shape: Triton adds no batch dimension
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and re.fullmatch(r"\[\d+ \d+\]\n", done.stdout), done.stderr
        x = np.random.default_rng(3).standard_normal((2, 3, IMG, IMG), dtype=np.float32)
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}", network_timeout=30,
                                                  connection_timeout=30)
        tensor = httpclient.InferInput("input", [2, 3, IMG, IMG], "FP32")
        tensor.set_data_from_numpy(x)
        y = client.infer(MODEL, [tensor]).as_numpy("logits")
    finally:
        stop(process)
    assert process.returncode == 0
    result = compare(y, _reference(static / f"{MODEL}.onnx", x), tolerance=1e-5)
    assert y.shape == (2, 1000) and result, result


@pytest.mark.parametrize("case", ["clashing ports", "busy port", "missing labels file", "labels of the wrong count",
                                  "unknown runtime", "missing source"])
def test_a_refused_option_writes_nothing_and_starts_nothing(export_dir: Path, tmp_path: Path, case: str) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    http, grpc, metrics = vars(free_ports()).values()
    source, extra = export_dir, []
    if case == "clashing ports":
        grpc = http
    elif case == "missing labels file":
        extra = ["--labels", str(tmp_path / "nope.txt")]
    elif case == "labels of the wrong count":
        extra = ["--labels", str(tmp_path / "three.txt")]
    elif case == "unknown runtime":
        extra = ["--runtime", "tensorflow"]
    elif case == "missing source":
        source = tmp_path / "no-export"
    with socket.socket() as busy:
        if case == "busy port":
            busy.bind(("127.0.0.1", metrics))
            busy.listen()
        process = serve(source, [http, grpc, metrics], *extra, env=os.environ | {"TMPDIR": str(scratch)})
        output = rest_of_output(process, timeout_s=60)
    assert process.returncode == 2, output
    assert len(_error_lines(output)) == 1 and len(output.strip().splitlines()) == 1, output
    assert "Starting" not in output
    # (.ses: ONNX Runtime's import leaves it in the temp directory, shared by every process that imports it)
    assert [p.name for p in scratch.iterdir() if p.name != ".ses"] == [], "a scratch repository was written"
    assert not tritonservers(http) and not shm_of(process.pid)


@pytest.mark.parametrize("protocol", ["grpc", "both"])
def test_serve_bench_runs_end_to_end_on_each_protocol(export_dir: Path, tmp_path: Path, protocol: str) -> None:
    import json

    out = tmp_path / "serve.json"
    done = subprocess.run([sys.executable, "-m", "vanilladeploy", "serve-bench", str(export_dir), "--concurrency", "2",
                           "--requests", "4", "--protocol", protocol, "--json-out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    records = json.loads(out.read_text())["records"]
    expected = {"grpc": ["triton-grpc"], "both": ["triton-grpc", "triton-http"]}[protocol]
    assert sorted(r["backend"] for r in records) == ["onnxruntime-inprocess", *expected]
    assert all(r["errors"] == 0 and r["requests"] == 4 and r["throughput_img_s"] > 0 for r in records)  # all checked
    for backend in expected:
        assert backend in done.stdout  # the table
