"""Reduced-precision copies of an exported detector: ``--precision fp16`` (``<name>.fp16.onnx``: the backbone, FPN
and head in float16, the post-processing — anchors, decoding, NMS — in float32) and their verification. Features and
FPN levels must be within the fp16 tolerance (rel. L2 ≤ 1e-2) of the training form's; boxes must agree with the fp32
graph's by :data:`~vanilladeploy.detect.GATE_REDUCED` (recall, precision, mean IoU, mean score Δ), else exit 1 and
nothing is published."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.detect import GATE_REDUCED, BoxAgreement, split_outputs
from vanilladeploy.errors import VerificationError
from vanilladeploy.exporters.detection_onnx import keeps_fp32
from vanilladeploy.exporters.fp16 import fp16_export
from vanilladeploy.runtimes.runners import ort_session
from vanilladeploy.steps import StepTimer
from vanilladeploy.verify import TOLERANCE_FP16, verify_outputs


def run_onnx(model: Path | bytes, inputs: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    """Every output of ``model`` in ONNX Runtime, for each input."""
    session = ort_session(model)
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x}) for x in inputs]


def boxes_agreement(outputs: Sequence[Sequence[np.ndarray]], references: Sequence[Sequence[np.ndarray]]
                    ) -> BoxAgreement:
    """Detections (graph outputs per input) against the reference graph's, image by image."""
    result = BoxAgreement()
    for out, ref in zip(outputs, references):
        for det, r in zip(split_outputs(out), split_outputs(ref)):
            result.add(det, r)
    return result


def gated(name: str, agreement: BoxAgreement) -> dict[str, Any]:
    """The agreement as the report records it; raises when it misses :data:`GATE_REDUCED`."""
    failures = GATE_REDUCED.failures(agreement)
    if failures:
        raise VerificationError(f"{name}'s boxes disagree with the fp32 graph's: {agreement.summary()} "
                                f"({'; '.join(failures)}).")
    return {**agreement.as_dict(), "gate": vars(GATE_REDUCED), "passed": True}


def detector_fp16(name: str, model: onnx.ModelProto, writer: ArtifactWriter, timer: StepTimer,
                  report: dict[str, Any], *, part: str, inputs: Sequence[np.ndarray],
                  references: Sequence[Sequence[np.ndarray]]) -> Path:
    """Stage ``<name>.fp16.onnx`` from the verified fp32 ``model`` and verify it; ``references``: the training
    form's outputs (backbone, neck) or the fp32 graph's (detector)."""
    with timer.step("fp16_onnx_s", "Writing and verifying the fp16 ONNX"):
        path = writer.stage(f"{name}.fp16.onnx")
        try:
            typed = fp16_export(model, keep_node=keeps_fp32)
        except ValueError as e:
            raise VerificationError(f"cannot make the fp16 ONNX: {e}") from None
        onnx.save(typed, path)
        outputs = run_onnx(path, inputs)
    if part != "detector":
        result = verify_outputs("onnxruntime fp16", [y for ys in outputs for y in ys],
                                [r for rs in references for r in rs], tolerance=TOLERANCE_FP16)
        report["verification"]["onnxruntime_fp16"] = result.as_dict()
        if not result:
            raise VerificationError(f"the fp16 ONNX differs from the training form: {result.summary()}")
        return path
    report["verification"]["onnxruntime_fp16"] = gated("the fp16 ONNX", boxes_agreement(outputs, references))
    return path


__all__ = ["boxes_agreement", "detector_fp16", "gated", "run_onnx"]
