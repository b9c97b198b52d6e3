"""``vanilladeploy export DET.pth``: a VanillaNet detector → fused backbone → verified ONNX (features, FPN levels or
boxes), with a report and an mmdetection-loadable deploy state dict.

Steps: recognize (:mod:`vanilladeploy.detector`) → fuse the backbone in float64 (:func:`reparameterize_backbone`,
one certificate per layer) → prove the fused torch backbone equal to the training form at every verification size →
emit the part's ONNX (:mod:`vanilladeploy.exporters.detection_onnx`, :mod:`vanilladeploy.exporters.nms`) → check
the graph (no BatchNormalization; one dense and one depthwise Conv per backbone layer) → run it in ONNX Runtime
against the training form: features / levels / raw head outputs ≤ 1e-5 rel. L2, and the boxes equal to the
reference post-processing (:func:`vanilladeploy.models.retina_post.retina_detections`) run on the graph's own raw
outputs → publish atomically. Nothing is written on failure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import Tensor, nn

from vanilladeploy import __version__
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import Checkpoint, sha256_of
from vanilladeploy.detect import DetPreprocess
from vanilladeploy.detector import DetectorSpec, load_detector_modules, load_detector_spec
from vanilladeploy.errors import OutputError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.exporters.detection_onnx import PARTS
from vanilladeploy.exporters.detector_graph import emit_detector, graph_outputs
from vanilladeploy.exporters.onnx_export import EmittedOnnx
from vanilladeploy.exporters.trt_compat import DETECTOR_BATCH_PROFILE, ShapeProfile
from vanilladeploy.models.detection import sub_state_dict
from vanilladeploy.pipeline.det_checks import check_detection_graph, match_detections
from vanilladeploy.pipeline.det_precision import (
    DET_CALIB_COUNT,
    DET_HOLDOUT_COUNT,
    DetInt8Options,
    int8_images,
    run_onnx,
)
from vanilladeploy.pipeline.export import simplify_staged
from vanilladeploy.reparam import reparameterize_backbone
from vanilladeploy.runtimes.trt_plan import TrtBuildOptions
from vanilladeploy.steps import Progress, StepTimer, silent
from vanilladeploy.verify import TOLERANCE_FP32, VerifyResult, verify_outputs

DEFAULT_SIZES = ((800, 1344), (320, 480))
"""Verification sizes (height, width): the paper's test scale padded to 32, and a small one with batch 2."""


@dataclass
class DetectionExportOptions:
    out_dir: Path | None = None
    part: str | None = None
    """backbone, neck or detector; None: detector where the head is supported (RetinaNet), else neck."""
    det_config: Path | None = None
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    seed: int = 0
    simplify: bool = True
    openvino: bool = False
    """Also write the OpenVINO IR and verify it (:mod:`vanilladeploy.pipeline.det_openvino`)."""
    precision: str = "fp32"
    """fp16: also ``<name>.fp16.onnx``; int8: also ``<name>.int8.onnx``
    (:mod:`vanilladeploy.pipeline.det_precision`)."""
    int8: DetInt8Options | None = None
    """Calibration images and counts; required by (and only with) ``precision="int8"``."""
    trt: TrtBuildOptions | None = None
    """Also build and verify a TensorRT fp32 engine (:mod:`vanilladeploy.pipeline.det_tensorrt`)."""


@dataclass
class DetectionExportResult:
    out_dir: Path
    artifacts: dict[str, Path]
    report: dict[str, Any]
    spec: DetectorSpec
    error: VanillaDeployError | None = None
    """A failure after publishing (``--trt`` without TensorRT: exit 3; an unverified engine: exit 1)."""

    def __bool__(self) -> bool:
        return self.error is None

    @property
    def onnx(self) -> Path:
        return next(p for p in self.artifacts.values() if p.suffix == ".onnx")


_CLASSIFIER_DEFAULTS = {"arch": None, "key": None, "img_size": None, "opset": 17, "static_batch": None,
                        "input_dtype": "float32", "allow_inexact": False, "num_inputs": 3,
                        "min_agreement": None, "max_rel_l2": None, "fallback": None, "max_fallback": None}
DETECTOR_PRECISIONS = ("fp32", "fp16", "int8")
_OPTION_NAMES = {"input_dtype": "--input", "simplify": "--no-simplify"}
DETECTOR_ONLY = ("part", "det_config", "verify_sizes", "trt_shapes")
"""Export options only a detection checkpoint takes."""


