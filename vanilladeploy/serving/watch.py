"""A served model that stays honest when its Python-backend stub dies.

Measured with Triton 2.51 (the nvidia-pytriton wheel): after the stub process of a model is killed, every request
gets 500 "Stub process '<model>_0_0' is not healthy" for as long as the server runs, while ``/v2/health/ready`` and
the model's readiness still answer ready. :class:`ModelWatch` notices (a stub it saw after the start is gone) and
reloads the model through Triton's model-control API (the server runs with ``--model-control-mode=explicit``):
``unload`` first — from then on the server's and the model's readiness answer 400, so a load balancer or a
readiness probe stops sending traffic — then ``load``, which returns once the new stub has loaded the model. A load
that fails raises :class:`~vanilladeploy.serving.server.ServerError` with the reason Triton gives.

An unload whose stub is dead stays in state UNLOADING (Triton waits for a stub that never answers); a load issued
meanwhile starts a fresh instance at once, so the watch does not wait for the unload to finish.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from vanilladeploy.serving.server import ServerError, TritonServer

STUB = "triton_python_backend_stub"
UNLOAD_TIMEOUT_S = 30.0
LOAD_TIMEOUT_S = 300.0


def stub_pids(shm_prefix: str) -> frozenset[int]:
    """The live Python-backend stubs of one server: their command line names its shared-memory prefix. A killed stub
    that its server has not reaped yet is a zombie, whose command line is empty: it is not counted."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if STUB.encode() in cmdline and f"\0{shm_prefix}".encode() in cmdline:
            found.add(int(entry.name))
    return frozenset(found)


class ModelWatch:
    """Call :meth:`check` periodically while ``server`` serves ``model``: it raises :class:`ServerError` when the
    server has died or a reload failed, and reloads the model when one of its stubs has died."""

    def __init__(self, server: TritonServer, model: str, *, on_event: Callable[[str], None] = lambda _: None,
                 load_timeout_s: float = LOAD_TIMEOUT_S) -> None:
        self.server, self.model, self.on_event, self.load_timeout_s = server, model, on_event, load_timeout_s
        self.stubs = stub_pids(server.shm_prefix)  # after the start: every instance's stub is up

    def check(self) -> None:
        if not self.server.alive():
            raise ServerError(f"Triton Inference Server exited ({self.server.exit_description()}): "
                              f"{self.server.failure_reason()}")
        gone = self.stubs - stub_pids(self.server.shm_prefix)
        if gone:
            self.reload(sorted(gone))

    def reload(self, dead: list[int]) -> None:
        self.on_event(f"The backend stub of {self.model} (pid {', '.join(map(str, dead))}) died: reloading the "
                      "model, not ready until it is back")
        started = time.monotonic()
        self._control("unload", UNLOAD_TIMEOUT_S)  # readiness answers 400 from here on
        status, error = self._control("load", self.load_timeout_s)
        if status != 200:
            if not self.server.alive():
                self.check()  # raises: the server died while reloading
            raise ServerError(f"{self.model} could not be reloaded after its backend stub died: "
                              f"{error or self.server.failure_reason()}")
        self.stubs = stub_pids(self.server.shm_prefix)
        self.on_event(f"{self.model} reloaded in {time.monotonic() - started:.1f} s: ready")

    def _control(self, action: str, timeout_s: float) -> tuple[int | None, str]:
        """POST ``/v2/repository/models/<model>/<action>``: (HTTP status or None, Triton's error message)."""
        request = urllib.request.Request(f"{self.server.http_url}/v2/repository/models/{self.model}/{action}",
                                         data=b"{}", method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, ""
        except urllib.error.HTTPError as e:
            return e.code, _error_message(e.read())
        except (urllib.error.URLError, OSError) as e:
            return None, f"the {action} request failed: {e}"


def _error_message(body: bytes) -> str:
    try:
        text = str(json.loads(body).get("error", ""))
    except (ValueError, AttributeError):
        text = body.decode(errors="replace")
    return " ".join(text.split())[:600]


__all__ = ["ModelWatch", "STUB", "stub_pids"]
