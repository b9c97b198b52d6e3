"""``vanilladeploy export``: checkpoint → exact fused model → verified, simplified ONNX, with a report.

Steps: load safely → detect the variant → check λ → re-parameterize (float64) → prove the fused torch model equals
the training-form reference → emit + simplify ONNX → check the graph contract → run it in ONNX Runtime against the
same reference → write ``<name>.onnx``, ``<name>_deploy.pth`` and ``<name>.report.json`` atomically.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vanilladeploy import __version__
from vanilladeploy.arch import Architecture, load_model
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import Checkpoint, LambdaInfo, lambda_of, sha256_of
from vanilladeploy.errors import InexactMergeError, OutputError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.exporters.contract import check_graph_contract
from vanilladeploy.exporters.onnx_export import MIN_OPSET, emit_onnx, feature_sizes, simplify_onnx_file
from vanilladeploy.images import Preprocess
from vanilladeploy.models.vanillanet import VanillaNet
from vanilladeploy.pipeline.checks import RuntimeCheck
from vanilladeploy.pipeline.fp16 import fp16_copy
from vanilladeploy.pipeline.int8 import Int8Options, check_int8_options, int8_copy
from vanilladeploy.pipeline.openvino import openvino_ir
from vanilladeploy.pipeline.pixels import check_input_option, check_on_pixels, graph_weights
from vanilladeploy.pipeline.report import (
    ArtifactRecord,
    ExportReport,
    OnnxSection,
    ReparameterizationSection,
    TrainedLambdaCheck,
    VerificationInputs,
    VerificationSection,
)
from vanilladeploy.pipeline.trt_export import EngineJob, export_engine, trt_options
from vanilladeploy.reparam import ReparamResult, reparameterize_state_dict
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner, TorchRunner
from vanilladeploy.runtimes.trt_plan import TrtBuildOptions
from vanilladeploy.source import check_source_options, describe, detect, resolve_source
from vanilladeploy.steps import Progress, StepTimer, silent
from vanilladeploy.validate import check_opset, check_path
from vanilladeploy.verify import TOLERANCE_FP32, VerifyResult, first_divergent_layer, random_inputs, verify_outputs

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class ExportOptions:
    """What ``vanilladeploy export`` was asked for; ``None`` means the default."""

    out_dir: Path | None = None
    arch: str | None = None
    key: str | None = None
    img_size: int | None = None
    """Input height and width; None: the checkpoint's ``args.input_size`` when it records one, else 224."""
    opset: int = MIN_OPSET
    static_batch: int | None = None
    simplify: bool = True
    allow_inexact: bool = False
    num_inputs: int = 3
    seed: int = 0
    precision: str = "fp32"
    """fp32: the verified ONNX only; fp16: also ``<name>.fp16.onnx``; int8: also ``<name>.int8.onnx`` (QDQ,
    calibrated as ``int8`` says); each verified. With ``trt``: the engine's precision."""
    int8: Int8Options | None = None
    """Calibration and its gate; required by (and only with) ``precision="int8"``."""
    trt: TrtBuildOptions | None = None
    """Also build and verify a TensorRT engine (``--trt``)."""
    openvino: bool = False
    """Also write and verify the OpenVINO IR (``--openvino``)."""
    input_dtype: str = "float32"
    """``--input``: float32 (normalized images), or uint8 pixels the graph normalizes itself (:mod:`.pixels`)."""


@dataclass
class ExportResult:
    """The artifacts written and the report, typed (``typed_report``) and as the dict ``<name>.report.json`` holds
    (``report``). Truthy when every verification passed."""

    out_dir: Path
    artifacts: dict[str, Path]
    typed_report: ExportReport
    error: VanillaDeployError | None = None
    """A failure after the artifacts were published (``--trt`` without TensorRT, an unverified engine or int8)."""

    @cached_property
    def report(self) -> dict[str, Any]:
        """The report as ``<name>.report.json`` holds it (plain dicts and lists, keys in the file's order)."""
        return self.typed_report.as_dict()

    @property
    def verified(self) -> bool:
        return self.error is None

    def __bool__(self) -> bool:
        return self.verified

    @property
    def onnx(self) -> Path:
        """The verified fp32 ONNX."""
        return self.artifacts[f"{self.typed_report.architecture.variant}.onnx"]


