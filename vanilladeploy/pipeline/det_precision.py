"""Reduced-precision copies of an exported detector, and their verification:

- ``--precision fp16``: ``<name>.fp16.onnx``, the backbone, FPN and head in float16, the post-processing (anchors,
  decoding, NMS) in float32. Features and FPN levels within rel. L2 1e-2 of the training form's; boxes agreeing with
  the fp32 graph's by :data:`~vanilladeploy.detect.GATE_REDUCED` (recall, precision, mean IoU, mean score Δ).
- ``--precision int8``: ``<name>.int8.onnx``, the Convs int8, calibrated on real images (:func:`detector_int8`).

A copy that misses its bar is refused (exit 1) and nothing is published."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.detect import GATE_REDUCED, BoxAgreement, DetPreprocess, split_outputs
from vanilladeploy.errors import UsageError, VerificationError
from vanilladeploy.exporters.detection_onnx import keeps_fp32
from vanilladeploy.exporters.fp16_graph import fp16_export
from vanilladeploy.exporters.onnx_export import set_metadata
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


DET_CALIB_COUNT, DET_HOLDOUT_COUNT = 32, 16
"""Images to calibrate a detector's int8 copy on, and held out to gate it (each several seconds at 800×1333)."""
MAX_FEATURE_REL_L2_INT8 = 0.1
"""An int8 backbone or neck: mean rel. L2 of its features against fp32 on the held-out images, at most this."""


@dataclass(frozen=True)
class DetInt8Options:
    calib: Path
    calib_count: int = DET_CALIB_COUNT
    holdout_count: int = DET_HOLDOUT_COUNT
    calib_method: str = "minmax"


def int8_images(opts: DetInt8Options, pre: DetPreprocess) -> tuple[list[Path], list[Path]]:
    """Calibration and held-out files: the folder's images in order, the first ``calib_count`` then the next
    ``holdout_count`` readable ones; too few is a UsageError naming --calib."""
    from vanilladeploy.images import scan_folder

    readable = []
    for path in scan_folder(opts.calib).files:
        try:
            pre(_open(path))
        except (OSError, ValueError, SyntaxError):
            continue
        readable.append(path)
        if len(readable) == opts.calib_count + opts.holdout_count:
            return readable[:opts.calib_count], readable[opts.calib_count:]
    raise UsageError(f"--calib {opts.calib}: {len(readable)} readable images; a detector's int8 copy needs "
                     f"{opts.calib_count} to calibrate (--calib-count) and {opts.holdout_count} more held out to "
                     "verify it.")


def _open(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def detector_int8(name: str, fp32_onnx: Path, writer: ArtifactWriter, timer: StepTimer, report: dict[str, Any],
                  *, part: str, pre: DetPreprocess, opts: DetInt8Options,
                  images: tuple[list[Path], list[Path]] | None = None) -> Path:
    """Stage ``<name>.int8.onnx``: its Convs int8 (QDQ, symmetric, per-channel weights), calibrated on images the
    test pipeline prepared, everything else float; gated on the held-out images against the fp32 graph — boxes by
    :data:`~vanilladeploy.detect.GATE_REDUCED`, features by :data:`MAX_FEATURE_REL_L2_INT8`."""
    from vanilladeploy.exporters.qdq import quantize_qdq

    calib, held = images or int8_images(opts, pre)
    path = writer.stage(f"{name}.int8.onnx")
    with timer.step("int8_calibrate_s", f"Calibrating int8 on {len(calib)} images ({opts.calib_method})"):
        result = quantize_qdq(fp32_onnx, path, (pre(_open(p))[0] for p in calib), method=opts.calib_method,
                              op_types=("Conv",))
    if result.problems:
        raise VerificationError(f"the int8 ONNX breaks the QDQ contract: {result.problems[0]}")
    quantized = onnx.load(path)
    meta = {p.key: p.value for p in quantized.metadata_props}
    set_metadata(quantized, {**meta, "precision": "int8", "calibration": f"{len(calib)} images, {opts.calib_method}"})
    onnx.save(quantized, path)
    with timer.step("int8_verify_s", f"Verifying int8 against fp32 on {len(held)} held-out images"):
        inputs = [pre(_open(p))[0] for p in held]
        fp32, int8 = run_onnx(fp32_onnx, inputs), run_onnx(path, inputs)
    record: dict[str, Any] = {"calibration": {"images": len(calib), "method": opts.calib_method,
                                              "quantized_convs": result.quantized_convs},
                              "holdout": {"images": len(held)}}
    if part == "detector":
        record["verification"] = gated("the int8 ONNX", boxes_agreement(int8, fp32))
    else:
        check = verify_outputs("onnxruntime int8", [y for ys in int8 for y in ys], [r for rs in fp32 for r in rs],
                               tolerance=MAX_FEATURE_REL_L2_INT8)
        mean = float(np.mean([c.rel_l2 for c in check.comparisons]))
        record["verification"] = {**check.as_dict(), "mean_rel_l2": mean, "passed": mean <= MAX_FEATURE_REL_L2_INT8}
        if not mean <= MAX_FEATURE_REL_L2_INT8:
            raise VerificationError(f"the int8 ONNX's features are {mean:.3f} rel. L2 from fp32 on average "
                                    f"(at most {MAX_FEATURE_REL_L2_INT8}).")
    report["int8"] = record
    return path


__all__ = ["DET_CALIB_COUNT", "DET_HOLDOUT_COUNT", "DetInt8Options", "MAX_FEATURE_REL_L2_INT8", "boxes_agreement",
           "detector_fp16", "detector_int8", "gated", "int8_images", "run_onnx"]
