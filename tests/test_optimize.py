"""vanilladeploy/optimize.py and ``vanilladeploy optimize``: every candidate built, gated and timed in one run, the
fastest verified one chosen, its Triton repository served for real and answering like the winner in process."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL_IMG, missing_in_ci
from typer.testing import CliRunner

from exporters.runners import onnx_runner
from vanilladeploy.cli import app
from vanilladeploy.optimize import _candidates

MIN_AGREEMENT = 90.0
"""Random weights: fp16 agrees with fp32 on ~98 % of the held-out images, int8 on ~70 %: one gate passed, one
failed, in the same run."""


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(0)
    for c in range(4):
        (root / f"c{c}").mkdir()
        for i in range(16):  # at 32 px the official transform takes images as they are
            pixels = rng.integers(0, 256, (SMALL_IMG, SMALL_IMG, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def optimized(tmp_path_factory: pytest.TempPathFactory, images: Path) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("opt") / "out"
    result = CliRunner().invoke(app, ["optimize", "vanillanet_5", "--calib", str(images), "--calib-count", "16",
                                      "--img-size", str(SMALL_IMG), "--out", str(out), "--iters", "5",
                                      "--warmup", "1", "--min-agreement", str(MIN_AGREEMENT)])
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
    assert not int8["verified"] and "--min-agreement" in int8["reason"] and int8["agreement"] < MIN_AGREEMENT
    assert int8["median_ms"] is None  # a failed gate is not timed
    fp16 = cands[("onnxruntime", "fp16")]
    assert fp16["verified"] == (fp16["agreement"] >= MIN_AGREEMENT and fp16["rel_l2"] <= 1e-2)
    verified = [c for c in doc["candidates"] if c["verified"]]
    assert all(c["median_ms"] > 0 and c["p90_ms"] >= c["median_ms"] for c in verified)
    fastest = min(verified, key=lambda c: c["median_ms"])
    assert (doc["chosen"]["runtime"], doc["chosen"]["precision"]) == (fastest["runtime"], fastest["precision"])
    assert doc["candidates"][0] == doc["chosen"]  # best first
    for c in doc["candidates"]:
        if not c["verified"]:
            assert c["reason"], c  # every skipped or failed candidate says why
    assert "chosen:" in output and f"vanilladeploy serve {out / 'triton'}" in output
    assert sorted(p.name for p in (out / "triton").iterdir()) == ["vanillanet_5"]


def test_a_runtime_that_is_not_installed_is_a_skipped_candidate(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setattr("vanilladeploy.optimize.available", lambda module: module != "openvino")
    files = {p: tmp_path / f"m.{p}.onnx" for p in ("fp32", "fp16", "int8")}
    cands = {c.name: c for c in _candidates(("onnxruntime", "openvino", "tensorrt"), files)}
    for precision in ("fp32", "bf16", "int8"):
        assert "pip install 'vanilladeploy[openvino]'" in cands[f"openvino {precision}"].reason
    assert cands["onnxruntime fp32"].reason is None
    assert "TensorRT" in cands["tensorrt fp32"].reason


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

    from exporters.triton_repo import RepoOptions
    from vanilladeploy.errors import MissingDependencyError
    from vanilladeploy.serving.bench import free_ports
    from vanilladeploy.serving.repository import write_repository
    from vanilladeploy.serving.server import TritonServer, find_tritonserver
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
    from exporters.trt_plan import tensorrt_missing

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
