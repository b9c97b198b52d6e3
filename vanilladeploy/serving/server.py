"""A real Triton Inference Server as a resource with one lifecycle: ``with TritonServer(repo, ports) as server:``.

The ``tritonserver`` binary comes from the ``nvidia-pytriton`` wheel (extra ``serve``). Its Python backend runs the
model (ONNX Runtime inside ``model.py``); the backend's stub embeds ``libpython``, so the server process gets this
interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` (otherwise a non-system Python — pyenv, conda, a venv made
from them — fails with ``'_thread.RLock' object has no attribute '_recursion_count'``) and this environment's
``bin`` first on ``PATH`` (so the stub finds this environment's numpy and onnxruntime).

Invariants: ports are checked before anything starts; the server binds to loopback unless told otherwise; it runs in
its own process group and dies with us (``PR_SET_PDEATHSIG``); on every exit path (exception, Ctrl-C — even a
second one while stopping —, SIGTERM) it is stopped — SIGTERM, then SIGKILL after a timeout — whatever is left of
its process group (the Python backend's stubs) is killed, the shared-memory regions of its Python backend (a unique
prefix per server) are gone afterwards (``leaked_shm`` lists those the server left for us to remove), and its
scratch directory is removed.
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
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError
from vanilladeploy.extras import install_hint
from vanilladeploy.serving import process as pgroup

SERVE_INSTALL = install_hint("serve")
SHM_DIR = Path("/dev/shm")
LOG_NOISE = ("CudaDriverHelper", "NVML", "DCGM", "pinned memory", "CUDA driver")
"""Error lines every start logs on a machine without a GPU: never the reason a server failed."""


class ServerError(VanillaDeployError):
    """The server did not start or died (the message carries the reason from its log)."""


class StartAborted(Exception):
    """The ``abort`` event was set while the server was starting; it was stopped and nothing is left running."""


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
    """The wheel that carries ``binary`` (default: :func:`find_tritonserver`'s); "unknown" for a binary from
    elsewhere. The server itself reports its version over ``/v2`` once running."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution("nvidia-pytriton")
    except PackageNotFoundError:
        return "unknown"
    wheel_dir = Path(str(dist.locate_file("pytriton"))).resolve()
    if binary is not None and wheel_dir not in Path(binary).resolve().parents:
        return "unknown"
    return f"nvidia-pytriton {dist.version}"


def check_ports_free(ports: TritonPorts, host: str = "127.0.0.1") -> None:
    """Refuse (exit 2, naming the port) a port something already listens on, before anything starts."""
    for option, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a just-stopped server's TIME_WAIT is free
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
        shipped = sorted((p.name for p in (dist / "python_backend_stubs").glob("3.*")),
                         key=lambda v: tuple(map(int, v.split("."))))
        raise MissingDependencyError(f"nvidia-pytriton has no Python-backend stub for Python "
                                     f"{sys.version_info.major}.{sys.version_info.minor}; this wheel ships stubs for "
                                     f"Python {', '.join(shipped) or 'none'}: use one of those interpreters.")
    backends = workdir / "backends"
    shutil.copytree(dist / "backends", backends)
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


def _cuda_devices() -> int:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def default_kind() -> str:
    """Where ``serve``'s instances run by default: ``gpu`` where a CUDA GPU and ONNX Runtime's CUDA provider both
    exist, else ``cpu``."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "cpu"
    return "gpu" if "CUDAExecutionProvider" in ort.get_available_providers() and _cuda_devices() > 0 else "cpu"


class TritonServer:
    """A running ``tritonserver`` for ``repository``; started by ``__enter__``, stopped on every exit path."""

    def __init__(self, repository: Path, ports: TritonPorts, *, host: str = "127.0.0.1", model: str | None = None,
                 start_timeout_s: float = 120.0, stop_timeout_s: float = 30.0,
                 abort: threading.Event | None = None) -> None:
        self.repository, self.ports, self.host, self.model = repository, ports, host, model
        self.start_timeout_s, self.stop_timeout_s = start_timeout_s, stop_timeout_s
        self.abort = abort or threading.Event()  # set: stop waiting for the start (StartAborted)
        self.process: subprocess.Popen[bytes] | None = None
        self.shm_prefix = f"vanilladeploy-{os.getpid()}-{os.urandom(4).hex()}-"
        self.leaked_shm: list[Path] = []  # regions the server left behind and stop() removed
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
        pgroup.sweep_leftovers(Path(tempfile.gettempdir()), SHM_DIR)  # of runs whose owner was SIGKILLed
        self._workdir = Path(tempfile.mkdtemp(prefix=f"vanilladeploy-triton-{os.getpid()}-"))
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
        if self.model:  # explicit model control: the one model is loaded, and can be reloaded (serving.watch)
            args += ["--model-control-mode=explicit", f"--load-model={self.model}"]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=server_env(), start_new_session=True,
                                            preexec_fn=pgroup.parent_death_signal())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        path = f"/v2/models/{self.model}/ready" if self.model else "/v2/health/ready"
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"Triton Inference Server exited while starting ({self.exit_description()}): "
                                  f"{self.failure_reason()}")
            if self._get(path) == 200:
                return
            if self.abort.wait(0.25):
                raise StartAborted("stopped while starting")
        raise ServerError(f"Triton Inference Server was not ready within {self.start_timeout_s:.0f} s: "
                          f"{self.failure_reason()}")

    def _get(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return response.status
        except (urllib.error.URLError, OSError):
            return None

    def alive(self) -> bool:
        """The server runs (checked without reaping it: its process-group id stays ours until :meth:`stop`)."""
        return self.process is not None and not pgroup.wait_exited(self.process, 0)

    def log(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except (OSError, AssertionError):
            return ""

    def exit_description(self) -> str:
        """How the server ended ("killed by SIGKILL", "exit status 1"); "running" while it runs."""
        return "stopped" if self.process is None else pgroup.exit_description(self.process)

    def failure_reason(self) -> str:
        """The first error line of the server's log (e.g. a model that failed to load, and why), past the lines a
        machine without a GPU always logs."""
        lines = [line for line in self.log().splitlines()
                 if (line.startswith("E") or "failed to load" in line or "error:" in line.lower())
                 and not any(noise in line for noise in LOG_NOISE)]
        return lines[0].split("] ", 1)[-1].strip().strip('"')[:600] if lines else "no error in its log"

    def shm_entries(self) -> list[Path]:
        return sorted(SHM_DIR.glob(f"{self.shm_prefix}*")) if SHM_DIR.is_dir() else []

    def stop(self) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``stop_timeout_s``; then whatever is left of the
        group is killed and its shared memory and scratch directory are removed — also when a second Ctrl-C cuts
        the graceful part short (it is raised again afterwards). Safe to call twice."""
        process, self.process = self.process, None
        try:
            if process is not None and process.returncode is None:
                pgroup.signal_group(process, signal.SIGTERM)
                pgroup.wait_exited(process, self.stop_timeout_s)
        finally:
            self._clean_up(process)

    def _clean_up(self, process: subprocess.Popen[bytes] | None) -> None:
        try:
            if process is not None:  # the leader is not reaped before this, so its group id is still ours
                pgroup.signal_group(process, signal.SIGKILL)
                process.wait()
                pgroup.wait_group_gone(process.pid, timeout_s=10.0)
        finally:
            try:
                leaked = self.shm_entries()
                self.leaked_shm.extend(leaked)
                for entry in leaked:
                    entry.unlink(missing_ok=True)
            finally:
                if self._workdir is not None:
                    shutil.rmtree(self._workdir, ignore_errors=True)
                    self._workdir = None


def server_version(server: TritonServer) -> str:
    import json

    try:
        with urllib.request.urlopen(server.http_url + "/v2", timeout=2) as response:
            return str(json.loads(response.read()).get("version", "?"))
    except (urllib.error.URLError, OSError, ValueError):
        return "?"


__all__ = ["SERVE_INSTALL", "ServerError", "StartAborted", "TritonPorts", "TritonServer", "check_ports_free",
           "default_kind", "find_tritonserver", "server_env", "server_version", "tritonserver_version"]