def export_options(*, precision: str = "fp32", calib: Path | str | None = None, calib_count: int | None = None,
                   calib_method: str | None = None, min_agreement: float | None = None,
                   holdout_count: int | None = None, max_rel_l2: float | None = None, fallback: str | None = None,
                   max_fallback: int | None = None,
                   trt: bool = False, workspace: str | int | None = None, trt_profile: str | None = None,
                   timing_cache: Path | str | None = None, opt_level: int | None = None, verbose: bool = False,
                   out_dir: Path | str | None = None, **common: Any) -> ExportOptions:
    """:class:`ExportOptions` from flat keywords, as the CLI and :func:`vanilladeploy.export` take them: the int8
    keywords make ``int8`` (when ``calib`` is given), the TensorRT ones ``trt`` (when ``trt`` is true); None = the
    default. ``common`` are the other fields of :class:`ExportOptions`; ``batch``, the old name of ``trt_profile``,
    still works with a :class:`DeprecationWarning`."""
    if "batch" in common:
        warnings.warn("export(batch=...) is now export(trt_profile=...)", DeprecationWarning, stacklevel=3)
        trt_profile = common.pop("batch") if trt_profile is None else trt_profile
    given = {k: v for k, v in {"calib_count": calib_count, "calib_method": calib_method,
                               "min_agreement": min_agreement, "holdout_count": holdout_count, "max_rel_l2": max_rel_l2,
                               "fallback": fallback,
                               "max_fallback": max_fallback}.items() if v is not None}
    int8 = Int8Options(Path(calib), **given) if calib is not None else None
    trt_opts = trt_options(precision, workspace=workspace, profile=trt_profile, opt_level=opt_level,
                           timing_cache=None if timing_cache is None else Path(timing_cache),
                           static_batch=common.get("static_batch"), detailed_log=verbose) if trt else None
    unknown = set(common) - {f.name for f in fields(ExportOptions)}
    if unknown:
        raise UsageError(f"unknown export option {sorted(unknown)[0]!r}.")
    return ExportOptions(out_dir=None if out_dir is None else Path(out_dir), precision=precision, int8=int8,
                         trt=trt_opts, **common)


def check_export_options(source: str, opts: ExportOptions) -> None:
    """Every refusal of an export's options, before any work (the CLI and the Python API share it)."""
    check_source_options(source, arch=opts.arch, key=opts.key)
    if opts.precision not in EXPORT_PRECISIONS:
        raise UsageError(f"--precision {opts.precision}: choose one of {', '.join(EXPORT_PRECISIONS)}.")
    if opts.precision == "int8" and opts.int8 is None:
        raise UsageError("--precision int8 needs --calib DIR, a folder of images to calibrate on (an int8 model "
                         "calibrated on noise is not deployable).")
    if opts.precision != "int8" and opts.int8 is not None:
        raise UsageError("--calib has no effect without --precision int8: add it, or drop --calib.")
    check_opset(opts.opset)
    check_input_option(opts.input_dtype, trt=opts.trt is not None)
    check_path("--out", opts.out_dir, directory=True)
    if opts.trt is not None:
        check_path("--timing-cache", opts.trt.timing_cache, directory=False)
        if opts.static_batch and (opts.trt.profile.min, opts.trt.profile.max) != (opts.static_batch,) * 2:
            raise UsageError(f"--static-batch {opts.static_batch} fixes the batch, but --trt-profile asks for "
                             f"{opts.trt.profile}; drop --trt-profile or pass --trt-profile {opts.static_batch}/"
                             f"{opts.static_batch}/{opts.static_batch}.")
    if opts.int8 is not None:
        check_int8_options(opts.int8)


