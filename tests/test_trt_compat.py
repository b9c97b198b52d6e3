"""exporters/trt_compat.py: every variant's graph passes; each planted problem is caught, by name."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import ALL_VARIANTS
from onnx import TensorProto, helper, numpy_helper

from vanilladeploy.exporters.onnx_export import build_onnx
from vanilladeploy.exporters.trt_compat import BatchProfile, check_trt_compat
from vanilladeploy.models.vanillanet import create_vanillanet, get_variant


@pytest.mark.parametrize("variant", ALL_VARIANTS)
def test_every_variant_graph_is_compatible(variant: str) -> None:
    """Structure only (weights are uninitialized memory): the emitted graph of each variant, dynamic batch."""
    with torch.device("meta"):
        model = create_vanillanet(variant, deploy=True, num_classes=10)
    sd = model.to_empty(device="cpu").state_dict()
    graph = build_onnx(sd, get_variant(variant), act_num=3, img_size=224 if "ada" in variant else 64)
    result = check_trt_compat(graph)
    assert result, result.findings
    assert result.findings == [] and result.opset == 17 and result.nodes == len(graph.graph.node)


def _model(nodes: list[onnx.NodeProto], *, inputs: list[onnx.ValueInfoProto] | None = None,
           initializers: list[onnx.TensorProto] | None = None, opset: int = 17,
           output: str = "y") -> onnx.ModelProto:
    """A small graph around ``nodes``: input x (batch, 3, 8, 8) float32, output ``output``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])
    y = helper.make_tensor_value_info(output, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", inputs or [x], [y], initializers or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _errors(model: onnx.ModelProto, profile: BatchProfile | None = None) -> list[str]:
    return [str(f) for f in check_trt_compat(model, profile=profile).errors]


def _weight() -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")


def test_a_clean_small_graph_passes() -> None:
    model = _model([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                    helper.make_node("Relu", ["c"], ["y"], name="relu")], initializers=[_weight()])
    assert check_trt_compat(model) and _errors(model) == []


PLANTED = {
    "unsupported op": ([helper.make_node("Unique", ["x"], ["y"], name="u")], "Unique 'u'", "not supported"),
    "unknown op": ([helper.make_node("Frobnicate", ["x"], ["y"], name="f")], "Frobnicate 'f'", "not supported"),
    "custom domain": ([helper.make_node("MyOp", ["x"], ["y"], name="m", domain="com.example")], "MyOp 'm'",
                      "plugin"),
    "maxpool indices": ([helper.make_node("MaxPool", ["x"], ["y", "idx"], name="p", kernel_shape=[2, 2])],
                        "MaxPool 'p'", "Indices"),
    "maxpool dilations": ([helper.make_node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[2, 2],
                                            dilations=[2, 2])], "MaxPool 'p'", "dilations"),
    "1d pooling": ([helper.make_node("AveragePool", ["x"], ["y"], name="p", kernel_shape=[2])], "AveragePool 'p'",
                   "2D or 3D"),
    "resize antialias": ([helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", antialias=1)], "Resize 'r'",
                         "antialias"),
    "resize cubic": ([helper.make_node("Resize", ["x", "", "s"], ["y"], name="r", mode="cubic")], "Resize 'r'",
                     "mode='cubic'"),
    "non-constant axes": ([helper.make_node("Shape", ["x"], ["sh"], name="shape"),
                           helper.make_node("Slice", ["sh", "sh", "sh", "sh"], ["y"], name="sl")],
                          "Slice 'sl'", "must be an initializer or Constant"),
    "topk unsorted": ([helper.make_node("TopK", ["x", "k"], ["y", "i"], name="t", sorted=0)], "TopK 't'",
                      "sorted"),
}


@pytest.mark.parametrize("case", list(PLANTED))
def test_planted_node_problem_is_reported(case: str) -> None:
    nodes, where, words = PLANTED[case]
    inits = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "s"),
             numpy_helper.from_array(np.array([3], np.int64), "k")]
    errors = _errors(_model(nodes, initializers=inits))
    assert any(where in e and words in e for e in errors), errors


def test_double_data_is_a_warning_and_string_input_an_error() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, [1, 3, 8, 8])
    result = check_trt_compat(_model([helper.make_node("Relu", ["x"], ["y"], name="r")], inputs=[x]))
    assert any("DOUBLE" in str(f) for f in result.warnings)
    assert any("input 'x'" in str(f) and "DOUBLE" in str(f) for f in result.errors)  # not a valid network input
    s = helper.make_tensor_value_info("x", TensorProto.STRING, [1])
    assert any("STRING" in e for e in _errors(_model([helper.make_node("Identity", ["x"], ["y"])], inputs=[s])))


def test_unsupported_data_type_of_an_op() -> None:
    x = helper.make_tensor_value_info("x", TensorProto.INT32, [1, 3, 8, 8])
    errors = _errors(_model([helper.make_node("Sqrt", ["x"], ["y"], name="sq")], inputs=[x]))
    assert any("Sqrt 'sq'" in e and "INT32" in e for e in errors), errors


def test_input_shapes_against_the_profile() -> None:
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    unknown_rank = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    assert any("unknown rank" in e for e in _errors(_model(relu, inputs=[unknown_rank])))
    dynamic_hw = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", 8])
    assert any("dimension 2 (h) is dynamic" in e for e in _errors(_model(relu, inputs=[dynamic_hw])))
    fixed = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3, 8, 8])
    assert any("fixed batch of 4" in e for e in _errors(_model(relu, inputs=[fixed])))  # default profile 1/1/32
    assert _errors(_model(relu, inputs=[fixed]), BatchProfile.fixed(4)) == []


def test_opset_range() -> None:
    relu = [helper.make_node("Relu", ["x"], ["y"], name="r")]
    assert any("opset 8" in e for e in _errors(_model(relu, opset=8)))
    newer = check_trt_compat(_model(relu, opset=21))
    assert newer and any("opset 21" in str(f) for f in newer.warnings)


def test_batch_profile_parsing() -> None:
    assert BatchProfile.parse("8") == BatchProfile(1, 1, 8)
    assert BatchProfile.parse("2/4/16") == BatchProfile(2, 4, 16) and str(BatchProfile(2, 4, 16)) == "2/4/16"
    for bad in ("0", "4/2/8", "1/2", "a", "1/1/-3", ""):
        with pytest.raises(ValueError, match="batch profile"):
            BatchProfile.parse(bad)
