"""vanilladeploy/__init__.py and api.py: the public Python API — the README's snippet as written, the same
refusals as the CLI, and ``Model.predict`` applying the preprocessing the artifact carries."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vanilladeploy as vd
from vanilladeploy.errors import UsageError
from vanilladeploy.verify import compare

ROOT = Path(__file__).resolve().parents[1]
IMG = 64


def _readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> vd.ExportResult:
    return vd.export("vanillanet_5", out_dir=tmp_path_factory.mktemp("api") / "out", img_size=IMG)


def test_the_readme_snippet_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_readme_snippet(), "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines == ["True build/vn5/vanillanet_5.onnx", "(1, 1000)"], lines
    assert (tmp_path / "build" / "vn5" / "vanillanet_5.report.json").is_file()


def test_import_is_light() -> None:
    code = "import sys, vanilladeploy; print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_export_is_a_plain_function_in_every_import_order() -> None:
    import vanilladeploy.pipeline.export  # noqa: F401  (a module of that name must not shadow the function)
    from vanilladeploy.api import export

    assert vd.export is export and inspect.isfunction(vd.export)


def test_result_is_truthy_and_names_its_files(exported: vd.ExportResult) -> None:
    assert exported and exported.verified and exported.error is None
    assert exported.onnx.name == "vanillanet_5.onnx" and exported.onnx.is_file()
    assert exported.report["verification"]["onnxruntime"]["passed"] is True


@pytest.mark.parametrize(("options", "names"), [
    ({"precision": "int8"}, "--calib"),
    ({"precision": "int9"}, "--precision"),
    ({"opset": 3}, "--opset"),
    ({"arch": "vanillanet_99"}, "--arch"),
    ({"trt": True, "workspace": "lots"}, "--workspace"),
    ({"calib": "x", "precision": "fp32"}, "--calib"),
    ({"no_such_option": 1}, "no_such_option"),
    ({"workspace": "4GiB"}, "--workspace has no effect without --trt"),  # was silently ignored by the API
    ({"trt_profile": "1/1/8"}, "--trt-profile has no effect without --trt"),
    ({"max_fallback": 2}, "--max-fallback has no effect without --precision int8"),
    ({"holdout_count": 8}, "--holdout-count has no effect without --precision int8"),
])
def test_the_api_refuses_what_the_cli_refuses(options: dict, names: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=re.escape(names)):
        vd.export("vanillanet_5", out_dir=tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_predict_applies_the_recorded_preprocessing(exported: vd.ExportResult, tmp_path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    image.save(tmp_path / "x.png")
    with vd.load(exported.onnx) as model:
        assert model.preprocess.img_size == IMG and model.kind.startswith("onnx")
        by_image, by_path = model.predict([image]), model.predict([tmp_path / "x.png"])
        by_array = model.predict(model.preprocess(image)[None])
    assert by_image.shape == (1, 1000)
    np.testing.assert_array_equal(by_image, by_path)
    np.testing.assert_array_equal(by_image, by_array)


def test_every_artifact_kind_predicts_the_same(exported: vd.ExportResult) -> None:
    x = np.random.default_rng(1).standard_normal((2, 3, IMG, IMG)).astype(np.float32)
    pth = exported.artifacts["vanillanet_5_deploy.pth"]
    with vd.load(exported.onnx) as onnx_model, vd.load(pth) as torch_model:
        assert compare(torch_model.predict(x), onnx_model.predict(x))  # rel. L2 ≤ 1e-5


def test_the_old_profile_keyword_still_works_with_a_warning() -> None:
    from vanilladeploy.pipeline.export import export_options

    with pytest.warns(DeprecationWarning, match="trt_profile"):
        opts = export_options(trt=True, batch="2/4/8")
    assert (opts.trt.profile.min, opts.trt.profile.opt, opts.trt.profile.max) == (2, 4, 8)
    assert export_options(trt=True, trt_profile="16").trt.profile.max == 16
