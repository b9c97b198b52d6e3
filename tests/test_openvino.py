"""OpenVINO as a runtime (exporters/runners.py OpenVinoRunner, vanilladeploy/export/openvino.py, eval --runtime):
fp32 equals ONNX Runtime for every variant, ``export --openvino`` writes a verified IR, and bf16 is refused on a CPU
without native bf16 — never silently run in fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import ALL_VARIANTS, SMALL_IMG, random_model, require
from typer.testing import CliRunner

from exporters.onnx_export import build_onnx
from exporters.runners import OnnxRuntimeRunner, OpenVinoRunner, PrecisionUnavailable, bf16_missing, onnx_runner
from models.vanillanet import VARIANTS
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.cli import app
from vanilladeploy.verify import random_inputs, verify_outputs

require("openvino", "OpenVINO is not installed (pip install 'vanilladeploy[openvino]')", module_level=True)


def _img(variant: str) -> int:
    return 64 if "ada_pool" in variant else SMALL_IMG  # ada_pool's stride-3 stem and adaptive pools need more


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_openvino_equals_onnxruntime_on_fp32(variant: str, tmp_path: Path) -> None:
    deploy = random_model(variant, deploy=True, seed=7)
    path = tmp_path / "m.onnx"
    onnx.save(build_onnx(deploy.state_dict(), VARIANTS[variant], act_num=3, img_size=_img(variant)), path)
    inputs = random_inputs(2, batch=3, img_size=_img(variant), seed=2)  # batch 3: the batch stays dynamic
    with OnnxRuntimeRunner(path) as ort, OpenVinoRunner(path) as ov:
        result = verify_outputs("openvino", [ov.infer(x) for x in inputs], [ort.infer(x) for x in inputs])
    assert result, result.summary()  # rel. L2 ≤ 1e-5


def test_bf16_is_refused_on_a_cpu_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vanilladeploy.machine.cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert "avx512_bf16" in bf16_missing() and "amx_bf16" in bf16_missing()
    deploy = random_model("vanillanet_5", deploy=True, seed=7)
    path = tmp_path / "m.onnx"
    onnx.save(build_onnx(deploy.state_dict(), VARIANTS["vanillanet_5"], act_num=3, img_size=SMALL_IMG), path)
    with pytest.raises(PrecisionUnavailable, match="avx512_bf16"):
        with onnx_runner(path, "openvino", precision="bf16"):
            pass


def test_bf16_flags_are_read_from_the_cpu() -> None:
    assert bf16_missing(frozenset({"amx_bf16"})) is None and bf16_missing(frozenset({"avx512_bf16"})) is None
    assert bf16_missing(frozenset({"avx512_vnni"})) is not None


def test_onnx_runtime_has_no_bf16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OpenVINO precision"):
        onnx_runner(tmp_path / "m.onnx", "onnxruntime", precision="bf16")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "out"
    result = CliRunner().invoke(app, ["export", "vanillanet_5", "--out", str(out), "--img-size", str(SMALL_IMG),
                                      "--openvino"])
    assert result.exit_code == 0, result.output
    assert "openvino vs training form" in result.output
    return out


def test_export_writes_a_verified_ir_with_fp32_weights(exported: Path) -> None:
    report = json.loads((exported / "vanillanet_5.report.json").read_text())
    assert report["verification"]["openvino"]["passed"] and report["verification"]["openvino"]["rel_l2"] <= 1e-5
    for name in ("vanillanet_5.xml", "vanillanet_5.bin"):
        assert report["artifacts"][name]["sha256"] == sha256_of(exported / name)
    params = sum(np.prod(t.dims) for t in onnx.load(exported / "vanillanet_5.onnx").graph.initializer)
    assert (exported / "vanillanet_5.bin").stat().st_size >= 4 * params * 0.99  # fp32, not fp16-compressed


def test_the_ir_runs_like_the_onnx(exported: Path) -> None:
    x = random_inputs(1, batch=2, img_size=SMALL_IMG, seed=3)[0]
    with OpenVinoRunner(exported / "vanillanet_5.xml") as ir, OnnxRuntimeRunner(exported / "vanillanet_5.onnx") as o:
        assert verify_outputs("ir", [ir.infer(x)], [o.infer(x)])


def test_eval_runtime_openvino_agrees_with_onnxruntime(exported: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):  # at 32 px the official transform takes the image as it is
        Image.fromarray(rng.integers(0, 256, (SMALL_IMG, SMALL_IMG, 3), dtype=np.uint8)).save(data / f"{i}.png")
    onnx_file = str(exported / "vanillanet_5.onnx")
    results = {}
    for runtime in ("onnxruntime", "openvino"):
        done = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", runtime, "--json"])
        assert done.exit_code == 0, done.output
        results[runtime] = json.loads(done.stdout)["artifacts"][0]
    assert results["openvino"]["kind"] == "onnx fp32 (openvino)" and results["onnxruntime"]["kind"] == "onnx fp32"
    assert results["openvino"]["images_per_s"] > 0
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(data / "big.png")
    refused = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", "openvino"])
    assert refused.exit_code == 2 and "neither resizes nor crops" in refused.output, refused.output
    (data / "big.png").unlink()
    import vanilladeploy as vd

    images = sorted(data.iterdir())
    with vd.load(onnx_file, runtime="openvino") as ov, vd.load(onnx_file) as ort:
        assert verify_outputs("openvino", [ov.predict(images)], [ort.predict(images)])