def classifier_options(source: object, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without :data:`DETECTOR_ONLY`, for a classifier's export: one of them given is refused, naming
    it (a classifier has no parts, no mmdetection config, one image size and a batch-only TensorRT profile)."""
    given = next((k for k in DETECTOR_ONLY if options.get(k) is not None), None)
    if given:
        raise UsageError(f"--{given.replace('_', '-')} is for detection checkpoints; {source} is a classifier.")
    return {k: v for k, v in options.items() if k not in DETECTOR_ONLY}


def detection_options(*, out_dir: Path | str | None = None, part: str | None = None,
                      det_config: Path | str | None = None, verify_sizes: str | None = None, openvino: bool = False,
                      simplify: bool = True, seed: int = 0, precision: str = "fp32", calib: Path | str | None = None,
                      calib_count: int | None = None, holdout_count: int | None = None,
                      calib_method: str | None = None, trt: bool = False, workspace: str | int | None = None,
                      trt_profile: str | None = None, trt_shapes: str | None = None,
                      timing_cache: Path | str | None = None, opt_level: int | None = None, verbose: bool = False,
                      **classifier: Any) -> DetectionExportOptions:
    """:class:`DetectionExportOptions` from the keywords ``export`` takes (the CLI's and the API's): an option a
    detector does not take yet, given with a value other than its default, is refused naming the option."""
    for name, value in classifier.items():
        if name not in _CLASSIFIER_DEFAULTS:
            raise UsageError(f"unknown export option {name!r}.")
        if value != _CLASSIFIER_DEFAULTS[name]:
            option = _OPTION_NAMES.get(name, "--" + name.replace("_", "-"))
            raise UsageError(f"{option} is not available for detection checkpoints yet: a detector takes --part, "
                             "--det-config, --verify-sizes, --openvino, --precision fp32|fp16|int8 (--calib, "
                             "--calib-count, --calib-method) and --trt (--trt-shapes …); see docs/detection.md.")
    if precision not in DETECTOR_PRECISIONS:
        raise UsageError(f"--precision {precision} is not available for detection checkpoints yet; they take "
                         f"{', '.join(DETECTOR_PRECISIONS)} (docs/detection.md).")
    if (precision == "int8") != (calib is not None):
        raise UsageError("--precision int8 needs --calib DIR (images to calibrate on and to hold out)." if calib is None
                         else "--calib has no effect without --precision int8.")
    if calib_count is not None and calib_count < 1 or holdout_count is not None and holdout_count < 1:
        raise UsageError("--calib-count (and the held-out count) must be at least 1.")
    int8 = None if calib is None else DetInt8Options(
        Path(calib), calib_count or DET_CALIB_COUNT, DET_HOLDOUT_COUNT if holdout_count is None else holdout_count,
        calib_method or "minmax")
    return DetectionExportOptions(out_dir=None if out_dir is None else Path(out_dir), part=part, precision=precision,
                                  int8=int8, trt=_trt_options(trt, precision, workspace, trt_profile, trt_shapes,
                                                              timing_cache, opt_level, verbose),
                                  det_config=None if det_config is None else Path(det_config),
                                  sizes=parse_sizes(verify_sizes) if verify_sizes else DEFAULT_SIZES,
                                  openvino=openvino, simplify=simplify, seed=seed)


def _trt_options(trt: bool, precision: str, workspace: str | int | None, profile: str | None, shapes: str | None,
                 timing_cache: Path | str | None, opt_level: int | None, verbose: bool) -> TrtBuildOptions | None:
    """``--trt``'s build options for a detector: fp32, the batch profile and the height × width one."""
    given = {"--workspace": workspace, "--trt-profile": profile, "--trt-shapes": shapes, "--timing-cache": timing_cache,
             "--opt-level": opt_level}
    if not trt:
        used = next((k for k, v in given.items() if v is not None), None)
        if used:
            raise UsageError(f"{used} has no effect without --trt: add --trt, or drop {used}.")
        return None
    if precision != "fp32":
        raise UsageError(f"--trt with --precision {precision}: a detector's engine is fp32 for now "
                         "(docs/detection.md).")
    from vanilladeploy.pipeline.trt_export import trt_options

    opts = trt_options("fp32", workspace=workspace, profile=profile or str(DETECTOR_BATCH_PROFILE), opt_level=opt_level,
                       timing_cache=None if timing_cache is None else Path(timing_cache), detailed_log=verbose)
    try:
        hw = ShapeProfile.parse(shapes) if shapes is not None else ShapeProfile()
    except ValueError as e:
        raise UsageError(f"--trt-shapes: {e}.") from None
    return replace(opts, shapes=hw)


def parse_sizes(text: str, option: str = "--verify-sizes") -> tuple[tuple[int, int], ...]:
    """``800x1344,320x480`` → ((800, 1344), (320, 480)); a UsageError names ``option`` and the bad entry."""
    sizes = []
    for item in text.split(","):
        h, sep, w = item.strip().lower().partition("x")
        if not (sep and h.isdigit() and w.isdigit() and int(h) > 0 and int(w) > 0):
            raise UsageError(f"{option}: {item.strip()!r} is not HEIGHTxWIDTH (e.g. 800x1344).")
        sizes.append((int(h), int(w)))
    return tuple(sizes)


def resolve_part(spec: DetectorSpec, part: str | None) -> str:
    if part is not None and part not in PARTS:
        raise UsageError(f"--part {part}: choose one of {', '.join(PARTS)}.")
    if spec.head is None and part == "detector":
        raise UsageError(f"--part detector: the {spec.kind} checkpoint's RPN and RoI heads (rpn_head.*, "
                         "roi_head.*: anchors, RoIAlign, box and mask heads) are not supported yet; export "
                         "--part neck (backbone + FPN, outputs p2…p6) or --part backbone.")
    return part or ("detector" if spec.head is not None else "neck")


def check_sizes(spec: DetectorSpec, sizes: Sequence[tuple[int, int]]) -> None:
    stride = spec.backbone.total_stride
    if not sizes:
        raise UsageError("--verify-sizes: give at least one HEIGHTxWIDTH.")
    for h, w in sizes:
        if h % stride or w % stride:
            raise UsageError(f"--verify-sizes {h}x{w}: height and width must be multiples of the backbone's total "
                             f"stride {stride} (e.g. {-(-h // stride) * stride}x{-(-w // stride) * stride}).")


def _inputs(sizes: Sequence[tuple[int, int]], seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1 if i == 0 else 2, 3, h, w, generator=g).numpy() for i, (h, w) in enumerate(sizes)]


