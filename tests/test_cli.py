"""vanilladeploy/cli/ through the real CLI (typer's CliRunner): export, inspect, and every bad input.

Bad input → exit 2 with one ``error:`` line, no traceback, nothing written.
"""

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from conftest import SMALL_IMG, official_checkpoint, random_model
from typer.testing import CliRunner, Result

from vanilladeploy.checkpoint import load_checkpoint, sha256_of
from vanilladeploy.cli import app

runner = CliRunner()


def run(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def export(source: Path | str, out: Path, *extra: str):
    return run("export", source, "--out", out, "--img-size", SMALL_IMG, *extra)


def test_export_official_checkpoint(official_ckpt_path: Path, tmp_path: Path) -> None:
    before = sha256_of(official_ckpt_path)
    result = export(official_ckpt_path, tmp_path / "out")
    assert result.exit_code == 0, result.output
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == [".vanilladeploy", "vanillanet_5.onnx", "vanillanet_5.report.json", "vanillanet_5_deploy.pth"]
    report = json.loads((tmp_path / "out" / "vanillanet_5.report.json").read_text())
    assert report["source"]["sha256"] == before == sha256_of(official_ckpt_path)  # input untouched
    assert report["source"]["container_key"] == "model_ema"
    assert report["architecture"]["variant"] == "vanillanet_5" and report["lambda"]["exact"]
    assert report["lambda"]["epoch"] == 299 and not report["lambda"]["assumed"]
    for backend in ("torch", "onnxruntime"):
        assert report["verification"][backend]["passed"] and report["verification"][backend]["rel_l2"] <= 1e-5
    assert report["onnx"]["contract"]["nodes"] == 18 and report["onnx"]["contract"]["passed"]
    assert len(report["reparameterization"]["certificates"]) == 5
    model = onnx.load(tmp_path / "out" / "vanillanet_5.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["source_sha256"] == before and meta["variant"] == "vanillanet_5" and meta["lambda"] == "1.0"
    assert report["artifacts"]["vanillanet_5.onnx"]["sha256"] == sha256_of(tmp_path / "out" / "vanillanet_5.onnx")
    assert "Next:" in result.output


def test_deploy_artifact_reloads_and_reexports(official_ckpt_path: Path, tmp_path: Path) -> None:
    assert export(official_ckpt_path, tmp_path / "a").exit_code == 0
    deployed = tmp_path / "a" / "vanillanet_5_deploy.pth"
    ckpt = load_checkpoint(deployed)
    assert ckpt.form == "deploy" and ckpt.container_key == "model"
    result = export(deployed, tmp_path / "b")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "b" / "vanillanet_5.report.json").read_text())
    assert "skipped" in report["reparameterization"] and report["verification"]["onnxruntime"]["passed"]


def test_export_variant_name_uses_labelled_random_weights(tmp_path: Path) -> None:
    result = export("vanillanet_5", tmp_path / "r", "--static-batch", "1", "--no-simplify")
    assert result.exit_code == 0, result.output
    assert "untrained" in result.output
    report = json.loads((tmp_path / "r" / "vanillanet_5.report.json").read_text())
    assert report["source"]["untrained"] and report["verification"]["inputs"]["batch"] == 1
    assert report["onnx"]["simplified"] is False


