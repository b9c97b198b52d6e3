"""vanilladeploy/runtimes/timing.py on a fake clock: statistics, interleaving, warm-up, time budget."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vanilladeploy.runtimes.timing import measure_interleaved, summarize, timed_on_clock


class FakeClock:
    """Advances only when told: each subject adds its own known duration."""

    def __init__(self) -> None:
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


def test_summarize_known_samples() -> None:
    samples = [float(x) for x in range(1, 101)]  # 1 … 100 ms
    s = summarize(samples, batch=4)
    assert s.iterations == 100 and s.median_ms == 50.5 and s.min_ms == 1.0 and s.mean_ms == 50.5
    assert s.p90_ms == pytest.approx(90.1) and s.p99_ms == pytest.approx(99.01)  # linear interpolation
    assert s.std_ms == pytest.approx(np.std(samples, ddof=1))
    assert s.throughput_img_s == pytest.approx(4 * 1000 / 50.5)
    single = summarize([2.0], batch=1)
    assert single.std_ms == 0.0 and single.p99_ms == 2.0
    with pytest.raises(ValueError):
        summarize([], batch=1)


def test_interleaved_rounds_and_fake_clock_latencies() -> None:
    clock, calls = FakeClock(), []

    def subject(name: str, ms: float):
        def step() -> None:
            calls.append(name)
            clock.ns += int(ms * 1e6)
        return timed_on_clock(step, clock)

    subjects = {"A": subject("A", 1.0), "B": subject("B", 2.5), "C": subject("C", 0.25)}
    samples = measure_interleaved(subjects, warmup=2, iters=4, clock=clock)
    assert calls == list("ABC") * 6  # 2 warm-up rounds + 4 timed rounds, always A B C
    assert samples == {"A": [1.0] * 4, "B": [2.5] * 4, "C": [0.25] * 4}


def test_time_budget_stops_after_at_least_three_rounds() -> None:
    clock = FakeClock()

    def slow() -> float:
        clock.ns += int(1e9)  # each iteration "takes" a second
        return 1000.0

    rounds = []
    samples = measure_interleaved({"A": slow}, warmup=0, iters=100, budget_s=0.5, clock=clock,
                                  on_round=lambda done, total: rounds.append((done, total)))
    assert len(samples["A"]) == 3 and rounds == [(1, 100), (2, 100), (3, 100)]
    samples = measure_interleaved({"A": slow}, warmup=0, iters=100, budget_s=5.5, clock=clock)
    assert len(samples["A"]) == 6
    assert math.isclose(summarize(samples["A"], batch=1).throughput_img_s, 1.0)