def require_exact(info: LambdaInfo, *, allow_inexact: bool) -> None:
    if info.exact or allow_inexact:
        return
    raise InexactMergeError(
        f"this checkpoint was trained with λ = {info.value:.4g} (epoch {info.epoch} of {info.decay_epochs} decay "
        "epochs): its two 1x1 convs per layer are not linear yet, so merging them changes the network. Export the "
        f"checkpoint of an epoch ≥ {info.decay_epochs}, or pass --allow-inexact to merge anyway (the report then "
        "states the error against the trained network)."
    )


def export_preprocess(ckpt: Checkpoint, opts: ExportOptions) -> Preprocess:
    """The official eval transform the artifacts are exported for: ``--img-size`` when given, else the checkpoint's
    ``args.input_size``, else 224; crop_pct and mean/std from the checkpoint's args or the defaults — each labelled
    with its source (recorded in the report and in every ONNX's ``metadata_props``); the ``--input`` dtype."""
    pre = Preprocess.from_args(ckpt.args, img_size=opts.img_size, img_size_source="--img-size")
    return pre if opts.input_dtype == "float32" else replace(pre, input_dtype=opts.input_dtype)


def _check_img_size(arch: Architecture, pre: Preprocess) -> None:
    img_size, source = pre.img_size, pre.sources["img_size"]
    if min(feature_sizes(arch.spec, img_size)) < 1:
        smallest = next(s for s in range(1, 4096) if min(feature_sizes(arch.spec, s)) >= 1)
        given = "--img-size" if source == "--img-size" else f"the image size ({source})"
        raise UsageError(f"{given} {img_size} is too small for {arch.name}: pass --img-size {smallest} or more.")


