"""An fp16-typed copy of an fp32 ONNX graph, for strongly typed TensorRT builds (TensorRT 11 has no FP16 flag).

Inputs and outputs keep their types (a Cast follows each float32 input and precedes each output), weights are
stored as float16, and ops whose accuracy suffers in half precision (reductions, normalizations, transcendental
functions: ``KEEP_FP32``) run in float32 with Casts around them. Only ops whose float inputs all share one type
are converted; any other op is refused rather than guessed at.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

KEEP_FP32 = frozenset({"GlobalAveragePool", "ReduceMean", "ReduceSum", "Softmax", "LayerNormalization", "Pow",
                       "Sqrt", "Exp", "Log", "Erf"})
CONVERTIBLE = KEEP_FP32 | {"Conv", "Relu", "MaxPool", "AveragePool", "Gather", "Flatten", "Reshape", "Identity",
                           "Add", "Sub", "Mul", "Div", "MatMul", "Gemm", "Transpose", "Concat", "Sigmoid", "Squeeze",
                           "Unsqueeze", "Slice", "Split", "Shape"}
AS_IS = frozenset({"Cast"})
"""Ops copied unchanged: a Cast's output type is its own ``to`` (a uint8 pixel input's Cast to float32 stays; the
fp16 op after it gets a Cast to float16)."""
_FLOATS = (TensorProto.FLOAT, TensorProto.FLOAT16)


def convert_to_fp16(model: onnx.ModelProto, *, keep_fp32: frozenset[str] = KEEP_FP32,
                    keep_node: Callable[[onnx.NodeProto], bool] | None = None) -> onnx.ModelProto:
    """A new model computing in float16 except for ``keep_fp32`` ops and the nodes ``keep_node`` picks (a
    detector's post-processing: any op, run as in the source, float inputs cast back to float32); float32 at the
    graph's inputs and outputs.

    Raises ValueError for an op outside ``CONVERTIBLE`` (its float inputs may need mixed types).
    """
    kept = keep_node or (lambda node: False)
    unknown = sorted({n.op_type for n in model.graph.node if n.op_type not in CONVERTIBLE | AS_IS and not kept(n)})
    if unknown:
        raise ValueError(f"cannot convert {', '.join(unknown)} to fp16 (known: {', '.join(sorted(CONVERTIBLE))})")
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info, *graph.output)}
    types.update({t.name: t.data_type for t in graph.initializer})
    want = [TensorProto.FLOAT if n.op_type in keep_fp32 or kept(n) else TensorProto.FLOAT16 for n in graph.node]
    initializers = _convert_initializers(graph, want, types)
    nodes, casts = [], {}

    def typed(name: str, dtype: int) -> str:
        if not name or types.get(name) not in _FLOATS or types[name] == dtype:
            return name
        key = (name, dtype)
        if key not in casts:
            casts[key] = f"{name}/to_{'fp16' if dtype == TensorProto.FLOAT16 else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [casts[key]], name=casts[key], to=dtype))
            types[casts[key]] = dtype
        return casts[key]

    for node, dtype in zip(graph.node, want):
        new = onnx.NodeProto()
        new.CopyFrom(node)
        if node.op_type not in AS_IS:
            new.input[:] = [typed(x, dtype) for x in node.input]
            for out in new.output:
                if types.get(out) in _FLOATS:
                    types[out] = dtype
        nodes.append(new)
    outputs = []
    for v in graph.output:  # the graph's outputs stay float32: rename the producer's tensor, cast back
        out = onnx.ValueInfoProto()
        out.CopyFrom(v)
        if types.get(v.name) == TensorProto.FLOAT16:
            inner = f"{v.name}/fp16"
            for n in nodes:  # the producer writes inner; readers inside the graph (p6 feeds p7's conv) read it too
                n.output[:] = [inner if o == v.name else o for o in n.output]
                n.input[:] = [inner if i == v.name else i for i in n.input]
            types[inner] = TensorProto.FLOAT16
            nodes.append(helper.make_node("Cast", [inner], [v.name], name=f"{v.name}/to_fp32", to=TensorProto.FLOAT))
        outputs.append(out)
    new_graph = helper.make_graph(nodes, graph.name, list(model.graph.input), outputs, initializers)
    converted = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                                  producer_name=model.producer_name)
    converted.metadata_props.extend(model.metadata_props)
    onnx.checker.check_model(converted, full_check=True)
    return converted


def _convert_initializers(graph: onnx.GraphProto, want: list[int], types: dict[str, int]
                          ) -> list[onnx.TensorProto]:
    """Float32 initializers that only fp16 nodes read become float16; the others stay (and get Casts)."""
    readers: dict[str, set[int]] = {}
    for node, dtype in zip(graph.node, want):
        for x in node.input:
            readers.setdefault(x, set()).add(dtype)
    result = []
    for t in graph.initializer:
        if t.data_type == TensorProto.FLOAT and readers.get(t.name) == {TensorProto.FLOAT16}:
            array = numpy_helper.to_array(t)
            if np.abs(array).max(initial=0.0) > np.finfo(np.float16).max:
                raise ValueError(f"initializer {t.name} holds values beyond the float16 range")
            t = numpy_helper.from_array(array.astype(np.float16), t.name)
            types[t.name] = TensorProto.FLOAT16
        result.append(t)
    return result


def fp16_export(model: onnx.ModelProto, *, keep_node: Callable[[onnx.NodeProto], bool] | None = None
                ) -> onnx.ModelProto:
    """:func:`convert_to_fp16` of one of our exports, its ``metadata_props`` kept with ``precision`` fp16."""
    typed = convert_to_fp16(model, keep_node=keep_node)
    del typed.metadata_props[:]
    for prop in model.metadata_props:
        typed.metadata_props.add(key=prop.key, value="fp16" if prop.key == "precision" else prop.value)
    if not any(p.key == "precision" for p in model.metadata_props):
        typed.metadata_props.add(key="precision", value="fp16")
    return typed


__all__ = ["AS_IS", "CONVERTIBLE", "KEEP_FP32", "convert_to_fp16", "fp16_export"]
