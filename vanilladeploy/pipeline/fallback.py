"""Accuracy-aware int8: which Convs to keep in float32 when the fully quantized model misses its gate.

A deployed VanillaNet-N has only ~2N−1 Convs, so the answer is exact, not estimated. Every variant here is quantized
from ONE calibration (the activation ranges are computed once and reused), so variants differ only in their float
layers, and all are judged on the same held-out images against the fp32 ONNX in ONNX Runtime.

- **Sensitivity** of a Conv = the held-out top-1 agreement (and mean relative L2) of the model in which ONLY that
  Conv stays float. We measure "only this one float" rather than "only this one int8": it answers the question the
  fallback asks (what do we gain by keeping this layer in float, given all the others stay int8?), and its best
  layer is exactly the first fallback step.
- **auto**: keep the most sensitive Convs in float one at a time, in sensitivity order, re-verifying after each
  step, until the gate is met; more than ``max_fallback`` float layers → give up (the best model is written, marked
  unverified, exit 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from vanilladeploy.errors import UsageError
from vanilladeploy.evaluate import evaluate
from vanilladeploy.images import Preprocess

GROUP = 6
"""Variants judged together in one pass over the held-out images (each holds an ONNX Runtime session)."""
Quantize = Callable[[Path, tuple[str, ...]], Path]
"""Writes the int8 model with the given Convs in float to the path, from the one calibration."""


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str
    kind: str  # dense or depthwise
    agreement_top1: float
    mean_rel_l2: float


@dataclass(frozen=True)
class Trial:
    """One model the search tried: these Convs kept in float, the rest int8, and its verdict on held-out images."""

    float_layers: tuple[str, ...]
    agreement_top1: float
    mean_rel_l2: float


@dataclass
class FallbackResult:
    float_layers: tuple[str, ...]
    passed: bool
    steps: list[Trial] = field(default_factory=list)
    sensitivity: list[LayerSensitivity] = field(default_factory=list)


def conv_layers(model: onnx.ModelProto) -> dict[str, str]:
    """Conv node name → dense or depthwise (``group`` > 1), in graph order: the names ``--fallback`` takes."""
    def kind(node: onnx.NodeProto) -> str:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return "depthwise" if group > 1 else "dense"

    return {n.name: kind(n) for n in model.graph.node if n.op_type == "Conv"}


def parse_fallback(text: str, layers: dict[str, str]) -> tuple[str, tuple[str, ...]]:
    """``auto``, ``none``, or a comma list of Conv names (checked against ``layers``) → (mode, names)."""
    if text in ("auto", "none"):
        return text, ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in layers]
    if not names or unknown:
        raise UsageError(f"--fallback {text!r}: give auto, none, or Conv names of the exported graph "
                         f"({', '.join(layers)}); unknown: {', '.join(unknown) or 'none given'}.")
    return "layers", names


def default_max_fallback(layers: dict[str, str]) -> int:
    """A quarter of the Convs (at least one)."""
    return max(1, len(layers) // 4)


def _judge(fp32: Path, variants: dict[str, Path], calib: Path, holdout: Sequence[int], pre: Preprocess
           ) -> dict[str, tuple[float, float]]:
    """(top-1 agreement %, mean rel. L2) of each variant against the fp32 ONNX, in one pass over the images."""
    rows = evaluate([str(fp32), *map(str, variants.values())], calib, indices=holdout, preprocess=pre).rows[1:]
    return {name: (row["agreement_top1"], row["mean_rel_l2"]) for name, row in zip(variants, rows)}


def sensitivity(fp32: Path, layers: dict[str, str], quantize: Quantize, scratch: Path, calib: Path,
                holdout: Sequence[int], pre: Preprocess) -> list[LayerSensitivity]:
    """Every Conv's sensitivity (only it in float), most sensitive first (highest agreement, then lowest L2)."""
    names, judged = list(layers), {}
    for start in range(0, len(names), GROUP):  # a few sessions at a time: memory stays bounded for deep variants
        group = names[start:start + GROUP]
        variants = {layer: quantize(scratch / f"only-{start + i}.onnx", (layer,)) for i, layer in enumerate(group)}
        judged |= _judge(fp32, variants, calib, holdout, pre)
    table = [LayerSensitivity(layer, layers[layer], *judged[layer]) for layer in layers]
    return sorted(table, key=lambda s: (-s.agreement_top1, s.mean_rel_l2))


def search(fp32: Path, layers: dict[str, str], quantize: Quantize, scratch: Path, calib: Path,
           holdout: Sequence[int], pre: Preprocess, *, passes: Callable[[float, float], bool], max_fallback: int,
           start: Trial) -> FallbackResult:
    """``auto``: float layers added in sensitivity order until the gate is met or ``max_fallback`` is reached;
    ``start`` is the fully quantized model's verdict. The result names the best model seen (gate met, or the
    highest agreement)."""
    table = sensitivity(fp32, layers, quantize, scratch, calib, holdout, pre)
    steps, chosen = [start], ()
    for layer in (s.layer for s in table[:max_fallback]):
        chosen = (*chosen, layer)
        path = quantize(scratch / f"fallback-{len(chosen)}.onnx", chosen)
        agreement, rel_l2 = _judge(fp32, {"mix": path}, calib, holdout, pre)["mix"]
        steps.append(Trial(chosen, agreement, rel_l2))
        if passes(agreement, rel_l2):
            return FallbackResult(chosen, True, steps, table)
    best = max(steps, key=lambda s: (s.agreement_top1, -s.mean_rel_l2))
    return FallbackResult(best.float_layers, False, steps, table)


__all__ = ["FallbackResult", "LayerSensitivity", "Trial", "conv_layers", "default_max_fallback", "parse_fallback",
           "search", "sensitivity"]
