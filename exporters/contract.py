"""The graph contract of an exported VanillaNet-N (DESIGN §6), checked on the final ONNX model.

Exactly N dense Conv nodes, one Relu + one depthwise Conv per non-classifier layer, one MaxPool per stride-2 stage
(the ada variant's exact adaptive pool adds two Gathers before its MaxPool), one GlobalAveragePool, one
Flatten/Reshape; none of BatchNormalization, LeakyRelu, Add, Mul; and a single chain from ``input`` to ``logits``.
A uint8-input graph (``export --input uint8``) starts with a prefix before the stem Conv: Cast to float, then — only
when the stem zero-pads — Sub (the normalization's mean, which cannot be folded into a padded stem's weights).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import onnx

from vanilladeploy.exporters.onnx_export import INPUT_NAME, OUTPUT_NAME
from vanilladeploy.models.vanillanet import VariantSpec

ALLOWED_OPS = {"Conv", "Relu", "MaxPool", "Gather", "GlobalAveragePool", "Flatten", "Reshape"}
FORBIDDEN_OPS = ("BatchNormalization", "LeakyRelu", "Add", "Mul")


@dataclass
class ContractResult:
    """Truthy when ``problems`` is empty; ``op_counts`` counts dense and depthwise Conv apart."""

    problems: list[str] = field(default_factory=list)
    op_counts: dict[str, int] = field(default_factory=dict)
    node_count: int = 0

    def __bool__(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {"passed": bool(self), "nodes": self.node_count, "op_counts": self.op_counts,
                "problems": self.problems}


def _op_counts(nodes: Sequence[onnx.NodeProto]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for node in nodes:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        counts["Conv(depthwise)" if node.op_type == "Conv" and group > 1 else node.op_type] += 1
    return counts


def _chain_problems(graph: onnx.GraphProto) -> list[str]:
    """Each node reads exactly one activation: the previous node's output (the first reads the graph input)."""
    constants = {t.name for t in graph.initializer}
    current, problems = INPUT_NAME, []
    for node in graph.node:
        data_inputs = [name for name in node.input if name and name not in constants]
        if data_inputs != [current]:
            problems.append(f"not a single chain: node {node.name or node.op_type!r} reads {data_inputs}, "
                            f"expected [{current!r}]")
            break
        current = node.output[0]
    if not problems and current != OUTPUT_NAME:
        problems.append(f"the chain ends in {current!r}, not in the graph output {OUTPUT_NAME!r}")
    return problems


def pixel_prefix(spec: VariantSpec) -> tuple[str, ...]:
    """The ops a uint8-input graph runs before its stem Conv: Cast, and Sub (of 255·mean) when the stem zero-pads."""
    return ("Cast", "Sub") if spec.stem_stride_padding[1] else ("Cast",)


def _prefix_problems(graph: onnx.GraphProto, spec: VariantSpec) -> list[str]:
    want = pixel_prefix(spec)
    got = tuple(n.op_type for n in graph.node[:len(want) + 1])
    if got != (*want, "Conv"):
        why = "the stem pads, so the mean stays explicit" if len(want) > 1 else "the normalization is folded " \
              "into the stem's weights"
        return [f"a uint8 input must reach the stem Conv through {' → '.join(want)} ({why}), found {' → '.join(got)}"]
    cast = next((a.i for a in graph.node[0].attribute if a.name == "to"), None)
    return [] if cast == onnx.TensorProto.FLOAT else ["the uint8 input is not cast to float32"]


def _io_problems(graph: onnx.GraphProto, input_dtype: str) -> list[str]:
    problems = []
    elem = onnx.TensorProto.UINT8 if input_dtype == "uint8" else onnx.TensorProto.FLOAT
    if [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}] != [INPUT_NAME]:
        problems.append(f"graph inputs are {[i.name for i in graph.input]}, expected [{INPUT_NAME!r}]")
    elif graph.input[0].type.tensor_type.elem_type != elem:
        problems.append(f"input is not {input_dtype}")
    if [o.name for o in graph.output] != [OUTPUT_NAME]:
        problems.append(f"graph outputs are {[o.name for o in graph.output]}, expected [{OUTPUT_NAME!r}]")
    return problems


def check_graph_contract(model: onnx.ModelProto, spec: VariantSpec, *, input_dtype: str = "float32"
                         ) -> ContractResult:
    """Check ``model`` against the contract for variant ``spec`` and its input (float32, or uint8 pixels with the
    prefix :func:`pixel_prefix`); every violation is listed, none raised. ``op_counts`` count every node."""
    graph, n = model.graph, spec.depth
    prefix = len(pixel_prefix(spec)) if input_dtype == "uint8" else 0
    counts = _op_counts(graph.node[prefix:])
    expected = {"Conv": n, "Conv(depthwise)": n - 1, "Relu": n - 1, "GlobalAveragePool": 1,
                "MaxPool": sum(s != 1 for s in spec.strides)}
    problems = [f"{counts[op]} {op} nodes, expected {want}" for op, want in expected.items() if counts[op] != want]
    if counts["Flatten"] + counts["Reshape"] != 1:
        problems.append(f"{counts['Flatten'] + counts['Reshape']} Flatten/Reshape nodes, expected 1")
    problems += [f"{counts[op]} forbidden {op} node(s)" for op in FORBIDDEN_OPS if counts[op]]
    others = sorted(op for op in counts if op.split("(")[0] not in ALLOWED_OPS and op not in FORBIDDEN_OPS)
    problems += [f"unexpected op {op} ({counts[op]}x)" for op in others]
    if counts["Gather"] and not spec.ada_pool:
        problems.append(f"{counts['Gather']} Gather nodes in a variant without adaptive pooling")
    if prefix:
        problems += _prefix_problems(graph, spec)
    problems += _io_problems(graph, input_dtype) + _chain_problems(graph)
    return ContractResult(problems, dict(sorted(_op_counts(graph.node).items())), len(graph.node))


def fixed_batch_of(model_input: onnx.ValueInfoProto) -> int | None:
    """The fixed batch size of an ONNX graph input, or None when it is dynamic (symbolic or unset)."""
    dims = model_input.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
