"""OpenVINO as a runtime (vanilladeploy/runtimes/runners.py OpenVinoRunner, vanilladeploy/pipeline/openvino.py,
eval --runtime):
fp32 equals ONNX Runtime for every variant, ``export --openvino`` writes a verified IR, and bf16 is refused on a CPU
without native bf16 — never silently run in fp32."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    ALL_VARIANTS,
    AVX2_ONLY,
    SMALL_IMG,
    assert_precision_stated,
    cpu_flags_of,
    random_model,
    require,
    require_bf16,
    spy_openvino_compiles,
)
from typer.testing import CliRunner

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.cli import app
from vanilladeploy.exporters.onnx_export import build_onnx
from vanilladeploy.models.vanillanet import VARIANTS
from vanilladeploy.runtimes.runners import (
    OnnxRuntimeRunner,
    OpenVinoRunner,
    PrecisionUnavailable,
    bf16_missing,
    compile_openvino,
    onnx_runner,
    openvino_precision_name,
    precision_mismatch,
)
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


def _v5_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "m.onnx"
    deploy = random_model("vanillanet_5", deploy=True, seed=7)
    onnx.save(build_onnx(deploy.state_dict(), VARIANTS["vanillanet_5"], act_num=3, img_size=SMALL_IMG), path)
    return path


def test_bf16_is_refused_on_a_cpu_without_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    avx2 = cpu_flags_of(AVX2_ONLY)  # a real AVX2-only EPYC's /proc/cpuinfo
    monkeypatch.setattr("vanilladeploy.machine.cpu_flags", lambda: avx2)
    assert "avx512_bf16" in bf16_missing() and "amx_bf16" in bf16_missing()
    with pytest.raises(PrecisionUnavailable, match="avx512_bf16"):
        with onnx_runner(_v5_onnx(tmp_path), "openvino", precision="bf16"):
            pass


def test_the_compiled_precision_is_read_from_openvinos_own_type() -> None:
    import openvino as ov

    assert str(ov.Type.bf16) == "<Type: 'bfloat16'>"  # why str() must never be compared with "bf16"
    assert [openvino_precision_name(t) for t in (ov.Type.f32, ov.Type.bf16, ov.Type.f16)] == ["fp32", "bf16", "fp16"]
    assert precision_mismatch("bf16", ov.Type.bf16) is None and precision_mismatch("fp32", ov.Type.f32) is None
    assert precision_mismatch("fp32", ov.Type.bf16) == "OpenVINO compiled the model in bf16, not the fp32 asked for"
    assert precision_mismatch("bf16", ov.Type.f32) == "OpenVINO compiled the model in fp32, not the bf16 asked for"


def test_openvinos_default_is_not_trusted(tmp_path: Path) -> None:
    """Without a hint OpenVINO picks its own inference precision (bf16 on a CPU with native bf16); ours always
    states it, so fp32 is fp32 on every CPU."""
    import openvino as ov

    path = _v5_onnx(tmp_path)
    default = openvino_precision_name(ov.Core().compile_model(str(path), "CPU").get_property(
        "INFERENCE_PRECISION_HINT"))
    assert default == ("fp32" if bf16_missing() else "bf16")  # what a bare compile does on this CPU
    compiled = compile_openvino(path, "fp32")
    assert openvino_precision_name(compiled.get_property("INFERENCE_PRECISION_HINT")) == "fp32"


def test_the_runner_states_fp32_and_the_compiled_model_reports_it(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seen = spy_openvino_compiles(monkeypatch)
    with OpenVinoRunner(_v5_onnx(tmp_path)) as runner:
        assert runner.compiled_precision == "fp32"
    assert_precision_stated(seen, {"fp32"})


def test_bf16_compiles_in_bf16_where_the_cpu_has_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_bf16()
    seen = spy_openvino_compiles(monkeypatch)
    path = _v5_onnx(tmp_path)
    x = random_inputs(1, batch=2, img_size=SMALL_IMG, seed=3)[0]
    with OpenVinoRunner(path, precision="bf16") as bf16, OnnxRuntimeRunner(path) as ort:
        assert bf16.compiled_precision == "bf16"
        result = verify_outputs("bf16", [bf16.infer(x)], [ort.infer(x)], tolerance=1e-2)
    assert result, result.summary()
    assert_precision_stated(seen, {"bf16"})


def test_the_peak_kernels_state_their_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from vanilladeploy.benchmarks.peaks import _openvino_conv1x1

    seen = spy_openvino_compiles(monkeypatch)
    _openvino_conv1x1("fp32", 64, 64, 64, 1).prepare()
    _openvino_conv1x1("int8", 64, 64, 64, 1).prepare()
    assert_precision_stated(seen, {"fp32"})


def test_the_bf16_peak_kernel_computes_in_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    require_bf16()
    from vanilladeploy.benchmarks.peaks import _openvino_conv1x1

    seen = spy_openvino_compiles(monkeypatch)
    _openvino_conv1x1("bf16", 64, 64, 64, 1).prepare()
    assert_precision_stated(seen, {"bf16"})


def test_onnx_runtime_has_no_bf16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OpenVINO precision"):
        onnx_runner(tmp_path / "m.onnx", "onnxruntime", precision="bf16")


EXPORT_COMPILES: list[tuple[object, object]] = []


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov") / "out"
    with pytest.MonkeyPatch.context() as patch:
        seen = spy_openvino_compiles(patch)
        result = CliRunner().invoke(app, ["export", "vanillanet_5", "--out", str(out), "--img-size",
                                          str(SMALL_IMG), "--openvino"])
    EXPORT_COMPILES.extend(seen)
    assert result.exit_code == 0, result.output
    assert "openvino vs training form" in result.output
    return out


def test_export_openvino_verifies_in_the_precision_it_reports(exported: Path) -> None:
    report = json.loads((exported / "vanillanet_5.report.json").read_text())
    assert report["openvino"]["precision"] == "fp32"  # read from the compiled model, not written as a constant
    assert_precision_stated(EXPORT_COMPILES, {"fp32"})


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
    results, floors = {}, {}
    for runtime in ("onnxruntime", "openvino"):
        start = time.perf_counter()
        done = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", runtime, "--json"])
        floors[runtime] = 4 / (time.perf_counter() - start)  # the inference is part of the whole command
        assert done.exit_code == 0, done.output
        assert json.loads(done.stdout)["images"] == 4
        results[runtime] = json.loads(done.stdout)["artifacts"][0]
    assert results["openvino"]["kind"] == "onnx fp32 (openvino)" and results["onnxruntime"]["kind"] == "onnx fp32"
    rates = {runtime: row["images_per_s"] for runtime, row in results.items()}
    assert all(rates[r] >= floors[r] for r in rates), (rates, floors)  # images / inference s ≥ images / command s
    assert 1 / 50 < rates["openvino"] / rates["onnxruntime"] < 50, rates  # measured 0.17-0.32 (a cold first batch)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(data / "big.png")
    refused = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", "openvino"])
    assert refused.exit_code == 2 and "neither resizes nor crops" in refused.output, refused.output
    (data / "big.png").unlink()
    import vanilladeploy as vd

    images = sorted(data.iterdir())
    with vd.load(onnx_file, runtime="openvino") as ov, vd.load(onnx_file) as ort:
        assert verify_outputs("openvino", [ov.predict(images)], [ort.predict(images)])


def _png_folder(root: Path, count: int = 4) -> Path:
    from PIL import Image

    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):  # at 32 px the official transform takes the image as it is
        Image.fromarray(rng.integers(0, 256, (SMALL_IMG, SMALL_IMG, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def test_eval_states_the_openvino_precision_and_refuses_bf16_elsewhere(
        exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, onnx_file = _png_folder(tmp_path / "images"), str(exported / "vanillanet_5.onnx")
    seen = spy_openvino_compiles(monkeypatch)
    done = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", "openvino",
                                    "--precision", "fp32", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["artifacts"][0]["kind"] == "onnx fp32 (openvino)"
    assert_precision_stated(seen, {"fp32"})
    refused = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--precision", "bf16"])
    assert refused.exit_code == 2 and "--precision bf16" in refused.output, refused.output
    avx2 = cpu_flags_of(AVX2_ONLY)
    monkeypatch.setattr("vanilladeploy.machine.cpu_flags", lambda: avx2)
    refused = CliRunner().invoke(app, ["eval", onnx_file, "--data", str(data), "--runtime", "openvino",
                                       "--precision", "bf16"])
    assert refused.exit_code == 2 and "avx512_bf16" in refused.output, refused.output
    assert len(refused.output.strip().splitlines()) <= 3, refused.output  # one error line, no traceback


def test_eval_runs_a_bf16_deployment_against_the_fp32_model(exported: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    require_bf16()
    data = _png_folder(tmp_path / "images", count=8)
    seen = spy_openvino_compiles(monkeypatch)
    done = CliRunner().invoke(app, ["eval", str(exported / "vanillanet_5_deploy.pth"),
                                    str(exported / "vanillanet_5.onnx"),
                                    "--data", str(data), "--runtime", "openvino", "--precision", "bf16", "--json"])
    assert done.exit_code == 0, done.output
    reference, bf16 = json.loads(done.stdout)["artifacts"]
    assert bf16["kind"] == "onnx fp32 (openvino bf16)" and 0 < bf16["mean_rel_l2"] <= 1e-2, bf16
    assert_precision_stated(seen, {"bf16"})