def _write(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _sd() -> dict:
    return random_model("vanillanet_5", seed=9).state_dict()


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _evil(directory: Path) -> Path:
    """A pickle whose loading would run ``touch pwned`` (the test asserts the marker never appears)."""

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {directory / 'pwned'}",))

    return _bytes(directory / "evil.pth", pickle.dumps({"model": Payload()}, protocol=2))


BAD_INPUTS = {
    "missing": (lambda p: p / "nope.pth", "no such file"),
    "directory": (lambda p: p, "is a directory"),
    "empty": (lambda p: _bytes(p / "e.pth", b""), "is empty"),
    "random bytes": (lambda p: _bytes(p / "r.pth", bytes(range(7, 256)) * 16), "not a checkpoint"),
    "text file": (lambda p: _bytes(p / "t.pth", b"hello, world"), "not a checkpoint"),
    "unsafe pickle": (_evil, "bare pickle"),
    "resnet": (lambda p: _write(p / "rn.pth", {"conv1.weight": torch.zeros(64, 3, 7, 7),
                                               "bn1.weight": torch.ones(64)}), "not a VanillaNet state dict"),
    "missing key": (lambda p: _write(p / "mk.pth", {k: v for k, v in _sd().items() if k != "cls2.0.bias"}),
                    "missing key 'cls2.0.bias'"),
    "shape mismatch": (lambda p: _write(p / "sm.pth", {**_sd(), "stages.0.act.bn.weight": torch.ones(5)}),
                       "'stages.0.act.bn.weight' has shape"),
    "unknown widths": (lambda p: _write(p / "uw.pth", {**_sd(), "stem1.0.weight": torch.zeros(96, 3, 4, 4)}),
                       "match no VanillaNet variant"),
    "nan": (lambda p: _write(p / "nan.pth", {**_sd(), "stages.1.conv1.0.weight":
                                             torch.full((2048, 2048, 1, 1), float("nan"))}), "NaN or Inf"),
    "negative var": (lambda p: _write(p / "nv.pth", {**_sd(), "stem1.1.running_var": -torch.ones(512)}),
                     "negative"),
    "integer weights": (lambda p: _write(p / "iw.pth", {**_sd(), "cls2.0.bias": torch.zeros(10, dtype=torch.int64)}),
                        "dtype torch.int64"),
    "not a dict": (lambda p: _write(p / "l.pth", [torch.zeros(1)]), "not a dict of tensors"),
    "lambda below one": (lambda p: _write(p / "early.pth", official_checkpoint(_sd(), variant="vanillanet_5",
                                                                              epoch=60)),
                         "trained with λ = 0.6 .*--allow-inexact"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_cleanly(tmp_path: Path, case: str) -> None:
    make, message = BAD_INPUTS[case]
    source = make(tmp_path)
    out = tmp_path / "out"
    result = export(source, out)
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert not out.exists()
    assert not (tmp_path / "pwned").exists()


def test_truncated_checkpoint_at_several_offsets(official_ckpt_path: Path, tmp_path: Path) -> None:
    data = official_ckpt_path.read_bytes()
    for fraction in (0.01, 0.3, 0.7, 0.999):
        cut = tmp_path / f"cut{fraction}.pth"
        cut.write_bytes(data[: int(len(data) * fraction)])
        result = export(cut, tmp_path / "out")
        assert result.exit_code == 2 and "truncated or corrupted" in result.output, (fraction, result.output)
        assert not (tmp_path / "out").exists()


def test_usage_errors(official_ckpt_path: Path, tmp_path: Path) -> None:
    typo = export("vanillanet6", tmp_path / "o")
    assert typo.exit_code == 2 and "Did you mean vanillanet_6" in typo.output
    small = run("export", official_ckpt_path, "--out", tmp_path / "o", "--img-size", "16")
    assert small.exit_code == 2 and "pass --img-size 32 or more" in small.output
    key = export(official_ckpt_path, tmp_path / "o", "--key", "weights")
    assert key.exit_code == 2 and "--key 'weights'" in key.output
    arch = export(official_ckpt_path, tmp_path / "o", "--arch", "vanillanet_9")
    assert arch.exit_code == 2 and "which is vanillanet_5" in arch.output
    opset = export(official_ckpt_path, tmp_path / "o", "--opset", "13")
    assert opset.exit_code == 2 and "--opset 13" in opset.output
    assert not (tmp_path / "o").exists()


def test_allow_inexact_reports_error_against_trained_network(tmp_path: Path) -> None:
    ckpt = _write(tmp_path / "early.pth", official_checkpoint(_sd(), variant="vanillanet_5", epoch=95))
    result = export(ckpt, tmp_path / "out", "--allow-inexact")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "vanillanet_5.report.json").read_text())
    assert report["lambda"]["value"] == pytest.approx(0.95) and not report["lambda"]["exact"]
    inexact = report["verification"]["against_trained_lambda"]
    assert inexact["rel_l2"] > 1e-3 and inexact["lambda"] == pytest.approx(0.95)
    assert report["verification"]["torch"]["passed"]  # the fusion itself is still exact at λ = 1


def test_failure_keeps_previous_artifacts(official_ckpt_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert export(official_ckpt_path, out).exit_code == 0
    hashes = {p.name: sha256_of(p) for p in out.iterdir()}
    nan_ckpt = _write(tmp_path / "nan.pth", {**_sd(), "cls2.0.weight": torch.full((10, 10, 1, 1), float("inf"))})
    assert export(nan_ckpt, out).exit_code == 2
    assert {p.name: sha256_of(p) for p in out.iterdir()} == hashes  # no temp files, nothing replaced


def test_verbose_shows_traceback(tmp_path: Path) -> None:
    result = export(tmp_path / "nope.pth", tmp_path / "o", "--verbose")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_inspect(official_ckpt_path: Path) -> None:
    result = run("inspect", official_ckpt_path, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["architecture"]["variant"] == "vanillanet_5" and info["lambda"]["epoch"] == 299
    assert info["source"]["parameters"] == sum(p.numel() for p in random_model("vanillanet_5").parameters())
    table = run("inspect", official_ckpt_path)
    assert table.exit_code == 0 and "vanillanet_5" in table.output


def test_help_documents_exit_codes() -> None:
    for args in (["--help"], ["export", "--help"]):
        result = run(*args)
        assert result.exit_code == 0 and "Exit codes" in result.output and "130" in result.output


def test_out_path_that_is_a_file_is_refused(official_ckpt_path: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = export(official_ckpt_path, blocker)
    assert result.exit_code == 2 and "is a file, not a directory" in result.output
    assert blocker.read_text() == "x"


def test_out_directory_with_foreign_files_is_refused(official_ckpt_path: Path, tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    result = export(official_ckpt_path, tmp_path)
    assert result.exit_code == 2 and "did not write" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_both_ends_of_the_supported_opset_range_export_and_verify(tmp_path: Path) -> None:
    """--opset is checked against max_supported_opset(); the newest one must also get through onnxsim, the graph
    contract and ONNX Runtime, not only the one-node probe."""
    from vanilladeploy.runtimes.runners import max_supported_opset

    for opset in (17, max_supported_opset()):
        result = export("vanillanet_5", tmp_path / f"o{opset}", "--opset", str(opset))
        assert result.exit_code == 0, (opset, result.output)
        assert onnx.load(tmp_path / f"o{opset}" / "vanillanet_5.onnx").opset_import[0].version == opset


def test_python_dash_m_is_the_command() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "vanilladeploy", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert all(command in done.stdout for command in ("export", "inspect", "bench", "serve-bench", "eval", "doctor"))


@pytest.mark.parametrize(("args", "expected", "rewritten"), [
    (["bench", "--json", "r.json"], ["bench", "--json-out", "r.json"], True),
    (["bench", "--json", "results"], ["bench", "--json-out", "results"], True),  # bench takes no argument
    (["bench", "--json=r.json"], ["bench", "--json-out", "r.json"], True),
    (["bench", "--json", "--iters", "3"], ["bench", "--json", "--iters", "3"], False),  # the flag
    (["eval", "a.onnx", "--data", "d", "--json", "e.json"], ["eval", "a.onnx", "--data", "d", "--json-out", "e.json"],
     True),
    (["eval", "--json", "a.onnx", "--data", "d"], ["eval", "--json", "a.onnx", "--data", "d"], False),  # an artifact
    (["serve-bench", "x", "--json", "s.json"], ["serve-bench", "x", "--json-out", "s.json"], True),
    (["inspect", "x.pth", "--json"], ["inspect", "x.pth", "--json"], False),
])
def test_the_old_json_path_spelling_becomes_json_out(args: list[str], expected: list[str], rewritten: bool) -> None:
    from vanilladeploy.cli import legacy_json_args

    assert legacy_json_args(args) == (expected, rewritten)


@pytest.mark.parametrize("args, expected, lines", [
    (["bench", "--backends", "torch,onnxruntime"], ["bench", "--runtimes", "torch,onnxruntime"],
     ["deprecated: bench --backends is now --runtimes."]),
    (["export", "vanillanet_5", "--trt", "--batch=1/2/8"], ["export", "vanillanet_5", "--trt", "--trt-profile=1/2/8"],
     ["deprecated: export --batch is now --trt-profile."]),
    (["check", "m.onnx", "--batch", "4"], ["check", "m.onnx", "--trt-profile", "4"],
     ["deprecated: check --batch is now --trt-profile."]),
    (["eval", "a.onnx", "--batch", "8"], ["eval", "a.onnx", "--batch", "8"], []),  # images per inference: kept
    (["serve-bench", "x", "--batch", "2"], ["serve-bench", "x", "--batch", "2"], []),
])
def test_renamed_options_keep_working_with_one_line(args: list[str], expected: list[str], lines: list[str]) -> None:
    from vanilladeploy.cli import renamed_args

    assert renamed_args(args) == (expected, lines)


def test_the_old_spelling_reaches_the_command(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "vanilladeploy", "check", str(tmp_path / "none.onnx"), "--batch",
                             "8/4/2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "deprecated: check --batch is now --trt-profile." in result.stderr
    assert "--trt-profile" in result.stderr.splitlines()[-1]  # the profile was parsed (and refused: 8 > 2)


FORCED_BUG = """
import sys
import vanilladeploy.source

def broken(*args, **kwargs):
    raise RuntimeError("forced by a test")

vanilladeploy.source.inspect_source = broken  # what `inspect` calls: a bug inside the command
sys.argv = ["vanilladeploy", "inspect", "vanillanet_5", *sys.argv[1:]]
from vanilladeploy.cli import main
main()
"""


@pytest.mark.parametrize("verbose", [False, True])
def test_an_internal_error_exits_4_with_one_line_and_the_hint(verbose: bool) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", FORCED_BUG, *(["--verbose"] if verbose else [])],
                          capture_output=True, text=True, timeout=120, env=os.environ | {"COLUMNS": "200"})
    assert done.returncode == 4 and done.stdout == "", done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    last = ("internal error: RuntimeError: forced by a test. Re-run with --verbose for the traceback and report it.")
    assert lines[-1] == last, done.stderr
    if verbose:  # the traceback first, naming where it was raised
        assert len(lines) > 3 and "Traceback" in done.stderr and "broken" in done.stderr
    else:
        assert len(lines) == 1, done.stderr
