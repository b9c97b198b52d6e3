"""A bounded soak of `vanilladeploy serve` (a REAL Triton server on loopback): 8 concurrent clients — 6 over HTTP, 2
over gRPC — for a fixed time, half of their requests malformed (wrong shape, wrong dtype, a batch above
--max-batch, a garbage binary body). Every valid answer is checked against in-process ONNX Runtime; every malformed
request must be refused with a 4xx (HTTP) or INVALID_ARGUMENT (gRPC); the server's memory after the soak must stay
within a stated bound of its memory after the warm-up; the stop is clean. The counts and RSS go to the CI log.

An unparsable JSON body is not in the mix: Triton 2.51's HTTP front-end answers it with 500 (pinned in
tests/test_serve.py); the garbage here is a binary body whose header length runs past its end, which is a 400.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from triton_helpers import (
    require_triton,
    serve,
    server_processes,
    shm_of,
    stubs,
    tritonservers,
    wait_for_line,
    wait_until,
)

from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.serving.serve_bench import free_ports
from vanilladeploy.verify import compare

require_triton()
pytestmark = [pytest.mark.triton, pytest.mark.slow]
MODEL, IMG, MAX_BATCH = "vanillanet_5", 32, 8
WARMUP_S, SOAK_S = 10.0, 60.0  # the load's budget: 70 s (≤ 90 s with the start and the stop)
RSS_GROWTH = 0.15  # after the soak, server + stub RSS at most 15 % above its value after the warm-up ...
RSS_SLACK_MB = 32.0  # ... or 32 MB, whichever is larger (allocator arenas settle in steps)
MALFORMED = ("wrong shape", "wrong dtype", "batch above --max-batch", "garbage body")


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def _json_body(x: np.ndarray, shape: list[int] | None = None, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": shape or list(x.shape), "datatype": datatype,
                                   "data": x.ravel().tolist()}]}).encode()


class Soak:
    def __init__(self, http_port: int, grpc_port: int, onnx_file: Path) -> None:
        self.http_port, self.grpc_port = http_port, grpc_port
        rng = np.random.default_rng(0)
        self.inputs = [rng.standard_normal((1, 3, IMG, IMG), dtype=np.float32) for _ in range(8)]
        with OnnxRuntimeRunner(onnx_file) as runner:
            self.references = [runner.infer(x) for x in self.inputs]
        self.counts: Counter[str] = Counter()
        self.first: dict[str, str] = {}  # the first message of each unexpected outcome
        self.lock, self.stopping = threading.Lock(), threading.Event()

    def note(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] += 1
            self.first.setdefault(outcome, detail[:300])

    def _check(self, i: int, y: np.ndarray) -> None:
        self.note("valid: correct" if compare(y, self.references[i]) else "valid: WRONG")

    def http_client(self, seed: int) -> None:
        rng = np.random.default_rng(100 + seed)
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        while not self.stopping.is_set():
            i, kind = int(rng.integers(len(self.inputs))), str(rng.choice(["valid", *MALFORMED], p=[.5] + [.125] * 4))
            x, headers = self.inputs[i], {"Content-Type": "application/json"}
            body = {"valid": lambda: _json_body(x),
                    "wrong shape": lambda: _json_body(x[:, :, :-1], [1, 3, IMG - 1, IMG]),
                    "wrong dtype": lambda: _json_body(x, datatype="FP64"),
                    "batch above --max-batch": lambda: _json_body(np.repeat(x, MAX_BATCH + 1, axis=0)),
                    "garbage body": lambda: rng.bytes(512)}[kind]()
            if kind == "garbage body":
                headers["Inference-Header-Content-Length"] = str(len(body) + 64)
            try:
                connection.request("POST", f"/v2/models/{MODEL}/infer", body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (OSError, http.client.HTTPException) as e:
                self.note("client error", f"{kind}: {type(e).__name__}: {e}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
                continue
            if kind == "valid":
                if response.status != 200:
                    self.note("valid: refused", f"{response.status} {answer[:200]!r}")
                else:
                    data = json.loads(answer)["outputs"][0]["data"]
                    self._check(i, np.asarray(data, np.float32).reshape(1, -1))
            elif 400 <= response.status < 500:
                self.note("malformed: refused")
            else:
                self.note("malformed: NOT refused", f"{kind}: {response.status} {answer[:200]!r}")

    def grpc_client(self, seed: int) -> None:
        import tritonclient.grpc as grpcclient
        from tritonclient.utils import InferenceServerException

        rng = np.random.default_rng(200 + seed)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc_port}")
        kinds = ["valid", "wrong shape", "wrong dtype", "batch above --max-batch"]
        while not self.stopping.is_set():
            i, kind = int(rng.integers(len(self.inputs))), str(rng.choice(kinds, p=[.5, 1 / 6, 1 / 6, 1 / 6]))
            x = {"valid": self.inputs[i], "wrong shape": self.inputs[i][:, :, :-1],
                 "wrong dtype": self.inputs[i].astype(np.float64),
                 "batch above --max-batch": np.repeat(self.inputs[i], MAX_BATCH + 1, axis=0)}[kind]
            tensor = grpcclient.InferInput("input", list(x.shape), "FP64" if x.dtype == np.float64 else "FP32")
            tensor.set_data_from_numpy(x)
            try:
                y = client.infer(MODEL, [tensor], client_timeout=30).as_numpy("logits")
            except InferenceServerException as e:
                invalid = e.status() == "StatusCode.INVALID_ARGUMENT"
                if kind == "valid":
                    self.note("valid: refused", str(e))
                else:
                    self.note("malformed: refused" if invalid else "malformed: NOT refused", f"{kind}: {e}")
                continue
            if kind == "valid":
                self._check(i, y)
            else:
                self.note("malformed: NOT refused", f"{kind}: answered")
        client.close()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "v5"
    export_checkpoint(MODEL, ExportOptions(out_dir=out, img_size=IMG))
    return out


def test_a_bounded_soak_with_malformed_requests(export_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ports = list(vars(free_ports()).values())
    process = serve(export_dir, ports, max_batch=MAX_BATCH)
    soak = Soak(ports[0], ports[1], export_dir / f"{MODEL}.onnx")
    threads = [threading.Thread(target=soak.http_client, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=soak.grpc_client, args=(n,)) for n in range(2)]
    try:
        wait_for_line(process, "stops the server", timeout_s=120)
        pids = tritonservers(ports[0]) + stubs(f"vanilladeploy-{process.pid}-")
        assert len(pids) == 2, pids
        start = time.monotonic()
        for thread in threads:
            thread.start()
        time.sleep(WARMUP_S)
        warm, warm_counts = _rss_mb(pids), sum(soak.counts.values())
        time.sleep(SOAK_S)
        after = _rss_mb(pids)
        soak.stopping.set()
        for thread in threads:
            thread.join(timeout=60)
        elapsed = time.monotonic() - start
        process.send_signal(signal.SIGTERM)
        stopped = process.wait(timeout=60)
    finally:
        soak.stopping.set()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    counts = dict(soak.counts)
    bound = warm + max(RSS_GROWTH * warm, RSS_SLACK_MB)
    with capsys.disabled():
        print(f"\n[soak] {elapsed:.0f} s, 8 clients (6 HTTP, 2 gRPC), VanillaNet-5 at {IMG} px: "
              f"{counts.get('valid: correct', 0)} valid answers correct, {counts.get('valid: WRONG', 0)} wrong, "
              f"{counts.get('malformed: refused', 0)} malformed refused, {counts.get('client error', 0)} client "
              f"errors; {warm_counts} requests in the warm-up; server + stub RSS {warm:.0f} MB after the warm-up, "
              f"{after:.0f} MB after the soak (bound {bound:.0f} MB)")
    assert not any(k in counts for k in ("valid: WRONG", "valid: refused", "malformed: NOT refused",
                                         "client error")), (counts, soak.first)
    assert all(not thread.is_alive() for thread in threads), "a client hung"
    assert counts.get("valid: correct", 0) > 100 and counts.get("malformed: refused", 0) > 100, counts
    assert after <= bound, f"server + stub RSS grew from {warm:.0f} MB to {after:.0f} MB (bound {bound:.0f} MB)"
    assert stopped == 0
    assert wait_until(lambda: not server_processes(ports[0], process.pid), 15) and not shm_of(process.pid)

