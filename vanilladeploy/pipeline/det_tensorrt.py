"""``export DET.pth --trt``: the verified detector ONNX as a TensorRT engine, its optimization profile over the
batch and over height × width (default 320×320 … 1344×1344, tuned for 800×1344; ``--trt-shapes``).

Steps as the classifier's (:mod:`vanilladeploy.pipeline.trt_export`): the compatibility check with that profile
(anywhere) → the ``trtexec`` lines for the report → with TensorRT and a GPU, build, write ``<name>.fp32.engine`` and
its JSON sidecar, run it and verify it: features and levels ≤ 1e-4 rel. L2 against the training form (TF32 off), boxes
against ONNX Runtime's by :data:`~vanilladeploy.detect.GATE_FP32`. NMS is ONNX's ``NonMaxSuppression``, which
TensorRT's parser imports as its own INMSLayer (no plugin). Without TensorRT or a GPU the rest is still written and
verified, and the error returned (exit 3) says what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.detect import GATE_FP32
from vanilladeploy.errors import MissingDependencyError, VanillaDeployError, VerificationError
from vanilladeploy.exporters.detection_onnx import INPUT_NAME
from vanilladeploy.exporters.trt_compat import check_trt_compat
from vanilladeploy.pipeline.det_precision import boxes_agreement
from vanilladeploy.runtimes.trt_plan import (
    EngineBuildError,
    TrtBuildOptions,
    engine_name,
    engine_sidecar,
    tensorrt_missing,
    trtexec_command,
)
from vanilladeploy.steps import StepTimer
from vanilladeploy.verify import TOLERANCE_TRT_FP32, verify_outputs


def detector_engine(name: str, onnx_path: Path, final_dir: Path, writer: ArtifactWriter, timer: StepTimer,
                    report: dict[str, Any], *, part: str, opts: TrtBuildOptions, inputs: Sequence[np.ndarray],
                    references: Sequence[Sequence[np.ndarray]]) -> VanillaDeployError | None:
    """Stage the engine (where TensorRT runs) and set ``report["tensorrt"]``; the error returned is for after
    publishing. ``references``: the training form's outputs (backbone, neck) or ONNX Runtime's (detector)."""
    with timer.step("tensorrt_check_s", "Checking TensorRT compatibility"):
        compat = check_trt_compat(onnx.load(onnx_path, load_external_data=False), profile=opts.profile,
                                  shapes=opts.shapes)
    shape = tuple(inputs[0].shape)
    engine = engine_name(name, opts.precision)
    section: dict[str, Any] = {"precision": opts.precision, "profile": str(opts.profile),
                               "shapes": str(opts.shapes), "compatibility": compat.as_dict(),
                               "trtexec": {f"tensorrt{major}": trtexec_command(
                                   final_dir / onnx_path.name, final_dir / engine, input_name=INPUT_NAME,
                                   input_shape=shape, dynamic_batch=True, opts=opts, tensorrt_major=major)
                                   for major in (10, 11)}}
    report["tensorrt"] = section
    if not compat:
        raise VerificationError(f"the ONNX graph is not TensorRT-compatible: {compat.errors[0]}")
    missing = tensorrt_missing()
    if missing:
        section["missing"] = missing
        return MissingDependencyError(f"{missing}. The ONNX was written and verified; no engine was built.")
    return _build_and_verify(onnx_path, engine, writer, timer, section, part=part, opts=opts, inputs=inputs,
                             references=references)


def _build_and_verify(onnx_path: Path, engine: str, writer: ArtifactWriter, timer: StepTimer,
                      section: dict[str, Any], *, part: str, opts: TrtBuildOptions, inputs: Sequence[np.ndarray],
                      references: Sequence[Sequence[np.ndarray]]) -> VanillaDeployError | None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner, build_engine, gpu_identity

    with timer.step("tensorrt_build_s", "Building the TensorRT engine (minutes)"):
        try:
            built = build_engine(onnx_path, opts)
        except EngineBuildError as e:
            raise VerificationError(str(e)) from None
    gpu_name, cc = gpu_identity()
    sidecar = engine_sidecar(trt_version=built.tensorrt_version, gpu_name=gpu_name, compute_capability=cc,
                             opts=opts, onnx_sha256=sha256_of(onnx_path), onnx_name=onnx_path.name,
                             input_shape=tuple(inputs[0].shape), build_s=built.build_s,
                             strongly_typed=built.strongly_typed)
    writer.stage(engine).write_bytes(built.plan)
    names = [o.name for o in onnx.load(onnx_path, load_external_data=False).graph.output]
    with timer.step("verify_tensorrt_s", "Running and verifying the engine"), \
            TensorRTRunner(built.plan, sidecar=sidecar) as runner:
        outputs = [[runner.infer_all(x)[n] for n in names] for x in inputs]
    if part == "detector":
        agreement = boxes_agreement(outputs, references)
        failures = GATE_FP32.failures(agreement)
        check: dict[str, Any] = {**agreement.as_dict(), "gate": vars(GATE_FP32), "passed": not failures}
    else:
        result = verify_outputs("tensorrt", [y for ys in outputs for y in ys], [r for rs in references for r in rs],
                                tolerance=TOLERANCE_TRT_FP32)
        check, failures = result.as_dict(), [] if result else [result.summary()]
    sidecar["verified"], sidecar["verification"] = not failures, check
    writer.stage(f"{engine}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    section["built"] = {"engine": engine, "tensorrt_version": built.tensorrt_version, "gpu": sidecar["gpu"],
                        "build_s": sidecar["build_s"], "verification": check}
    if failures:
        return VerificationError(f"the TensorRT engine differs from the reference: {'; '.join(failures)}. It was "
                                 "written but is marked unverified in the report.")
    return None


__all__ = ["detector_engine"]
