"""benchmarks/load.py on fake senders (no server): counts, checks, errors and real concurrency."""

from __future__ import annotations

import threading
import time

import numpy as np

from vanilladeploy.benchmarks.load import Send, measure_load, shared_sender_factory


class _Occupancy:
    """How many calls of a wrapped function were inside it at once, at most (``peak``)."""

    def __init__(self) -> None:
        self.active, self.peak, self.lock = 0, 0, threading.Lock()

    def timed(self, answer: Send, *, seconds: float) -> Send:
        """``answer`` after ``seconds`` of sleep, counted while inside."""
        def call(x: np.ndarray) -> np.ndarray:
            with self.lock:
                self.active += 1
                self.peak = max(self.peak, self.active)
            time.sleep(seconds)
            with self.lock:
                self.active -= 1
            return answer(x)

        return call


def test_every_request_is_counted_and_timed() -> None:
    inputs = [np.full((2, 3), i, np.float32) for i in range(3)]
    seen: list[float] = []
    lock = threading.Lock()

    def factory():
        def send(x: np.ndarray) -> np.ndarray:
            with lock:
                seen.append(float(x[0, 0]))
            return x * 2
        return send

    stats = measure_load(factory, inputs, concurrency=3, requests=30, warmup=1,
                         check=lambda i, y: None if np.array_equal(y, inputs[i] * 2) else "wrong")
    assert stats.requests == 30 and stats.errors == 0 and stats.latency is not None
    assert stats.latency.iterations == 30
    assert len(seen) == 30 + 3  # 30 timed + one warm-up per thread
    assert sorted(seen[3:]) == sorted([float(i % 3) for i in range(30)])  # inputs in rotation
    assert stats.throughput_img_s == stats.latency.iterations * 2 / stats.wall_s


def test_errors_and_wrong_answers_are_counted_not_raised() -> None:
    calls = iter(range(1000))
    lock = threading.Lock()

    def factory():
        def send(x: np.ndarray) -> np.ndarray:
            with lock:
                n = next(calls)
            if n % 4 == 1:
                raise ConnectionError("server went away")
            return x if n % 4 != 2 else x + 1
        return send

    x = [np.zeros((1, 2), np.float32)]
    stats = measure_load(factory, x, concurrency=1, requests=20, warmup=0,
                         check=lambda i, y: None if not y.any() else "wrong logits")
    assert stats.errors == 10 and stats.latency is not None and stats.latency.iterations == 10
    assert stats.first_error in ("ConnectionError: server went away", "wrong logits")


def test_clients_really_run_concurrently() -> None:
    """The same 16 requests at concurrency 1 and 4, on this machine in the same test: 4 at a time, not one after
    the other (ideally a quarter of the time; the bound leaves this machine's scheduling half of it)."""
    walls, peaks = {}, {}
    for concurrency in (1, 4):
        occupancy = _Occupancy()
        send = occupancy.timed(lambda x: x, seconds=0.02)
        stats = measure_load(lambda: send, [np.zeros((1, 1), np.float32)], concurrency=concurrency, requests=16,
                             warmup=0)
        assert stats.errors == 0 and stats.requests == 16
        walls[concurrency], peaks[concurrency] = stats.wall_s, occupancy.peak
    assert peaks == {1: 1, 4: 4}
    assert walls[4] < 0.5 * walls[1], walls


def test_a_client_that_cannot_connect_fails_its_requests() -> None:
    def factory():
        raise OSError("connection refused")

    stats = measure_load(factory, [np.zeros((1, 1), np.float32)], concurrency=2, requests=6)
    assert stats.errors == 6 and stats.latency is None and "connection refused" in (stats.first_error or "")


def test_a_shared_runner_answers_one_request_at_a_time() -> None:
    occupancy = _Occupancy()
    infer = occupancy.timed(lambda x: x + 1, seconds=0.005)  # like one OpenVINO infer request
    inputs = [np.full((1, 2), i, np.float32) for i in range(4)]
    stats = measure_load(shared_sender_factory(infer), inputs, concurrency=4, requests=24, warmup=1,
                         check=lambda i, y: None if np.array_equal(y, inputs[i] + 1) else "wrong")
    assert stats.errors == 0 and stats.latency is not None and stats.latency.iterations == 24
    assert occupancy.peak == 1  # four client threads, one inference at a time
