"""A health inference: a real request to the served model, with a deadline, to find a backend stub that is alive but
does not answer (stopped, deadlocked, swapping) — which no process listing can see, and which Triton's readiness
does not see either (measured here with Triton 2.51: a SIGSTOPped stub leaves the model READY while every request
to it waits).

The request is the smallest the model takes: one image of zeros at its input size (a dynamic size: 64 px; an image
ensemble: an 8×8 PNG). Its deadline is derived from the latency measured when the probe is made, idle, so it
scales with the model and the machine: ``max(HEALTH_MIN_TIMEOUT_S, HEALTH_QUEUE_FACTOR × max_batch × idle
latency)``, room for a full batch queued ahead of it and one running (per-image cost is flat in the batch on these
CPUs: docs/serving.md).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

HEALTH_INTERVAL_S = 5.0
"""Seconds between health inferences (``serve --health-interval``)."""
HEALTH_MIN_TIMEOUT_S = 5.0
"""The shortest deadline a health inference gets (``serve --health-timeout`` sets it outright)."""
MEASURE_TIMEOUT_S = 30.0
"""How long a measuring health inference may take (a large model's first inference, idle)."""
HEALTH_QUEUE_FACTOR = 2.0
"""A full batch ahead of the probe and one running: ``HEALTH_QUEUE_FACTOR × max_batch`` images' latency."""
TRITON_DTYPES = {"TYPE_FP32": ("FP32", np.float32), "TYPE_UINT8": ("UINT8", np.uint8),
                 "TYPE_STRING": ("BYTES", np.object_)}
DYNAMIC_SIZE = 64
"""The image size a probe sends where the model's input size is dynamic (a detector's H and W)."""


OK, TIMEOUT, UNHEALTHY, REFUSED = "ok", "timeout", "unhealthy", "refused"
"""What a health inference came to: answered; no answer within the deadline; Triton's own "Stub process … is not
healthy" (its answer for a stub that does not respond); any other error (the request itself was refused)."""


@dataclass(frozen=True)
class Outcome:
    kind: str  # OK, TIMEOUT, UNHEALTHY or REFUSED
    text: str = ""  # what went wrong, as the client said it


@dataclass(frozen=True)
class ProbeRequest:
    """What a health inference sends: the input's name, datatype and one batch."""

    input: str
    datatype: str
    data: np.ndarray


def probe_request(config: dict[str, Any]) -> ProbeRequest:
    """The smallest request the model with this Triton config (``/v2/models/<model>/config``, JSON) takes."""
    (spec,) = config["input"][:1]
    datatype, dtype = TRITON_DTYPES[spec["data_type"]]
    dims = [int(d) if int(d) > 0 else DYNAMIC_SIZE for d in spec.get("dims", [])]
    shape = [1, *dims] if int(config.get("max_batch_size", 0)) > 0 else dims
    if datatype == "BYTES":  # an image ensemble: one encoded image
        return ProbeRequest(spec["name"], datatype, np.array([[_png()]] * shape[0], dtype=object))
    return ProbeRequest(spec["name"], datatype, np.zeros(shape, dtype=dtype))


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


class HealthProbe:
    """Health inferences to ``model`` on the HTTP endpoint ``address`` (``host:port``): :meth:`probe` says what one
    came to (:class:`Outcome`); its first call measures the latency the deadline is derived from (:meth:`measure`)."""

    def __init__(self, address: str, model: str, config: dict[str, Any], *, timeout_s: float | None = None) -> None:
        self.address, self.model, self.request = address, model, probe_request(config)
        self.max_batch = max(int(config.get("max_batch_size", 0)), 1)
        self.given_timeout_s, self.timeout_s = timeout_s, timeout_s or HEALTH_MIN_TIMEOUT_S
        self.idle_s: float | None = None

    def measure(self, runs: int = 3) -> Outcome:
        """Time ``runs`` health inferences (the slowest counts) and derive the deadline from it, unless one was
        given. OK when all were answered; else the first that was not (nothing measured: the next call measures)."""
        seconds = []
        for _ in range(runs):
            started = time.perf_counter()
            outcome = self._send(timeout_s=max(self.timeout_s, MEASURE_TIMEOUT_S))
            if outcome.kind != OK:
                return outcome
            seconds.append(time.perf_counter() - started)
        self.idle_s = max(seconds)
        if self.given_timeout_s is None:
            self.timeout_s = max(HEALTH_MIN_TIMEOUT_S, HEALTH_QUEUE_FACTOR * self.max_batch * self.idle_s)
        return Outcome(OK)

    def probe(self) -> Outcome:
        """One health inference within the deadline (without a given deadline, the first call measures the latency
        it is derived from: :meth:`measure`)."""
        if self.idle_s is None and self.given_timeout_s is None:
            return self.measure()
        return self._send(timeout_s=self.timeout_s)

    def _send(self, *, timeout_s: float) -> Outcome:
        import tritonclient.http as http

        client = http.InferenceServerClient(self.address, network_timeout=timeout_s, connection_timeout=timeout_s)
        try:
            tensor = http.InferInput(self.request.input, list(self.request.data.shape), self.request.datatype)
            tensor.set_data_from_numpy(self.request.data)
            client.infer(self.model, [tensor])
            return Outcome(OK)
        except Exception as e:  # a timeout, Triton's answer for a stub that does not respond, anything else
            text = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
            if isinstance(e, TimeoutError) or "timed out" in text.lower():
                return Outcome(TIMEOUT, text)
            return Outcome(UNHEALTHY if "is not healthy" in text else REFUSED, text)
        finally:
            client.close()


__all__ = ["HEALTH_INTERVAL_S", "HEALTH_MIN_TIMEOUT_S", "HEALTH_QUEUE_FACTOR", "OK", "REFUSED", "TIMEOUT", "UNHEALTHY",
           "HealthProbe", "Outcome", "ProbeRequest", "probe_request"]
