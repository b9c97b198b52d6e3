"""Load generation: N client threads send requests as fast as their answers come back (closed loop), each request
timed with ``perf_counter_ns``; throughput = images answered right / wall time; latency statistics as in
:mod:`vanilladeploy.runtimes.timing`.

A *sender* maps an input batch to logits: a Triton client over HTTP or gRPC (the caller makes it:
``vanilladeploy.serving.client.TritonRunner``), or a model in process shared by the threads as a server would share
it (ONNX Runtime's thread-safe session, or any runner one request at a time). Every thread gets its own sender from
the factory (tritonclient clients are not thread-safe). Answers can be checked, so a fast wrong answer counts as an
error, not as throughput.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vanilladeploy.runtimes.timing import LatencyStats, summarize

Send = Callable[[np.ndarray], np.ndarray]
SenderFactory = Callable[[], Send]


@dataclass(frozen=True)
class Wrong:
    """A wrong answer: how far it is from its reference (rel. L2; NaN when not finite or misshapen) and what the
    reference was."""

    rel_l2: float
    against: str

    def __str__(self) -> str:
        return f"wrong answer: rel L2 {self.rel_l2:.2e} against {self.against}"


Check = Callable[[int, np.ndarray], Wrong | None]
"""(input index, logits) → None when right, else how it is wrong."""


@dataclass(frozen=True)
class LoadStats:
    concurrency: int
    requests: int
    errors: int  # failed requests + wrong answers
    first_error: str | None
    wall_s: float
    throughput_img_s: float
    latency: LatencyStats | None  # over the requests answered right
    wrong: int = 0  # answers that came back but failed the check
    worst: Wrong | None = None  # the wrong answer furthest from its reference (NaN counts as furthest)
    process_cpu_s: float | None = None  # CPU time of this process over the timed part: the clients' own cost when
    # the answers come from a server (serialization, the protocol), clients + runtime when they run in process

    def as_dict(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency, "requests": self.requests, "errors": self.errors,
                "wrong_answers": self.wrong,
                "worst_rel_l2": None if self.worst is None else _json_number(self.worst.rel_l2),
                "process_cpu_s": None if self.process_cpu_s is None else round(self.process_cpu_s, 4),
                "first_error": self.first_error, "wall_s": round(self.wall_s, 4),
                "throughput_img_s": round(self.throughput_img_s, 3),
                "stats": None if self.latency is None else self.latency.as_dict()}


def measure_load(factory: SenderFactory, inputs: Sequence[np.ndarray], *, concurrency: int, requests: int,
                 check: Check | None = None, warmup: int = 1) -> LoadStats:
    """``requests`` requests over ``concurrency`` threads (inputs in rotation); each thread makes its own sender
    (tritonclient's HTTP client cannot cross threads) and first sends ``warmup`` untimed requests; the clock starts
    when every thread is ready. Errors (exceptions, failed checks) are counted, never raised; wrong answers are
    also counted apart, with the worst of them."""
    lock, next_index = threading.Lock(), iter(range(requests))
    latencies: list[float] = []
    errors: list[str] = []
    wrong: list[Wrong] = []
    ready = threading.Barrier(concurrency + 1)

    def client() -> None:
        try:
            send = factory()
            for _ in range(warmup):
                send(inputs[0])
        except Exception as e:  # a client that cannot even connect fails all of its share later
            send = _failing(e)
        ready.wait()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            x = inputs[i % len(inputs)]
            start = time.perf_counter_ns()
            miss: Wrong | None = None
            try:
                y = send(x)
                miss = check(i % len(inputs), y) if check else None
                problem = None if miss is None else str(miss)
            except Exception as e:  # a failed request is a result of the load test
                problem = _describe(e)
            elapsed_ms = (time.perf_counter_ns() - start) / 1e6
            with lock:
                (errors.append(problem) if problem else latencies.append(elapsed_ms))
                if miss is not None:
                    wrong.append(miss)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    ready.wait()
    start, cpu_start = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    batch = len(inputs[0])
    return LoadStats(concurrency, requests, len(errors), errors[0] if errors else None, wall,
                     len(latencies) * batch / wall if wall > 0 else 0.0,
                     summarize(latencies, batch=batch) if latencies else None, len(wrong), _worst(wrong), cpu)


def _json_number(x: float) -> float | str:
    """``x``, or ``"nan"`` (an answer that was not finite or misshapen): JSON has no NaN."""
    return x if math.isfinite(x) else "nan"


def _worst(wrong: list[Wrong]) -> Wrong | None:
    """The wrong answer furthest from its reference; a NaN (not finite, misshapen) is the furthest."""
    return max(wrong, key=lambda w: math.inf if math.isnan(w.rel_l2) else w.rel_l2, default=None)


def _describe(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}"


def _failing(error: BaseException) -> Send:
    def send(x: np.ndarray) -> np.ndarray:
        raise RuntimeError(f"client set-up failed: {_describe(error)}")

    return send


def shared_sender_factory(infer: Send) -> SenderFactory:
    """``infer`` (an active runner's) shared by every thread, one request at a time, as one server instance runs
    them: for a runtime whose request object cannot run two inferences at once (OpenVINO's infer request)."""
    lock = threading.Lock()

    def send(x: np.ndarray) -> np.ndarray:
        with lock:
            return infer(x)

    return lambda: send


__all__ = ["Check", "LoadStats", "Wrong", "measure_load", "shared_sender_factory"]
