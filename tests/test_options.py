"""Every option of every command, fed a wrong type, an out-of-range value and an empty string: exit 2, ONE
``error:`` line that names the option, no traceback, nothing written — refused before any work starts.

Table-driven: a new option joins by adding a row to ``CASES``.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from vanilladeploy.cli import app

runner = CliRunner()

EXPORT = ("export", "vanillanet_5")
TRT = ("export", "vanillanet_5", "--trt")
INT8 = ("export", "vanillanet_5", "--precision", "int8", "--calib", "{images}")
REPO = ("repo", "{onnx}", "--out", "{tmp}/repo")
SERVE = ("serve", "{onnx}")
SERVE_BENCH = ("serve-bench", "{onnx}")
BENCH = ("bench", "--models", "vanillanet_5", "--runtimes", "onnxruntime", "--cache-dir", "{tmp}/cache")
EVAL = ("eval", "{onnx}", "--data", "{images}")
OPTIMIZE = ("optimize", "vanillanet_5", "--calib", "{images}")
DEPLOY = ("deploy", "{onnx}", "--out", "{tmp}/out")

CASES: list[tuple[tuple[str, ...], str, list[str]]] = [
    # (command and the arguments it needs, option, bad values: wrong type, out of range, empty …)
    (EXPORT, "--img-size", ["abc", "0", ""]),
    (EXPORT, "--opset", ["x", "99", "16", ""]),
    (EXPORT, "--static-batch", ["x", "0", ""]),
    (EXPORT, "--precision", ["int9", "FP32", ""]),
    (EXPORT, "--arch", ["vanillanet_99", ""]),
    (EXPORT, "--key", ["model"]),  # no effect for a variant name (no file)
    (EXPORT, "--out", ["", "{file}"]),
    (EXPORT, "--workspace", ["4GiB"]),  # no effect without --trt
    (EXPORT, "--trt-profile", ["1/1/8"]),
    (EXPORT, "--opt-level", ["3"]),
    (EXPORT, "--timing-cache", ["{tmp}/cache.bin"]),
    (EXPORT, "--calib", ["{images}"]),  # no effect without --precision int8
    (EXPORT, "--calib-count", ["8"]),
    (EXPORT, "--calib-method", ["entropy"]),
    (EXPORT, "--min-agreement", ["90"]),
    (EXPORT, "--fallback", ["auto"]),
    (EXPORT, "--max-rel-l2", ["0.1"]),
    (INT8, "--max-rel-l2", ["x", "0", "-1", ""]),
    (EXPORT, "--max-fallback", ["2"]),
    (INT8, "--fallback", ["", ","]),
    (INT8, "--max-fallback", ["x", "0", ""]),
    (TRT, "--workspace", ["lots", "-1", ""]),
    (TRT, "--trt-profile", ["a/b/c", "0", "8/4/2", ""]),
    (TRT, "--opt-level", ["x", "9", ""]),
    (TRT, "--timing-cache", ["", "{tmp}"]),
    (INT8, "--calib", ["", "{tmp}/missing", "{file}"]),
    (INT8, "--calib-count", ["x", "0", ""]),
    (INT8, "--calib-method", ["kl", ""]),
    (INT8, "--min-agreement", ["x", "101", "-1", ""]),
    (("inspect", "vanillanet_5"), "--arch", ["vanillanet_99", ""]),
    (("inspect", "vanillanet_5"), "--key", ["model"]),
    (("check", "{onnx}"), "--trt-profile", ["a/b/c", "0", ""]),
    (BENCH, "--batch", ["x", "0", ""]),
    (BENCH, "--models", ["resnet9000", "", ","]),
    (("bench", "--models", "vanillanet_5", "--cache-dir", "{tmp}/cache"), "--runtimes", ["tpu", "", ","]),
    (BENCH, "--device", ["tpu", ""]),
    (BENCH, "--precision", ["int9", ""]),
    (BENCH, "--img-size", ["x", "0", ""]),
    (BENCH, "--warmup", ["x", "-1", ""]),
    (BENCH, "--iters", ["x", "0", ""]),
    (BENCH, "--budget-s", ["x", "0", "-1", ""]),
    (BENCH, "--threads", ["x", "0", ""]),
    (BENCH, "--json-out", ["", "{tmp}"]),
    (BENCH, "--csv", ["", "{tmp}"]),
    (BENCH, "--plot", ["", "{tmp}"]),
    (("bench", "--models", "vanillanet_5", "--runtimes", "onnxruntime"), "--cache-dir", ["", "{file}"]),
    (REPO, "--out", ["", "{file}"]),
    (REPO, "--name", ["", ".", "..", "../x", "a/b", ".hidden"]),
    (REPO, "--backend", ["tflite", ""]),
    (REPO, "--max-batch", ["x", "-1", ""]),
    (REPO, "--instances", ["x", "0", ""]),
    (REPO, "--kind", ["tpu", ""]),
    (REPO, "--max-queue-delay-us", ["x", "-5", ""]),
    (REPO, "--labels", ["", "{tmp}/missing.txt", "{tmp}"]),
    (SERVE, "--http-port", ["x", "0", "70000", ""]),
    (SERVE, "--grpc-port", ["x", "0", "70000", ""]),
    (SERVE, "--metrics-port", ["x", "0", "70000", ""]),
    (SERVE, "--max-batch", ["x", "-1", ""]),
    (SERVE, "--instances", ["x", "0", ""]),
    (SERVE, "--max-queue-delay-us", ["x", "-1", ""]),
    (SERVE, "--labels", ["", "{tmp}/missing.txt"]),
    (SERVE_BENCH, "--concurrency", ["x", "0", "", "1,,-4"]),
    (SERVE_BENCH, "--requests", ["x", "0", ""]),
    (SERVE_BENCH, "--batch", ["x", "0", ""]),
    (SERVE_BENCH, "--protocol", ["udp", ""]),
    (SERVE_BENCH, "--json-out", ["", "{tmp}"]),
    (("eval", "{onnx}"), "--data", ["", "{tmp}/missing", "{file}"]),
    (EVAL, "--limit", ["x", "0", ""]),
    (EVAL, "--batch", ["x", "0", ""]),
    (EVAL, "--arch", ["vanillanet_99", ""]),
    (EVAL, "--json-out", ["", "{tmp}"]),
    (EVAL, "--runtime", ["tvm", ""]),
    (EVAL, "--precision", ["fp8", "", "bf16"]),  # bf16 is OpenVINO's: refused with the default onnxruntime
    (EVAL, "--min-agreement", ["x", "101", "-1", ""]),
    (EVAL, "--max-rel-l2", ["x", "0", "-1", ""]),
    (REPO, "--runtime", ["tvm", ""]),
    (REPO + ("--backend", "onnxruntime"), "--runtime", ["openvino"]),  # runs inside the python backend only
    (SERVE, "--runtime", ["tvm", ""]),
    (SERVE, "--health-interval", ["x", "-1", ""]),
    (SERVE, "--health-timeout", ["x", "0", "-1", ""]),
    (SERVE_BENCH, "--runtime", ["tvm", ""]),
    (SERVE_BENCH, "--baseline", ["", "{tmp}/missing.onnx", "{tmp}"]),
    (("optimize", "vanillanet_5"), "--calib", ["", "{tmp}/missing", "{file}"]),
    (OPTIMIZE, "--out", ["", "{file}"]),
    (OPTIMIZE, "--batch", ["x", "0", ""]),
    (OPTIMIZE, "--min-agreement", ["x", "101", "-1", ""]),
    (OPTIMIZE, "--runtimes", ["tvm", "", ","]),
    (OPTIMIZE, "--calib-count", ["x", "0", ""]),
    (OPTIMIZE, "--img-size", ["x", "0", ""]),
    (OPTIMIZE, "--arch", ["vanillanet_99", ""]),
    (OPTIMIZE, "--key", ["model"]),
    (OPTIMIZE, "--warmup", ["x", "-1", ""]),
    (OPTIMIZE, "--iters", ["x", "0", ""]),
    (EXPORT, "--input", ["int16", ""]),
    (REPO, "--openvino-hint", ["fast", ""]),  # also: a hint without --runtime openvino
    (REPO + ("--backend", "python", "--runtime", "openvino"), "--openvino-hint", ["fast"]),
    (SERVE, "--openvino-hint", ["THROUGHPUT"]),  # without --runtime openvino
    (SERVE_BENCH, "--openvino-hint", ["THROUGHPUT"]),
    (SERVE_BENCH, "--url", ["", "localhost", "ftp://h:1", "h:port"]),
    (SERVE_BENCH, "--model", ["x"]),  # without --url
    (EVAL, "--url", ["", "localhost"]),
    (EVAL, "--model", ["x"]),  # without --url
    (EVAL, "--protocol", ["udp", "grpc"]),  # without --url
    (("deploy", "{onnx}"), "--out", ["", "{file}"]),
    (DEPLOY + ("--kserve",), "--storage-uri", ["", "ftp://x"]),
    (DEPLOY + ("--k8s",), "--pvc", ["", "Bad_Name"]),
    (DEPLOY, "--name", ["", "Bad_Name"]),
    (DEPLOY, "--triton-version", ["x", ""]),
    (DEPLOY, "--kserve-mode", ["Serverless", ""]),
    (DEPLOY, "--backend", ["tflite", ""]),
    (DEPLOY, "--labels", ["", "{tmp}/missing.txt"]),
    (DEPLOY, "--replicas", ["x", "3:1", ""]),
    (DEPLOY, "--target-rps", ["x", "0", ""]),
    (DEPLOY, "--p99-ms", ["x", "0", ""]),
    (DEPLOY, "--bench", ["", "{tmp}/missing.json"]),
    (EXPORT, "--part", ["backbone", ""]),  # detection checkpoints only
    (EXPORT, "--det-config", ["{file}"]),
    (EXPORT, "--verify-sizes", ["800x1344"]),
    (EXPORT, "--trt-shapes", ["320x320/800x1344/1344x1344"]),  # no effect without --trt
    (("inspect", "vanillanet_5"), "--det-config", ["{file}"]),
    (("check", "{onnx}"), "--trt-shapes", ["a", "800x1344", "0x0/1x1/2x2", ""]),
    (BENCH, "--task", ["segmentation", ""]),
    (("bench", "--task", "detection", "--cache-dir", "{tmp}/cache"), "--det-size", ["x", "0x0", "", "1x2,3x4"]),
    (("bench", "--task", "detection"), "--width-divisor", ["x", "0", ""]),
]


FLAGS_WITHOUT_EFFECT: list[tuple[tuple[str, ...], str]] = [
    # (command and the arguments that make the flag meaningless, flag)
    (BENCH, "--channels-last"),  # no torch backend
    (BENCH + ("--device", "cpu"), "--include-copies"),  # on the CPU there is nothing to copy
    (("bench", "--models", "resnet18", "--runtimes", "onnxruntime", "--cache-dir", "{tmp}/cache"), "--train-form"),
]


@pytest.mark.parametrize(("cmd", "flag"), FLAGS_WITHOUT_EFFECT, ids=[f for _, f in FLAGS_WITHOUT_EFFECT])
def test_a_flag_without_effect_is_refused_in_one_line(cmd: tuple[str, ...], flag: str, places: dict[str, str],
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    args = [a.format(**places, tmp=str(tmp_path)) for a in cmd] + [flag]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), (args, result.output)
    assert flag in lines[0] and not os.listdir(tmp_path), lines[0]


def test_every_option_of_every_command_is_in_the_table() -> None:
    """New options join the sweep: an option that takes a value and has no row here fails this test."""
    import typer.main

    covered = {(cmd[0], option) for cmd, option, _ in CASES}
    missing = [(name, param.opts[0]) for name, command in typer.main.get_command(app).commands.items()
               for param in command.params
               if param.param_type_name == "option" and not param.is_flag and (name, param.opts[0]) not in covered]
    assert not missing, f"options without a row in CASES: {missing}"


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths the cases refer to: an ONNX file, a plain file, an image folder (they live outside the checked dir)."""
    root = tmp_path_factory.mktemp("fixtures")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3, 8, 8])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, root / "relu.onnx")
    (root / "file.txt").write_text("not a directory\n")
    (root / "images").mkdir()
    return {"onnx": str(root / "relu.onnx"), "file": str(root / "file.txt"), "images": str(root / "images")}