def _infer(model: VanillaNet, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with TorchRunner(model) as runner:
        return [runner.infer(x) for x in inputs]


@dataclass
class _Run:
    """State shared by the steps of one export: what was asked, what was found, what was measured."""

    opts: ExportOptions
    arch: Architecture
    timer: StepTimer
    report: ExportReport
    inputs: list[np.ndarray]
    preprocess: Preprocess
    references: list[np.ndarray] = field(default_factory=list)


def _fuse_and_verify(run: _Run, ckpt: Checkpoint, lam: LambdaInfo) -> VanillaNet:
    """The deploy model; sets the reference outputs. For a training-form input, proves the fusion first."""
    ver = run.report.verification
    if ckpt.form == "deploy":
        deploy = load_model(ckpt.state_dict, run.arch, deploy=True)
        run.report.reparameterization = ReparameterizationSection(skipped="the checkpoint is already in deploy form")
        run.references = _infer(deploy, run.inputs)
        return deploy
    train = load_model(ckpt.state_dict, run.arch, deploy=False)
    with run.timer.step("reparameterize_s", "Re-parameterizing in float64"):
        fused: ReparamResult = reparameterize_state_dict(ckpt.state_dict)
        deploy = load_model(fused.state_dict, run.arch, deploy=True)
    run.report.reparameterization = ReparameterizationSection(certificates=tuple(fused.certificates))
    with run.timer.step("verify_torch_s", "Verifying the fused model against the training form (λ = 1)"):
        train.set_lambda(1.0)
        run.references = _infer(train, run.inputs)
        result = verify_outputs("torch", _infer(deploy, run.inputs), run.references)
    ver.torch = RuntimeCheck(result)
    if not result:
        layer = first_divergent_layer(train, deploy, run.inputs[0])
        raise VerificationError(f"the fused model differs from the training form: {result.summary()}; first "
                                f"divergent layer: {layer}. This is a bug; please report it with the report JSON.")
    if not lam.exact:
        train.set_lambda(lam.value)
        inexact = verify_outputs("trained λ", _infer(deploy, run.inputs), _infer(train, run.inputs),
                                 tolerance=np.inf)
        ver.against_trained_lambda = TrainedLambdaCheck(inexact, lam.value)
    return deploy


def _export_onnx(run: _Run, deploy: VanillaNet, metadata: dict[str, str], onnx_path: Path) -> onnx.ModelProto:
    opts, arch = run.opts, run.arch
    with run.timer.step("onnx_build_s", "Emitting the ONNX graph"):
        state_dict, pixels = graph_weights(deploy.state_dict(), arch.spec, run.preprocess)
        emitted = emit_onnx(state_dict, arch.spec, act_num=arch.act_num, img_size=opts.img_size, opset=opts.opset,
                            batch=opts.static_batch, metadata=metadata, pixels=pixels)
    nodes_before, model = len(emitted.model.graph.node), emitted.model
    if opts.simplify:
        # the checked bytes go to a scratch file beside the artifact; onnx-simplifier reads it and writes the artifact
        emitted_path = onnx_path.with_name(f".{onnx_path.name}.emitted")
        emitted_path.write_bytes(emitted.data)
        del emitted, model  # 230 MB each for VanillaNet-13: not held while the simplified copy is made
        model = simplify_staged(emitted_path, onnx_path, run.timer)
    else:
        onnx_path.write_bytes(emitted.data)
    contract = check_graph_contract(model, arch.spec, input_dtype=run.preprocess.input_dtype)
    run.report.onnx = OnnxSection(opts.opset, nodes_before, opts.simplify, contract)
    if not contract:
        raise VerificationError(f"the ONNX graph breaks the contract: {'; '.join(contract.problems)}")
    with run.timer.step("verify_onnxruntime_s", "Running the ONNX graph in ONNX Runtime"):
        with OnnxRuntimeRunner(onnx_path) as runner:
            outputs = [runner.infer(x) for x in run.inputs]
    result: VerifyResult = verify_outputs("onnxruntime", outputs, run.references)
    run.report.verification.onnxruntime = RuntimeCheck(result)
    if not result:
        raise VerificationError(f"ONNX Runtime output differs from the reference: {result.summary()}")
    return model


def simplify_staged(emitted_path: Path, onnx_path: Path, timer: StepTimer) -> onnx.ModelProto:
    """onnx-simplifier from the scratch file ``emitted_path`` (removed afterwards, whatever happens) into
    ``onnx_path``; the simplified model. Its failure is a VerificationError that suggests ``--no-simplify``."""
    with timer.step("onnx_simplify_s", "Simplifying with onnx-simplifier"):
        try:
            return simplify_onnx_file(emitted_path, onnx_path)
        except Exception as e:
            raise VerificationError(f"onnx-simplifier failed: {e}. Re-run with --no-simplify.") from None
        finally:
            emitted_path.unlink(missing_ok=True)


def export_checkpoint(source: str, opts: ExportOptions, *, progress: Progress = silent,
                      checkpoint: Checkpoint | None = None) -> ExportResult:
    """Run the whole export; raises a :class:`~vanilladeploy.errors.VanillaDeployError` on any failure, in which
    case nothing is written (earlier artifacts in the output directory stay as they were). ``checkpoint``: ``source``
    already loaded (the CLI loads it once to tell a detector from a classifier)."""
    check_export_options(source, opts)
    timer = StepTimer(progress)
    with timer.step("load_s", f"Loading {source}"):
        ckpt = checkpoint or resolve_source(source, key=opts.key, seed=opts.seed)
        arch = detect(ckpt, arch=opts.arch)
    lam = lambda_of(ckpt)
    require_exact(lam, allow_inexact=opts.allow_inexact)
    pre = export_preprocess(ckpt, opts)
    _check_img_size(arch, pre)
    opts = replace(opts, img_size=pre.img_size)
    out_dir = opts.out_dir or Path("export") / arch.name
    writer = ArtifactWriter(out_dir)  # refuses an unusable --out now, before the expensive steps
    batch = opts.static_batch or (min(max(2, opts.trt.profile.min), opts.trt.profile.max) if opts.trt else 2)
    inputs_record = VerificationInputs(opts.num_inputs, batch, opts.img_size, opts.seed)
    report = ExportReport.described(describe(ckpt, arch, lam), preprocessing=pre,
                                    verification=VerificationSection(inputs_record))
    inputs = random_inputs(opts.num_inputs, batch=batch, img_size=opts.img_size, seed=opts.seed)
    run = _Run(opts, arch, timer, report, inputs, pre)
    deploy = _fuse_and_verify(run, ckpt, lam)
    source_sha256 = ckpt.sha256
    del ckpt  # the training-form weights (VanillaNet-13: 460 MB): freed, their memory serves the ONNX steps
    if pre.input_dtype == "uint8":  # from here on, every graph is checked on pixels
        run.inputs, run.references = check_on_pixels(deploy, arch.spec, pre, inputs_record, report)
    metadata = {"vanilladeploy_version": __version__, "variant": arch.name, "act_num": str(arch.act_num),
                "num_classes": str(arch.num_classes), "source_sha256": source_sha256 or "untrained",
                "lambda": repr(lam.value), **pre.metadata(), "precision": "fp32"}
    try:
        return _write_artifacts(run, writer, deploy, metadata)
    except OSError as e:
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e}. Choose another --out.") from None


