"""``vanilladeploy bench``: deployed VanillaNets against ResNet and Swin, same runtimes, same machine, one run.

Every (model, runtime) pair is prepared first, then all are timed in interleaved rounds; each gets latency
statistics, its physical floor and efficiency, and the published A100 numbers to compare with. A runtime or model
that cannot run here becomes a ``skipped`` record with the reason. A record names its runtime in the field
``backend`` (the results' schema keeps that name).
"""

from __future__ import annotations

import copy
import gc
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from vanilladeploy.benchmarks.floor import (
    FLOOR_EXCEEDED,
    DevicePeak,
    NoPeakMeasured,
    device_name,
    device_peak,
    efficiency,
    floor_ms,
    rates,
    theoretical_peak,
    usable_cores,
    vanillanet_conv_shapes,
)
from vanilladeploy.benchmarks.onnx_files import SkipModel
from vanilladeploy.benchmarks.peaks import GuardedPeak, PeakCandidate, guard, peak_candidates
from vanilladeploy.benchmarks.subjects import BENCH_RUNTIMES, CACHE_DIR, BenchConfig, Prepared, RuntimeBench
from vanilladeploy.benchmarks.zoo import ModelEntry, model_cost, resolve_models
from vanilladeploy.errors import MissingDependencyError, UsageError
from vanilladeploy.extras import available, install_hint
from vanilladeploy.machine import gpu_state, machine_info
from vanilladeploy.runtimes.timing import measure_interleaved, summarize
from vanilladeploy.steps import Progress, Step, silent
from vanilladeploy.validate import check_path, name_list


@dataclass
class BenchOptions:
    models: str | None = None
    runtimes: list[str] | None = None  # what times each model: torch, torch-cudagraph, onnxruntime, …
    device: str | None = None  # None: cuda when available, else cpu
    precision: str = "fp32"  # one precision, or several comma-separated ("fp32,int8"), timed in the same rounds
    batch: int = 1
    img_size: int = 224
    warmup: int = 3
    iters: int | None = None  # None: 20 on CPU, 200 on CUDA
    budget_s: float | None = None
    threads: int | None = None
    channels_last: bool = False
    include_copies: bool = False
    train_form: bool = False
    cache_dir: Path = CACHE_DIR
    gemm_n: int | None = None  # peak subjects' largest GEMM (n³, (n/2)³, a conv-like one); None: 2048 CPU, 8192 CUDA
    copy_bytes: int | None = None  # bandwidth subject; None: 256 MiB on CPU, 1 GiB on CUDA

    @property
    def precisions(self) -> list[str]:
        return [p.strip() for p in self.precision.split(",") if p.strip()]

    def configs(self, device: str, threads: int | None) -> list[BenchConfig]:
        """One :class:`BenchConfig` per precision asked (in order, without repeats), on ``device``."""
        return [BenchConfig(device=device, precision=precision, batch=self.batch, img_size=self.img_size,
                            channels_last=self.channels_last, include_copies=self.include_copies, threads=threads,
                            cache_dir=self.cache_dir / "bench") for precision in dict.fromkeys(self.precisions)]


PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class BenchResult:
    records: list[dict[str, Any]]
    machine: dict[str, Any]
    config: dict[str, Any]
    peaks: dict[str, DevicePeak]
    """The precisions whose peak was measured."""
    peaks_unavailable: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The others: ``{"available": False, "reason": …, "candidates": […]}``; their records have no floor."""

    def document(self) -> dict[str, Any]:
        peaks = {k: v.as_dict() for k, v in self.peaks.items()} | self.peaks_unavailable
        return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": self.config,
                "machine": self.machine, "peaks": dict(sorted(peaks.items(), key=lambda kv: PRECISIONS.index(kv[0]))),
                "records": self.records}


def _device(requested: str | None) -> str:
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda"):
        raise UsageError(f"--device {requested}: choose cpu or cuda.")
    if requested == "cuda" and not torch.cuda.is_available():
        raise MissingDependencyError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu.")
    return requested


def _runtimes(names: list[str] | None) -> list[RuntimeBench]:
    names = names or list(BENCH_RUNTIMES)
    unknown = [n for n in names if n not in BENCH_RUNTIMES]
    if unknown:
        raise UsageError(f"unknown runtime {unknown[0]!r}: choose from {', '.join(BENCH_RUNTIMES)}.")
    return [BENCH_RUNTIMES[n]() for n in dict.fromkeys(names)]


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


def check_bench_options(opts: BenchOptions, outputs: dict[str, Path] | None = None) -> None:
    """What ``bench`` would otherwise find out only after minutes of timing, or silently reinterpret; ``outputs``:
    the result files to be written (option name → path), which need matplotlib for the plot."""
    name_list("--models", opts.models)
    if opts.runtimes is not None and not opts.runtimes:
        raise UsageError("--runtimes is empty: give a comma-separated list, or drop --runtimes for the default.")
    unknown = [r for r in opts.runtimes or () if r not in BENCH_RUNTIMES]
    if unknown:
        raise UsageError(f"--runtimes: unknown runtime {unknown[0]!r}; choose from {', '.join(BENCH_RUNTIMES)}.")
    if opts.budget_s is not None and not opts.budget_s > 0:
        raise UsageError(f"--budget-s {opts.budget_s}: give a positive number of seconds.")
    for option, path in (outputs or {}).items():
        check_path(option, path, directory=False)
    check_path("--cache-dir", opts.cache_dir, directory=True)
    if outputs and "--plot" in outputs and not available("matplotlib"):  # say so before minutes of timing
        raise MissingDependencyError(f"the plot needs matplotlib: {install_hint('bench')}")


def write_results(result: BenchResult, *, json_path: Path, csv_path: Path, plot_path: Path) -> list[Path]:
    """The results as JSON, CSV and the plot; JSON and CSV are written even when the plot cannot be."""
    from vanilladeploy.benchmarks.results import write_csv, write_json, write_plot

    written = [write_json(json_path, result.document()), write_csv(csv_path, result.records)]
    where = result.machine.get("gpu") or result.machine["cpu"]
    first = result.records[0]
    precisions = "/".join(dict.fromkeys(r["precision"] for r in result.records))
    try:
        written.append(write_plot(plot_path, result.records, title=f"{where} · {precisions} · batch "
                                  f"{first['batch']} · {first['img_size']}px"))
    except ImportError:
        raise MissingDependencyError(f"the plot needs matplotlib: {install_hint('bench')} (JSON and CSV were "
                                     f"written: {', '.join(map(str, written))})") from None
    return written


def run_bench(opts: BenchOptions, *, progress: Progress = silent,
              warn: Callable[[str], None] | None = None) -> BenchResult:
    """Prepare every (model, runtime), time them interleaved, return one record per pair. Options that cannot work,
    or would have no effect, are refused (:class:`UsageError`) before any work; ``warn`` (default: one line on
    stderr) gets what runs but not as the user may expect."""
    check_bench_options(opts)
    bad = [p for p in opts.precisions if p not in PRECISIONS] or ([] if opts.precisions else [opts.precision])
    if bad:
        raise UsageError(f"--precision {bad[0]!r}: choose fp32, fp16, bf16 or int8 (several: fp32,bf16,int8).")
    try:
        entries = resolve_models(opts.models, train_form=opts.train_form)
    except ValueError as e:
        raise UsageError(f"--models: {e}.") from None
    runtimes, device = _runtimes(opts.runtimes), _device(opts.device)
    refuse_idle_options(opts, entries, [r.name for r in runtimes], device)
    for line in option_warnings(opts):
        (warn or _warn_on_stderr)(line)
    with _pinned_threads(opts.threads) as pinning:
        return _run_pinned(opts, entries, runtimes, device, pinning, progress)


TORCH_RUNTIMES = ("torch", "torch-cudagraph")


def refuse_idle_options(opts: BenchOptions, entries: list[ModelEntry], runtimes: list[str], device: str) -> None:
    """An option that would change nothing in this run is a mistake to point out, not to ignore (exit 2)."""
    if opts.channels_last and not set(runtimes) & set(TORCH_RUNTIMES):
        raise UsageError(f"--channels-last has no effect without a torch runtime (--runtimes {','.join(runtimes)}): "
                         "add torch or torch-cudagraph to --runtimes, or drop --channels-last.")
    if opts.include_copies and device == "cpu":
        raise UsageError("--include-copies has no effect on cpu (inputs and outputs already live on the host): "
                         "use --device cuda, or drop --include-copies.")
    if opts.train_form and not any(e.family == "vanillanet" and e.form == "deploy" for e in entries):
        raise UsageError("--train-form has no effect: --models names no deployed VanillaNet; add one "
                         "(e.g. vanillanet_5), or drop --train-form.")


def option_warnings(opts: BenchOptions) -> list[str]:
    """What runs, but not as asked: more threads than CPUs oversubscribe them."""
    available = usable_cores(None)
    if opts.threads and opts.threads > available:
        return [f"--threads {opts.threads} is more than the {available} CPUs this process may use: the threads "
                "share cores, which slows every model and the peak kernels alike."]
    return []


def _warn_on_stderr(line: str) -> None:
    sys.stderr.write(f"warning: {line}\n")
    sys.stderr.flush()


def _run_pinned(opts: BenchOptions, entries: list[ModelEntry], runtimes: list[RuntimeBench], device: str,
                pinning: dict[str, Any], progress: Progress) -> BenchResult:
    configs = opts.configs(device, pinning["threads"])
    machine = machine_info(device) | {"pinning": pinning}
    records, subjects, prepared = _prepare_all(entries, runtimes, configs, progress)
    timed = list(dict.fromkeys(records[key]["precision"] for key in subjects))
    try:
        progress(Step("Preparing the peak kernels", 0, 1))
        peak_subjects = guard(_peak_candidates(opts, entries, device, pinning["threads"], timed))
        subjects |= {f"peak|{g.name}": g for g in peak_subjects if not g.error}
        iters = opts.iters or (200 if device == "cuda" else 20)
        samples = measure_interleaved(subjects, warmup=opts.warmup, iters=iters, budget_s=opts.budget_s,
                                      on_round=lambda done, total: progress(Step("Timing (interleaved rounds, "
                                                                                 "peaks included)", done, total)))
    finally:
        for p in prepared:
            for cleanup in p.cleanup:
                cleanup()
    machine["gpu_after"] = gpu_state() if device == "cuda" else None
    measured = _measured(peak_subjects, samples)
    peaks, unavailable = _peaks(measured, device=device, label=device_name(device), timed=timed,
                                precisions=[c.precision for c in configs], cores=usable_cores(pinning["threads"]))
    for key, record in records.items():
        if key in samples:
            precision = record["precision"]
            _finish(record, summarize(samples[key], batch=opts.batch), peaks.get(precision),
                    (unavailable.get(precision) or {}).get("reason", ""))
    _speedups(records)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()} | {"device": device}
    return BenchResult(sorted(records.values(), key=_sort_key), machine, config, peaks, unavailable)


def _peak_candidates(opts: BenchOptions, entries: list[ModelEntry], device: str, threads: int | None,
                     precisions: list[str]) -> list[PeakCandidate]:
    """The peak candidates timed in the same rounds as the models (DESIGN §7: measure the peak in the same run), for
    the precisions some timed record needs (a candidate no record uses only costs time)."""
    variants = [e.base for e in entries if e.family == "vanillanet" and e.form == "deploy"]
    shapes = vanillanet_conv_shapes(variants, opts.img_size) if variants else []
    gemm_n = opts.gemm_n or (8192 if device == "cuda" else 2048)
    copy_bytes = opts.copy_bytes or ((1 << 30) if device == "cuda" else (256 << 20))
    return peak_candidates(device, precisions, shapes, gemm_n=gemm_n, copy_bytes=copy_bytes, threads=threads)


def _measured(peak_subjects: list[GuardedPeak], samples: dict[str, list[float]]) -> list[dict[str, object]]:
    times = {g.name: samples.get(f"peak|{g.name}", []) for g in peak_subjects}
    return rates([g.candidate for g in peak_subjects], times, {g.name: g.error for g in peak_subjects if g.error})


def _peaks(measured: list[dict[str, object]], *, device: str, label: str, precisions: list[str], timed: list[str],
           cores: int) -> tuple[dict[str, DevicePeak], dict[str, dict[str, Any]]]:
    """Each precision's own peak; a precision without one is listed as unavailable with the reason (its records get
    no floor) — never given another precision's peak."""
    peaks: dict[str, DevicePeak] = {}
    unavailable: dict[str, dict[str, Any]] = {}
    for precision in dict.fromkeys(precisions):
        if precision not in timed:
            unavailable[precision] = _unavailable(precision, f"no {precision} record was timed on {device}, so no "
                                                  f"{precision} peak was measured")
            continue
        theory = theoretical_peak(precision, cores) if device == "cpu" else None
        try:
            peaks[precision] = device_peak(label, precision, measured, theoretical=theory)
        except NoPeakMeasured as e:
            unavailable[precision] = _unavailable(precision, str(e), e.candidates)
    return peaks, unavailable