def _case_ids() -> list[tuple[tuple[str, ...], str, str]]:
    return [(cmd, option, value) for cmd, option, values in CASES for value in values]


@pytest.mark.parametrize(("cmd", "option", "value"), _case_ids(),
                         ids=[f"{c[0]}{' '.join(a for a in c[2:] if a.startswith('--'))} {o}={v!r}"
                              for c, o, v in _case_ids()])
def test_bad_option_is_refused_in_one_line(cmd: tuple[str, ...], option: str, value: str, places: dict[str, str],
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fill = {**places, "tmp": str(work)}
    args = [a.format(**fill) for a in cmd] + [option, value.format(**fill)]
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, (args, result.output)
    assert len(lines) == 1 and lines[0].startswith("error:"), (args, result.output)
    assert "Traceback" not in result.output
    assert option in lines[0], lines[0]  # the line names the option it refuses
    assert not os.listdir(work), "a refused command wrote files"


def test_int8_without_calibration_images_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "vanillanet_5", "--precision", "int8"])
    assert result.exit_code == 2 and "--calib" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not os.listdir(tmp_path)


def test_serve_without_the_serve_extra_exits_3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                places: dict[str, str]) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["serve", places["onnx"]])
    assert result.exit_code == 3 and "pip install 'vanilladeploy[serve]'" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not os.listdir(tmp_path)


@pytest.mark.parametrize("gate", [["--min-agreement", "90"], ["--max-rel-l2", "1e-3"]])
def test_an_eval_gate_with_nothing_to_compare_is_refused(places: dict[str, str], gate: list[str]) -> None:
    """One artifact and no --url: the gate would pass having compared nothing."""
    result = runner.invoke(app, ["eval", places["onnx"], "--data", places["images"], *gate])
    assert result.exit_code == 2 and f"{gate[0]} holds the artifacts after the first" in result.output, \
        result.output
