"""``vanilladeploy export``: checkpoint → exact fused model → verified, simplified ONNX, with a report.

Steps: load safely → detect the variant → check λ → re-parameterize (float64) → prove the fused torch model equals
the training-form reference → emit + simplify ONNX → check the graph contract → run it in ONNX Runtime against the
same reference → write ``<name>.onnx``, ``<name>_deploy.pth`` and ``<name>.report.json`` atomically.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from exporters.contract import check_graph_contract
from exporters.onnx_export import MIN_OPSET, build_onnx, feature_sizes, simplify_onnx
from exporters.runners import OnnxRuntimeRunner, TorchRunner
from exporters.trt_plan import TrtBuildOptions
from models.vanillanet import VARIANTS, VanillaNet, create_vanillanet, get_variant, randomize_
from vanilladeploy import __version__
from vanilladeploy.arch import Architecture, check_keys_and_shapes, detect_architecture, load_model
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import Checkpoint, LambdaInfo, lambda_of, load_checkpoint, sha256_of
from vanilladeploy.engine import EngineJob, export_engine, fp16_copy
from vanilladeploy.errors import (CheckpointError, InexactMergeError, OutputError, UsageError, VanillaDeployError,
                                  VerificationError)
from vanilladeploy.images import Preprocess
from vanilladeploy.reparam import ReparamResult, reparameterize_state_dict
from vanilladeploy.verify import TOLERANCE_FP32, VerifyResult, first_divergent_layer, random_inputs, verify_outputs

EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
Progress = Callable[[str, "float | None"], None]
"""Called with ``(message, None)`` when a step starts and ``(message, seconds)`` when it ends."""


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
    calibrated on ``calib``); each verified. With ``trt``: the engine's precision."""
    calib: Path | None = None
    calib_count: int = 256
    calib_method: str = "minmax"
    min_agreement: float = 99.0
    holdout_count: int = 256
    trt: TrtBuildOptions | None = None
    """Also build and verify a TensorRT engine (``--trt``)."""


@dataclass
class ExportResult:
    """The artifacts written and the report (the same dict as ``<name>.report.json``)."""

    out_dir: Path
    artifacts: dict[str, Path]
    report: dict[str, Any]
    error: VanillaDeployError | None = None
    """A failure after the artifacts were published (``--trt`` without TensorRT, an unverified engine)."""


@dataclass
class _Timer:
    progress: Progress
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str, message: str) -> Iterator[None]:
        self.progress(message, None)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.progress(message, self.timings[name])


def random_checkpoint(variant: str, *, seed: int = 0, num_classes: int = 1000) -> Checkpoint:
    """An untrained training-form checkpoint: seeded random weights and randomized BatchNorm statistics."""
    with torch.device("meta"):
        model = create_vanillanet(variant, num_classes=num_classes)
    model = randomize_(model.to_empty(device="cpu"), seed=seed)
    return Checkpoint(state_dict=model.state_dict(), source=f"{variant} (untrained: random weights, seed {seed})",
                      form="train", args={"model": variant}, untrained=True)


def resolve_source(source: str, *, key: str | None = None, seed: int = 0) -> Checkpoint:
    """A checkpoint file, or — when ``source`` names a variant and no such file exists — a random one."""
    path = Path(source)
    if not path.exists() and source in VARIANTS:
        return random_checkpoint(source, seed=seed)
    if not path.exists() and not path.suffix and "/" not in source:
        try:
            get_variant(source)
        except ValueError as e:
            raise CheckpointError(f"{source}: no such file, and {e}") from None
    return load_checkpoint(path, key=key)


def detect(checkpoint: Checkpoint, *, arch: str | None = None) -> Architecture:
    """Variant, act_num and classes of ``checkpoint``, with every key and shape checked against it."""
    args_model = checkpoint.args.get("model")
    detected = detect_architecture(checkpoint.state_dict, checkpoint.form, arch=arch,
                                   args_model=args_model if isinstance(args_model, str) else None)
    check_keys_and_shapes(checkpoint.state_dict, detected, checkpoint.form)
    return detected


