"""A served model that stays honest when its Python-backend stub dies.

Measured with Triton 2.51 (the nvidia-pytriton wheel): after the stub process of a model is killed, every request
gets 500 "Stub process '<model>_0_0' is not healthy" for as long as the server runs, while ``/v2/health/ready`` and
the model's readiness still answer ready. :class:`ModelWatch` notices (a stub it listed is gone, or one was missing
when it listed them) and reloads the model through Triton's model-control API (the server runs with
``--model-control-mode=explicit``): ``unload`` first — from then on the server's and the model's readiness answer
400, so a load balancer or a readiness probe stops sending traffic — then ``load``, which returns once the new stub
has loaded the model. A load that fails raises :class:`~vanilladeploy.serving.server.ServerError` with the reason
Triton gives.

An unload whose stub is dead stays in state UNLOADING (Triton waits for a stub that never answers); a load issued
meanwhile starts a fresh instance at once, so the watch does not wait for the unload to finish.

The invariant the watch keeps: it lists the model's stubs only right after Triton said the model is loaded (when the
watch is made, right after the server's start, before anyone is told it serves; when a reload's ``load`` returned),
and it expects one live stub per instance of the model (:func:`model_instances`, from Triton's own config of it). A
listing that finds fewer means a stub died between the load and the listing — a death no comparison of two listings
can see: it is handled like any other dead stub, so the watch never holds an empty or short set for a model meant to
be ready, and never sits silent while a model without its stub says ready.

A stub that is alive but does not answer (stopped, deadlocked) is in every listing, and Triton's readiness still
says ready: the watch also sends a health inference (:class:`~vanilladeploy.serving.health.HealthProbe`) every
``health_interval_s``; one not answered within its deadline, while every stub is alive, gets the model's stubs
SIGKILLed and the model reloaded as for a dead stub.

A stub killed *while* Triton loads the model (the auto-complete stub, or an instance's stub before it has answered
its initialization) is Triton's own limit: its Python backend waits for that stub's answer without a timeout, so the
load does not return (measured: not within 300 s); readiness answers 400 meanwhile, and the watch gives up after
``load_timeout_s`` (``serve`` exits 2).
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vanilladeploy.serving.health import HEALTH_INTERVAL_S, OK, REFUSED, TIMEOUT, HealthProbe
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


def _stat(pid: int) -> list[str]:
    """``/proc/PID/stat``'s fields after the command name (state first); empty for a process that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def cpu_ticks(pids: list[int]) -> int:
    """The CPU time (user + system, clock ticks) the processes have used so far."""
    return sum(int(f[11]) + int(f[12]) for f in map(_stat, pids) if len(f) > 12)


