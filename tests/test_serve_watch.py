"""The stub watch of `vanilladeploy serve` (vanilladeploy/serving/watch.py) against a REAL Triton server (the
nvidia-pytriton wheel's binary) on loopback, driven through the real CLI.

The races: the watch lists the model's stubs at a moment of its own — once the server has started, and once a
reload's ``load`` has returned. A stub that dies between the model becoming ready and that listing is in no listing,
so comparing listings never shows it gone: a watch that held only its listings sat silent, holding no stub, while
Triton's readiness said ready and every request failed. Both windows are milliseconds wide; a loaded machine that
does not schedule ``serve`` for a while widens them. The tests make that deterministic by freezing ``serve``
(SIGSTOP; the server runs in its own process group and keeps going) across the kill — the CLI and the server stay
the real ones. Bounded: every wait has a deadline; everything started is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from triton_helpers import (
    READY,
    assert_nothing_left,
    require_triton,
    rest_of_output,
    serve,
    server_processes,
    stop,
    stubs,
    wait_for_line,
    wait_until,
)

from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.serving.health import TIMEOUT
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.serving.watch import cpu_ticks, model_instances, stopped
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton]
MODEL = "vanillanet_5"
IMG = 32
KILLS = 10
RELOAD_BOUND_S = 60.0  # from a kill to a correct answer again (measured: 2.5-3.5 s on 2 cores with a busy loop)


@pytest.fixture(scope="module")
def export_dir(vanillanet_5_export: Callable[[int], Path]) -> Path:
    return vanillanet_5_export(IMG)


@pytest.fixture
def busy_cpu() -> Iterator[None]:
    """Another process loading the CPU (a busy loop) for the test's duration."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        busy.kill()
        busy.wait(timeout=10)


class _Background:
    """A thread running ``_run`` from ``with`` until its end (``stopping`` set, the thread joined)."""

    def __init__(self) -> None:
        self.stopping, self.thread = threading.Event(), threading.Thread(target=self._run)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:  # the subclass itself
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(timeout=60)


class _Client(_Background):
    """One client thread sending valid requests back to back until stopped; every answer is checked against
    in-process ONNX Runtime (rel. L2 ≤ 1e-5). :meth:`wait_correct` waits for a correct answer to a request *sent*
    after a moment — after a kill, only a reloaded model can give one."""

    def __init__(self, port: int, onnx_file: Path) -> None:
        self.port = port
        self.x = np.random.default_rng(5).standard_normal((1, 3, IMG, IMG), dtype=np.float32)
        with OnnxRuntimeRunner(onnx_file) as runner:
            self.reference = runner.infer(self.x)
        super().__init__()
        self.answered = threading.Condition()
        self.last_correct_sent, self.correct, self.wrong, self.errors = -1.0, 0, 0, 0

    def _run(self) -> None:
        import tritonclient.http as httpclient

        client = httpclient.InferenceServerClient(f"127.0.0.1:{self.port}", network_timeout=30,
                                                  connection_timeout=30)
        while not self.stopping.is_set():
            tensor = httpclient.InferInput("input", [1, 3, IMG, IMG], "FP32")
            tensor.set_data_from_numpy(self.x)
            sent = time.monotonic()
            try:
                correct = bool(compare(client.infer(MODEL, [tensor]).as_numpy("logits"), self.reference))
            except Exception:  # refused before the start, 500 while the stub is dead, 400 while reloading
                self.errors += 1
                self.stopping.wait(0.01)
                continue
            with self.answered:
                self.correct, self.wrong = self.correct + correct, self.wrong + (not correct)
                if correct:
                    self.last_correct_sent = sent
                    self.answered.notify_all()

    def wait_correct(self, sent_after: float, timeout_s: float = RELOAD_BOUND_S) -> bool:
        with self.answered:
            return self.answered.wait_for(lambda: self.last_correct_sent > sent_after, timeout_s)


def _model_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{MODEL}/ready", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _kill_stubs(prefix: str) -> float:
    """SIGKILL every stub of the server (regions ``prefix``…); the moment after (no request sent from then on can be
    answered by them)."""
    victims = stubs(prefix)
    assert victims, "the model is ready but has no stub"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    return time.monotonic()


def _instance_stubs(prefix: str) -> set[int]:
    """The stubs of the model's instances (their command line names the instance, ``<model>_<group>_<index>``),
    not the auto-complete stub Triton runs first at each load (named after the model)."""
    found = set()
    for pid in stubs(prefix):
        try:
            if f"\0{MODEL}_".encode() in (Path("/proc") / str(pid) / "cmdline").read_bytes():
                found.add(pid)
        except OSError:
            continue
    return found


