"""One timing method per device, shared by ``bench``, ``optimize`` and the int8 cost: a *subject* is a callable
that runs one synchronized iteration and returns its latency in milliseconds.

CPU: ``perf_counter_ns`` around a call that returns when done (:func:`timed_on_clock`). CUDA: two CUDA events on the
runner's stream around the work, then a wait for the end event (:func:`cuda_subject`); copies into bound input
buffers happen before the first event, outside the timed region. Runners build their subjects with these
(:meth:`vanilladeploy.runtimes.runners.Runner.subject`). The clock is injectable, so loops built on it are tested
on a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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


__all__ = ["Clock", "Subject", "cuda_subject", "timed_on_clock"]
