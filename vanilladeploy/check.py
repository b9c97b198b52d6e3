"""``vanilladeploy check``: will TensorRT's ONNX parser take this file? (No TensorRT or GPU needed.)"""

from __future__ import annotations

from pathlib import Path

import onnx

from vanilladeploy.errors import CheckpointError, UsageError
from vanilladeploy.exporters.trt_compat import (
    DETECTOR_BATCH_PROFILE,
    BatchProfile,
    CompatResult,
    ShapeProfile,
    check_trt_compat,
)
from vanilladeploy.validate import trt_profile


def check_onnx_file(path: Path, *, profile: str | None = None, shapes: str | None = None) -> CompatResult:
    """Load ``path`` (with external data beside it, if any) and check it against the TensorRT batch ``profile``
    (MIN/OPT/MAX or MAX) and, for a dynamic height and width, the ``shapes`` profile (HxW/HxW/HxW; default for a
    detector's graph: :class:`ShapeProfile`'s)."""
    batches = trt_profile(profile) if profile is not None else None
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file." if not path.exists() else f"{path} is not a file.")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf DecodeError, missing external data, permissions
        raise CheckpointError(f"{path} is not a readable ONNX model ({type(e).__name__}: {e}).") from None
    if not model.graph.node and not model.graph.output:
        raise CheckpointError(f"{path} is not an ONNX model (no graph).")
    detector = any(p.key == "detector" for p in model.metadata_props)
    if batches is None:  # a detector's engine defaults to 1/1/4 (export --trt), a classifier's to 1/1/32
        batches = DETECTOR_BATCH_PROFILE if detector else BatchProfile()
    try:
        spatial = ShapeProfile.parse(shapes) if shapes is not None else ShapeProfile() if detector else None
    except ValueError as e:
        raise UsageError(f"--trt-shapes: {e}") from None
    return check_trt_compat(model, profile=batches, shapes=spatial)