def _write_artifacts(run: _Run, writer: ArtifactWriter, deploy: VanillaNet, metadata: dict[str, str]
                     ) -> ExportResult:
    """Stage the ONNX (verified in place), the deploy state dict and the report; then publish them together. An int8
    verification failure (exit 1) outranks a TensorRT step's error (TensorRT missing: exit 3)."""
    name, report = run.arch.name, run.report
    with writer:
        onnx_tmp = writer.stage(f"{name}.onnx")
        model = _export_onnx(run, deploy, metadata, onnx_tmp)
        pth_tmp = writer.stage(f"{name}_deploy.pth")
        torch.save({"model": deploy.state_dict()}, pth_tmp)
        if run.opts.openvino:
            openvino_ir(name, onnx_tmp, writer, run.timer, report, inputs=run.inputs, references=run.references)
        error, int8_path = None, None
        if run.opts.int8 is not None:
            int8_path, error = int8_copy(name, onnx_tmp, model, run.preprocess, run.opts.int8, writer, run.timer,
                                         report)
        if run.opts.trt is not None:
            trt = replace(run.opts.trt, float_layers=report.int8.float_layers if report.int8 else ())
            job = EngineJob(name, onnx_tmp, model, writer.out_dir, trt, run.inputs, run.references,
                            run.opts.static_batch)
            engine_error = export_engine(job, writer, run.timer, report, int8_onnx=int8_path)
            error = error or engine_error
        elif run.opts.precision == "fp16":
            fp16_copy(name, model, writer, run.timer, report, inputs=run.inputs, references=run.references)
        report_tmp = writer.stage(f"{name}.report.json")
        report.artifacts = {tmp.name: ArtifactRecord(sha256_of(tmp), tmp.stat().st_size)
                            for tmp in writer.staged() if tmp != report_tmp}
        report.timings_s = dict(run.timer.timings)
        report_tmp.write_text(json.dumps(report.as_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                              encoding="utf-8")
        finals = writer.commit()
    return ExportResult(writer.out_dir, {p.name: p for p in finals}, report, error)


__all__ = ["EXPORT_PRECISIONS", "ExportOptions", "ExportResult", "TOLERANCE_FP32", "check_export_options",
           "export_checkpoint", "export_options", "export_preprocess", "require_exact", "simplify_staged"]
