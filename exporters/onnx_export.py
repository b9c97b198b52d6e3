"""The deploy-form VanillaNet as an ONNX graph, emitted node by node from its state dict.

The deployed net is a fixed chain (Conv → [pool] → Relu → depthwise Conv per layer, then GlobalAveragePool → Conv →
Flatten), so it is written directly with ``onnx.helper`` rather than traced: no tracer, no exporter version quirks,
initializers named after the state-dict keys, and ``AdaptiveMaxPool2d`` (which torch.onnx cannot export for 75 → 38) as
the exact Gather/Gather/MaxPool chain of :mod:`vanilladeploy.models.pooling`. The graph is then checked numerically
against the torch model in ONNX Runtime, so it is an independent second implementation rather than a trusted
translation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from torch import Tensor

from vanilladeploy.models.pooling import adaptive_gather_index, is_plain_max_pool
from vanilladeploy.models.vanillanet import VariantSpec

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MIN_OPSET = 17


@dataclass(frozen=True)
class PixelInput:
    """A uint8 graph input: RGB pixels 0–255, NCHW, after resize and crop. The graph first casts them to float32;
    the caller has folded the normalization into the stem's weights
    (``vanilladeploy.reparam.fold_pixel_normalization``) — all of it, or, for a stem that zero-pads, its scale only:
    then ``mean`` is given and the graph subtracts 255·mean explicitly before the stem (a padded zero must be a zero
    of the normalized input)."""

    mean: tuple[float, ...] | None = None


@dataclass
class _Graph:
    """Accumulates a single chain of nodes; ``x`` is the name of the current activation."""

    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[tuple[str, np.ndarray]] = field(default_factory=list)
    """(name, array): written straight into the model's graph (:func:`_add_initializer`), never copied as a
    separate TensorProto first (for VanillaNet-13, 230 MB copied once more by ``make_graph``)."""
    x: str = INPUT_NAME

    def add(self, op: str, name: str, extra_inputs: tuple[str, ...] = (), output: str | None = None, **attrs) -> None:
        out = output or f"{name}_out"
        self.nodes.append(helper.make_node(op, [self.x, *extra_inputs], [out], name=name, **attrs))
        self.x = out

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append((name, value))
        return name

    def conv(self, name: str, sd: Mapping[str, Tensor], key: str, *, stride: int = 1, pad: int = 0,
             group: int = 1) -> None:
        w = sd[f"{key}.weight"].detach().numpy()
        inputs = (self.constant(f"{key}.weight", w), self.constant(f"{key}.bias", sd[f"{key}.bias"].detach().numpy()))
        self.add("Conv", name, inputs, kernel_shape=list(w.shape[2:]), strides=[stride, stride], pads=[pad] * 4,
                 group=group)

    def activation(self, name: str, sd: Mapping[str, Tensor], key: str, act_num: int) -> None:
        self.add("Relu", f"{name}/relu")
        self.conv(f"{name}/act", sd, key, pad=act_num, group=sd[f"{key}.weight"].shape[0])

    def pixels(self, pixels: PixelInput) -> None:
        self.add("Cast", "input/cast", to=TensorProto.FLOAT)
        if pixels.mean is not None:
            mean = 255.0 * np.asarray(pixels.mean, dtype=np.float64).reshape(1, -1, 1, 1)
            self.add("Sub", "input/sub_mean", (self.constant("input.mean_255", mean.astype(np.float32)),))

    def adaptive_max_pool(self, name: str, size_in: int, size_out: int) -> None:
        index, k = adaptive_gather_index(size_in, size_out)
        index_name = self.constant(f"{name}.index", np.asarray(index, dtype=np.int64))
        self.add("Gather", f"{name}/gather_h", (index_name,), axis=2)
        self.add("Gather", f"{name}/gather_w", (index_name,), axis=3)
        self.add("MaxPool", f"{name}/max", kernel_shape=[k, k], strides=[k, k])


def feature_sizes(spec: VariantSpec, img_size: int) -> list[int]:
    """Spatial size after the stem and after each stage for a square ``img_size`` input."""
    stride, pad = spec.stem_stride_padding
    sizes = [(img_size + 2 * pad - 4) // stride + 1]
    for i, s in enumerate(spec.strides):
        ada = spec.ada_pool[i] if spec.ada_pool else 0
        sizes.append(sizes[-1] if s == 1 else ada or sizes[-1] // s)
    return sizes


@dataclass(frozen=True)
class EmittedOnnx:
    """An emitted graph and its serialization, the bytes the ONNX checker passed (to be written as they are)."""

    model: onnx.ModelProto
    data: bytes


def build_onnx(state_dict: Mapping[str, Tensor], spec: VariantSpec, **kw) -> onnx.ModelProto:
    """:func:`emit_onnx`'s model (its keywords)."""
    return emit_onnx(state_dict, spec, **kw).model


