"""exporters/: the emitted ONNX graph, its contract (DESIGN §6) and ONNX Runtime parity with torch (≤ 1e-5)."""

from pathlib import Path

import onnx
import pytest
import torch
from conftest import SMALL_IMG, random_model
from onnx import TensorProto, helper, numpy_helper

from vanilladeploy.exporters.contract import check_graph_contract
from vanilladeploy.exporters.onnx_export import build_onnx, emit_onnx, feature_sizes, simplify_onnx, simplify_onnx_file
from vanilladeploy.models.vanillanet import VARIANTS, VanillaNet, VariantSpec, randomize_
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner, TorchRunner
from vanilladeploy.verify import random_inputs, verify_outputs


def _onnx(variant: str, img_size: int = SMALL_IMG, **kw) -> tuple[torch.nn.Module, onnx.ModelProto]:
    deploy = random_model(variant, deploy=True, seed=5)
    return deploy, build_onnx(deploy.state_dict(), VARIANTS[variant], act_num=3, img_size=img_size, **kw)


@pytest.mark.parametrize("variant,nodes", [("vanillanet_5", 18), ("vanillanet_6", 21), ("vanillanet_13", 42)])
def test_node_counts_match_official_export(variant: str, nodes: int) -> None:
    _, model = _onnx(variant)
    simplified = simplify_onnx(model)
    result = check_graph_contract(simplified, VARIANTS[variant])
    assert result, result.problems
    assert result.node_count == nodes == len(model.graph.node)
    assert result.op_counts["Conv"] == VARIANTS[variant].depth


def test_ada_pool_graph_is_a_chain_with_exact_pools() -> None:
    spec = VARIANTS["vanillanet_13_x1_5_ada_pool"]
    assert feature_sizes(spec, 224)[:4] == [75, 75, 38, 19]
    deploy = random_model(spec.name, deploy=True, seed=5)
    model = build_onnx(deploy.state_dict(), spec, act_num=3, img_size=224, batch=1)
    result = check_graph_contract(model, spec)
    assert result, result.problems
    # 75→38 and 19→10 need Gather, Gather, MaxPool; 38→19 is a plain MaxPool(2).
    assert result.op_counts["Gather"] == 4 and result.op_counts["MaxPool"] == 3 and result.node_count == 46


@pytest.mark.parametrize("variant,img_size", [("vanillanet_6", SMALL_IMG), ("vanillanet_7", 64),
                                              ("vanillanet_13_x1_5_ada_pool", SMALL_IMG)])
def test_onnxruntime_matches_torch_deploy_model(tmp_path: Path, variant: str, img_size: int) -> None:
    deploy, model = _onnx(variant, img_size)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    inputs = random_inputs(2, batch=3, img_size=img_size, seed=1)  # batch 3: the batch dimension is dynamic
    with TorchRunner(deploy) as torch_runner, OnnxRuntimeRunner(path) as ort_runner:
        result = verify_outputs("ort", [ort_runner.infer(x) for x in inputs], [torch_runner.infer(x) for x in inputs])
    assert result, result.summary()


def test_static_batch_metadata_and_names() -> None:
    _, model = _onnx("vanillanet_5", batch=4, metadata={"variant": "vanillanet_5", "source_sha256": "ab"})
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [4, 3, SMALL_IMG, SMALL_IMG]
    assert model.graph.input[0].name == "input" and model.graph.output[0].name == "logits"
    assert {p.key: p.value for p in model.metadata_props} == {"variant": "vanillanet_5", "source_sha256": "ab"}
    assert model.opset_import[0].version == 17
    _, dynamic = _onnx("vanillanet_5")
    assert dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_too_small_image_and_old_opset_are_refused() -> None:
    with pytest.raises(ValueError, match="too small"):
        _onnx("vanillanet_5", img_size=16)
    with pytest.raises(ValueError, match="opset 13"):
        _onnx("vanillanet_5", opset=13)


def _planted(model: onnx.ModelProto, node: onnx.NodeProto, after: int) -> onnx.ModelProto:
    """Insert ``node`` into the chain after node index ``after`` (rewiring its consumer)."""
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    nodes = list(bad.graph.node)
    nodes[after + 1].input[0] = node.output[0]
    del bad.graph.node[:]
    bad.graph.node.extend(nodes[: after + 1] + [node] + nodes[after + 1:])
    return bad


def test_contract_catches_planted_problems() -> None:
    _, model = _onnx("vanillanet_5")
    spec = VARIANTS["vanillanet_5"]
    first_out = model.graph.node[0].output[0]
    cases = {
        "forbidden Add": helper.make_node("Add", [first_out, first_out], ["added"], name="add"),
        "forbidden LeakyRelu": helper.make_node("LeakyRelu", [first_out], ["leaky"], name="leaky"),
        "unexpected op Sigmoid": helper.make_node("Sigmoid", [first_out], ["sig"], name="sig"),
    }
    for problem, node in cases.items():
        result = check_graph_contract(_planted(model, node, 0), spec)
        assert not result and any(problem.split()[-1] in p for p in result.problems), (problem, result.problems)
    branched = _planted(model, helper.make_node("Relu", [first_out], ["branch"], name="side"), 0)
    branched.graph.node[2].input[0] = first_out  # the next node reads the Conv, not the inserted Relu
    assert any("single chain" in p for p in check_graph_contract(branched, spec).problems)
    assert "5 Conv nodes, expected 6" in check_graph_contract(model, VARIANTS["vanillanet_6"]).problems


def test_simplifier_keeps_outputs(tmp_path: Path) -> None:
    deploy, model = _onnx("vanillanet_5")
    simplified = simplify_onnx(model)
    onnx.save(simplified, tmp_path / "s.onnx")
    x = random_inputs(1, batch=1, img_size=SMALL_IMG)[0]
    with OnnxRuntimeRunner(tmp_path / "s.onnx") as runner, TorchRunner(deploy) as reference:
        result = verify_outputs("simplified", [runner.infer(x)], [reference.infer(x)])
    assert result, result.summary()


def test_emitted_bytes_are_what_from_array_and_make_graph_would_write() -> None:
    """The initializers are built in place (no second 230 MB copy for VanillaNet-13), and the bytes handed on are
    the checked ones: the same file as the plain onnx.helper construction, byte for byte."""
    # the ada variant's structure at toy widths: its adaptive pools make int64 Gather indices beside the float weights
    spec = VariantSpec("tiny_ada", (16, 16, 32, 64), (1, 2, 2), ada_pool=(0, 5, 3))
    deploy = randomize_(VanillaNet(spec.dims, spec.strides, ada_pool=spec.ada_pool, num_classes=10, deploy=True))
    emitted = emit_onnx(deploy.state_dict(), spec, act_num=3, img_size=64, metadata={"variant": spec.name})
    assert emitted.data == emitted.model.SerializeToString()
    plain = onnx.ModelProto()
    plain.CopyFrom(emitted.model)
    del plain.graph.initializer[:]
    for tensor in emitted.model.graph.initializer:
        plain.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    assert {t.data_type for t in plain.graph.initializer} == {TensorProto.FLOAT, TensorProto.INT64}
    assert plain.SerializeToString() == emitted.data


def test_simplifying_a_file_gives_the_in_memory_simplification(tmp_path: Path) -> None:
    _, model = _onnx("vanillanet_6")
    src, dst = tmp_path / "emitted.onnx", tmp_path / "simplified.onnx"
    onnx.save(model, src)
    from_file = simplify_onnx_file(src, dst)
    in_memory = simplify_onnx(model).SerializeToString()
    assert dst.read_bytes() == in_memory == from_file.SerializeToString()
