"""The export's option records that the CLI reads its defaults from: kept free of heavy imports, so ``--help`` and
``doctor`` run without onnx or torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Int8Options:
    """``--precision int8``: the image folder to calibrate on and the gate on the held-out images. The defaults
    here are the only place they are written (the CLI shows them from this class)."""

    calib: Path
    calib_count: int = 256
    calib_method: str = "minmax"
    min_agreement: float = 99.0
    """Top-1 agreement (%) with the fp32 ONNX required on the held-out images."""
    holdout_count: int = 256
    max_rel_l2: float | None = None
    """Also required on the held-out images: mean relative L2 of the logits against fp32 at most this."""
    fallback: str = "auto"
    """auto: when the gate is missed, keep the most sensitive Convs in float until it is met; none; or a comma list
    of Conv names (as in the exported fp32 ONNX) kept in float from the start."""
    max_fallback: int | None = None
    """auto's limit of float Convs; None: a quarter of the Convs."""


__all__ = ["Int8Options"]
