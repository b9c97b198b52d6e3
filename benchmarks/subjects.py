"""What ``bench`` times, per runtime: ``missing(cfg)`` says why it cannot run here (or None), ``prepare`` turns a
model into a timed *subject* (timed as :mod:`vanilladeploy.runtimes.timing` says).

The artifact runtimes (ONNX Runtime, OpenVINO, TensorRT) are the runners of :mod:`vanilladeploy.runtimes.runners`
timed by their own ``subject`` (the one timing method per device that ``optimize`` uses too); the torch subjects
time the eager module itself (on its device, in its dtype and memory format, or replayed as a CUDA graph). Inputs
rotate among ``cfg.num_inputs`` random tensors. On CUDA every iteration is timed with CUDA events and synchronized;
host↔device copies are outside the timed region unless ``cfg.include_copies``.
"""

from __future__ import annotations

import itertools
import resource
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vanilladeploy.benchmarks.onnx_files import (
    INT8_CALIBRATION,
    SkipModel,
    export_onnx,
    fp16_onnx,
    int8_onnx,
    onnx_missing,
)
from vanilladeploy.benchmarks.zoo import ModelEntry
from vanilladeploy.extras import install_hint
from vanilladeploy.runtimes import RUNTIMES, runtimes_with
from vanilladeploy.runtimes.timing import Subject, cuda_subject, timed_on_clock

CACHE_DIR = Path.home() / ".cache" / "vanilladeploy"
"""Where ``bench`` keeps exported ONNX files and TensorRT's timing cache (``--cache-dir``); its own files go in
``bench/`` below it."""


@dataclass(frozen=True)
class BenchConfig:
    """What one prepared subject is timed with: one device and one precision (:class:`~vanilladeploy.benchmarks.run.
    BenchOptions` gives one per precision asked, :meth:`~vanilladeploy.benchmarks.run.BenchOptions.configs`)."""

    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    img_size: int = 224
    channels_last: bool = False
    include_copies: bool = False
    threads: int | None = None
    num_inputs: int = 4
    cache_dir: Path = CACHE_DIR / "bench"


@dataclass
class Prepared:
    subject: Subject
    peak_memory_mb: float | None = None
    memory_kind: str = ""
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    calibration: str | None = None  # int8: what the scales were calibrated on


def _inputs(cfg: BenchConfig, *, device: str, dtype: torch.dtype) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(cfg.batch, 3, cfg.img_size, cfg.img_size, generator=g) for _ in range(cfg.num_inputs)]
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    return [x.to(device=device, dtype=dtype).contiguous(memory_format=fmt) for x in xs]


def _host_inputs(cfg: BenchConfig) -> list[np.ndarray]:
    """The same seeded inputs as NumPy float32 arrays, for runners (they cast to their own input type)."""
    return [x.numpy() for x in _inputs(cfg, device="cpu", dtype=torch.float32)]


def _dtype(precision: str) -> torch.dtype:
    return torch.float16 if precision == "fp16" else torch.float32


def _placed(model: nn.Module, cfg: BenchConfig, device: str) -> nn.Module:
    """``model`` on ``device`` in the precision (and, if asked, the channels_last layout) of ``cfg``, in eval mode."""
    fmt = torch.channels_last if cfg.channels_last else torch.preserve_format
    return model.to(device=device, dtype=_dtype(cfg.precision), memory_format=fmt).eval()


def _peak_memory(cfg: BenchConfig) -> tuple[float | None, str]:
    if cfg.device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "torch CUDA allocator peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS so far"


def _runs(precision: str, *, labels: bool = False) -> str:
    return ", ".join(RUNTIMES[name].label.split(" (")[0] if labels else name for name in runtimes_with(precision))