def stopped(pid: int) -> bool:
    """Stopped by a signal (state T) or by a tracer (t)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] in ("T", "t")


def model_instances(config: dict[str, Any]) -> int:
    """The instances, one stub each, that Triton makes of a model with this config (``/v2/models/<model>/config``):
    each instance group's ``count``, times its GPUs for a ``KIND_GPU`` group (Triton lists them in the config of a
    loaded model)."""
    total = 0
    for group in config.get("instance_group", []):
        devices = len(group.get("gpus") or [0]) if group.get("kind") == "KIND_GPU" else 1
        total += int(group.get("count", 1)) * devices
    return max(total, 1)


class ModelWatch:
    """Call :meth:`check` periodically while ``server`` serves ``model``: it raises :class:`ServerError` when the
    server has died or a reload failed, and reloads the model when one of its stubs has died. Make it right after
    the server's start: it lists the stubs then (see the module's invariant).

    ``stubs``: the stubs listed right after the model's last load; ``instances``: how many it must hold.
    ``health_interval_s``: seconds between health inferences (0: none); ``health_timeout_s``: their deadline (None:
    derived from their latency, measured here)."""

    def __init__(self, server: TritonServer, model: str, *, on_event: Callable[[str], None] = lambda _: None,
                 load_timeout_s: float = LOAD_TIMEOUT_S, health_interval_s: float = HEALTH_INTERVAL_S,
                 health_timeout_s: float | None = None) -> None:
        self.server, self.model, self.on_event, self.load_timeout_s = server, model, on_event, load_timeout_s
        config = self._config(model)
        self.steps = [step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])]
        """An ensemble's models (an image ensemble: preprocess, classifier): loaded, watched and reloaded with it."""
        self.instances = (sum(model_instances(self._config(m)) for m in self.steps) if self.steps else
                          model_instances(config))
        self.stubs = stub_pids(server.shm_prefix)  # the model is loaded: every instance's stub is up, or died
        self.health_interval_s, self.last_probe = health_interval_s, -float("inf")  # the first check probes
        self.probe = HealthProbe(server.http_url.removeprefix("http://"), model, config,
                                 timeout_s=health_timeout_s) if health_interval_s > 0 else None

    def check(self) -> None:
        if not self.server.alive():
            raise ServerError(f"Triton Inference Server exited ({self.server.exit_description()}): "
                              f"{self.server.failure_reason()}")
        lost = self._lost() or self._unanswered()
        if lost:
            self.reload(lost)

    def _unanswered(self) -> str:
        """A health inference, when one is due: "" when answered in time. A stub is killed (SIGKILL: a stopped
        process cannot be asked to stop) and what happened returned only when the stub is found stuck: Triton
        answers that it is not healthy, or no answer came within the deadline while no stub of the model used any
        CPU (or one is stopped). A stub busy past the deadline is left alone (said once per miss); a request the
        model refuses turns the health inferences off (said once): neither is a hung stub."""
        if self.probe is None or time.monotonic() - self.last_probe < self.health_interval_s:
            return ""
        alive = sorted(self.stubs & stub_pids(self.server.shm_prefix))
        before = cpu_ticks(alive)
        outcome, self.last_probe = self.probe.probe(), time.monotonic()
        if outcome.kind == OK:
            return ""
        dead = self._lost()
        if dead:  # it died meanwhile: said as such, and reloaded as such
            return dead
        if outcome.kind == REFUSED:
            self.on_event(f"{self.model} refused its health inference ({outcome.text}): no more health inferences; "
                          "its stubs are still watched")
            self.probe = None
            return ""
        if outcome.kind == TIMEOUT and cpu_ticks(alive) > before and not any(stopped(p) for p in alive):
            self.on_event(f"{self.model} answered no health inference within {self.probe.timeout_s:.1f} s, its "
                          "stub busy meanwhile: left alone")
            return ""
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return (f"(pid {', '.join(map(str, alive))}) failed a health inference (deadline "
                f"{self.probe.timeout_s:.1f} s: {outcome.text}): killed it")

    def _lost(self) -> str:
        """What the model has lost since its stubs were listed, as the event says it ("(pid 123) died"); "" while
        every instance has its live stub."""
        gone = self.stubs - stub_pids(self.server.shm_prefix)
        if gone:
            return f"(pid {', '.join(map(str, sorted(gone)))}) died"
        if len(self.stubs) < self.instances:
            return (f"({self.instances - len(self.stubs)} of {self.instances} instances) died right after the model "
                    "loaded")
        return ""

    def reload(self, lost: str) -> None:
        """Unload and load the model, then list the new load's stubs: those alive now that were not before the
        unload (a healthy stub of the old load may still be finishing). Fewer than ``instances`` — one died as the
        load ended — and the next :meth:`check` reloads again instead of announcing a model without its stub."""
        self.on_event(f"The backend stub of {self.model} {lost}: reloading the model, not ready until it is back")
        started, old = time.monotonic(), stub_pids(self.server.shm_prefix)
        self._control("unload", UNLOAD_TIMEOUT_S)  # readiness answers 400 from here on (an ensemble's steps too)
        status, error = self._control("load", self.load_timeout_s)
        if status != 200:
            if not self.server.alive():
                self.check()  # raises: the server died while reloading
            raise ServerError(f"{self.model} could not be reloaded after its backend stub died: "
                              f"{error or self.server.failure_reason()}")
        self.stubs = stub_pids(self.server.shm_prefix) - old
        if len(self.stubs) >= self.instances:
            self.on_event(f"{self.model} reloaded in {time.monotonic() - started:.1f} s: ready")

    def _config(self, model: str) -> dict[str, Any]:
        """Triton's config of a loaded model (``GET /v2/models/<model>/config``)."""
        try:
            with urllib.request.urlopen(f"{self.server.http_url}/v2/models/{model}/config",
                                        timeout=30) as response:
                return dict(json.loads(response.read()))
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ServerError(f"Triton Inference Server did not give the config of {model}: {e}") from None

    def _control(self, action: str, timeout_s: float) -> tuple[int | None, str]:
        """POST ``/v2/repository/models/<model>/<action>``: (HTTP status or None, Triton's error message). An
        ensemble is unloaded with its steps (``unload_dependents``); its load loads them again."""
        body = {"parameters": {"unload_dependents": True}} if self.steps and action == "unload" else {}
        request = urllib.request.Request(f"{self.server.http_url}/v2/repository/models/{self.model}/{action}",
                                         data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
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


__all__ = ["ModelWatch", "STUB", "model_instances", "stub_pids"]
