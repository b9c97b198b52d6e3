"""Will TensorRT's ONNX parser take this graph? A check that needs neither TensorRT nor a GPU.

It looks at what the parser documents (:mod:`vanilladeploy.exporters.trt_ops`) and at what a build needs from the graph:
operators and the type of their data input, the attribute and input restrictions the parser states, the opset,
graph inputs of static rank whose dynamic dimensions the optimization profile covers. Findings are errors (the parse
or build would fail) or warnings (it may work, or work with a change the user should know about).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING

from vanilladeploy.exporters.trt_ops import OPSET_RANGE, SUPPORTED_TYPES, UNSUPPORTED

if TYPE_CHECKING:  # onnx is imported where a graph is checked: BatchProfile (and doctor) work without it
    import onnx

DEFAULT_MAX_BATCH = 32


@cache
def _type_names() -> dict[int, str]:
    from onnx import TensorProto

    return {
        TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
        TensorProto.INT32: "INT32", TensorProto.INT64: "INT64", TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8",
        TensorProto.BOOL: "BOOL", TensorProto.DOUBLE: "DOUBLE", TensorProto.FLOAT8E4M3FN: "FP8",
        TensorProto.INT4: "INT4",
    }

IO_TYPES = {"FP32", "FP16", "BF16", "INT32", "INT64", "UINT8", "BOOL"}
"""Types a network input or output may have (UINT8 only there)."""

_AXES_INPUT = {  # op → index of an input that must be a constant (initializer or Constant node)
    "Pad": 3, "Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "CumSum": 1, "TopK": 1,
    **dict.fromkeys(("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                     "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare"), 1),
}
_RESIZE_ALLOWED = {
    "mode": {"nearest", "linear"},
    "coordinate_transformation_mode": {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                                       "align_corners"},
    "nearest_mode": {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
    "keep_aspect_ratio_policy": {"stretch"},
}


@dataclass(frozen=True)
class BatchProfile:
    """The optimization profile of the batch dimension: smallest, tuned-for and largest batch."""

    min: int = 1
    opt: int = 1
    max: int = DEFAULT_MAX_BATCH

    @classmethod
    def parse(cls, text: str) -> BatchProfile:
        """``"MAX"`` (→ 1/1/MAX) or ``"MIN/OPT/MAX"``; raises ValueError with the accepted forms."""
        parts = text.strip().split("/")
        if len(parts) not in (1, 3) or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
            raise ValueError(f"batch profile {text!r}: write MAX or MIN/OPT/MAX, e.g. 8 or 1/1/8")
        values = [int(p) for p in parts]
        profile = cls(1, 1, values[0]) if len(values) == 1 else cls(*values)
        if not 1 <= profile.min <= profile.opt <= profile.max:
            raise ValueError(f"batch profile {text!r}: need 1 ≤ MIN ≤ OPT ≤ MAX")
        return profile

    @classmethod
    def fixed(cls, batch: int) -> BatchProfile:
        return cls(batch, batch, batch)

    def __str__(self) -> str:
        return f"{self.min}/{self.opt}/{self.max}"


DETECTOR_BATCH_PROFILE = BatchProfile(1, 1, 4)
"""A detector engine's batch profile unless told otherwise: images of up to 1344×1344 at batch 32 would ask TensorRT
for buffers no GPU has."""


@dataclass(frozen=True)
class ShapeProfile:
    """The optimization profile of a dynamic height and width (a detector's input): (height, width) at least, tuned
    for, at most. The default is the paper's test scale: 320×320 up to 1344×1344, tuned for 800×1344."""

    min: tuple[int, int] = (320, 320)
    opt: tuple[int, int] = (800, 1344)
    max: tuple[int, int] = (1344, 1344)

    @classmethod
    def parse(cls, text: str) -> ShapeProfile:
        """``"MINHxMINW/OPTHxOPTW/MAXHxMAXW"``; raises ValueError with the accepted form."""
        parts = [p.strip().lower().split("x") for p in text.split("/")]
        if len(parts) != 3 or not all(len(p) == 2 and all(re.fullmatch(r"\d+", d) for d in p) for p in parts):
            raise ValueError(f"shape profile {text!r}: write MIN/OPT/MAX as HxW, e.g. 320x320/800x1344/1344x1344")
        low, opt, high = (tuple(int(d) for d in p) for p in parts)
        if not all(1 <= a <= b <= c for a, b, c in zip(low, opt, high)):
            raise ValueError(f"shape profile {text!r}: need 1 ≤ MIN ≤ OPT ≤ MAX in height and in width")
        return cls(low, opt, high)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return "/".join(f"{h}x{w}" for h, w in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" or "warning"
    where: str  # a node ("Conv 'stem/conv'"), an input ("input 'input'") or "model"
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.where}: {self.message}"


@dataclass
class CompatResult:
    """Truthy when no finding is an error."""

    findings: list[Finding] = field(default_factory=list)
    opset: int | None = None
    nodes: int = 0
    profile: BatchProfile | None = None
    shapes: ShapeProfile | None = None

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    def __bool__(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, object]:
        shapes = {"shapes": str(self.shapes)} if self.shapes else {}  # only where a height × width profile applies
        return {"passed": bool(self), "opset": self.opset, "nodes": self.nodes,
                "profile": str(self.profile) if self.profile else None, **shapes,
                "errors": [f"{f.where}: {f.message}" for f in self.errors],
                "warnings": [f"{f.where}: {f.message}" for f in self.warnings]}


def check_trt_compat(model: onnx.ModelProto, *, profile: BatchProfile | None = None,
                     shapes: ShapeProfile | None = None) -> CompatResult:
    """Everything in ``model`` that TensorRT 10's ONNX parser or builder would refuse, as findings. ``shapes``: the
    profile also covers a dynamic height and width (dimensions 2 and 3), as a detector's has."""
    import onnx

    profile = profile or BatchProfile()
    result = CompatResult(nodes=len(model.graph.node), profile=profile, shapes=shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # shape inference failing is itself worth knowing, but not fatal to the check
        result.findings.append(Finding("warning", "model", f"ONNX shape inference failed ({e}); types of "
                                       "intermediate tensors are not checked"))
        inferred = model
    result.opset = _default_opset(model)
    result.findings += list(_check_opsets(model))
    types = _tensor_types(inferred.graph)
    constants = {t.name for t in model.graph.initializer} | {
        o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    result.findings += list(_check_io(model.graph, profile, shapes))
    for node in model.graph.node:
        result.findings += list(_check_node(node, types, constants))
    return result


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opsets(model: onnx.ModelProto) -> Iterator[Finding]:
    opset, (low, high) = _default_opset(model), OPSET_RANGE
    if opset is None:
        yield Finding("error", "model", "imports no default-domain opset")
    elif opset < low:
        yield Finding("error", "model", f"opset {opset} is older than TensorRT's parser accepts ({low}–{high}); "
                      "re-export with a newer opset")
    elif opset > high:
        yield Finding("warning", "model", f"opset {opset} is newer than the range TensorRT 10 documents "
                      f"({low}–{high}); older TensorRT releases may refuse it")


def _tensor_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for v in (*graph.input, *graph.value_info, *graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type:
            types.setdefault(v.name, v.type.tensor_type.elem_type)
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types.setdefault(node.output[0], a.t.data_type)
    return types


def _type_name(elem_type: int) -> str:
    from onnx import TensorProto

    return _type_names().get(elem_type) or TensorProto.DataType.Name(elem_type)


def _check_io(graph: onnx.GraphProto, profile: BatchProfile, shapes: ShapeProfile | None) -> Iterator[Finding]:
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not graph.output:
        yield Finding("error", "model", "the graph has no outputs")
    for kind, v in [*(("input", v) for v in inputs), *(("output", v) for v in graph.output)]:
        where = f"{kind} {v.name!r}"
        if not v.type.HasField("tensor_type"):
            yield Finding("error", where, "is not a tensor (sequences, maps and optionals are unsupported)")
            continue
        name = _type_name(v.type.tensor_type.elem_type)
        if name not in IO_TYPES:
            yield Finding("error", where, f"has type {name}; a network {kind} must be one of "
                          f"{', '.join(sorted(IO_TYPES))}")
        if kind == "input":
            yield from _check_input_shape(v, where, profile, shapes)


def _check_input_shape(v: onnx.ValueInfoProto, where: str, profile: BatchProfile, shapes: ShapeProfile | None
                       ) -> Iterator[Finding]:
    if not v.type.tensor_type.HasField("shape"):
        yield Finding("error", where, "has no shape (unknown rank); TensorRT needs every input's rank")
        return
    dims = v.type.tensor_type.shape.dim
    for axis, d in enumerate(dims):
        static = d.HasField("dim_value") and d.dim_value > 0
        if axis == 0 and static and (profile.min, profile.max) != (d.dim_value, d.dim_value):
            yield Finding("error", where, f"has a fixed batch of {d.dim_value}, but the profile asks for "
                          f"{profile}; use --batch {d.dim_value}/{d.dim_value}/{d.dim_value} or export with a "
                          "dynamic batch")
        elif axis > 0 and not static and not (shapes is not None and axis in (2, 3) and len(dims) == 4):
            label = d.dim_param or "?"
            yield Finding("error", where, f"dimension {axis} ({label}) is dynamic, and the optimization profile "
                          "covers only the batch dimension; export with a fixed --img-size")


def _check_node(node: onnx.NodeProto, types: dict[str, int], constants: set[str]) -> Iterator[Finding]:
    where = f"{node.op_type} {node.name!r}" if node.name else node.op_type
    if node.domain not in ("", "ai.onnx"):
        yield Finding("error", where, f"is a custom operator (domain {node.domain!r}); TensorRT needs a plugin "
                      "registered for it")
        return
    if node.op_type in UNSUPPORTED or node.op_type not in SUPPORTED_TYPES:
        yield Finding("error", where, "is not supported by TensorRT's ONNX parser")
        return
    if node.input and node.input[0] in types:
        name = _type_name(types[node.input[0]])
        if name == "DOUBLE":
            yield Finding("warning", where, "takes DOUBLE data; TensorRT casts it down to FP32 (clamping at "
                          "±FLT_MAX)")
        elif name not in SUPPORTED_TYPES[node.op_type]:
            yield Finding("error", where, f"does not support {name} data (supports "
                          f"{', '.join(sorted(SUPPORTED_TYPES[node.op_type]))})")
    yield from _check_restrictions(node, where, constants)


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _check_restrictions(node: onnx.NodeProto, where: str, constants: set[str]) -> Iterator[Finding]:
    op, attrs = node.op_type, _attrs(node)
    if op in ("MaxPool", "AveragePool"):
        if len(attrs.get("kernel_shape", [])) not in (2, 3):
            yield Finding("error", where, "only 2D or 3D pooling is supported")
        if any(d != 1 for d in attrs.get("dilations", [])):
            yield Finding("error", where, "dilations must be empty or all ones")
    if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
        yield Finding("error", where, "its Indices output is not supported")
    if op == "LayerNormalization" and any(node.output[1:]):
        yield Finding("error", where, "only its first output (Y) is supported")
    index = _AXES_INPUT.get(op)
    if index is not None and len(node.input) > index and node.input[index] and node.input[index] not in constants:
        yield Finding("error", where, f"input {index} ({node.input[index]!r}) must be an initializer or Constant")
    if op == "TopK" and attrs.get("sorted", 1) != 1:
        yield Finding("error", where, "sorted must be 1")
    if op == "Resize":
        for attr, allowed in _RESIZE_ALLOWED.items():
            value = attrs.get(attr)
            value = value.decode() if isinstance(value, bytes) else value
            if value is not None and value not in allowed:
                yield Finding("error", where, f"{attr}={value!r} is not supported ({', '.join(sorted(allowed))})")
        if attrs.get("antialias", 0):
            yield Finding("error", where, "antialiasing is not supported")


__all__ = ["BatchProfile", "CompatResult", "DEFAULT_MAX_BATCH", "DETECTOR_BATCH_PROFILE", "Finding", "ShapeProfile",
           "check_trt_compat"]