class RuntimeBench(ABC):
    """One way ``bench`` times a model: ``name`` as in ``--runtimes``, ``runtime`` the entry of
    :data:`vanilladeploy.runtimes.RUNTIMES` it is (torch-cudagraph is torch)."""

    name: str = ""
    runtime: str = "torch"

    def missing(self, cfg: BenchConfig) -> str | None:
        """Why this runtime cannot run with ``cfg`` on this machine, or None."""
        if cfg.precision == "fp16" and cfg.device == "cpu":
            return "fp16 is measured on CUDA only (CPU runtimes have no fast fp16 kernels)"
        if cfg.precision == "int8" and "int8" not in RUNTIMES[self.runtime].precisions:
            return f"int8 runs as a QDQ graph in {_runs('int8')} only"
        if cfg.precision == "bf16" and "bf16" not in RUNTIMES[self.runtime].precisions:
            return f"bf16 is {_runs('bf16', labels=True)}'s inference precision here (--runtimes {_runs('bf16')})"
        return None

    @abstractmethod
    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        """A subject running ``model`` once per call; raises :class:`SkipModel` when this model cannot run here."""


class TorchBench(RuntimeBench):
    """Eager PyTorch (inference mode), CPU or CUDA, fp32/fp16, optionally channels_last."""

    name = "torch"

    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        dtype = _dtype(cfg.precision)
        model = _placed(model, cfg, cfg.device)
        host = _inputs(cfg, device="cpu", dtype=dtype)
        device_inputs = itertools.cycle([x.to(cfg.device) for x in host])
        host_inputs = itertools.cycle([x.pin_memory() if cfg.device == "cuda" else x for x in host])

        @torch.inference_mode()
        def step() -> None:
            if cfg.include_copies:
                model(next(host_inputs).to(cfg.device, non_blocking=True)).cpu()
            else:
                model(next(device_inputs))

        if cfg.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            step()
            return Prepared(cuda_subject(step), *_peak_memory(cfg))
        step()
        return Prepared(timed_on_clock(step), *_peak_memory(cfg))


