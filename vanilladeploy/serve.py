"""A real Triton Inference Server as a resource with one lifecycle: ``with TritonServer(repo, ports) as server:``.

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel (extra ``serve``). Its Python backend runs the
model (ONNX Runtime inside ``model.py``); the backend's stub embeds ``libpython``, so the server process gets this
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (otherwise a non-system Python — pyenv, conda, a venv made
from them — fails with ``'_thread.RLock' object has no attribute '_recursion_count'``) and this environment's
``bin`` first on ``PATH`` (so the stub finds this environment's numpy and onnxruntime).

Invariants: ports are checked before anything starts; the server binds to loopback unless told otherwise; it runs in
its own process group and dies with us (``PR_SET_PDEATHSIG``); on every exit path (exception, Ctrl-C, SIGTERM)
it is stopped — SIGTERM, then SIGKILL after a timeout — and the shared-memory regions of its Python backend (a
unique prefix per server) are gone afterwards; its scratch directory is removed.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError

SERVE_INSTALL = "pip install 'vanilladeploy[serve]'"
SHM_DIR = Path("/dev/shm")


class ServerError(VanillaDeployError):
    """The server did not start or died (the message carries the reason from its log)."""


@dataclass(frozen=True)
class TritonPorts:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        return {"--http-port": self.http, "--grpc-port": self.grpc, "--metrics-port": self.metrics}


def _pytriton_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(f"the Triton server ships in the nvidia-pytriton wheel, which is not installed: "
                                     f"{SERVE_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def find_tritonserver() -> Path:
    """The ``tritonserver`` binary inside the installed ``nvidia-pytriton`` wheel."""
    binary = _pytriton_dir() / "tritonserver" / "bin" / "tritonserver"
    if not os.access(binary, os.X_OK):
        raise MissingDependencyError(f"{binary} is missing or not executable; reinstall: {SERVE_INSTALL}")
    return binary


def tritonserver_version(binary: Path | None = None) -> str:
    """The wheel that carries the server (the server itself reports its version over ``/v2`` once running)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"nvidia-pytriton {version('nvidia-pytriton')}"
    except PackageNotFoundError:
        return "unknown"


def check_ports_free(ports: TritonPorts, host: str = "127.0.0.1") -> None:
    """Refuse (exit 2, naming the port) a port something already listens on, before anything starts."""
    for option, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                raise UsageError(f"{option} {port}: port {port} on {host} is already in use; stop what uses it or "
                                 f"choose another {option}.") from None


