"""``vanilladeploy bench``: deployed VanillaNets against ResNet and Swin, same backends, same machine, one run.

Every (model, backend) pair is prepared first, then all are timed in interleaved rounds; each gets latency
statistics, its physical floor and efficiency, and the published A100 numbers to compare with. A backend or model
that cannot run here becomes a ``skipped`` record with the reason.
"""

from __future__ import annotations

import copy
import gc
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.backends import BACKENDS, Backend, BenchConfig, Prepared, SkipModel
from benchmarks.floor import DevicePeak, device_name, efficiency, floor_ms, load_or_measure
from benchmarks.harness import measure_interleaved, summarize
from benchmarks.zoo import ModelEntry, model_cost, resolve_models
from vanilladeploy import __version__
from vanilladeploy.errors import MissingDependencyError, UsageError

Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total)."""


@dataclass
class BenchOptions:
    models: str | None = None
    backends: list[str] | None = None
    device: str | None = None  # None: cuda when available, else cpu
    precision: str = "fp32"
    batch: int = 1
    img_size: int = 224
    warmup: int = 3
    iters: int | None = None  # None: 20 on CPU, 200 on CUDA
    budget_s: float | None = None
    threads: int | None = None
    channels_last: bool = False
    include_copies: bool = False
    train_form: bool = False
    cache_dir: Path = field(default_factory=lambda: Path.home() / ".cache" / "vanilladeploy")


@dataclass
class BenchResult:
    records: list[dict[str, Any]]
    machine: dict[str, Any]
    config: dict[str, Any]
    peak: DevicePeak

    def document(self) -> dict[str, Any]:
        return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": self.config,
                "machine": self.machine, "device_peak": self.peak.as_dict(), "records": self.records}


def _device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested}: choose cpu or cuda.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu.")
    return requested


def _backends(names: list[str] | None) -> list[Backend]:
    names = names or list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}: choose from {', '.join(BACKENDS)}.")
    return [BACKENDS[n]() for n in dict.fromkeys(names)]


@contextmanager
def _pinned_threads(threads: int | None) -> Iterator[dict[str, Any]]:
    """Use ``threads`` intra-op threads pinned to as many CPUs (Linux) for the run; restore both afterwards."""
    can_pin = hasattr(os, "sched_getaffinity")
    before_affinity, before_threads = (os.sched_getaffinity(0) if can_pin else None), torch.get_num_threads()
    try:
        if threads:
            if can_pin and threads < len(before_affinity):
                os.sched_setaffinity(0, sorted(before_affinity)[:threads])
            torch.set_num_threads(threads)
        yield {"threads": torch.get_num_threads(),
               "affinity": sorted(os.sched_getaffinity(0)) if can_pin else None}
    finally:
        if can_pin:
            os.sched_setaffinity(0, before_affinity)
        torch.set_num_threads(before_threads)


def run_bench(opts: BenchOptions, *, progress: Progress = lambda *_: None) -> BenchResult:
    """Prepare every (model, backend), time them interleaved, return one record per pair."""
    if opts.precision not in ("fp32", "fp16"):
        raise UsageError(f"--precision {opts.precision}: choose fp32 or fp16.")
    try:
        entries = resolve_models(opts.models, train_form=opts.train_form)
    except ValueError as e:
        raise UsageError(f"--models: {e}.") from None
    backends, device = _backends(opts.backends), _device(opts.device)
    with _pinned_threads(opts.threads) as pinning:
        return _run_pinned(opts, entries, backends, device, pinning, progress)


def _run_pinned(opts: BenchOptions, entries: list[ModelEntry], backends: list[Backend], device: str,
                pinning: dict[str, Any], progress: Progress) -> BenchResult:
    cfg = BenchConfig(device=device, precision=opts.precision, batch=opts.batch, img_size=opts.img_size,
                      channels_last=opts.channels_last, include_copies=opts.include_copies,
                      threads=pinning["threads"], cache_dir=opts.cache_dir / "bench")
    progress("Measuring the device's peak FLOP/s and bandwidth (cached)", 0, 1)
    dtype = torch.float16 if opts.precision == "fp16" else torch.float32
    peak, _ = load_or_measure(opts.cache_dir / "device-peaks.json", device, dtype)
    machine = machine_info(device) | {"pinning": pinning}
    records, subjects, prepared = _prepare_all(entries, backends, cfg, peak, progress)
    try:
        iters = opts.iters or (200 if device == "cuda" else 20)
        samples = measure_interleaved(subjects, warmup=opts.warmup, iters=iters, budget_s=opts.budget_s,
                                      on_round=lambda done, total: progress("Timing (interleaved rounds)", done,
                                                                            total))
    finally:
        for p in prepared:
            for cleanup in p.cleanup:
                cleanup()
    machine["gpu_after"] = gpu_state() if device == "cuda" else None
    for key, record in records.items():
        if key in samples:
            stats = summarize(samples[key], batch=cfg.batch)
            record.update(status="ok", stats=stats.as_dict(),
                          efficiency=round(efficiency(record["floor_ms"], stats.median_ms), 4))
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()} | {"device": device}
    return BenchResult(sorted(records.values(), key=_sort_key), machine, config, peak)


def _sort_key(r: dict[str, Any]) -> tuple:
    return (r["backend"], r["status"] != "ok", (r.get("stats") or {}).get("median_ms", 0.0), r["model"])


def _prepare_all(entries: list[ModelEntry], backends: list[Backend], cfg: BenchConfig, peak: DevicePeak,
                 progress: Progress) -> tuple[dict[str, dict], dict[str, Callable[[], float]], list[Prepared]]:
    records: dict[str, dict] = {}
    subjects: dict[str, Callable[[], float]] = {}
    prepared: list[Prepared] = []
    missing = {b.name: b.missing(cfg) for b in backends}
    for i, entry in enumerate(entries):
        progress(f"Preparing {entry.name}", i, len(entries))
        try:
            model = entry.build()
        except ImportError as e:
            raise MissingDependencyError(str(e)) from None
        cost = model_cost(model, batch=cfg.batch, img_size=cfg.img_size)
        for backend in backends:
            key = f"{entry.name}|{backend.name}"
            records[key] = _record(entry, backend.name, cfg, cost, peak)
            reason = missing[backend.name]
            if reason is None:
                try:  # its own copy: backends move and cast the module in place (Module.to)
                    p = backend.prepare(entry, copy.deepcopy(model), cfg)
                    subjects[key] = p.subject
                    prepared.append(p)
                    records[key].update(peak_memory_mb=None if p.peak_memory_mb is None else
                                        round(p.peak_memory_mb, 1), peak_memory_kind=p.memory_kind)
                    continue
                except SkipModel as e:
                    reason = str(e)
                except Exception as e:  # one model failing on one backend must not end the run
                    reason = f"{type(e).__name__}: {e}"
            records[key].update(status="skipped", reason=reason)
        del model
        gc.collect()
    progress("Prepared", len(entries), len(entries))
    return records, subjects, prepared


def _record(entry: ModelEntry, backend: str, cfg: BenchConfig, cost: Any, peak: DevicePeak) -> dict[str, Any]:
    weight_bytes = cost.weight_bytes(cfg.precision)
    published = entry.published
    return {
        "model": entry.name, "family": entry.family, "form": entry.form, "backend": backend, "device": cfg.device,
        "precision": cfg.precision, "batch": cfg.batch, "img_size": cfg.img_size, "channels_last": cfg.channels_last,
        "copies_included": cfg.include_copies, "status": "pending", "reason": None, "stats": None,
        "peak_memory_mb": None, "peak_memory_kind": None, "gflops": round(cost.flops / 1e9, 3),
        "params_m": round(cost.params / 1e6, 3), "weight_bytes": weight_bytes, "depth": cost.depth,
        "floor_ms": round(floor_ms(cost.flops, weight_bytes, peak), 6), "efficiency": None,
        "published": {"top1": published.top1, "pytorch_a100_ms": published.pytorch_a100_ms,
                      "trt_fp32_a100_ms": published.trt_fp32_a100_ms, "trt_fp16_a100_ms": published.trt_fp16_a100_ms},
    }


def gpu_state() -> dict[str, Any] | None:
    """SM/memory clocks, temperature, power and active throttle reasons from nvidia-smi (None without it)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    fields = "name,driver_version,clocks.sm,clocks.mem,clocks.max.sm,temperature.gpu,power.draw," \
             "clocks_throttle_reasons.active"
    try:
        line = subprocess.run([smi, f"--query-gpu={fields}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return None
    return dict(zip(fields.split(","), (v.strip() for v in line.split(","))))


def machine_info(device: str) -> dict[str, Any]:
    versions = {"vanilladeploy": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for module in ("onnxruntime", "onnx", "tensorrt", "torchvision"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:
            versions[module] = None
    info = {"cpu": device_name("cpu"), "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "versions": versions}
    if device == "cuda":
        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "gpu_before": gpu_state()}
    return info


__all__ = ["BenchOptions", "BenchResult", "machine_info", "run_bench"]
