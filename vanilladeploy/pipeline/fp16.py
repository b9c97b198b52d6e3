"""The fp16-typed ONNX step of ``vanilladeploy export`` (``--precision fp16``, with or without ``--trt``):
``<name>.fp16.onnx``, every tensor fp16 (:func:`vanilladeploy.exporters.fp16_graph.fp16_export`), run in ONNX Runtime
against the export's reference and recorded as the report's ``verification.onnxruntime_fp16``: rel. L2 ≤ 1e-2 and
top-1 agreement, both required. A copy that misses either is refused (exit 1), nothing published.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import VerificationError
from vanilladeploy.exporters.fp16_graph import fp16_export
from vanilladeploy.pipeline.checks import verify_against
from vanilladeploy.pipeline.report import ExportReport
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.steps import StepTimer
from vanilladeploy.verify import TOLERANCE_FP16


def fp16_copy(name: str, model: onnx.ModelProto, writer: ArtifactWriter, timer: StepTimer, report: ExportReport,
              *, inputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Path:
    """Stage ``<name>.fp16.onnx`` from the verified fp32 ``model``, verify it, set
    ``report.verification.onnxruntime_fp16``; the staged path (TensorRT 11 builds from it)."""
    with timer.step("fp16_onnx_s", "Writing and verifying the fp16-typed ONNX"):
        path = writer.stage(f"{name}.fp16.onnx")
        onnx.save(fp16_export(model), path)
        check = verify_against("onnxruntime fp16", OnnxRuntimeRunner(path), inputs=inputs, references=references,
                               tolerance=TOLERANCE_FP16, max_batch=max(len(x) for x in inputs), top1=True)
    report.verification.onnxruntime_fp16 = check
    if not check:
        record = check.as_dict()
        raise VerificationError(f"the fp16-typed ONNX differs from the reference: rel L2 {record['rel_l2']} "
                                f"(tolerance {TOLERANCE_FP16:.0e}), top-1 {record.get('top1')}")
    return path


__all__ = ["fp16_copy"]
