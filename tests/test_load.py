"""vanilladeploy/serving/load.py on fake senders (no server): counts, checks, errors and real concurrency."""

from __future__ import annotations

import threading
import time

import numpy as np

from vanilladeploy.serving.load import Send, Wrong, measure_load, shared_sender_factory


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
                         check=lambda i, y: None if not y.any() else Wrong(float(y.sum()), "zeros"))
    assert stats.errors == 10 and stats.latency is not None and stats.latency.iterations == 10
    assert stats.wrong == 5 and stats.worst == Wrong(2.0, "zeros")
    assert stats.first_error in ("ConnectionError: server went away", "wrong answer: rel L2 2.00e+00 against zeros")
    assert stats.as_dict()["wrong_answers"] == 5 and stats.as_dict()["worst_rel_l2"] == 2.0


def test_a_nan_answer_is_the_worst() -> None:
    answers = iter([0.5, float("nan"), 3.0])
    stats = measure_load(lambda: lambda x: x, [np.zeros((1, 1), np.float32)], concurrency=1, requests=3, warmup=0,
                         check=lambda i, y: Wrong(next(answers), "ref"))
    assert stats.wrong == 3 and stats.worst is not None and np.isnan(stats.worst.rel_l2)
    assert stats.as_dict()["worst_rel_l2"] == "nan"  # JSON has no NaN
    from vanilladeploy.serving.serve_bench import LoadResult

    record = {"backend": "triton-grpc", "concurrency": 1, **stats.as_dict()}
    failure = LoadResult([record], {}, {"tolerance": 1e-5}).failure() or ""
    assert "3 wrong answers (worst rel. L2 not finite" in failure


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


def _record(backend: str, level: int, errors: int = 0, wrong: int = 0, worst: float | None = None,
            first: str | None = None) -> dict:
    return {"backend": backend, "concurrency": level, "requests": 4, "errors": errors, "wrong_answers": wrong,
            "worst_rel_l2": worst, "first_error": first}


def test_a_run_fails_on_any_wrong_answer_or_failed_request_naming_counts_and_the_worst() -> None:
    from vanilladeploy.serving.serve_bench import LoadResult

    config = {"tolerance": 1e-5}
    assert LoadResult([_record("triton-grpc", 1), _record("onnxruntime-inprocess", 1)], {}, config).failure() is None
    records = [_record("triton-grpc", 1, 4, 4, 0.8, "wrong answer: rel L2 8.00e-01 against x"),
               _record("triton-grpc", 4, 3, 1, 1.3, "wrong answer: rel L2 1.30e+00 against x"),
               _record("triton-http", 4, 2, 0, None, "TimeoutError: timed out"),
               _record("onnxruntime-inprocess", 4)]
    assert LoadResult(records, {}, config).failure() == (
        "5 wrong answers (worst rel. L2 1.30e+00, tolerance 1e-05) and 4 failed requests (e.g. wrong answer: rel L2 "
        "1.30e+00 against x) of 16 requests, in triton-grpc at concurrency 1; triton-grpc at concurrency 4; "
        "triton-http at concurrency 4.")