def _unavailable(precision: str, reason: str, candidates: tuple[dict[str, object], ...] = ()) -> dict[str, Any]:
    return {"available": False, "precision": precision, "reason": reason, "candidates": list(candidates)}


def _finish(record: dict[str, Any], stats: Any, peak: DevicePeak | None, missing: str = "") -> None:
    """Statistics, then the floor from the peak measured in the same rounds; an efficiency above 1 is flagged. No
    peak of the record's precision: no floor, and the note says why."""
    record.update(status="ok", stats=stats.as_dict())
    if peak is None:
        record.update(floor_ms=None, efficiency=None, peak_used=None, floor_exceeded=None,
                      note=f"floor unavailable: {missing or 'no peak was measured for this precision'}")
        return
    floor = floor_ms(record["flops"], record["weight_bytes"], peak)
    eff = efficiency(floor, stats.median_ms)
    record.update(floor_ms=round(floor, 6), efficiency=round(eff, 4), peak_used=peak.winner,
                  floor_exceeded=bool(eff > 1.0), note=FLOOR_EXCEEDED if eff > 1.0 else None)


def _speedups(records: dict[str, dict[str, Any]]) -> None:
    """``speedup_vs_fp32`` on every non-fp32 record whose model ran in fp32 on the same runtime."""
    fp32 = {(r["model"], r["backend"]): r for r in records.values() if r["precision"] == "fp32" and r["stats"]}
    for r in records.values():
        base = fp32.get((r["model"], r["backend"]))
        if r["precision"] != "fp32" and r["stats"] and base is not None:
            r["speedup_vs_fp32"] = round(base["stats"]["median_ms"] / r["stats"]["median_ms"], 3)