def server_env() -> dict[str, str]:
    """The server's environment: this interpreter's libpython first, the wheel's libraries, this env's ``bin``."""
    env = dict(os.environ)
    libs = [sysconfig.get_config_var("LIBDIR") or "", str(_pytriton_dir().parent / "nvidia_pytriton.libs"),
            env.get("LD_LIBRARY_PATH", "")]
    env["LD_LIBRARY_PATH"] = ":".join(p for p in libs if p)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def prepare_backends(workdir: Path) -> Path:
    """A backend directory holding the Python backend with the stub built for this Python version."""
    dist = _pytriton_dir() / "tritonserver"
    stub = dist / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}" / \
        "triton_python_backend_stub"
    if not stub.is_file():
        raise MissingDependencyError(f"nvidia-pytriton has no Python-backend stub for Python "
                                     f"{sys.version_info.major}.{sys.version_info.minor}; use Python 3.8–3.13.")
    backends = workdir / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def _die_with_parent() -> None:  # runs in the child before exec (Linux): SIGTERM when we die
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class TritonServer:
    """A running ``tritonserver`` for ``repository``; started by ``__enter__``, stopped on every exit path."""

    def __init__(self, repository: Path, ports: TritonPorts, *, host: str = "127.0.0.1", model: str | None = None,
                 start_timeout_s: float = 120.0, stop_timeout_s: float = 30.0) -> None:
        self.repository, self.ports, self.host, self.model = repository, ports, host, model
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.shm_prefix = f"vanilladeploy-{os.getpid()}-{os.urandom(4).hex()}-"
        self._workdir: Path | None = None

    http_url = property(lambda self: f"http://{self.host}:{self.ports.http}")
    grpc_url = property(lambda self: f"{self.host}:{self.ports.grpc}")
    metrics_url = property(lambda self: f"http://{self.host}:{self.ports.metrics}/metrics")

    @property
    def log_path(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "tritonserver.log"

    def __enter__(self) -> TritonServer:
        binary = find_tritonserver()
        check_ports_free(self.ports, self.host)
        self._workdir = Path(tempfile.mkdtemp(prefix="vanilladeploy-triton-"))
        try:
            self._start(binary)
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _start(self, binary: Path) -> None:
        assert self._workdir is not None
        backends = prepare_backends(self._workdir)
        args = [str(binary), f"--model-repository={self.repository}", f"--backend-directory={backends}",
                f"--http-address={self.host}", f"--grpc-address={self.host}", f"--metrics-address={self.host}",
                f"--http-port={self.ports.http}", f"--grpc-port={self.ports.grpc}",
                f"--metrics-port={self.ports.metrics}", "--exit-timeout-secs=10", "--allow-gpu-metrics=false",
                f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=server_env(), start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        path = f"/v2/models/{self.model}/ready" if self.model else "/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise ServerError(f"Triton Inference Server exited while starting: {self.failure_reason()}")
            if self._get(path) == 200:
                return
            time.sleep(0.25)
        raise ServerError(f"Triton Inference Server was not ready within {self.start_timeout_s:.0f} s: "
                          f"{self.failure_reason()}")

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status
        except (urllib.error.URLError, OSError):
            return None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, AssertionError):
            return ""

    def failure_reason(self) -> str:
        """The first error line of the server's log (e.g. a model that failed to load, and why)."""
        lines = [line for line in self.log().splitlines()
                 if line.startswith("E") or "failed to load" in line or "error:" in line.lower()]
        useful = [line for line in lines if "CudaDriverHelper" not in line and "NVML" not in line
                  and "DCGM" not in line]
        text = (useful or lines or ["no log output"])[0]
        return text.split("] ", 1)[-1].strip().strip('"')[:600]

    def shm_entries(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*")) if SHM_DIR.is_dir() else []

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout_s``; then its shared memory and
        scratch directory are removed. Safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
        elif process is not None:
            _signal_group(process, signal.SIGKILL)  # stubs left behind by a server that died
        for entry in self.shm_entries():  # only a killed server leaves them: ours carry a unique prefix
            entry.unlink(missing_ok=True)
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None


def _signal_group(process: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass(frozen=True)
class ServingInfo:
    model: str
    server_version: str
    http_url: str
    grpc_url: str
    metrics_url: str
    example_command: str


def server_version(server: TritonServer) -> str:
    import json

    try:
        with urllib.request.urlopen(server.http_url + "/v2", timeout=2) as response:
            return str(json.loads(response.read()).get("version", "?"))
    except (urllib.error.URLError, OSError, ValueError):
        return "?"


def serve_forever(source: Path, ports: TritonPorts, opts: object, *, on_ready: Callable[[ServingInfo], None],
                  host: str = "127.0.0.1") -> None:
    """Write a repository for ``source`` in a scratch directory, serve it until SIGTERM (returns) or SIGINT
    (``KeyboardInterrupt``); the server is stopped and the scratch directory removed either way."""
    from exporters.triton_repo import parse_config
    from vanilladeploy.repo import write_repository

    check_ports_free(ports, host)
    find_tritonserver()
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-repo-") as scratch:
        result = write_repository(source, Path(scratch), opts)  # type: ignore[arg-type]
        model = result.model_dir.name
        sample_shape = tuple(parse_config(result.config_text).input[0].dims)
        stop = threading.Event()
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            with TritonServer(Path(scratch), ports, host=host, model=model) as server:
                on_ready(ServingInfo(model, server_version(server), server.http_url, server.grpc_url,
                                     server.metrics_url,
                                     example_client_command(server.http_url, model, sample_shape)))
                while not stop.wait(0.5):
                    if not server.alive():
                        raise ServerError(f"Triton Inference Server exited: {server.failure_reason()}")
        finally:
            signal.signal(signal.SIGTERM, previous)


def example_client_command(http_url: str, model: str, sample_shape: tuple[int, ...]) -> str:
    """A one-line tritonclient request (random image) that prints the top class."""
    host = http_url.removeprefix("http://")
    shape = [1, *sample_shape]
    return (f"python3 -c \"import numpy as np, tritonclient.http as t; c = t.InferenceServerClient('{host}'); "
            f"x = t.InferInput('input', {shape}, 'FP32'); "
            f"x.set_data_from_numpy(np.random.rand(*{shape}).astype('float32')); "
            f"print(c.infer('{model}', [x]).as_numpy('logits').argmax(1))\"")


__all__ = ["ServerError", "ServingInfo", "TritonPorts", "TritonServer", "check_ports_free", "find_tritonserver",
           "serve_forever", "server_env", "tritonserver_version"]