@dataclass
class _Torch:
    """The training-form reference outputs per input: features, FPN levels, raw head outputs."""

    features: list[list[np.ndarray]] = field(default_factory=list)
    levels: list[list[np.ndarray]] = field(default_factory=list)
    head: list[list[np.ndarray]] = field(default_factory=list)


@torch.no_grad()
def _reference(modules: Mapping[str, nn.Module], inputs: Sequence[np.ndarray], part: str) -> _Torch:
    ref = _Torch()
    for x in inputs:
        feats = modules["backbone"](torch.from_numpy(x))
        ref.features.append([f.numpy() for f in feats])
        if part == "backbone":
            continue
        levels = modules["neck"](feats)
        ref.levels.append([p.numpy() for p in levels])
        if part == "detector":
            cls, reg = modules["bbox_head"](levels)
            ref.head.append([t.numpy() for t in (*cls, *reg)])
    return ref


def _compare(name: str, outputs: Sequence[Sequence[np.ndarray]], refs: Sequence[Sequence[np.ndarray]]
             ) -> VerifyResult:
    """Every output tensor of every input, each within :data:`TOLERANCE_FP32`."""
    return verify_outputs(name, [y for ys in outputs for y in ys], [r for rs in refs for r in rs])


def _require(result: VerifyResult, what: str) -> dict[str, Any]:
    if not result:
        raise VerificationError(f"{what}: {result.summary()}. This is a bug; please report it with the checkpoint's "
                                "config.")
    return result.as_dict()


def _fuse(ckpt: Checkpoint, spec: DetectorSpec, inputs: list[np.ndarray], part: str, timer: StepTimer,
          report: dict[str, Any]) -> tuple[dict[str, Tensor], _Torch]:
    """The fused backbone state dict and the training-form reference outputs; proves the fusion in torch."""
    with timer.step("reparameterize_s", "Fusing the backbone in float64"):
        fused = reparameterize_backbone(sub_state_dict(ckpt.state_dict, "backbone"))
    report["reparameterization"] = {"certificates": [c.as_dict() for c in fused.certificates]}
    with timer.step("verify_torch_s", "Verifying the fused backbone against the training form"):
        train = load_detector_modules(ckpt.state_dict, spec)
        ref = _reference(train, inputs, part)
        deploy = load_detector_modules(ckpt.state_dict, spec, backbone_state=fused.state_dict)
        with torch.no_grad():
            outs = [[f.numpy() for f in deploy["backbone"](torch.from_numpy(x))] for x in inputs]
    report["verification"]["torch_backbone"] = _require(_compare("torch", outs, ref.features),
                                                        "the fused backbone differs from the training form")
    return fused.state_dict, ref


