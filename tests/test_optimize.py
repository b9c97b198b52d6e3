"""vanilladeploy/optimize.py and ``vanilladeploy optimize``: every candidate built, gated and timed in one run, the
fastest verified one chosen, its Triton repository served for real and answering like the winner in process."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import AVX2_ONLY, SMALL_IMG, assert_precision_stated, cpu_flags_of, missing_in_ci, spy_openvino_compiles
from typer.testing import CliRunner

from vanilladeploy.cli import app
from vanilladeploy.errors import VerificationError
from vanilladeploy.machine import bf16_missing
from vanilladeploy.optimize import Candidate, OptimizeOptions, _candidates, _choose, _gate, _time, _try_runner
from vanilladeploy.runtimes.runners import onnx_runner
from vanilladeploy.steps import silent

MIN_AGREEMENT = 100.0
"""Random weights make near-tied logits, so how often a quantized copy agrees depends on the CPU's int8 kernels
(ONNX Runtime int8: ~70 % on an AVX2-only EPYC, ~92 % with VNNI). Only exact copies reach 100 % on 112 held-out
images: fp32 always passes its gate and int8 (mean rel. L2 ≈ 5e-2) fails it on every CPU — one gate passed, one
failed, in the same run, wherever it runs."""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir()
        for i in range(32):  # at 32 px the official transform takes images as they are
            pixels = rng.integers(0, 256, (SMALL_IMG, SMALL_IMG, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


OPTIMIZE_COMPILES: list[tuple[object, object]] = []
FORCED_MS = {"onnxruntime fp32": 4.0, "onnxruntime fp16": 5.0, "openvino fp32": 6.0, "openvino bf16": 7.0}
"""What the timing run reports for each verified candidate (any other: SLOWEST_MS), whatever this machine's real
speeds: ONNX Runtime fp32 passes its gate on every CPU (it is the reference, rel. L2 0), so it must win."""
SLOWEST_MS = 9.0
REAL_MS: dict[str, list[float]] = {}
"""Each timed candidate's real latencies in the same run: its inference still runs on every call."""


def _forced(real: Callable[..., dict[str, Callable[[], float]]]) -> Callable[..., dict[str, Callable[[], float]]]:
    """``optimize._subjects`` that still run (and time) the real inference but report ``FORCED_MS``."""

    def subjects(runners: dict[str, object], x: np.ndarray) -> dict[str, Callable[[], float]]:
        def forced(name: str, subject: Callable[[], float]) -> Callable[[], float]:
            def run() -> float:
                REAL_MS.setdefault(name, []).append(subject())
                return FORCED_MS.get(name, SLOWEST_MS)
            return run

        return {name: forced(name, subject) for name, subject in real(runners, x).items()}

    return subjects


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, str]:
    import vanilladeploy.optimize as optimize_module

    out = tmp_path_factory.mktemp("opt") / "out"
    with pytest.MonkeyPatch.context() as patch:
        seen = spy_openvino_compiles(patch)
        patch.setattr(optimize_module, "_subjects", _forced(optimize_module._subjects))
        result = CliRunner().invoke(app, ["optimize", "vanillanet_5", "--calib", str(images), "--calib-count", "16",
                                          "--img-size", str(SMALL_IMG), "--out", str(out), "--iters", "5",
                                          "--warmup", "1", "--min-agreement", str(MIN_AGREEMENT)])
    OPTIMIZE_COMPILES.extend(seen)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_candidate_is_listed_gated_and_the_fastest_verified_chosen(optimized: tuple[Path, str]) -> None:
    out, output = optimized
    doc = json.loads((out / "optimize.json").read_text())
    cands = {(c["runtime"], c["precision"]): c for c in doc["candidates"]}
    assert set(cands) >= {("onnxruntime", p) for p in ("fp32", "fp16", "int8")} | {("openvino", "fp32")}
    assert cands[("onnxruntime", "fp32")]["verified"] and cands[("onnxruntime", "fp32")]["rel_l2"] == 0.0
    assert cands[("openvino", "fp32")]["verified"] and cands[("openvino", "fp32")]["rel_l2"] <= 1e-5
    int8 = cands[("onnxruntime", "int8")]
    assert int8["agreement"] < MIN_AGREEMENT, f"premise: int8 should not agree on every image ({int8})"
    assert not int8["verified"] and "--min-agreement" in int8["reason"]
    assert int8["median_ms"] is None  # a failed gate is not timed
    fp16 = cands[("onnxruntime", "fp16")]  # the run's own figures, judged by the gate as written out by hand
    assert (fp16["verified"], fp16["reason"]) == _half_verdict(fp16["agreement"], fp16["rel_l2"]), fp16
    medians = {f"{c['runtime']} {c['precision']}": c["median_ms"] for c in doc["candidates"] if c["verified"]}
    assert medians == {name: FORCED_MS.get(name, SLOWEST_MS) for name in medians}  # the times forced on them
    assert {name: len(ms) for name, ms in REAL_MS.items()} == {name: 6 for name in medians}  # 1 warm-up + 5 rounds
    assert all(ms > 0 for times in REAL_MS.values() for ms in times)  # ... of real inference, timed
    assert (doc["chosen"]["runtime"], doc["chosen"]["precision"]) == ("onnxruntime", "fp32")
    assert doc["chosen"]["median_ms"] == doc["chosen"]["p90_ms"] == FORCED_MS["onnxruntime fp32"]
    assert list(medians) == sorted(medians, key=lambda name: FORCED_MS.get(name, SLOWEST_MS))  # fastest first
    assert doc["candidates"][0] == doc["chosen"]  # best first
    for c in doc["candidates"]:
        if not c["verified"]:
            assert c["reason"], c  # every skipped or failed candidate says why
    assert "chosen:" in output and f"vanilladeploy serve {out / 'triton'}" in output
    assert sorted(p.name for p in (out / "triton").iterdir()) == ["vanillanet_5"]


