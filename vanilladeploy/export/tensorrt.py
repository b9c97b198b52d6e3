"""The ``--trt`` part of ``vanilladeploy export``: from the verified ONNX to a verified TensorRT engine.

Steps: compatibility check (anywhere) → for fp16, the fp16-typed ONNX copy, verified in ONNX Runtime → the ``trtexec``
lines for the report → (with TensorRT and a GPU) build, write ``<name>.<precision>.engine`` + its JSON sidecar, run
the engine and verify it against the reference. Without TensorRT or a GPU every step that can run still runs, and the
error returned says what is missing; the caller publishes the artifacts first and then reports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporters.fp16 import fp16_export
from exporters.onnx_export import INPUT_NAME
from exporters.runners import OnnxRuntimeRunner, Runner
from exporters.trt_compat import BatchProfile, check_trt_compat
from exporters.trt_plan import (
    DEFAULT_OPT_LEVEL,
    DEFAULT_WORKSPACE_BYTES,
    EngineBuildError,
    EngineMismatchError,
    TrtBuildOptions,
    engine_name,
    engine_sidecar,
    parse_size,
    tensorrt_missing,
    trtexec_command,
)
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.steps import StepTimer
from vanilladeploy.validate import batch_profile
from vanilladeploy.verify import TOLERANCE_FP16, TOLERANCE_TRT_FP32, top1_agreement, verify_outputs

TOLERANCE_INT8_ENGINE = 5e-2
"""A TensorRT int8 engine against the int8 QDQ ONNX in ONNX Runtime (two int8 kernels' rounding), plus top-1."""


@dataclass
class EngineJob:
    """What the TensorRT step works on: the staged, verified fp32 ONNX and the reference outputs."""

    name: str
    onnx_path: Path  # staged
    model: onnx.ModelProto
    final_dir: Path
    opts: TrtBuildOptions | None  # None: only the fp16-typed ONNX is wanted (no --trt)
    inputs: Sequence[np.ndarray]
    references: Sequence[np.ndarray]
    static_batch: int | None


def verify_against(name: str, runner: Runner, job: EngineJob, *, tolerance: float, max_batch: int, top1: bool
                   ) -> dict[str, Any]:
    """Run ``runner`` on the job's inputs (split to at most ``max_batch``); rel L2 and, with ``top1`` (fp16), top-1
    agreement, both required to pass."""
    with runner:
        outputs = [np.concatenate([runner.infer(x[i:i + max_batch]) for i in range(0, len(x), max_batch)])
                   for x in job.inputs]
    result = verify_outputs(name, outputs, job.references, tolerance=tolerance)
    record = result.as_dict()
    if top1:
        agreement = top1_agreement(outputs, job.references, tolerance=tolerance)
        record["top1"] = agreement.as_dict()
        record["passed"] = bool(result) and bool(agreement)
    return record


def export_engine(job: EngineJob, writer: ArtifactWriter, timer: StepTimer, report: dict[str, Any], *,
                  int8_onnx: Path | None = None) -> VanillaDeployError | None:
    """Stage what ``--trt`` produces and fill ``report["tensorrt"]``; the returned error (TensorRT missing, engine
    not verified) is for after publishing. Errors that make the ONNX itself unusable are raised."""
    opts = job.opts
    assert opts is not None
    section = {"precision": opts.precision, "profile": str(opts.profile)}
    report["tensorrt"] = section
    with timer.step("tensorrt_check_s", "Checking TensorRT compatibility"):
        compat = check_trt_compat(job.model, profile=opts.profile)
    section["compatibility"] = compat.as_dict()
    if not compat:
        raise VerificationError(f"the ONNX graph is not TensorRT-compatible: {compat.errors[0]}")
    typed = fp16_copy(job, writer, timer, report) if opts.precision == "fp16" else int8_onnx
    section["trtexec"] = _trtexec_lines(job, typed)
    missing = tensorrt_missing()
    if missing:
        section.update(status="not built", reason=missing)
        return MissingDependencyError(f"{missing}. The ONNX was written and verified; no engine was built.")
    return _build_and_verify(job, writer, timer, section, typed)


def fp16_copy(job: EngineJob, writer: ArtifactWriter, timer: StepTimer, report: dict[str, Any]) -> Path:
    with timer.step("fp16_onnx_s", "Writing and verifying the fp16-typed ONNX"):
        path = writer.stage(f"{job.name}.fp16.onnx")
        onnx.save(fp16_export(job.model), path)
        record = verify_against("onnxruntime fp16", OnnxRuntimeRunner(path), job, tolerance=TOLERANCE_FP16,
                                max_batch=max(len(x) for x in job.inputs), top1=True)
    report["verification"]["onnxruntime_fp16"] = record
    if not record["passed"]:
        raise VerificationError(f"the fp16-typed ONNX differs from the reference: rel L2 {record['rel_l2']} "
                                f"(tolerance {TOLERANCE_FP16:.0e}), top-1 {record.get('top1')}")
    return path


def _trtexec_lines(job: EngineJob, typed: Path | None) -> dict[str, str]:
    """The equivalent trtexec builds, for TensorRT 10 and 11, with the published file names (``typed``: the fp16 or
    int8 ONNX copy)."""
    final = job.final_dir
    engine = final / engine_name(job.name, job.opts.precision)
    shape = tuple(job.inputs[0].shape)
    lines = {}
    for major in (10, 11):
        use_typed = typed is not None and (major >= 11 or job.opts.precision == "int8")
        onnx_file = final / (typed.name if use_typed else job.onnx_path.name)
        lines[f"tensorrt{major}"] = trtexec_command(onnx_file, engine, input_name=INPUT_NAME, input_shape=shape,
                                                    dynamic_batch=job.static_batch is None, opts=job.opts,
                                                    tensorrt_major=major)
    return lines


def _build_and_verify(job: EngineJob, writer: ArtifactWriter, timer: StepTimer, section: dict[str, Any],
                      typed: Path | None) -> VanillaDeployError | None:
    from exporters.tensorrt_engine import TensorRTRunner, build_engine, gpu_identity, strongly_typed_only

    int8 = job.opts.precision == "int8"
    source = typed if typed is not None and (int8 or strongly_typed_only()) else job.onnx_path
    with timer.step("tensorrt_build_s", f"Building the TensorRT {job.opts.precision} engine (minutes)"):
        try:
            built = build_engine(source, job.opts)
        except EngineBuildError as e:
            raise VerificationError(str(e)) from None
    gpu_name, cc = gpu_identity()
    sidecar = engine_sidecar(trt_version=built.tensorrt_version, gpu_name=gpu_name, compute_capability=cc,
                             opts=job.opts, onnx_sha256=sha256_of(source), onnx_name=source.name,
                             input_shape=tuple(job.inputs[0].shape), build_s=built.build_s,
                             strongly_typed=built.strongly_typed)
    engine_file = engine_name(job.name, job.opts.precision)
    writer.stage(engine_file).write_bytes(built.plan)
    if built.layer_info is not None:
        log = writer.stage(f"{engine_file}.build.log")
        log.write_text("\n".join(built.log) + "\n\n# engine layers (JSON)\n" + built.layer_info + "\n",
                       encoding="utf-8")
    fp16 = job.opts.precision == "fp16"
    tolerance = TOLERANCE_INT8_ENGINE if int8 else TOLERANCE_FP16 if fp16 else TOLERANCE_TRT_FP32
    if int8 and typed is not None:  # an int8 engine answers for the int8 ONNX it was built from, not for fp32
        with OnnxRuntimeRunner(typed) as runner:
            job = replace(job, references=[runner.infer(x) for x in job.inputs])
    with timer.step("verify_tensorrt_s", "Running and verifying the engine"):
        try:
            record = verify_against("tensorrt", TensorRTRunner(built.plan, sidecar=sidecar), job,
                                    tolerance=tolerance, max_batch=job.opts.profile.max, top1=fp16 or int8)
        except (EngineMismatchError, RuntimeError) as e:
            record = {"passed": False, "error": str(e)}
    sidecar["verified"] = bool(record["passed"])
    sidecar["verification"] = record
    writer.stage(f"{engine_file}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    section.update(status="built", engine=engine_file, verified=sidecar["verified"], verification=record,
                   tensorrt_version=built.tensorrt_version, gpu=sidecar["gpu"], build_s=sidecar["build_s"])
    if not sidecar["verified"]:
        return VerificationError(f"the TensorRT engine differs from the reference: {record}. It was written but is "
                                 "marked unverified in the report.")
    return None


def trt_options(precision: str, *, workspace: str | int | None = None, batch: str | None = None,
                timing_cache: Path | None = None, opt_level: int | None = None, static_batch: int | None = None,
                detailed_log: bool = False) -> TrtBuildOptions:
    """``--trt``'s settings as build options, each checked (exit 2 naming the option); None = the default
    (:data:`~exporters.trt_plan.DEFAULT_WORKSPACE_BYTES`, :data:`~exporters.trt_plan.DEFAULT_OPT_LEVEL`, the batch
    profile 1/1/32 or the fixed ``static_batch``)."""
    profile = batch_profile(batch) if batch is not None else (
        BatchProfile.fixed(static_batch) if static_batch else BatchProfile())
    try:
        workspace_bytes = (DEFAULT_WORKSPACE_BYTES if workspace is None else
                           workspace if isinstance(workspace, int) else parse_size(workspace))
    except ValueError as e:
        raise UsageError(f"--workspace: {e}.") from None
    try:
        return TrtBuildOptions(precision=precision, profile=profile, workspace_bytes=workspace_bytes,
                               timing_cache=timing_cache, detailed_log=detailed_log,
                               opt_level=DEFAULT_OPT_LEVEL if opt_level is None else opt_level)
    except ValueError as e:
        raise UsageError(f"{e}.") from None


__all__ = ["EngineJob", "export_engine", "fp16_copy", "trt_options", "verify_against"]