def check_precision_options(opts: ExportOptions) -> None:
    """``--precision`` and the INT8 options, before any work."""
    from exporters.int8 import METHODS

    if opts.precision not in EXPORT_PRECISIONS:
        raise UsageError(f"--precision {opts.precision}: choose one of {', '.join(EXPORT_PRECISIONS)}.")
    if opts.precision == "int8" and opts.calib is None:
        raise UsageError("--precision int8 needs --calib DIR, a folder of images to calibrate on (an int8 model "
                         "calibrated on noise is not deployable).")
    if opts.precision != "int8" and opts.calib is not None:
        raise UsageError("--calib has no effect without --precision int8: add it, or drop --calib.")
    if opts.calib_method not in METHODS:
        raise UsageError(f"--calib-method {opts.calib_method}: choose one of {', '.join(METHODS)}.")
    if opts.calib_count < 1 or opts.holdout_count < 1 or not 0 <= opts.min_agreement <= 100:
        raise UsageError("--calib-count must be ≥ 1 and --min-agreement between 0 and 100.")
    if opts.calib is not None:  # the folder must hold images for calibration AND held-out ones: say so now
        from vanilladeploy.images import scan_folder
        from vanilladeploy.int8_export import split_folder

        split_folder(scan_folder(opts.calib), calib_count=opts.calib_count, holdout_count=opts.holdout_count)


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
    with its source (recorded in the report and in every ONNX's ``metadata_props``)."""
    return Preprocess.from_args(ckpt.args, img_size=opts.img_size, img_size_source="--img-size")


def _check_img_size(arch: Architecture, pre: Preprocess) -> None:
    img_size, source = pre.img_size, pre.sources["img_size"]
    if min(feature_sizes(arch.spec, img_size)) < 1:
        smallest = next(s for s in range(1, 4096) if min(feature_sizes(arch.spec, s)) >= 1)
        given = "--img-size" if source == "--img-size" else f"the image size ({source})"
        raise UsageError(f"{given} {img_size} is too small for {arch.name}: pass --img-size {smallest} or more.")


def _check_build_options(opts: ExportOptions) -> None:
    if opts.opset < MIN_OPSET:
        raise UsageError(f"--opset {opts.opset} is too old: use {MIN_OPSET} or newer.")
    if opts.trt and opts.static_batch and (opts.trt.profile.min, opts.trt.profile.max) != (opts.static_batch,) * 2:
        raise UsageError(f"--static-batch {opts.static_batch} fixes the batch, but --batch asks for "
                         f"{opts.trt.profile}; drop --batch or pass --batch {opts.static_batch}/{opts.static_batch}/"
                         f"{opts.static_batch}.")


def _infer(model: VanillaNet, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with TorchRunner(model) as runner:
        return [runner.infer(x) for x in inputs]


@dataclass
class _Run:
    """State shared by the steps of one export: what was asked, what was found, what was measured."""

    opts: ExportOptions
    arch: Architecture
    timer: _Timer
    report: dict[str, Any]
    inputs: list[np.ndarray]
    preprocess: Preprocess
    references: list[np.ndarray] = field(default_factory=list)


def _fuse_and_verify(run: _Run, ckpt: Checkpoint, lam: LambdaInfo) -> VanillaNet:
    """The deploy model; sets the reference outputs. For a training-form input, proves the fusion first."""
    ver = run.report["verification"]
    if ckpt.form == "deploy":
        deploy = load_model(ckpt.state_dict, run.arch, deploy=True)
        run.report["reparameterization"] = {"skipped": "the checkpoint is already in deploy form"}
        run.references = _infer(deploy, run.inputs)
        return deploy
    train = load_model(ckpt.state_dict, run.arch, deploy=False)
    with run.timer.step("reparameterize_s", "Re-parameterizing in float64"):
        fused: ReparamResult = reparameterize_state_dict(ckpt.state_dict)
        deploy = load_model(fused.state_dict, run.arch, deploy=True)
    run.report["reparameterization"] = {"certificates": [c.as_dict() for c in fused.certificates]}
    with run.timer.step("verify_torch_s", "Verifying the fused model against the training form (λ = 1)"):
        train.set_lambda(1.0)
        run.references = _infer(train, run.inputs)
        result = verify_outputs("torch", _infer(deploy, run.inputs), run.references)
    ver["torch"] = result.as_dict()
    if not result:
        layer = first_divergent_layer(train, deploy, run.inputs[0])
        raise VerificationError(f"the fused model differs from the training form: {result.summary()}; first "
                                f"divergent layer: {layer}. This is a bug; please report it with the report JSON.")
    if not lam.exact:
        train.set_lambda(lam.value)
        inexact = verify_outputs("trained λ", _infer(deploy, run.inputs), _infer(train, run.inputs),
                                 tolerance=np.inf)
        ver["against_trained_lambda"] = {**inexact.as_dict(), "lambda": lam.value}
    return deploy


def _export_onnx(run: _Run, deploy: VanillaNet, metadata: dict[str, str], onnx_path: Path) -> onnx.ModelProto:
    opts, arch = run.opts, run.arch
    with run.timer.step("onnx_build_s", "Emitting the ONNX graph"):
        model = build_onnx(deploy.state_dict(), arch.spec, act_num=arch.act_num, img_size=opts.img_size,
                           opset=opts.opset, batch=opts.static_batch, metadata=metadata)
    nodes_before = len(model.graph.node)
    if opts.simplify:
        with run.timer.step("onnx_simplify_s", "Simplifying with onnx-simplifier"):
            try:
                model = simplify_onnx(model)
            except Exception as e:
                raise VerificationError(f"onnx-simplifier failed: {e}. Re-run with --no-simplify.") from None
    contract = check_graph_contract(model, arch.spec)
    run.report["onnx"] = {"opset": opts.opset, "nodes_emitted": nodes_before, "simplified": opts.simplify,
                          "contract": contract.as_dict()}
    if not contract:
        raise VerificationError(f"the ONNX graph breaks the contract: {'; '.join(contract.problems)}")
    onnx.save(model, onnx_path)
    with run.timer.step("verify_onnxruntime_s", "Running the ONNX graph in ONNX Runtime"):
        with OnnxRuntimeRunner(onnx_path) as runner:
            outputs = [runner.infer(x) for x in run.inputs]
    result: VerifyResult = verify_outputs("onnxruntime", outputs, run.references)
    run.report["verification"]["onnxruntime"] = result.as_dict()
    if not result:
        raise VerificationError(f"ONNX Runtime output differs from the reference: {result.summary()}")
    return model


def export_checkpoint(source: str, opts: ExportOptions, *, progress: Progress = lambda *_: None) -> ExportResult:
    """Run the whole export; raises a :class:`~vanilladeploy.errors.VanillaDeployError` on any failure, in which
    case nothing is written (earlier artifacts in the output directory stay as they were)."""
    check_precision_options(opts)
    timer = _Timer(progress)
    with timer.step("load_s", f"Loading {source}"):
        ckpt = resolve_source(source, key=opts.key, seed=opts.seed)
        arch = detect(ckpt, arch=opts.arch)
    lam = lambda_of(ckpt)
    require_exact(lam, allow_inexact=opts.allow_inexact)
    pre = export_preprocess(ckpt, opts)
    _check_img_size(arch, pre)
    opts = replace(opts, img_size=pre.img_size)
    _check_build_options(opts)
    out_dir = opts.out_dir or Path("export") / arch.name
    writer = ArtifactWriter(out_dir)  # refuses an unusable --out now, before the expensive steps
    batch = opts.static_batch or (min(max(2, opts.trt.profile.min), opts.trt.profile.max) if opts.trt else 2)
    report = describe(ckpt, arch, lam)
    report["preprocessing"] = pre.as_dict()
    report["verification"] = {"inputs": {"count": opts.num_inputs, "batch": batch, "img_size": opts.img_size,
                                         "seed": opts.seed, "distribution": "N(0,1)"}}
    inputs = random_inputs(opts.num_inputs, batch=batch, img_size=opts.img_size, seed=opts.seed)
    run = _Run(opts, arch, timer, report, inputs, pre)
    deploy = _fuse_and_verify(run, ckpt, lam)
    metadata = {"vanilladeploy_version": __version__, "variant": arch.name, "act_num": str(arch.act_num),
                "num_classes": str(arch.num_classes), "source_sha256": ckpt.sha256 or "untrained",
                "lambda": repr(lam.value), **pre.metadata(), "precision": "fp32"}
    try:
        return _write_artifacts(run, writer, deploy, metadata)
    except OSError as e:
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e}. Choose another --out.") from None


def _int8(run: _Run, onnx_tmp: Path, model: onnx.ModelProto, writer: ArtifactWriter
          ) -> tuple[Path, VanillaDeployError | None]:
    from vanilladeploy.int8_export import Int8Options, int8_copy

    opts = run.opts
    assert opts.calib is not None
    int8 = Int8Options(opts.calib, opts.calib_count, opts.calib_method, opts.min_agreement, opts.holdout_count)
    return int8_copy(run.arch.name, onnx_tmp, model, run.preprocess, int8, writer, run.timer, run.report)


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
        error, int8_path = None, None
        if run.opts.precision == "int8":
            int8_path, error = _int8(run, onnx_tmp, model, writer)
        if run.opts.trt is not None:
            job = EngineJob(name, onnx_tmp, model, writer.out_dir, run.opts.trt, run.inputs, run.references,
                            run.opts.static_batch)
            engine_error = export_engine(job, writer, run.timer, report, int8_onnx=int8_path)
            error = error or engine_error
        elif run.opts.precision == "fp16":
            job = EngineJob(name, onnx_tmp, model, writer.out_dir, None, run.inputs, run.references,
                            run.opts.static_batch)
            fp16_copy(job, writer, run.timer, report)
        report_tmp = writer.stage(f"{name}.report.json")
        report["artifacts"] = {tmp.name: {"sha256": sha256_of(tmp), "bytes": tmp.stat().st_size}
                               for tmp in writer.staged() if tmp != report_tmp}
        report["timings_s"] = run.timer.timings
        report_tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                              encoding="utf-8")
        finals = writer.commit()
    return ExportResult(writer.out_dir, {p.name: p for p in finals}, report, error)


def describe(ckpt: Checkpoint, arch: Architecture, lam: LambdaInfo) -> dict[str, Any]:
    """What was read and detected: the first sections of the report (and of ``vanilladeploy inspect``)."""
    return {
        "tool": {"name": "vanilladeploy", "version": __version__, "torch": torch.__version__,
                 "onnx": onnx.__version__, "python": platform.python_version()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"path": ckpt.source, "sha256": ckpt.sha256, "untrained": ckpt.untrained,
                   "container_key": ckpt.container_key, "form": ckpt.form},
        "architecture": {"variant": arch.name, "depth": arch.spec.depth, "act_num": arch.act_num,
                         "num_classes": arch.num_classes, "detected_from": arch.detected_from},
        "lambda": {"value": lam.value, "exact": lam.exact, "epoch": lam.epoch, "decay_epochs": lam.decay_epochs,
                   "decay_linear": lam.decay_linear, "assumed": lam.assumed, "note": lam.describe()},
    }


__all__ = ["ExportOptions", "ExportResult", "export_checkpoint", "export_preprocess", "random_checkpoint",
           "resolve_source", "detect", "describe", "require_exact", "TOLERANCE_FP32"]