def _verify_onnx(path: Path, emitted_raw: bytes | None, spec: DetectorSpec, part: str, inputs: list[np.ndarray],
                 ref: _Torch, timer: StepTimer, report: dict[str, Any]) -> list[list[np.ndarray]]:
    """The checks of the module docstring; returns ONNX Runtime's outputs per input."""
    ver = report["verification"]
    with timer.step("verify_onnxruntime_s", "Running the ONNX graph in ONNX Runtime"):
        outputs = run_onnx(path, inputs)
        if part != "detector":
            expected = ref.features if part == "backbone" else ref.levels
            ver["onnxruntime"] = _require(_compare("onnxruntime", outputs, expected),
                                          "ONNX Runtime's outputs differ from the training form")
            return outputs
        assert spec.head is not None and emitted_raw is not None
        raw = run_onnx(emitted_raw, inputs)
    n = len(graph_outputs(spec.backbone, spec.neck, spec.head, "detector"))
    ver["onnxruntime_raw_head"] = _require(_compare("onnxruntime", [r[n:] for r in raw], ref.head),
                                           "ONNX Runtime's raw head outputs differ from the training form")
    matches = [match_detections(out, r[n:], spec.head, x.shape[2:]) for out, r, x in zip(outputs, raw, inputs)]
    ver["onnxruntime_detections"] = [m.as_dict() for m in matches]
    bad = next((m for m in matches if not m), None)
    if bad is not None:
        raise VerificationError(f"the graph's detections differ from the reference post-processing: {bad.summary()}")
    return outputs


