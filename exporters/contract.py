"""The graph contract of an exported VanillaNet-N (DESIGN §6), checked on the final ONNX model.

Exactly N dense Conv nodes, one Relu + one depthwise Conv per non-classifier layer, one MaxPool per stride-2 stage
(the ada variant's exact adaptive pool adds two Gathers before its MaxPool), one GlobalAveragePool, one
Flatten/Reshape; none of BatchNormalization, LeakyRelu, Add, Mul; and a single chain from ``input`` to ``logits``.
"""

from __future__ import annotations

from collections import Counter
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


def _op_counts(graph: onnx.GraphProto) -> Counter[str]:
    counts: Counter[str] = Counter()
    for node in graph.node:
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


def _io_problems(graph: onnx.GraphProto) -> list[str]:
    problems = []
    if [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}] != [INPUT_NAME]:
        problems.append(f"graph inputs are {[i.name for i in graph.input]}, expected [{INPUT_NAME!r}]")
    elif graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        problems.append("input is not float32")
    if [o.name for o in graph.output] != [OUTPUT_NAME]:
        problems.append(f"graph outputs are {[o.name for o in graph.output]}, expected [{OUTPUT_NAME!r}]")
    return problems


def check_graph_contract(model: onnx.ModelProto, spec: VariantSpec) -> ContractResult:
    """Check ``model`` against the contract for variant ``spec``; every violation is listed, none raised."""
    graph, n = model.graph, spec.depth
    counts = _op_counts(graph)
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
    problems += _io_problems(graph) + _chain_problems(graph)
    return ContractResult(problems, dict(sorted(counts.items())), len(graph.node))


def fixed_batch_of(model_input: onnx.ValueInfoProto) -> int | None:
    """The fixed batch size of an ONNX graph input, or None when it is dynamic (symbolic or unset)."""
    dims = model_input.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
