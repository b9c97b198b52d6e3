"""``vanilladeploy bench --task detection``: batch-1 latency at the paper's detection scale (800×1344), the way the
paper compares detectors, on this machine.

Backbones (features at strides 8, 16, 32): VanillaNet-13 with act_num 4 fused (our deploy form), the same in its
training form (the official detection code's network: it has no deploy path), torchvision's ResNet-50 (layer2–layer4)
and Swin-T (stages 2–4). Whole detectors: our fused VanillaNet-13 RetinaNet (FPN, head, decoding and NMS in the graph),
the same with the training-form backbone in torch (``:train``: what the official code runs) and torchvision's
``retinanet_resnet50_fpn`` (torch only; it resizes 800×1344 to 793×1333 itself). Each in torch and ONNX Runtime fp32,
and OpenVINO (fp32, and bf16 where the CPU has it) where installed, timed in interleaved rounds, with the peak kernels
of :mod:`vanilladeploy.benchmarks.peaks` (fp32, and bf16 where OpenVINO bf16 runs) timed in the same rounds for each
row's floor and efficiency (DESIGN §7). Weights are random: latency does not depend on them, except the NMS step's,
which depends on how many candidates pass the score threshold (docs/detection.md)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vanilladeploy.benchmarks.floor import DevicePeak, NoPeakMeasured, device_peak, efficiency, floor_ms, rates
from vanilladeploy.benchmarks.peaks import guard, peak_candidates
from vanilladeploy.models.detection import FPN, BackboneSpec, FPNSpec, RetinaHead, RetinaSpec, sub_state_dict
from vanilladeploy.models.vanillanet import VARIANTS, randomize_
from vanilladeploy.runtimes.timing import measure_interleaved, summarize, timed_on_clock
from vanilladeploy.steps import Progress, Step, silent

DET_STRIDES = (1, 2, 2, 1, 1, 1, 1, 1, 1, 2, 1)
RETINA_OUT = (1, 8, 10)
BACKBONES = ("vanillanet_13", "vanillanet_13:train", "resnet50", "swin_t")
DETECTORS = ("retinanet_vanillanet_13", "retinanet_vanillanet_13:train", "retinanet_resnet50_fpn")


@dataclass(frozen=True)
class DetBenchConfig:
    height: int = 800
    width: int = 1344
    warmup: int = 1
    iters: int = 5
    budget_s: float | None = None
    runtimes: tuple[str, ...] = ("torch", "onnxruntime", "openvino")
    models: tuple[str, ...] = BACKBONES + DETECTORS
    width_divisor: int = 1
    """VanillaNet widths ÷ this (tests: 8); the baselines keep theirs."""
    cache_dir: Path = Path.home() / ".cache" / "vanilladeploy" / "detection"


@dataclass
class DetRow:
    model: str
    runtime: str
    kind: str
    gflops: float | None
    params_m: float
    stats: dict[str, Any] | None = None
    skipped: str | None = None
    floor_ms: float | None = None
    efficiency: float | None = None
    floor_exceeded: bool | None = None
    """Efficiency above 1: the peak was under-measured (the row beat every peak kernel timed beside it)."""

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in vars(self).items() if k != "stats"}
        if self.stats is not None:
            out.update(self.stats)
            if self.gflops:
                out["gflop_per_s"] = round(self.gflops / (self.stats["median_ms"] / 1e3), 1)
        return out


def vanillanet_spec(divisor: int) -> BackboneSpec:
    return BackboneSpec(tuple(d // divisor for d in VARIANTS["vanillanet_13"].dims), DET_STRIDES, RETINA_OUT, 4)


class _Features(nn.Module):
    """A baseline's features at strides 8, 16, 32 (NCHW)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import torchvision

        self.name = name
        if name == "resnet50":
            from torchvision.models._utils import IntermediateLayerGetter

            self.body = IntermediateLayerGetter(torchvision.models.resnet50(),
                                                {"layer2": "c3", "layer3": "c4", "layer4": "c5"})
        else:
            self.body = torchvision.models.swin_t().features

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.name == "resnet50":
            return tuple(self.body(x).values())
        outs = []
        for i, stage in enumerate(self.body):
            x = stage(x)
            if i in (3, 5, 7):
                outs.append(x.permute(0, 3, 1, 2))
        return tuple(outs)


class _Retina(nn.Module):
    """Our RetinaNet in torch up to the raw head outputs (decoding and NMS: :func:`retina_detections`)."""

    def __init__(self, backbone: nn.Module, spec: BackboneSpec) -> None:
        super().__init__()
        self.backbone, self.neck = backbone, FPN(FPNSpec(spec.feature_channels))
        self.head = RetinaHead(num_classes=80, in_channels=256, feat_channels=256, stacked_convs=4, num_anchors=9)

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return self.head(self.neck(self.backbone(x)))


