"""The ``--openvino`` step of ``vanilladeploy export``: the verified ONNX as an OpenVINO IR (``<name>.xml`` +
``<name>.bin``), run in OpenVINO's CPU plugin and verified against the same reference as the ONNX (rel. L2 ≤ 1e-5).

Weights stay float32 (``ov.save_model`` would compress them to fp16 by default, which is a precision change, not a
format change). A graph that OpenVINO cannot convert or run is refused with its reason (exit 1), nothing published.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import VerificationError
from vanilladeploy.extras import require
from vanilladeploy.pipeline.checks import RuntimeCheck
from vanilladeploy.pipeline.report import ExportReport, OpenVinoSection
from vanilladeploy.runtimes.runners import OpenVinoRunner
from vanilladeploy.steps import StepTimer
from vanilladeploy.verify import verify_outputs


def stage_ir(name: str, onnx_path: Path, writer: ArtifactWriter, timer: StepTimer) -> Path:
    """Stage ``<name>.xml`` + ``.bin`` converted from ``onnx_path``, float32 weights; the staged ``.xml``. A graph
    OpenVINO cannot convert is a VerificationError with its reason."""
    require("openvino", "export --openvino")
    import openvino as ov

    xml = writer.stage(f"{name}.xml")
    writer.stage(f"{name}.bin")
    with timer.step("openvino_convert_s", "Converting to OpenVINO IR"):
        try:
            ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        except Exception as e:  # OpenVINO's frontend raises its own types (OpConversionFailure, RuntimeError …)
            raise VerificationError(f"OpenVINO cannot convert the ONNX graph: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return xml


def openvino_ir(name: str, onnx_path: Path, writer: ArtifactWriter, timer: StepTimer, report: ExportReport, *,
                inputs: Sequence[np.ndarray], references: Sequence[np.ndarray]) -> Path:
    """Stage ``<name>.xml``/``.bin`` from the staged, verified ONNX; verify them; set ``report.openvino`` and
    ``report.verification.openvino``."""
    import openvino as ov

    xml = stage_ir(name, onnx_path, writer, timer)
    with timer.step("verify_openvino_s", "Running the OpenVINO IR in OpenVINO"):
        with OpenVinoRunner(xml, precision="fp32") as runner:
            outputs = [runner.infer(x) for x in inputs]
            computed_in = runner.compiled_precision
    result = verify_outputs("openvino", outputs, references)
    report.verification.openvino = RuntimeCheck(result)
    report.openvino = OpenVinoSection(xml.name, f"{name}.bin", ov.__version__, computed_in)
    if not result:
        raise VerificationError(f"the OpenVINO IR's output differs from the reference: {result.summary()}")
    return xml


__all__ = ["openvino_ir", "stage_ir"]