def export_detector(ckpt: Checkpoint, opts: DetectionExportOptions, *, progress: Progress = silent
                    ) -> DetectionExportResult:
    """Recognize, fuse, verify and write one part of a detection checkpoint; raises a VanillaDeployError on any
    failure, with nothing written."""
    timer = StepTimer(progress)
    spec = load_detector_spec(ckpt, opts.det_config)
    part = resolve_part(spec, opts.part)
    check_sizes(spec, opts.sizes)
    pre = DetPreprocess(spec.pipeline.img_scale, spec.pipeline.mean, spec.pipeline.std, spec.pipeline.size_divisor)
    images = int8_images(opts.int8, pre) if opts.int8 is not None else None  # too few: refused before any work
    name = f"{spec.kind.lower()}_{spec.backbone.variant}" + ("" if part == "detector" else f".{part}")
    out_dir = opts.out_dir or Path("export") / f"{spec.kind.lower()}_{spec.backbone.variant}"
    writer = ArtifactWriter(out_dir)
    inputs = _inputs(opts.sizes, opts.seed)
    report: dict[str, Any] = {"tool": {"name": "vanilladeploy", "version": __version__, "torch": torch.__version__,
                                       "onnx": onnx.__version__},
                              "source": {"path": ckpt.source, "sha256": ckpt.sha256}, "detector": spec.as_dict(),
                              "part": part, "verification": {"sizes": [list(s) for s in opts.sizes],
                                                             "batch": [x.shape[0] for x in inputs],
                                                             "seed": opts.seed, "tolerance": TOLERANCE_FP32}}
    fused, ref = _fuse(ckpt, spec, inputs, part, timer, report)
    metadata = {"vanilladeploy_version": __version__, "detector": spec.kind, "backbone": spec.backbone.variant,
                "part": part, "source_sha256": ckpt.sha256 or "in memory",
                "feature_strides": ",".join(map(str, spec.backbone.feature_strides)),
                "pixel_mean": ",".join(map(str, spec.pipeline.mean)),
                "pixel_std": ",".join(map(str, spec.pipeline.std)),
                "img_scale": "x".join(map(str, spec.pipeline.img_scale)),
                "size_divisor": str(spec.pipeline.size_divisor), "precision": "fp32"}
    if spec.classes:
        metadata["classes"] = json.dumps(list(spec.classes))
    try:
        with writer:
            onnx_tmp = writer.stage(f"{name}.onnx")
            with timer.step("onnx_build_s", "Emitting the ONNX graph"):
                nets = {"backbone": spec.backbone, "neck": spec.neck, "head": spec.head, "part": part, "name": name}
                emitted = emit_detector(fused, ckpt.state_dict, **nets, metadata=metadata)
                raw = emit_detector(fused, ckpt.state_dict, **nets, raw_head=True).data if part == "detector" \
                    else None
            model = _write_onnx(emitted, onnx_tmp, simplify=opts.simplify, timer=timer)
            del emitted
            contract = check_detection_graph(model, spec.backbone)
            report["onnx"] = {"nodes": contract.nodes, "simplified": opts.simplify, **contract.as_dict()}
            if not contract:
                raise VerificationError(f"the ONNX graph breaks the contract: {'; '.join(contract.problems)}")
            ort_outputs = _verify_onnx(onnx_tmp, raw, spec, part, inputs, ref, timer, report)
            expected = {"backbone": ref.features, "neck": ref.levels, "detector": ort_outputs}[part]
            if opts.openvino:
                from vanilladeploy.pipeline.det_openvino import detector_openvino

                detector_openvino(name, onnx_tmp, writer, timer, report, part=part, inputs=inputs,
                                  references=expected)
            if opts.precision == "fp16":
                from vanilladeploy.pipeline.det_precision import detector_fp16

                detector_fp16(name, model, writer, timer, report, part=part, inputs=inputs,
                              references=expected)
            if opts.int8 is not None:
                from vanilladeploy.pipeline.det_precision import detector_int8

                detector_int8(name, onnx_tmp, writer, timer, report, part=part, opts=opts.int8, pre=pre,
                              images=images)
            torch.save(deploy_checkpoint(ckpt, spec, fused), writer.stage(f"{name}_deploy.pth"))
            error = None
            if opts.trt is not None:
                from vanilladeploy.pipeline.det_tensorrt import detector_engine

                error = detector_engine(name, onnx_tmp, writer.out_dir, writer, timer, report, part=part,
                                        opts=opts.trt, inputs=inputs, references=expected)
            report_tmp = writer.stage(f"{name}.report.json")
            report["artifacts"] = {p.name: {"sha256": sha256_of(p), "bytes": p.stat().st_size}
                                   for p in writer.staged() if p != report_tmp}
            report["timings_s"] = dict(timer.timings)
            report_tmp.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            finals = writer.commit()
    except OSError as e:
        raise OutputError(f"cannot write to {out_dir}: {e.strerror or e}. Choose another --out.") from None
    return DetectionExportResult(writer.out_dir, {p.name: p for p in finals}, report, spec, error)


def _write_onnx(emitted: EmittedOnnx, path: Path, *, simplify: bool, timer: StepTimer) -> onnx.ModelProto:
    """The emitted graph written to ``path``, simplified (:func:`~vanilladeploy.pipeline.export.simplify_staged`)
    unless ``simplify`` is off; the model that was written."""
    if not simplify:
        path.write_bytes(emitted.data)
        return emitted.model
    scratch = path.with_name(f".{path.name}.emitted")
    scratch.write_bytes(emitted.data)
    return simplify_staged(scratch, path, timer)


def deploy_checkpoint(ckpt: Checkpoint, spec: DetectorSpec, fused: Mapping[str, Tensor]) -> dict[str, Any]:
    """An mmdetection-style checkpoint whose ``backbone.*`` is the fused deploy form (``stem.*``, ``stages.i.conv``,
    ``stages.i.act``) and whose neck and heads are the checkpoint's own: loads with ``strict=True`` into a detector
    built with :class:`vanilladeploy.models.detection.VanillaNetBackbone` ``(deploy=True)`` (docs/detection.md)."""
    rest = {k: v for k, v in ckpt.state_dict.items() if not k.startswith("backbone.")}
    meta = {k: v for k, v in ckpt.meta.items() if k in ("config", "CLASSES", "mmdet_version")}
    meta["vanilladeploy"] = {"version": __version__, "backbone": "deploy", "source_sha256": ckpt.sha256}
    return {"meta": meta, "state_dict": {**{f"backbone.{k}": v for k, v in fused.items()}, **rest}}


__all__ = ["DEFAULT_SIZES", "DETECTOR_ONLY", "DetectionExportOptions", "DetectionExportResult", "check_sizes",
           "classifier_options", "deploy_checkpoint", "detection_options", "export_detector", "parse_sizes",
           "resolve_part"]
