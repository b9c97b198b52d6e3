"""One timing method per device, shared by ``bench``, ``optimize`` and the int8 cost: a *subject* is a callable
that runs one synchronized iteration and returns its latency in milliseconds; :func:`measure_interleaved` times
subjects in interleaved rounds and :func:`summarize` turns one subject's latencies into :class:`LatencyStats`.

CPU: ``perf_counter_ns`` around a call that returns when done (:func:`timed_on_clock`). CUDA: two CUDA events on the
runner's stream around the work, then a wait for the end event (:func:`cuda_subject`); copies into bound input
buffers happen before the first event, outside the timed region. Runners build their subjects with these
(:meth:`vanilladeploy.runtimes.runners.Runner.subject`).

The loop: warm-up, then interleaved rounds (A B C, A B C, …) so drift on a shared machine hits every subject alike;
statistics over the per-iteration latencies. The clock is injectable, so the loop and the statistics are tested on
a fake clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Clock = Callable[[], int]
"""Nanoseconds, monotonic (``time.perf_counter_ns``)."""
Subject = Callable[[], float]
"""Runs one iteration, returns its latency in ms."""


def timed_on_clock(step: Callable[[], object], clock: Clock = time.perf_counter_ns) -> Subject:
    """A subject timing a synchronous ``step`` with ``clock`` (CPU, or anything that returns when done)."""

    def subject() -> float:
        start = clock()
        step()
        return (clock() - start) / 1e6

    return subject


def cuda_subject(step: Callable[[], object], *, before: Callable[[], object] | None = None,
                 stream: Any = None) -> Subject:
    """Time ``step`` between two CUDA events on ``stream`` (a ``torch.cuda.Stream``; None: the current one) and
    wait for it; ``before`` runs untimed."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def subject() -> float:
        if before is not None:
            before()
        start.record(stream)
        step()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    return subject


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latency statistics of one (model, runtime) in ms; ``throughput`` in images per second."""

    iterations: int
    median_ms: float
    p90_ms: float
    p99_ms: float
    min_ms: float
    mean_ms: float
    std_ms: float
    throughput_img_s: float

    def as_dict(self) -> dict[str, float | int]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(samples_ms: list[float], *, batch: int) -> LatencyStats:
    """Median, p90, p99 (linear interpolation between order statistics), min, mean ± sample std; throughput is
    ``batch`` images per median iteration."""
    if not samples_ms:
        raise ValueError("no samples")
    a = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.median(a))
    return LatencyStats(
        iterations=len(a), median_ms=median, p90_ms=float(np.percentile(a, 90)), p99_ms=float(np.percentile(a, 99)),
        min_ms=float(a.min()), mean_ms=float(a.mean()), std_ms=float(a.std(ddof=1)) if len(a) > 1 else 0.0,
        throughput_img_s=batch * 1000.0 / median if median > 0 else math.inf,
    )


def measure_interleaved(subjects: Mapping[str, Subject], *, warmup: int, iters: int, budget_s: float | None = None,
                        clock: Clock = time.perf_counter_ns,
                        on_round: Callable[[int, int], None] | None = None) -> dict[str, list[float]]:
    """``warmup`` untimed rounds, then up to ``iters`` timed rounds over all subjects in turn (at least 3 rounds
    when a ``budget_s`` stops it early). Returns each subject's latencies in ms, in round order."""
    for _ in range(warmup):
        for subject in subjects.values():
            subject()
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    start = clock()
    for r in range(iters):
        for name, subject in subjects.items():
            samples[name].append(subject())
        if on_round is not None:
            on_round(r + 1, iters)
        if budget_s is not None and r + 1 >= 3 and (clock() - start) / 1e9 >= budget_s:
            break
    return samples


__all__ = ["Clock", "LatencyStats", "Subject", "cuda_subject", "measure_interleaved", "summarize", "timed_on_clock"]
