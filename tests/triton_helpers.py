"""Helpers for the tests that run ``vanilladeploy serve`` as a user does: start it, read its output with a deadline,
and find what it started (the ``tritonserver``, the Python backend's stubs, their shared memory) from ``/proc``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from conftest import missing_in_ci

from vanilladeploy.errors import MissingDependencyError
from vanilladeploy.serving.client import TritonRunner, describe_served, parse_endpoint
from vanilladeploy.serving.load import SenderFactory
from vanilladeploy.serving.server import find_tritonserver
from vanilladeploy.serving.watch import STUB, stub_pids

SHM_DIR = Path("/dev/shm")
READY = "stops the server"  # the last line ``vanilladeploy serve`` prints once it serves


def require_triton(*, module_level: bool = True) -> None:
    """The Triton server binary and tritonclient (HTTP and gRPC), or :func:`conftest.missing_in_ci` with why not:
    a skip here, a failure under ``CI=true`` (CI installs them)."""
    try:
        find_tritonserver()
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except (MissingDependencyError, ImportError) as e:
        missing_in_ci(f"Triton server cannot start here: {e}", module_level=module_level)


def triton_sender(url: str, protocol: str, model: str, *, timeout_s: float = 30.0) -> SenderFactory:
    """Per thread (tritonclient's clients cannot cross threads) an active :class:`TritonRunner` on ``model``: the
    library's one way of talking to Triton; its ``infer`` sends a batch as is."""
    served = describe_served(parse_endpoint(url, protocol), model, timeout_s=timeout_s)

    def factory() -> Callable:
        runner = TritonRunner(served, timeout_s=timeout_s)
        runner.activate()
        return runner.infer

    return factory


def serve(source: Path, ports: list[int] | None, *extra: str, env: dict[str, str] | None = None,
          max_batch: int | None = 4) -> subprocess.Popen[str]:
    """``vanilladeploy serve SOURCE`` (``ports``: http, grpc, metrics; None: the defaults), stdout and stderr
    merged into one pipe."""
    args = [sys.executable, "-m", "vanilladeploy", "serve", str(source)]
    if ports is not None:
        http, grpc, metrics = ports
        args += ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    if max_batch is not None:
        args += ["--max-batch", str(max_batch)]
    return subprocess.Popen([*args, *extra], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def cmdlines() -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return found


def stubs(shm_prefix: str) -> list[int]:
    """Python-backend stubs of one server (:func:`vanilladeploy.serving.watch.stub_pids`, sorted)."""
    return sorted(stub_pids(shm_prefix))


def tritonservers(port: int) -> list[int]:
    """The ``tritonserver`` processes serving HTTP on ``port``."""
    return [pid for pid, cmdline in cmdlines().items()
            if "tritonserver" in cmdline and STUB not in cmdline and f"--http-port={port}" in cmdline]


def server_processes(port: int, cli_pid: int | None = None) -> list[int]:
    """The tritonserver on ``port``, and the stubs of a server that ``vanilladeploy serve`` (``cli_pid``) ran
    (its regions are named vanilladeploy-<pid>-…)."""
    return tritonservers(port) + (stubs(f"vanilladeploy-{cli_pid}-") if cli_pid is not None else [])


def shm_of(cli_pid: int) -> list[str]:
    """``/dev/shm`` entries of the servers that process ``cli_pid`` ran (named vanilladeploy-<pid>-…): other
    programs' entries are not ours to judge."""
    return sorted(p.name for p in SHM_DIR.glob(f"vanilladeploy-{cli_pid}-*")) if SHM_DIR.is_dir() else []


def wait_for_line(process: subprocess.Popen[str], needle: str, timeout_s: float) -> str:
    """Everything ``process`` printed up to the first line containing ``needle``; kills it and fails when the line
    does not come within ``timeout_s``."""
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


def rest_of_output(process: subprocess.Popen[str], timeout_s: float) -> str:
    """What ``process`` prints until it exits (killed, and the test failed, after ``timeout_s``)."""
    assert process.stdout is not None
    os.set_blocking(process.stdout.fileno(), True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"still running {timeout_s:.0f} s later") from None
    return output


def wait_until(condition: Callable[[], object], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll ``condition()`` until it is true (True) or ``timeout_s`` has passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


def stop(process: subprocess.Popen[str]) -> None:
    """SIGTERM ``vanilladeploy serve`` and wait for it (SIGKILL after 60 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def assert_nothing_left(port: int, cli_pid: int, timeout_s: float = 15.0) -> None:
    """No ``tritonserver`` on ``port``, no stub and no ``/dev/shm`` entry of the servers ``cli_pid`` ran."""
    assert wait_until(lambda: not server_processes(port, cli_pid), timeout_s), \
        f"tritonserver or stub left running: {server_processes(port, cli_pid)}"
    assert not shm_of(cli_pid), f"shared memory left behind: {shm_of(cli_pid)}"