@contextmanager
def _frozen(pid: int) -> Iterator[None]:
    """``serve`` gets no CPU inside (SIGSTOP, SIGCONT on every exit): a machine too loaded to schedule it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _finish(process: subprocess.Popen[str], port: int, output: list[str]) -> str:
    """SIGTERM ``serve`` (exit 0), everything it printed; nothing of its server is left."""
    process.send_signal(signal.SIGTERM)
    output.append(rest_of_output(process, timeout_s=60))
    text = "".join(output)
    assert process.returncode == 0, text
    assert_nothing_left(port, process.pid)
    return text


def _kill_leftovers(port: int, cli_pid: int) -> None:
    """SIGKILL what a failed test may leave: a ``serve`` SIGKILLed by a failed wait leaves its tritonserver, which
    can hang in its own shutdown unloading a model whose stub is dead."""
    for pid in server_processes(port, cli_pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _deaths(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"The backend stub of {MODEL} ")]


def test_a_stub_killed_ten_times_in_a_row_under_load_is_reloaded_every_time(export_dir: Path,
                                                                           busy_cpu: None) -> None:
    """The first kill comes the moment the model is ready, before ``serve`` (frozen) has listed the stubs; each
    next one the moment a correct answer shows the previous reload done."""
    ports = list(vars(free_ports()).values())
    process, output, back_s = serve(export_dir, ports), [], []
    prefix = f"vanilladeploy-{process.pid}-"
    try:
        with _Client(ports[0], export_dir / f"{MODEL}.onnx") as client:
            assert wait_until(lambda: _model_ready(ports[0]), 120, interval_s=0.005), "the model was never ready"
            with _frozen(process.pid):
                killed_at = _kill_stubs(prefix)
            for kill in range(1, KILLS + 1):
                output.append(wait_for_line(process, "died", timeout_s=RELOAD_BOUND_S))
                assert client.wait_correct(killed_at), \
                    f"no correct answer within {RELOAD_BOUND_S:.0f} s of kill {kill}: {''.join(output)}"
                back_s.append(time.monotonic() - killed_at)
                if kill < KILLS:
                    killed_at = _kill_stubs(prefix)
            output.append(wait_for_line(process, "reloaded in", timeout_s=RELOAD_BOUND_S))
        text = _finish(process, ports[0], output)
    finally:
        stop(process)
        _kill_leftovers(ports[0], process.pid)
    assert client.wrong == 0, f"{client.wrong} wrong answers"
    deaths = _deaths(text)
    assert len(deaths) == KILLS, text  # each kill noticed once: none missed, none imagined
    print(f"\n[serve] stub killed {KILLS} times in a row under load (a busy loop, one client): {client.correct} "
          f"correct answers, 0 wrong, {client.errors} errors while reloading; correct again after "
          f"{', '.join(f'{s:.1f}' for s in back_s)} s; first: {deaths[0]}")


def test_a_stub_that_dies_as_its_reload_ends_is_reloaded_again(export_dir: Path) -> None:
    """The reload's new stub dies after Triton has loaded the model but before ``serve`` (frozen meanwhile) reads
    the load's answer and lists the stubs: it must reload again, not announce a model without a stub."""
    ports = list(vars(free_ports()).values())
    process, output = serve(export_dir, ports), []
    prefix = f"vanilladeploy-{process.pid}-"
    try:
        output.append(wait_for_line(process, READY, timeout_s=120))
        with _Client(ports[0], export_dir / f"{MODEL}.onnx") as client:
            assert client.wait_correct(-1.0)
            first = _instance_stubs(prefix)
            _kill_stubs(prefix)
            # a new instance's stub: Triton is loading the model again (serve waits for the load's answer), past
            # the auto-complete stub it starts first (killing that one would hang the load: see serving/watch.py)
            assert wait_until(lambda: _instance_stubs(prefix) - first, RELOAD_BOUND_S, interval_s=0.005)
            with _frozen(process.pid):
                assert wait_until(lambda: _model_ready(ports[0]), RELOAD_BOUND_S, interval_s=0.005)
                killed_at = _kill_stubs(prefix)
            assert client.wait_correct(killed_at), f"no correct answer after the reload: {''.join(output)}"
            output.append(wait_for_line(process, "reloaded in", timeout_s=RELOAD_BOUND_S))
        text = _finish(process, ports[0], output)
    finally:
        stop(process)
        _kill_leftovers(ports[0], process.pid)
    deaths = _deaths(text)
    assert len(deaths) == 2 and "(1 of 1 instances) died right after the model loaded" in deaths[1], text
    assert text.count("reloaded in") == 1, text  # the reload whose stub died is not announced as ready
    assert client.wrong == 0


STOPS = 3


