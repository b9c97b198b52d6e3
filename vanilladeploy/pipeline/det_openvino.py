"""``export DET.pth --openvino``: the verified detector ONNX as an OpenVINO IR (``<name>.xml`` + ``.bin``, float32
weights), run in OpenVINO's CPU plugin. Features and FPN levels must equal the training form's (rel. L2 ≤ 1e-5);
boxes must agree with ONNX Runtime's (:data:`~vanilladeploy.detect.GATE_FP32`). Where the CPU computes bf16
natively, the IR also runs in bf16 and its box agreement with fp32 is reported (gated by
:data:`~vanilladeploy.detect.GATE_REDUCED`, informative: bf16 is a runtime setting, not another file)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.detect import GATE_FP32, GATE_REDUCED
from vanilladeploy.errors import VerificationError
from vanilladeploy.pipeline.det_precision import boxes_agreement
from vanilladeploy.pipeline.openvino import stage_ir
from vanilladeploy.runtimes.runners import PrecisionUnavailable, compile_openvino
from vanilladeploy.steps import StepTimer
from vanilladeploy.verify import verify_outputs


def run_openvino(model: Path, inputs: Sequence[np.ndarray], precision: str = "fp32") -> list[list[np.ndarray]]:
    """Every output of ``model`` (an IR or ONNX) for each input, compiled for ``precision``."""
    request = compile_openvino(model, precision).create_infer_request()
    outs = []
    for x in inputs:
        request.infer({0: x})
        outs.append([np.array(t.data, copy=True) for t in request.output_tensors])
    return outs


def detector_openvino(name: str, onnx_path: Path, writer: ArtifactWriter, timer: StepTimer, report: dict[str, Any],
                      *, part: str, inputs: Sequence[np.ndarray], references: Sequence[Sequence[np.ndarray]]) -> None:
    """Stage and verify the IR. ``references``: per input, the training form's outputs (backbone, neck) or ONNX
    Runtime's detections (detector)."""
    import openvino as ov

    xml = stage_ir(name, onnx_path, writer, timer)
    section: dict[str, Any] = {"xml": xml.name, "version": ov.__version__}
    report["openvino"] = section
    with timer.step("verify_openvino_s", "Running the OpenVINO IR in OpenVINO"):
        outputs = run_openvino(xml, inputs)
        if part != "detector":
            result = verify_outputs("openvino", [y for ys in outputs for y in ys],
                                    [r for rs in references for r in rs])
            section["fp32"] = result.as_dict()
            if not result:
                raise VerificationError(f"the OpenVINO IR's outputs differ from the training form: {result.summary()}")
            return
        fp32 = boxes_agreement(outputs, references)
        section["fp32"] = {**fp32.as_dict(), "gate": vars(GATE_FP32), "passed": not GATE_FP32.failures(fp32)}
        if GATE_FP32.failures(fp32):
            raise VerificationError(f"OpenVINO fp32's boxes disagree with ONNX Runtime's: {fp32.summary()} "
                                    f"({'; '.join(GATE_FP32.failures(fp32))})")
        try:
            bf16 = boxes_agreement(run_openvino(xml, inputs, "bf16"), references)
        except PrecisionUnavailable as e:
            section["bf16"] = {"skipped": str(e)}
            return
        section["bf16"] = {**bf16.as_dict(), "gate": vars(GATE_REDUCED), "passed": not GATE_REDUCED.failures(bf16)}


__all__ = ["detector_openvino", "run_openvino"]
