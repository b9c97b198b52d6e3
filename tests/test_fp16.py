"""exporters/fp16_graph.py: the fp16-typed ONNX copy keeps float32 I/O, stores float16 weights, keeps the reductions in
float32, and matches the fp32 graph within the fp16 tolerance (1e-2 rel L2) in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import SMALL_IMG, random_model
from onnx import TensorProto, helper

from vanilladeploy.exporters.fp16_graph import convert_to_fp16
from vanilladeploy.exporters.onnx_export import build_onnx
from vanilladeploy.exporters.trt_compat import check_trt_compat
from vanilladeploy.models.vanillanet import get_variant
from vanilladeploy.verify import TOLERANCE_FP16, random_inputs, top1_agreement, verify_outputs


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


@pytest.mark.parametrize("variant,img", [("vanillanet_5", SMALL_IMG), ("vanillanet_13_x1_5_ada_pool", 224)])
def test_fp16_copy_matches_fp32(variant: str, img: int) -> None:
    deploy = random_model(variant, deploy=True, seed=3, num_classes=100)
    fp32 = build_onnx(deploy.state_dict(), get_variant(variant), act_num=3, img_size=img)
    fp16 = convert_to_fp16(fp32)
    graph = fp16.graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    weights = {t.name: t.data_type for t in graph.initializer}
    assert weights["stem.0.weight"] == weights["cls.2.weight"] == TensorProto.FLOAT16
    assert all(t in (TensorProto.FLOAT16, TensorProto.INT64) for t in weights.values())
    casts = [n for n in graph.node if n.op_type == "Cast"]
    # input → fp16, around GlobalAveragePool (fp32) and back, fp16 logits → fp32 output
    assert len(casts) == 4 and len(graph.node) == len(fp32.graph.node) + 4
    gap = next(n for n in graph.node if n.op_type == "GlobalAveragePool")
    assert gap.input[0].endswith("/to_fp32")
    assert check_trt_compat(fp16)
    xs = random_inputs(2, batch=2, img_size=img, seed=1) if img == SMALL_IMG else random_inputs(1, batch=1,
                                                                                               img_size=img)
    outputs, references = [_run(fp16, x) for x in xs], [_run(fp32, x) for x in xs]
    result = verify_outputs("fp16", outputs, references, tolerance=TOLERANCE_FP16)
    assert result and result.rel_l2 > 1e-6, result.summary()  # it really computed in half precision
    assert top1_agreement(outputs, references, tolerance=TOLERANCE_FP16)


def test_unknown_op_is_refused() -> None:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Resize", ["input"], ["y"])], "g", [x], [y]))
    with pytest.raises(ValueError, match="cannot convert Resize"):
        convert_to_fp16(model)


def test_top1_agreement_ignores_near_ties_only() -> None:
    ref = np.array([[1.0, 5.0, 0.0], [2.0, 2.0001, 0.0]])
    flipped_tie = np.array([[1.0, 5.0, 0.0], [2.0001, 2.0, 0.0]])
    result = top1_agreement([flipped_tie], [ref], tolerance=1e-2)
    assert result and (result.agree, result.total, result.decisive) == (1, 2, 1)
    flipped_clear = np.array([[5.0, 1.0, 0.0], [2.0, 2.0001, 0.0]])
    assert not top1_agreement([flipped_clear], [ref], tolerance=1e-2)