class _Runner:
    """A runner that only records whether it is active: the timing run must activate every one."""

    active = False

    def activate(self) -> None:
        self.active = True

    def deactivate(self) -> None:
        self.active = False


def test_the_winner_is_the_verified_candidate_with_the_smallest_median_time(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    """Latencies injected per candidate: openvino fp32 has the smallest MEDIAN (not the smallest mean, not the
    smallest minimum, not first in the list), and a failed candidate is neither timed nor chosen."""
    samples_ms = {"onnxruntime fp32": [2.0, 2.0, 2.0, 2.0, 2.0],  # smallest mean
                  "onnxruntime fp16": [0.5, 0.5, 3.0, 3.0, 3.0],  # smallest minimum
                  "openvino fp32": [1.0, 90.0, 1.0, 90.0, 1.0]}  # smallest median: the winner
    runners = {name: _Runner() for name in samples_ms}

    def subjects(given: dict[str, _Runner], x: np.ndarray) -> dict[str, Callable[[], float]]:
        assert given is runners and x.shape == (2, 3, SMALL_IMG, SMALL_IMG)
        rounds = {name: iter(ms) for name, ms in samples_ms.items()}

        def subject(name: str) -> Callable[[], float]:
            def run() -> float:
                assert runners[name].active, f"{name} timed while inactive"
                return next(rounds[name])
            return run

        return {name: subject(name) for name in given}

    monkeypatch.setattr("vanilladeploy.optimize._subjects", subjects)
    failed = Candidate("onnxruntime", "int8", reason="top-1 agreement 50.0% < --min-agreement 99.0%")
    candidates = [*(Candidate(*name.split(), verified=True) for name in samples_ms), failed]
    _time(candidates, runners, OptimizeOptions(tmp_path, batch=2, warmup=0, iters=5), SMALL_IMG, silent)
    assert not any(r.active for r in runners.values())  # deactivated after the run
    assert [(c.name, c.median_ms, c.p90_ms) for c in candidates] == [
        ("openvino fp32", 1.0, 90.0), ("onnxruntime fp32", 2.0, 2.0), ("onnxruntime fp16", 3.0, 3.0),
        ("onnxruntime int8", None, None)]
    assert _choose(candidates).name == "openvino fp32"


def test_a_faster_candidate_that_failed_its_gate_is_never_chosen() -> None:
    fast_but_wrong = Candidate("onnxruntime", "int8", median_ms=0.1, reason="top-1 agreement 50.0% < …")
    slow = Candidate("onnxruntime", "fp32", verified=True, median_ms=5.0)
    assert _choose([fast_but_wrong, slow]) is slow
    with pytest.raises(VerificationError, match=r"no candidate passed its gate on this machine \(onnxruntime "
                                                r"int8: top-1 agreement 50\.0% < …\)"):
        _choose([fast_but_wrong])


L2_FP32 = "mean rel. L2 {} > 1e-05 against the fp32 reference"
L2_TRT = "mean rel. L2 {} > 1e-04 against the fp32 reference"
L2_HALF = "mean rel. L2 {} > 1e-02 against the fp32 reference"
AGREE = "top-1 agreement {}% < --min-agreement 99.0%"


def _half_verdict(agreement: float, rel_l2: float) -> tuple[bool, str | None]:
    """The fp16/bf16 verdict at ``MIN_AGREEMENT`` (100 %) written out by hand, not computed by ``_gate``: mean rel. L2
    above 1e-2 fails first, then top-1 agreement below 100 %; a run's own figures are judged by it."""
    if rel_l2 > 1e-2:
        return False, L2_HALF.format(f"{rel_l2:.2e}")
    if agreement < 100.0:
        return False, f"top-1 agreement {agreement}% < --min-agreement 100.0%"
    return True, None


@pytest.mark.parametrize(("runtime", "precision", "agreement", "rel_l2", "reason"), [
    ("onnxruntime", "fp32", 0.0, 1e-5, None),  # fp32: rel. L2 ≤ 1e-5 at the bound; agreement is not its gate
    ("onnxruntime", "fp32", 100.0, 1.01e-5, L2_FP32.format("1.01e-05")),
    ("openvino", "fp32", 100.0, 2e-5, L2_FP32.format("2.00e-05")),
    ("tensorrt", "fp32", 0.0, 1e-4, None),  # TensorRT fp32 (TF32 off, other kernels): rel. L2 ≤ 1e-4
    ("tensorrt", "fp32", 100.0, 1.01e-4, L2_TRT.format("1.01e-04")),
    ("onnxruntime", "fp16", 99.0, 1e-2, None),  # fp16/bf16: both bounds, each at its limit
    ("onnxruntime", "fp16", 100.0, 1.01e-2, L2_HALF.format("1.01e-02")),
    ("onnxruntime", "fp16", 98.99, 1e-3, AGREE.format("98.99")),
    ("openvino", "bf16", 99.0, 1e-2, None),
    ("openvino", "bf16", 100.0, 1.01e-2, L2_HALF.format("1.01e-02")),
    ("openvino", "bf16", 98.99, 0.0, AGREE.format("98.99")),
    ("onnxruntime", "int8", 99.0, 0.5, None),  # int8: agreement only, whatever its rel. L2
    ("openvino", "int8", 98.99, 0.0, AGREE.format("98.99")),
])
def test_each_precisions_gate_at_and_around_its_bounds(runtime: str, precision: str, agreement: float,
                                                       rel_l2: float, reason: str | None) -> None:
    c = Candidate(runtime, precision, agreement=agreement, rel_l2=rel_l2)
    assert _gate(c, 99.0) == (reason is None, reason)


def test_a_runtime_that_is_not_installed_is_a_skipped_candidate(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr("vanilladeploy.optimize.available", lambda module: module != "openvino")
    files = {p: tmp_path / f"m.{p}.onnx" for p in ("fp32", "fp16", "int8")}
    cands = {c.name: c for c in _candidates(("onnxruntime", "openvino", "tensorrt"), files)}
    for precision in ("fp32", "bf16", "int8"):
        assert "pip install 'vanilladeploy[openvino]'" in cands[f"openvino {precision}"].reason
    assert cands["onnxruntime fp32"].reason is None
    assert "TensorRT" in cands["tensorrt fp32"].reason


def test_openvino_candidates_state_their_precision_and_bf16_has_a_true_row(optimized: tuple[Path, str]) -> None:
    out, _ = optimized
    cands = {(c["runtime"], c["precision"]): c for c in json.loads((out / "optimize.json").read_text())["candidates"]}
    assert cands[("openvino", "fp32")]["inference_precision"] == "fp32"
    bf16, missing = cands[("openvino", "bf16")], bf16_missing()
    if missing:  # refused before compiling, with the flag this CPU lacks
        assert not bf16["verified"] and bf16["reason"] == missing and bf16["median_ms"] is None
    else:  # a CPU with native bf16: compiled in bf16, gated like fp16
        assert bf16["inference_precision"] == "bf16" and bf16["rel_l2"] is not None, bf16
        assert (bf16["verified"], bf16["reason"]) == _half_verdict(bf16["agreement"], bf16["rel_l2"]), bf16
    assert_precision_stated(OPTIMIZE_COMPILES, {"fp32", "bf16"})


def test_a_candidate_that_cannot_run_here_is_a_row_with_its_reason(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph")
    probe = np.zeros((1, 3, SMALL_IMG, SMALL_IMG), dtype=np.float32)
    c = Candidate("openvino", "fp32", str(broken))
    assert _try_runner(c, lambda: onnx_runner(broken, "openvino"), probe) is None
    assert c.reason.startswith("could not run on this machine: ") and len(c.reason.splitlines()) == 1, c.reason
    avx2 = cpu_flags_of(AVX2_ONLY)  # a real AVX2-only CPU: OpenVINO bf16 is refused with the flags it lacks
    monkeypatch.setattr("vanilladeploy.machine.cpu_flags", lambda: avx2)
    c = Candidate("openvino", "bf16", str(broken))
    assert _try_runner(c, lambda: onnx_runner(broken, "openvino", precision="bf16"), probe) is None
    assert "avx512_bf16" in c.reason and "None" not in c.reason, c.reason


def _infer_http(url: str, model: str, x: np.ndarray) -> np.ndarray:
    body = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
    return np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(len(x), -1)


def test_the_winner_and_openvino_are_served_for_real_and_answer_like_in_process(optimized: tuple[Path, str],
                                                                                tmp_path: Path) -> None:
    import shutil

    from vanilladeploy.errors import MissingDependencyError
    from vanilladeploy.serving.serve_bench import free_ports
    from vanilladeploy.serving.server import TritonServer, find_tritonserver
    from vanilladeploy.triton.config import RepoOptions
    from vanilladeploy.triton.repository import write_repository
    from vanilladeploy.verify import compare

    try:
        find_tritonserver()
    except MissingDependencyError as e:
        missing_in_ci(f"Triton server cannot start here: {e}")
    out, _ = optimized
    chosen = json.loads((out / "optimize.json").read_text())["chosen"]
    repo = tmp_path / "repo"
    shutil.copytree(out / "triton", repo)  # the winner's repository as optimize wrote it
    fp32 = out / "export" / "vanillanet_5.onnx"  # and the same ONNX run by OpenVINO inside Triton
    written = write_repository(fp32, repo, RepoOptions(name="v5_openvino", backend="python",
                                                        parameters={"runtime": "openvino"}))
    assert 'string_value: "openvino"' in written.config_text
    x = np.random.default_rng(5).standard_normal((2, 3, SMALL_IMG, SMALL_IMG), dtype=np.float32)
    runtime, precision = chosen["runtime"], "bf16" if chosen["precision"] == "bf16" else "fp32"
    with onnx_runner(Path(chosen["artifact"]), runtime, precision=precision) as winner:
        expected = winner.infer(x)
    with onnx_runner(fp32, "openvino") as openvino:
        expected_openvino = openvino.infer(x)
    with TritonServer(repo, free_ports(), start_timeout_s=180) as server:
        served, served_openvino = (_infer_http(server.http_url, m, x) for m in ("vanillanet_5", "v5_openvino"))
    assert compare(served, expected), "the winner served by Triton differs from the winner in process"
    assert compare(served_openvino, expected_openvino), "OpenVINO in Triton differs from OpenVINO in process"


@pytest.mark.gpu
def test_tensorrt_candidates_are_built_verified_and_timed(images: Path, tmp_path: Path) -> None:
    from vanilladeploy.runtimes.trt_plan import tensorrt_missing

    missing = tensorrt_missing()
    if missing:
        pytest.skip(f"needs TensorRT and a CUDA GPU: {missing}")
    result = CliRunner().invoke(app, ["optimize", "vanillanet_5", "--calib", str(images), "--calib-count", "16",
                                      "--img-size", str(SMALL_IMG), "--out", str(tmp_path / "o"), "--iters", "5",
                                      "--runtimes", "onnxruntime,tensorrt", "--min-agreement", "0"])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "o" / "optimize.json").read_text())
    trt = {c["precision"]: c for c in doc["candidates"] if c["runtime"] == "tensorrt"}
    assert trt["fp32"]["verified"] and trt["fp32"]["rel_l2"] <= 1e-4 and trt["fp32"]["median_ms"] > 0
    assert trt["fp32"]["artifact"].endswith(".fp32.engine") and Path(trt["fp32"]["artifact"]).is_file()
    assert Path(trt["fp32"]["artifact"] + ".json").is_file()  # the sidecar repo and eval read


def test_an_engines_sidecar_is_written_with_its_gates_verdict(tmp_path: Path) -> None:
    """The sidecar optimize writes beside an engine says whether it passed (no TensorRT runs here: this is the
    bookkeeping after the gate, on a sidecar as a build makes it)."""
    from vanilladeploy.optimize import ENGINE_SIDECARS, Candidate, record_verified

    engine = tmp_path / "vanillanet_5.fp16.engine"
    c = Candidate("tensorrt", "fp16", artifact=str(engine), verified=False, agreement=97.5, rel_l2=3e-3,
                  reason="top-1 agreement 97.5% < --min-agreement 99%")
    ENGINE_SIDECARS[c.name] = {"tensorrt_version": "11.4.0", "precision": "fp16"}
    record_verified(c)
    written = json.loads((tmp_path / "vanillanet_5.fp16.engine.json").read_text())
    assert written["verified"] is False and written["verification"]["agreement_top1"] == 97.5
    assert written["tensorrt_version"] == "11.4.0" and c.name not in ENGINE_SIDECARS
    record_verified(Candidate("onnxruntime", "fp32", artifact=str(tmp_path / "x.onnx")))  # not an engine: nothing
    assert not (tmp_path / "x.onnx.json").exists()