def emit_onnx(
    state_dict: Mapping[str, Tensor],
    spec: VariantSpec,
    *,
    act_num: int,
    img_size: int,
    opset: int = MIN_OPSET,
    batch: int | None = None,
    metadata: Mapping[str, str] | None = None,
    pixels: PixelInput | None = None,
) -> EmittedOnnx:
    """The deploy net as ONNX, checked (``onnx.checker``, full): input ``input`` (batch, 3, img, img) float32,
    output ``logits`` (batch, classes).

    ``batch=None`` leaves the batch dimension dynamic (``"batch"``). ``pixels``: the input is uint8 pixels instead
    (:class:`PixelInput`). Raises ValueError for an opset below 17 or an image too small for the variant's
    downsampling.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is below the minimum {MIN_OPSET}")
    sizes = feature_sizes(spec, img_size)
    if min(sizes) < 1:
        raise ValueError(f"img_size {img_size} is too small for {spec.name}: the feature map shrinks to nothing")
    if pixels is not None and pixels.mean is None and spec.stem_stride_padding[1]:
        raise ValueError(f"{spec.name}'s stem pads its input: its mean cannot be folded into the weights, give "
                         "PixelInput(mean)")
    g = _Graph()
    if pixels is not None:
        g.pixels(pixels)
    stride, pad = spec.stem_stride_padding
    g.conv("stem/conv", state_dict, "stem.0", stride=stride, pad=pad)
    g.activation("stem", state_dict, "stem.1", act_num)
    for i, s in enumerate(spec.strides):
        name = f"stages.{i}"
        g.conv(f"{name}/conv", state_dict, f"{name}.conv")
        if s != 1:
            n_in, n_out = sizes[i], sizes[i + 1]
            if spec.ada_pool and not is_plain_max_pool(n_in, n_out):
                g.adaptive_max_pool(f"{name}/pool", n_in, n_out)
            else:
                k = n_in // n_out if spec.ada_pool else s
                g.add("MaxPool", f"{name}/pool", kernel_shape=[k, k], strides=[k, k])
        g.activation(name, state_dict, f"{name}.act", act_num)
    g.add("GlobalAveragePool", "cls/pool")
    g.conv("cls/conv", state_dict, "cls.2")
    g.add("Flatten", "cls/flatten", output=OUTPUT_NAME, axis=1)
    return _make_model(g, spec, state_dict, img_size=img_size, batch=batch, opset=opset, metadata=metadata or {},
                       input_type=TensorProto.FLOAT if pixels is None else TensorProto.UINT8)


def _make_model(g: _Graph, spec: VariantSpec, sd: Mapping[str, Tensor], *, img_size: int, batch: int | None,
                opset: int, metadata: Mapping[str, str], input_type: int) -> EmittedOnnx:
    n = batch if batch is not None else "batch"
    num_classes = sd["cls.2.weight"].shape[0]
    graph = helper.make_graph(
        g.nodes, spec.name,
        [helper.make_tensor_value_info(INPUT_NAME, input_type, [n, 3, img_size, img_size])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [n, num_classes])],
    )
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="vanilladeploy",
                              ir_version=helper.find_min_ir_version_for(opsets))
    for name, value in g.initializers:  # after make_model, which copies the graph it is given
        _add_initializer(model.graph, name, value)
    set_metadata(model, metadata)
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)  # the bytes: the checker would serialize a ModelProto again
    return EmittedOnnx(model, data)


def _add_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> None:
    """``numpy_helper.from_array(value, name)`` appended to ``graph``, built in place (the same serialized bytes)."""
    tensor = graph.initializer.add()
    tensor.dims.extend(value.shape)
    tensor.data_type = helper.np_dtype_to_tensor_dtype(value.dtype)
    tensor.name = name
    tensor.raw_data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")).tobytes()


def input_shape(path: Path) -> tuple[int, ...]:
    """The shape of an ONNX file's first graph input (0 for a dynamic dimension), read without its weights."""
    dims = onnx.load(path, load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return tuple(d.dim_value for d in dims)


def set_metadata(model: onnx.ModelProto, metadata: Mapping[str, str]) -> None:
    """Replace ``metadata_props`` with ``metadata`` (provenance: variant, source sha256, λ, tool version …)."""
    del model.metadata_props[:]
    helper.set_model_props(model, {k: str(v) for k, v in metadata.items()})


def simplify_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run onnx-simplifier; its own check failing is an error, never ignored."""
    import onnxsim

    return _checked(*onnxsim.simplify(model))


def _checked(simplified: onnx.ModelProto, ok: bool) -> onnx.ModelProto:
    """onnx-simplifier's result; its own check failing is an error, never ignored."""
    if not ok:
        raise RuntimeError("onnx-simplifier reports that the simplified graph differs from the original")
    return simplified


def simplify_onnx_file(src: Path, dst: Path) -> onnx.ModelProto:
    """:func:`simplify_onnx` from the file ``src`` to the file ``dst``; returns the simplified model. Where
    onnx-simplifier takes files (``output_path``, 0.8), its C++ core reads and writes them itself: no Python-side
    serialization of the weights (VanillaNet-13: 1.5 s instead of 2.8 s). Older versions: load, simplify, save."""
    import inspect

    import onnxsim

    if "output_path" not in inspect.signature(onnxsim.simplify).parameters:
        simplified = simplify_onnx(onnx.load(src))
        onnx.save(simplified, dst)
        return simplified
    return _checked(*onnxsim.simplify(str(src), output_path=str(dst)))
