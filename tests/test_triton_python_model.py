"""vanilladeploy/triton/python_model.py (the Triton Python-backend ``model.py``) makes its ONNX Runtime session
and its OpenVINO compile with vanilladeploy's factories (:mod:`vanilladeploy.runtimes.runners`) where the stub's
Python has vanilladeploy, and with its own copies where it has not (a stock Triton container). These tests fail when
the copies and the factories disagree on anything a session or a compile is given: the ``SessionOptions`` (threads,
spinning, logging, execution mode, graph optimization), the OpenVINO config and the bf16 decision. That the real
server takes the factories' path is tested in tests/test_serve.py (its log)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import AMX_CPUINFO, AVX2_ONLY, AVX512_BF16_NO_AMX, CPUINFO, require
from onnx import TensorProto, helper

from vanilladeploy import machine
from vanilladeploy.runtimes import runners
from vanilladeploy.triton import python_model

SPINNING = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning")
ORT_PARAMETERS = [{}, {"ort_threads": "0", "ort_spinning": "0"}, {"ort_threads": "2", "ort_spinning": "0"},
                  {"ort_threads": "1", "ort_spinning": "1"}, {"ort_threads": "3"}]
OPENVINO_PARAMETERS = [{"precision": p, "openvino_hint": h, "openvino_threads": t} for p in ("", "fp32", "int8", "bf16")
                       for h in ("", *python_model.OPENVINO_HINTS) for t in ("", "0", "2")]


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-node graph (``input`` [N, 4] → ``logits``): sessions and compiles of it cost milliseconds."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "tiny", [x], [y]),
                              opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    onnx.save(model, path)
    return path


def _entry(options: Any, key: str) -> str | None:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime raises for a key that was never set
        return None


def ort_options(options: Any) -> dict[str, Any]:
    """Everything :func:`~vanilladeploy.runtimes.runners.ort_session_options` sets, read back."""
    return {"intra_op_num_threads": options.intra_op_num_threads, "inter_op_num_threads": options.inter_op_num_threads,
            "log_severity_level": options.log_severity_level, "execution_mode": options.execution_mode,
            "graph_optimization_level": options.graph_optimization_level,
            **{key: _entry(options, key) for key in SPINNING}}


@pytest.mark.parametrize("params", ORT_PARAMETERS)
def test_the_copy_sets_onnxruntime_as_the_factory_does(params: dict[str, str]) -> None:
    arguments = python_model.ort_arguments(params, {})
    assert ort_options(python_model.ort_session_options(**arguments)) == ort_options(
        runners.ort_session_options(**arguments))


@pytest.mark.parametrize("params", ORT_PARAMETERS)
def test_the_served_session_has_the_factorys_options_on_either_path(tiny_onnx: Path, params: dict[str, str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VANILLADEPLOY_ORT_THREADS", raising=False)
    arguments = python_model.ort_arguments(params, {})
    expected = ort_options(runners.ort_session(tiny_onnx, **arguments).get_session_options())
    by_factory = python_model.onnxruntime_session(str(tiny_onnx), params, {})
    by_copy = python_model.onnxruntime_session(str(tiny_onnx), params, {}, local=True)
    assert (by_factory.made_by, by_copy.made_by) == ("vanilladeploy.runtimes.runners.ort_session", "model.py")
    for session in (by_factory, by_copy):
        assert ort_options(session.session.get_session_options()) == expected


def test_the_ort_settings_mean_what_the_config_says() -> None:
    options = ort_options(runners.ort_session_options(**python_model.ort_arguments(
        {"ort_threads": "2", "ort_spinning": "0"}, {})))
    assert (options["intra_op_num_threads"], options["inter_op_num_threads"]) == (2, 1)
    assert (options[SPINNING[0]], options[SPINNING[1]]) == ("0", None)  # sequential: no inter-op pool to spin
    assert options["log_severity_level"] == 3  # errors only, as every other session
    default = ort_options(runners.ort_session_options(**python_model.ort_arguments({"ort_threads": "0"}, {})))
    assert default["intra_op_num_threads"] == 0 and default[SPINNING[0]] == "1"  # ORT's own: one per physical core
    assert python_model.ort_arguments({"ort_threads": "2"}, {"VANILLADEPLOY_ORT_THREADS": "1"})["threads"] == 1


@pytest.mark.parametrize("params", OPENVINO_PARAMETERS, ids=lambda p: "-".join(v or "unset" for v in p.values()))
def test_the_copy_configures_openvino_as_the_factory_does(params: dict[str, str]) -> None:
    expected = runners.openvino_compile_config(**python_model.openvino_arguments(params))
    assert python_model.openvino_config(params) == expected
    assert expected["INFERENCE_PRECISION_HINT"] == ("bf16" if params["precision"] == "bf16" else "f32")


@pytest.mark.parametrize("params", [{}, {"openvino_hint": "THROUGHPUT", "openvino_threads": "1"}])
def test_the_served_compile_has_the_factorys_config_on_either_path(tiny_onnx: Path, params: dict[str, str]) -> None:
    require("openvino", "OpenVINO is not installed (the test extra has it)")
    arguments = python_model.openvino_arguments(params)
    compiled = runners.compile_openvino(tiny_onnx, **arguments)
    by_factory = python_model.openvino_session(str(tiny_onnx), params)
    by_copy = python_model.openvino_session(str(tiny_onnx), params, local=True)
    assert (by_factory.made_by, by_copy.made_by) == ("vanilladeploy.runtimes.runners.compile_openvino", "model.py")
    keys = ("PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "NUM_STREAMS",
            "OPTIMAL_NUMBER_OF_INFER_REQUESTS")
    expected = {key: str(compiled.get_property(key)) for key in keys}
    for session in (by_factory, by_copy):
        assert session.config == runners.openvino_compile_config(**arguments)
        assert {key: str(session.compiled.get_property(key)) for key in keys} == expected
        x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
        assert np.array_equal(session("input", [x[:1], x[1:]])[1], np.maximum(x[1:], 0))


@pytest.mark.parametrize("name", [AVX2_ONLY, AVX512_BF16_NO_AMX, AMX_CPUINFO])
def test_the_copy_decides_bf16_as_vanilladeploy_machine_does(name: str) -> None:
    text = (CPUINFO / name).read_text(encoding="utf-8")
    flags = python_model.cpu_flags(text)
    assert flags == machine.parse_cpu_flags(text) and python_model.BF16_FLAGS == machine.BF16_FLAGS
    for capabilities in (["FP32", "INT8"], ["BF16", "FP32", "INT8"]):
        assert (python_model.bf16_missing(flags, capabilities) is None) == (
            machine.bf16_missing(flags, capabilities) is None), (name, capabilities)
    assert python_model.cpu_flags() == machine.cpu_flags()  # this machine's /proc/cpuinfo, read alike


def test_the_model_runs_where_vanilladeploy_is_not_installed(tiny_onnx: Path, tmp_path: Path) -> None:
    """A stock Triton container: numpy and onnxruntime, no vanilladeploy. The copied model.py imports, makes its
    session with its own copy and answers."""
    model_py = tmp_path / "model.py"
    shutil.copyfile(python_model.__file__, model_py)
    script = f"""