class TorchCudaGraphBench(TorchBench):
    """The same eager model captured once as a CUDA graph and replayed."""

    name = "torch-cudagraph"

    def missing(self, cfg: BenchConfig) -> str | None:
        if cfg.device != "cuda":
            return "CUDA graphs need --device cuda"
        return super().missing(cfg)

    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        dtype = _dtype(cfg.precision)
        model = _placed(model, cfg, "cuda")
        torch.cuda.reset_peak_memory_stats()
        inputs = _inputs(cfg, device="cuda", dtype=dtype)
        static = inputs[0].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm up cuDNN/cuBLAS choices outside the capture
                model(static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.inference_mode():
            output = model(static)
        rotation = itertools.cycle(inputs)
        pinned = itertools.cycle([x.cpu().pin_memory() for x in inputs])

        def step() -> None:
            if cfg.include_copies:
                static.copy_(next(pinned), non_blocking=True)
            graph.replay()
            if cfg.include_copies:
                output.cpu()

        before = None if cfg.include_copies else (lambda: static.copy_(next(rotation)))
        return Prepared(cuda_subject(step, before=before), *_peak_memory(cfg))


class OnnxRuntimeBench(RuntimeBench):
    """ONNX Runtime: the CPU execution provider, or CUDA's when onnxruntime-gpu is installed (I/O bound on device)."""

    name = runtime = "onnxruntime"

    def missing(self, cfg: BenchConfig) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return RUNTIMES[self.runtime].missing() or "onnxruntime cannot be imported"
        if cfg.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            return f"no CUDA execution provider: {install_hint('onnxruntime-gpu')}"
        return onnx_missing() or super().missing(cfg)

    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        from vanilladeploy.runtimes.runners import OnnxRuntimeRunner

        path = export_onnx(entry, model, img_size=cfg.img_size, cache_dir=cfg.cache_dir)
        if cfg.precision == "fp16":
            path = fp16_onnx(path)
        if cfg.precision == "int8":
            path = int8_onnx(path, cfg.img_size)
        provider = "CUDAExecutionProvider" if cfg.device == "cuda" else "CPUExecutionProvider"
        runner = OnnxRuntimeRunner(path, providers=[provider], threads=cfg.threads)
        runner.activate()
        subject = runner.subject(_host_inputs(cfg), include_copies=cfg.include_copies)
        return Prepared(subject, *(_peak_memory(cfg) if cfg.device == "cpu" else (None, "not tracked (ORT arena)")),
                        [runner.deactivate], calibration=INT8_CALIBRATION if cfg.precision == "int8" else None)


class TensorRTBench(RuntimeBench):
    """A TensorRT engine (built here for the batch asked, fp32 with TF32 off or fp16), replayed as a CUDA graph."""

    name = runtime = "tensorrt"

    def missing(self, cfg: BenchConfig) -> str | None:
        from vanilladeploy.runtimes.trt_plan import tensorrt_missing

        if cfg.device != "cuda":
            return "TensorRT needs --device cuda"
        return tensorrt_missing() or onnx_missing()

    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        from vanilladeploy.exporters.trt_compat import BatchProfile
        from vanilladeploy.runtimes.tensorrt import TensorRTRunner, build_engine, strongly_typed_only
        from vanilladeploy.runtimes.trt_plan import EngineBuildError, TrtBuildOptions

        path = export_onnx(entry, model, img_size=cfg.img_size, cache_dir=cfg.cache_dir)
        if cfg.precision == "fp16" and strongly_typed_only():
            path = fp16_onnx(path)
        if cfg.precision == "int8":
            path = int8_onnx(path, cfg.img_size)
        opts = TrtBuildOptions(precision=cfg.precision, profile=BatchProfile.fixed(cfg.batch),
                               timing_cache=cfg.cache_dir / "tensorrt.timing-cache")
        try:
            built = build_engine(path, opts)
        except EngineBuildError as e:
            raise SkipModel(str(e)) from None
        runner = TensorRTRunner(built.plan, cuda_graph=not cfg.include_copies)
        runner.activate()
        subject = runner.subject(_host_inputs(cfg), include_copies=cfg.include_copies)
        return Prepared(subject, None, "not tracked (TensorRT)", [runner.deactivate])


class OpenVinoBench(RuntimeBench):
    """OpenVINO's CPU plugin on the same ONNX files (fp32, the int8 QDQ graph read as is; bf16 as its inference
    precision, only on a CPU with native bf16), ``PERFORMANCE_HINT`` LATENCY."""

    name = runtime = "openvino"

    def missing(self, cfg: BenchConfig) -> str | None:
        if RUNTIMES[self.runtime].missing():
            return RUNTIMES[self.runtime].missing()
        if cfg.device != "cpu":
            return "OpenVINO runs on the CPU here (--device cpu)"
        if cfg.precision == "bf16":
            from vanilladeploy.runtimes.runners import bf16_missing

            return bf16_missing()
        return onnx_missing() or super().missing(cfg)

    def prepare(self, entry: ModelEntry, model: nn.Module, cfg: BenchConfig) -> Prepared:
        from vanilladeploy.runtimes.runners import OpenVinoRunner

        path = export_onnx(entry, model, img_size=cfg.img_size, cache_dir=cfg.cache_dir)
        if cfg.precision == "int8":
            path = int8_onnx(path, cfg.img_size)
        runner = OpenVinoRunner(path, precision="bf16" if cfg.precision == "bf16" else "fp32", threads=cfg.threads)
        runner.activate()
        return Prepared(runner.subject(_host_inputs(cfg)), *_peak_memory(cfg), [runner.deactivate],
                        calibration=INT8_CALIBRATION if cfg.precision == "int8" else None)


BENCH_RUNTIMES: dict[str, type[RuntimeBench]] = {b.name: b for b in (TorchBench, TorchCudaGraphBench, OnnxRuntimeBench,
                                                                    OpenVinoBench, TensorRTBench)}
"""What ``bench --runtimes`` takes, in its default order: each name's :class:`RuntimeBench`."""

__all__ = ["BENCH_RUNTIMES", "BenchConfig", "Prepared", "RuntimeBench"]
