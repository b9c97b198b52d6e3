"""Timing: warm-up, then interleaved rounds (A B C, A B C, …) so drift on a shared machine hits every model alike;
statistics over the per-iteration latencies.

A *subject* runs one synchronized iteration and returns its latency in milliseconds; subjects are made the one way
per device of :mod:`vanilladeploy.runtimes.timing`. The clock is injectable, so the statistics and the loop are
tested on a fake clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from vanilladeploy.runtimes.timing import Clock, Subject


@dataclass(frozen=True)
class LatencyStats:
    """Per-iteration latency statistics of one (model, backend) in ms; ``throughput`` in images per second."""

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


__all__ = ["LatencyStats", "measure_interleaved", "summarize"]