import importlib.util, sys
import numpy as np
sys.modules["vanilladeploy"] = None  # importing it (or anything in it) raises ImportError, as where it is missing
spec = importlib.util.spec_from_file_location("model", {str(model_py)!r})
model = importlib.util.module_from_spec(spec)
spec.loader.exec_module(model)
session = model.onnxruntime_session({str(tiny_onnx)!r}, {{"ort_threads": "1", "ort_spinning": "0"}}, {{}})
options = session.session.get_session_options()
y = session("input", [np.full((1, 4), -1.0, np.float32), np.ones((2, 4), np.float32)])
print(session.made_by, options.intra_op_num_threads, options.get_session_config_entry(
    "session.intra_op.allow_spinning"), [a.shape for a in y], float(y[1].sum()))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "model.py 1 0 [(1, 4), (2, 4)] 8.0"


@pytest.mark.parametrize(("given", "threads", "precision"), [
    ({"openvino_threads": "-3", "precision": "bf16"}, 0, "bf16"),  # a negative count: every core, in both
    ({"openvino_threads": "2", "precision": "int8"}, 2, "fp32"),  # int8 is the QDQ graph's, computed in f32
])
def test_serve_bench_reads_the_served_openvino_settings_as_model_py_does(given: dict[str, str], threads: int,
                                                                         precision: str) -> None:
    from vanilladeploy.serving.serve_bench import in_process_settings

    parameters = {"runtime": "openvino", **given}
    served = python_model.openvino_arguments(parameters)
    settings = in_process_settings(parameters)
    assert (settings["threads"], settings["precision"]) == (served["threads"] or 0, served["precision"]) == \
        (threads, precision)
