"""The ``--trt`` part of ``vanilladeploy export``: from the verified ONNX to a verified TensorRT engine.

Steps: compatibility check (anywhere) → for fp16, the fp16-typed ONNX copy (:mod:`.fp16`) → the ``trtexec`` lines
for the report → (with TensorRT and a GPU) build, write ``<name>.<precision>.engine`` + its JSON sidecar, run
the engine and verify it against the reference. Without TensorRT or a GPU every step that can run still runs, and the
error returned says what is missing; the caller publishes the artifacts first and then reports it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.exporters.onnx_export import INPUT_NAME
from vanilladeploy.exporters.trt_compat import BatchProfile, check_trt_compat
from vanilladeploy.pipeline.checks import RunFailure, RuntimeCheck, verify_against
from vanilladeploy.pipeline.fp16 import fp16_copy
from vanilladeploy.pipeline.report import BuiltEngine, ExportReport, TensorRTSection, TrtexecLines
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.runtimes.trt_plan import (
    DEFAULT_OPT_LEVEL,
    DEFAULT_WORKSPACE_BYTES,
    EngineBuildError,
    EngineMismatchError,
    TrtBuildOptions,
    engine_name,
    parse_size,
    tensorrt_missing,
    trtexec_command,
)
from vanilladeploy.steps import StepTimer
from vanilladeploy.validate import trt_profile
from vanilladeploy.verify import TOLERANCE_FP16, TOLERANCE_INT8_ENGINE, TOLERANCE_TRT_FP32


@dataclass
class EngineJob:
    """What the TensorRT step works on: the staged, verified fp32 ONNX and the reference outputs."""

    name: str
    onnx_path: Path  # staged
    model: onnx.ModelProto
    final_dir: Path
    opts: TrtBuildOptions
    inputs: Sequence[np.ndarray]
    references: Sequence[np.ndarray]
    static_batch: int | None


def export_engine(job: EngineJob, writer: ArtifactWriter, timer: StepTimer, report: ExportReport, *,
                  int8_onnx: Path | None = None) -> VanillaDeployError | None:
    """Stage what ``--trt`` produces and set ``report.tensorrt``; the returned error (TensorRT missing, engine not
    verified) is for after publishing. Errors that make the ONNX itself unusable are raised."""
    opts = job.opts
    with timer.step("tensorrt_check_s", "Checking TensorRT compatibility"):
        compat = check_trt_compat(job.model, profile=opts.profile)
    report.tensorrt = section = TensorRTSection(opts.precision, str(opts.profile), compat)
    if not compat:
        raise VerificationError(f"the ONNX graph is not TensorRT-compatible: {compat.errors[0]}")
    typed = (fp16_copy(job.name, job.model, writer, timer, report, inputs=job.inputs, references=job.references)
             if opts.precision == "fp16" else int8_onnx)
    section.trtexec = _trtexec_lines(job, typed)
    missing = tensorrt_missing()
    if missing:
        section.missing = missing
        return MissingDependencyError(f"{missing}. The ONNX was written and verified; no engine was built.")
    return _build_and_verify(job, writer, timer, section, typed)


def _trtexec_lines(job: EngineJob, typed: Path | None) -> TrtexecLines:
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
    return TrtexecLines(**lines)


def _build_and_verify(job: EngineJob, writer: ArtifactWriter, timer: StepTimer, section: TensorRTSection,
                      typed: Path | None) -> VanillaDeployError | None:
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner, build_with_sidecar, strongly_typed_only

    int8 = job.opts.precision == "int8"
    source = typed if typed is not None and (int8 or strongly_typed_only()) else job.onnx_path
    with timer.step("tensorrt_build_s", f"Building the TensorRT {job.opts.precision} engine (minutes)"):
        try:
            built, sidecar = build_with_sidecar(source, job.opts, input_shape=job.inputs[0].shape)
        except EngineBuildError as e:
            raise VerificationError(str(e)) from None
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
        check: RuntimeCheck | RunFailure
        try:
            check = verify_against("tensorrt", TensorRTRunner(built.plan, sidecar=sidecar), inputs=job.inputs,
                                   references=job.references, tolerance=tolerance, max_batch=job.opts.profile.max,
                                   top1=fp16 or int8)
        except (EngineMismatchError, RuntimeError) as e:
            check = RunFailure(str(e))
    sidecar["verified"] = check.passed
    sidecar["verification"] = check.as_dict()
    writer.stage(f"{engine_file}.json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    section.built = BuiltEngine(engine_file, check.passed, check, built.tensorrt_version, sidecar["gpu"],
                                sidecar["build_s"])
    if not check.passed:
        return VerificationError(f"the TensorRT engine differs from the reference: {sidecar['verification']}. It "
                                 "was written but is marked unverified in the report.")
    return None


def trt_options(precision: str, *, workspace: str | int | None = None, profile: str | None = None,
                timing_cache: Path | None = None, opt_level: int | None = None, static_batch: int | None = None,
                detailed_log: bool = False) -> TrtBuildOptions:
    """``--trt``'s settings as build options, each checked (exit 2 naming the option); None = the default
    (:data:`~vanilladeploy.runtimes.trt_plan.DEFAULT_WORKSPACE_BYTES`,
    :data:`~vanilladeploy.runtimes.trt_plan.DEFAULT_OPT_LEVEL`, the batch profile 1/1/32 or the fixed
    ``static_batch``)."""
    batches = trt_profile(profile) if profile is not None else (
        BatchProfile.fixed(static_batch) if static_batch else BatchProfile())
    try:
        workspace_bytes = (DEFAULT_WORKSPACE_BYTES if workspace is None else
                           workspace if isinstance(workspace, int) else parse_size(workspace))
    except ValueError as e:
        raise UsageError(f"--workspace: {e}.") from None
    try:
        return TrtBuildOptions(precision=precision, profile=batches, workspace_bytes=workspace_bytes,
                               timing_cache=timing_cache, detailed_log=detailed_log,
                               opt_level=DEFAULT_OPT_LEVEL if opt_level is None else opt_level)
    except ValueError as e:
        raise UsageError(f"{e}.") from None


__all__ = ["EngineJob", "export_engine", "trt_options"]
