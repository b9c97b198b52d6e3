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


__all__ = ["Int8Options"]
