"""Numerical verification: relative L2 error and max-abs against a reference, NaN/Inf always a failure."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vanilladeploy.models.vanillanet import VanillaNet

TOLERANCE_FP32 = 1e-5
"""DESIGN §5: fused torch fp32 and ONNX Runtime fp32 against the training-form reference."""
TOLERANCE_TRT_FP32 = 1e-4
"""DESIGN §5: a TensorRT fp32 engine (TF32 off)."""
TOLERANCE_FP16 = 1e-2
"""DESIGN §5: anything computed in fp16 (TensorRT fp16 engine, the fp16-typed ONNX), plus top-1 agreement."""
TOLERANCE_INT8_ENGINE = 5e-2
"""A TensorRT int8 engine against the int8 QDQ ONNX in ONNX Runtime (two int8 kernels' rounding), plus top-1; and
the bound of an engine whose precision is not known (the loosest an engine is held to)."""



def tolerance_for(precision: str) -> float:
    """The bound for an answer against the same file run again in the same runtime and precision (e.g. served
    against in process, where the server batches requests its own way): fp32 ``TOLERANCE_FP32``; a reduced
    precision (fp16, bf16, int8) ``TOLERANCE_FP16``, since its kernels may round differently per batch size."""
    return TOLERANCE_FP32 if precision == "fp32" else TOLERANCE_FP16


@dataclass(frozen=True)
class Comparison:
    """One output against its reference. Truthy when finite and ``rel_l2 <= tolerance``."""

    rel_l2: float
    max_abs: float
    tolerance: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.rel_l2) and math.isfinite(self.max_abs)

    def __bool__(self) -> bool:
        return self.finite and self.rel_l2 <= self.tolerance


def compare(output: np.ndarray, reference: np.ndarray, *, tolerance: float = TOLERANCE_FP32) -> Comparison:
    """‖y − ref‖ / ‖ref‖ and max |y − ref| in float64; NaN when either side holds NaN/Inf or shapes differ."""
    y, ref = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if y.shape != ref.shape or not (np.isfinite(y).all() and np.isfinite(ref).all()):
        return Comparison(math.nan, math.nan, tolerance)
    diff = y - ref
    norm = float(np.linalg.norm(ref))
    rel = float(np.linalg.norm(diff)) / norm if norm > 0 else float(np.linalg.norm(diff))
    return Comparison(rel, float(np.abs(diff).max(initial=0.0)), tolerance)


@dataclass(frozen=True)
class VerifyResult:
    """Comparisons over several inputs; truthy when every one passes."""

    name: str
    comparisons: tuple[Comparison, ...]
    tolerance: float

    @property
    def rel_l2(self) -> float:
        return max((c.rel_l2 if c.finite else math.inf) for c in self.comparisons)

    @property
    def max_abs(self) -> float:
        return max((c.max_abs if c.finite else math.inf) for c in self.comparisons)

    def __bool__(self) -> bool:
        return bool(self.comparisons) and all(self.comparisons)

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": bool(self), "tolerance": self.tolerance if math.isfinite(self.tolerance) else None,
            "inputs": len(self.comparisons),
            "rel_l2": _json_float(self.rel_l2), "max_abs": _json_float(self.max_abs),
            "rel_l2_per_input": [_json_float(c.rel_l2) for c in self.comparisons],
        }

    def summary(self) -> str:
        return f"rel L2 {self.rel_l2:.2e}, max abs {self.max_abs:.2e} (tolerance {self.tolerance:.0e})"


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else "nan/inf"


def verify_outputs(
    name: str, outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], *, tolerance: float = TOLERANCE_FP32
) -> VerifyResult:
    return VerifyResult(name, tuple(compare(y, r, tolerance=tolerance) for y, r in zip(outputs, references)),
                        tolerance)


@dataclass(frozen=True)
class Top1Agreement:
    """Samples whose arg-max matches the reference's. A sample is *decisive* when the reference's top-1/top-2 margin
    exceeds ``tolerance`` × its largest |logit|: a flip there is an error beyond tolerance, not a near tie.
    Truthy when every decisive sample agrees."""

    agree: int
    total: int
    decisive: int
    decisive_agree: int

    def __bool__(self) -> bool:
        return self.decisive_agree == self.decisive

    def as_dict(self) -> dict[str, object]:
        return {"passed": bool(self), "agree": self.agree, "total": self.total, "decisive": self.decisive,
                "decisive_agree": self.decisive_agree}


def top1_agreement(outputs: Sequence[np.ndarray], references: Sequence[np.ndarray], *, tolerance: float
                   ) -> Top1Agreement:
    y = np.concatenate([np.asarray(o, dtype=np.float64).reshape(len(o), -1) for o in outputs])
    ref = np.concatenate([np.asarray(r, dtype=np.float64).reshape(len(r), -1) for r in references])
    same = y.argmax(axis=1) == ref.argmax(axis=1)
    if ref.shape[1] > 1:
        top2 = np.sort(ref, axis=1)[:, -2:]
        decisive = (top2[:, 1] - top2[:, 0]) > tolerance * np.abs(ref).max(axis=1)
    else:  # one class: the arg-max cannot differ
        decisive = np.ones(len(ref), dtype=bool)
    return Top1Agreement(int(same.sum()), len(same), int(decisive.sum()), int((same & decisive).sum()))


def random_inputs(count: int, *, batch: int, img_size: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded N(0, 1) inputs of shape (batch, 3, img_size, img_size), like normalized images."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, img_size, img_size), dtype=np.float32) for _ in range(count)]


@torch.no_grad()
def first_divergent_layer(
    reference: VanillaNet, candidate: VanillaNet, x: np.ndarray, *, tolerance: float = TOLERANCE_FP32
) -> str | None:
    """The first layer (stem, stages.i, cls) whose output differs from the reference's beyond ``tolerance``."""
    inp = torch.from_numpy(x)
    for (name, ref), (_, out) in zip(reference.forward_layers(inp), candidate.forward_layers(inp)):
        if not compare(out.numpy(), ref.numpy(), tolerance=tolerance):
            return name
    return None
