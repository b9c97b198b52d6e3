"""models/pooling.py: the exact adaptive max pool decomposition, in torch and in ONNX Runtime, bit for bit."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from vanilladeploy.exporters.onnx_export import _Graph
from vanilladeploy.models.pooling import ExactAdaptiveMaxPool2d, adaptive_gather_index, adaptive_windows

VARIANT_SIZES = [(75, 38), (38, 19), (19, 10)]  # what vanillanet_13_x1_5_ada_pool pools at 224x224
MORE_SIZES = [(n, m) for n in (1, 2, 5, 7, 11, 16, 23, 40, 57) for m in (1, 2, 3, 5, 8, 10, 19, 38) ]


def test_windows_of_the_variant_sizes_have_length_two_or_three() -> None:
    for n, m in [(75, 38), (19, 10)]:
        lengths = {end - start for start, end in adaptive_windows(n, m)}
        assert lengths == {2, 3}
    assert adaptive_windows(75, 38)[:3] == [(0, 2), (1, 4), (3, 6)]


def test_gather_index_repeats_the_last_element_of_short_windows() -> None:
    index, k = adaptive_gather_index(75, 38)
    assert k == 3 and len(index) == 3 * 38
    assert index[:6] == [0, 1, 1, 1, 2, 3]


@pytest.mark.parametrize("n,m", VARIANT_SIZES + MORE_SIZES)
def test_torch_decomposition_is_bit_exact(n: int, m: int) -> None:
    x = torch.randn(2, 4, n, n, generator=torch.Generator().manual_seed(n * 100 + m))
    assert torch.equal(ExactAdaptiveMaxPool2d(m)(x), F.adaptive_max_pool2d(x, m))


def test_torch_decomposition_rectangular() -> None:
    x = torch.randn(1, 3, 29, 47)
    assert torch.equal(ExactAdaptiveMaxPool2d((10, 13))(x), F.adaptive_max_pool2d(x, (10, 13)))


def _onnx_pool(channels: int, n: int, m: int) -> onnx.ModelProto:
    g = _Graph()
    g.adaptive_max_pool("pool", n, m)
    graph = helper.make_graph(
        g.nodes, "pool", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, channels, n, n])],
        [helper.make_tensor_value_info(g.x, TensorProto.FLOAT, [None, channels, m, m])],
        [numpy_helper.from_array(value, name) for name, value in g.initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("n,m", VARIANT_SIZES + [(7, 3), (5, 8), (57, 19), (23, 10)])
def test_onnx_decomposition_is_bit_exact_in_onnxruntime(n: int, m: int) -> None:
    model = _onnx_pool(4, n, m)
    onnx.checker.check_model(model, full_check=True)
    assert [node.op_type for node in model.graph.node] == ["Gather", "Gather", "MaxPool"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(n + m).standard_normal((2, 4, n, n), dtype=np.float32)
    y = session.run(None, {"input": x})[0]
    np.testing.assert_array_equal(y, F.adaptive_max_pool2d(torch.from_numpy(x), m).numpy())