class _Readiness(_Background):
    """Polls the model's readiness in a thread; :meth:`went_false_after` says whether it answered not-ready after a
    moment (a load balancer or readiness probe would have stopped sending traffic)."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port, self.not_ready = port, []

    def _run(self) -> None:
        while not self.stopping.wait(0.02):
            if not _model_ready(self.port):
                self.not_ready.append(time.monotonic())

    def went_false_after(self, moment: float) -> bool:
        return any(t > moment for t in self.not_ready)


def test_a_stopped_stub_is_found_by_a_health_inference_and_replaced_under_load(export_dir: Path) -> None:
    """SIGSTOP the model's stub (alive, never answering: every listing still holds it, Triton still says ready),
    three times under load: each time a health inference misses its deadline, readiness turns false, the stopped
    stub is killed, the model reloaded and correct answers come back; no answer is ever wrong."""
    ports = list(vars(free_ports()).values())
    process, output, back_s = serve(export_dir, ports, "--health-interval", "1"), [], []
    prefix = f"vanilladeploy-{process.pid}-"
    try:
        output.append(wait_for_line(process, READY, timeout_s=120))
        with _Client(ports[0], export_dir / f"{MODEL}.onnx") as client, _Readiness(ports[0]) as readiness:
            assert client.wait_correct(-1.0)
            for n in range(1, STOPS + 1):
                hung = _instance_stubs(prefix)
                assert hung, "the model is ready but has no instance stub"
                stopped_at = time.monotonic()
                for pid in hung:
                    os.kill(pid, signal.SIGSTOP)
                output.append(wait_for_line(process, "failed a health inference", timeout_s=RELOAD_BOUND_S))
                assert client.wait_correct(stopped_at), f"no correct answer after stop {n}: {''.join(output)}"
                back_s.append(time.monotonic() - stopped_at)
                assert readiness.went_false_after(stopped_at), f"readiness never turned false after stop {n}"
                assert not hung & set(stubs(prefix)), hung  # the stopped stubs are gone (zombies are not listed)
                output.append(wait_for_line(process, "reloaded in", timeout_s=RELOAD_BOUND_S))
        text = _finish(process, ports[0], output)
    finally:
        stop(process)
        _kill_leftovers(ports[0], process.pid)
    assert client.wrong == 0, f"{client.wrong} wrong answers"
    hangs = [line for line in text.splitlines() if "failed a health inference" in line]
    assert len(hangs) == STOPS and len(_deaths(text)) == STOPS, text  # each stop found once, no death imagined
    print(f"\n[serve] stub stopped (SIGSTOP) {STOPS} times under load: {client.correct} correct answers, 0 wrong, "
          f"{client.errors} errors meanwhile; correct again after {', '.join(f'{s:.1f}' for s in back_s)} s; "
          f"first: {hangs[0]}")


def test_a_health_inference_that_gets_no_answer_fails_at_its_deadline() -> None:
    """A listener that accepts and never answers (a server whose model waits forever): the probe returns what went
    wrong at its deadline instead of waiting."""
    import socket

    from vanilladeploy.serving.health import HealthProbe

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    config = {"max_batch_size": 4, "input": [{"name": "input", "data_type": "TYPE_FP32", "dims": [3, IMG, IMG]}]}
    probe = HealthProbe(f"127.0.0.1:{listener.getsockname()[1]}", MODEL, config, timeout_s=0.5)
    try:
        started = time.monotonic()
        outcome = probe.probe()
        waited = time.monotonic() - started
    finally:
        listener.close()
    assert outcome.kind == TIMEOUT and 0.4 <= waited < 5.0, (outcome, waited)
    assert probe.request.data.shape == (1, 3, IMG, IMG) and not probe.request.data.any()


def test_a_stuck_stub_is_told_from_a_busy_one_by_its_cpu_time_and_state() -> None:
    """What the watch reads before it kills a stub whose health inference timed out: a process that computes gains
    CPU ticks; one stopped by SIGSTOP gains none and is in state T."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        before = cpu_ticks([busy.pid])
        time.sleep(0.5)
        assert cpu_ticks([busy.pid]) > before and not stopped(busy.pid)
        os.kill(busy.pid, signal.SIGSTOP)
        time.sleep(0.1)
        before = cpu_ticks([busy.pid])
        time.sleep(0.5)
        assert cpu_ticks([busy.pid]) == before and stopped(busy.pid)
    finally:
        busy.kill()
        busy.wait(timeout=10)
    assert cpu_ticks([busy.pid]) == 0 and not stopped(busy.pid)  # gone: nothing to count, nothing stopped


def test_model_instances_counts_one_stub_per_instance() -> None:
    cpu = {"name": "m_0", "kind": "KIND_CPU", "count": 2, "gpus": []}
    gpu = {"name": "m_1", "kind": "KIND_GPU", "count": 2, "gpus": [0, 1, 2]}
    assert model_instances({"instance_group": [cpu]}) == 2
    assert model_instances({"instance_group": [cpu, gpu]}) == 8
    assert model_instances({"instance_group": [{"kind": "KIND_GPU", "count": 1}]}) == 1