def _sort_key(r: dict[str, Any]) -> tuple:
    return (r["backend"], r["status"] != "ok", (r.get("stats") or {}).get("median_ms", 0.0), r["model"])


def _prepare_all(entries: list[ModelEntry], runtimes: list[RuntimeBench], configs: list[BenchConfig],
                 progress: Progress) -> tuple[dict[str, dict], dict[str, Callable[[], float]], list[Prepared]]:
    records: dict[str, dict] = {}
    subjects: dict[str, Callable[[], float]] = {}
    prepared: list[Prepared] = []
    for i, entry in enumerate(entries):
        progress(Step(f"Preparing {entry.name}", i, len(entries)))
        try:
            model = entry.build()
        except ImportError as e:
            raise MissingDependencyError(str(e)) from None
        cost = model_cost(model, batch=configs[0].batch, img_size=configs[0].img_size)
        for cfg in configs:
            for runtime in runtimes:
                key = f"{entry.name}|{runtime.name}|{cfg.precision}"
                records[key] = _record(entry, runtime.name, cfg, cost)
                p = _prepare_one(runtime, entry, model, cfg, records[key])
                if p is not None:
                    subjects[key] = p.subject
                    prepared.append(p)
        del model
        gc.collect()
    progress(Step("Prepared", len(entries), len(entries)))
    return records, subjects, prepared


def _prepare_one(runtime: RuntimeBench, entry: ModelEntry, model: Any, cfg: BenchConfig, record: dict[str, Any]
                 ) -> Prepared | None:
    """A timed subject, or None with the record marked skipped and why (one failure must not end the run)."""
    reason = runtime.missing(cfg)
    if reason is None:
        try:  # its own copy: runtimes move and cast the module in place (Module.to)
            p = runtime.prepare(entry, copy.deepcopy(model), cfg)
            record.update(peak_memory_mb=None if p.peak_memory_mb is None else round(p.peak_memory_mb, 1),
                          peak_memory_kind=p.memory_kind, calibration=p.calibration)
            return p
        except SkipModel as e:
            reason = str(e)
        except Exception as e:
            reason = f"{type(e).__name__}: {e}"
    record.update(status="skipped", reason=reason)
    return None


def _record(entry: ModelEntry, runtime: str, cfg: BenchConfig, cost: Any) -> dict[str, Any]:
    weight_bytes = cost.weight_bytes(cfg.precision)
    published = entry.published
    return {
        "model": entry.name, "family": entry.family, "form": entry.form, "backend": runtime, "device": cfg.device,
        "precision": cfg.precision, "batch": cfg.batch, "img_size": cfg.img_size, "channels_last": cfg.channels_last,
        "copies_included": cfg.include_copies, "status": "pending", "reason": None, "stats": None,
        "peak_memory_mb": None, "peak_memory_kind": None, "gflops": round(cost.flops / 1e9, 3),
        "flops": cost.flops, "params_m": round(cost.params / 1e6, 3), "weight_bytes": weight_bytes,
        "depth": cost.depth, "floor_ms": None, "efficiency": None, "floor_exceeded": None, "note": None,
        "calibration": None,
        "published": {"top1": published.top1, "pytorch_a100_ms": published.pytorch_a100_ms,
                      "trt_fp32_a100_ms": published.trt_fp32_a100_ms, "trt_fp16_a100_ms": published.trt_fp16_a100_ms},
    }


__all__ = ["BenchOptions", "BenchResult", "check_bench_options", "run_bench", "write_results"]