def build(name: str, cfg: DetBenchConfig) -> nn.Module:
    """The module of a model name, random weights (BN statistics randomized), eval mode."""
    spec = vanillanet_spec(cfg.width_divisor)
    with torch.device("meta"):
        if name.startswith("vanillanet_13"):
            model: nn.Module = spec.build(deploy=not name.endswith(":train"))
        elif name.startswith("retinanet_vanillanet_13"):
            model = _Retina(spec.build(deploy=not name.endswith(":train")), spec)
    if name in BACKBONES[:2] or name.startswith("retinanet_vanillanet_13"):
        model.load_state_dict({k: torch.empty(v.shape, dtype=v.dtype) for k, v in model.state_dict().items()},
                              assign=True)
        return randomize_(model, seed=0).eval()
    if name == "retinanet_resnet50_fpn":
        import torchvision

        return torchvision.models.detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None).eval()
    return _Features(name).eval()


def count_gflops(model: nn.Module, x: torch.Tensor) -> float | None:
    """Multiply-adds × 2 of one forward, counted by torch's FlopCounterMode (convs, matmuls), in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
        return counter.get_total_flops() / 1e9
    except Exception:  # a model the counter cannot trace: the column stays empty
        return None


def onnx_file(name: str, model: nn.Module, cfg: DetBenchConfig) -> Path:
    """The model's fp32 ONNX at the configured size, cached: our emitter for the fused VanillaNets (the detector
    with its NMS), torch.onnx (opset 17) for the rest."""
    from vanilladeploy.atomic import write_atomically

    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.cache_dir / f"{name.replace(':', '_')}_w{cfg.width_divisor}_{cfg.height}x{cfg.width}.onnx"
    if path.exists():
        return path
    if name in ("vanillanet_13", "retinanet_vanillanet_13"):
        from vanilladeploy.exporters.detector_graph import emit_detector

        spec = vanillanet_spec(cfg.width_divisor)
        full = model.state_dict()
        backbone = sub_state_dict(full, "backbone") or full
        rest = {k.replace("head.", "bbox_head.", 1): v for k, v in full.items() if not k.startswith("backbone.")}
        emitted = emit_detector(backbone, rest, backbone=spec, neck=FPNSpec(spec.feature_channels),
                                head=RetinaSpec(), part="detector" if name.startswith("retinanet") else "backbone")
        return write_atomically(path, lambda tmp: tmp.write_bytes(emitted.data))

    def trace(tmp: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.zeros(1, 3, cfg.height, cfg.width),), str(tmp), opset_version=17,
                              input_names=["input"], dynamo=False)

    return write_atomically(path, trace)


def _subject(name: str, runtime: str, model: nn.Module, cfg: DetBenchConfig, x: np.ndarray) -> Callable[[], float]:
    if runtime == "torch":
        t = torch.from_numpy(x)
        if name.startswith("retinanet_vanillanet_13"):
            from vanilladeploy.models.retina_post import retina_detections

            step = lambda: retina_detections(*model(t), RetinaSpec(), (cfg.height, cfg.width))  # noqa: E731
        elif name == "retinanet_resnet50_fpn":
            step = lambda: model([t[0]])  # noqa: E731
        else:
            step = lambda: model(t)  # noqa: E731
        return timed_on_clock(torch.no_grad()(step))
    if name == "retinanet_resnet50_fpn":
        raise _Skip("torchvision's RetinaNet is timed in torch only (its ONNX export needs tracing its transforms)")
    if name == "retinanet_vanillanet_13:train":
        raise _Skip("the training form is the official detection code's network, timed in torch (what it runs)")
    path = onnx_file(name, model, cfg)
    if runtime == "onnxruntime":
        from vanilladeploy.runtimes.runners import ort_session

        session = ort_session(path)
        return timed_on_clock(lambda: session.run(None, {"input": x}))
    from vanilladeploy.runtimes.runners import PrecisionUnavailable, compile_openvino

    try:
        request = compile_openvino(path, runtime.split("-")[1] if "-" in runtime else "fp32").create_infer_request()
    except PrecisionUnavailable as e:
        raise _Skip(str(e)) from None
    return timed_on_clock(lambda: request.infer({0: x}))


class _Skip(Exception):
    pass


@dataclass
class DetBenchResult:
    config: DetBenchConfig
    rows: list[DetRow] = field(default_factory=list)
    peaks: dict[str, DevicePeak] = field(default_factory=dict)
    peaks_unavailable: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        from vanilladeploy.machine import describe_cpu, machine_info

        cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.config).items()}
        machine = machine_info("cpu")
        return {"task": "detection", "batch": 1, "config": cfg, "cpu": describe_cpu(machine), "machine": machine,
                "peaks": {k: v.as_dict() for k, v in self.peaks.items()}, "peaks_unavailable": self.peaks_unavailable,
                "rows": [r.as_dict() for r in self.rows]}


def _runtimes(cfg: DetBenchConfig) -> list[str]:
    names = [r for r in cfg.runtimes if r != "openvino"]
    if "openvino" in cfg.runtimes:
        try:
            import openvino  # noqa: F401

            names += ["openvino-fp32", "openvino-bf16"]
        except ImportError:
            pass
    return names


def run_detection_bench(cfg: DetBenchConfig, *, progress: Progress = silent) -> DetBenchResult:
    """Build every model, prepare every (model, runtime), then time them all in the same interleaved rounds."""
    torch.set_grad_enabled(False)
    x = np.random.default_rng(0).standard_normal((1, 3, cfg.height, cfg.width)).astype(np.float32)
    result, subjects = DetBenchResult(cfg), {}
    for name in cfg.models:
        progress(Step(f"Preparing {name} (export, compile)"))
        model = build(name, cfg)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = None if name == "retinanet_resnet50_fpn" else count_gflops(model, torch.from_numpy(x))
        kind = "detector" if name in DETECTORS else "backbone"
        for runtime in _runtimes(cfg):
            row = DetRow(name, runtime, kind, gflops, round(params, 2))
            try:
                subjects[(name, runtime)] = _subject(name, runtime, model, cfg, x)
            except _Skip as e:
                row.skipped = str(e)
            except Exception as e:  # an exporter or runtime that cannot take this model: listed, not fatal
                row.skipped = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            result.rows.append(row)
    precisions = sorted({_precision(runtime) for _, runtime in subjects})
    progress(Step("Preparing the peak kernels", 0, 1))
    peaks = guard(peak_candidates("cpu", precisions, _conv_shapes(cfg), gemm_n=2048, copy_bytes=256 << 20))
    timed = {f"{n}|{r}": s for (n, r), s in subjects.items()} | {f"peak|{g.name}": g for g in peaks if not g.error}
    samples = measure_interleaved(timed, warmup=cfg.warmup, iters=cfg.iters, budget_s=cfg.budget_s,
                                  on_round=lambda i, n: progress(Step(f"Timing {len(subjects)} (model, runtime) "
                                                                      "pairs and the peak kernels in interleaved "
                                                                      "rounds", i, n)))
    measured = rates([g.candidate for g in peaks], {g.name: samples.get(f"peak|{g.name}", []) for g in peaks},
                     {g.name: g.error for g in peaks if g.error})
    for precision in precisions:
        try:
            result.peaks[precision] = device_peak("cpu", precision, measured)
        except NoPeakMeasured as e:
            result.peaks_unavailable[precision] = str(e)
    for row in result.rows:
        key = f"{row.model}|{row.runtime}"
        if key in samples:
            row.stats = summarize(samples[key], batch=1).as_dict()
            _floor(row, result.peaks.get(_precision(row.runtime)))
    return result


def _precision(runtime: str) -> str:
    return "bf16" if runtime == "openvino-bf16" else "fp32"


def _conv_shapes(cfg: DetBenchConfig) -> list[tuple[int, int, int]]:
    """(in, out, pixels) of the fused backbone's largest 1×1 convolutions at this size: the peak candidates that
    are the models' own kernels (DESIGN §7)."""
    dims = vanillanet_spec(cfg.width_divisor).dims
    return [(dims[4], dims[5], (cfg.height // 16) * (cfg.width // 16)),
            (dims[2], dims[3], (cfg.height // 8) * (cfg.width // 8))]


def _floor(row: DetRow, peak: DevicePeak | None) -> None:
    """The physical floor max(FLOPs / peak, weight bytes / bandwidth) from the peak measured in the same rounds, and
    efficiency = floor / median; none where the row has no FLOP count or its precision no peak."""
    if peak is None or not row.gflops or row.stats is None:
        return
    weight_bytes = row.params_m * 1e6 * (2 if peak.precision == "bf16" else 4)
    row.floor_ms = round(floor_ms(row.gflops * 1e9, weight_bytes, peak), 3)
    row.efficiency = round(efficiency(row.floor_ms, row.stats["median_ms"]), 3)
    row.floor_exceeded = row.efficiency > 1


__all__ = ["BACKBONES", "DETECTORS", "DetBenchConfig", "DetBenchResult", "DetRow", "build", "count_gflops",
           "run_detection_bench", "vanillanet_spec"]
