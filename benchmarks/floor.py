"""The physical floor: no implementation can beat max(FLOPs / peak FLOP/s, weight bytes / memory bandwidth).

A floor is only a floor if the peak is the machine's best, measured under the same conditions as the models. So the
peak is measured INSIDE the interleaved rounds, by *peak subjects* timed beside the models (same clock boost, same
contention): several candidate kernels — ``torch.mm`` and ONNX Runtime ``MatMul`` at a few large shapes, the models'
own largest 1×1 convolutions, ``MatMulInteger``/QDQ conv for int8 on CPU, ``torch._int_mm`` for int8 on CUDA — and a
large copy for bandwidth. Each candidate's rate comes from its MINIMUM time (a lower bound on what the kernel needs),
while models report medians; the peak is the best candidate. A candidate that fails (to build or to run) is recorded
with its reason and left out; a precision with no measured peak has no floor (None, with the reason) — never another
precision's peak. A record that still beats its floor is flagged ("floor exceeded: peak under-measured") instead of
printed as a plain efficiency above 1. An ISA-derived theoretical peak (cores × SIMD lanes × FMA units × clock) is
reported beside it as a reference, never used in the floor, and flagged when a measured peak exceeds it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from vanilladeploy.benchmarks.peaks import PeakCandidate
from vanilladeploy.machine import parse_cpu_flags

UPPER_REFERENCE = "upper reference (ISA-derived)"
NOT_A_BOUND = "reference, not a bound (a measured peak exceeds it: {why})"

FLOOR_EXCEEDED = "floor exceeded: peak under-measured"


@dataclass(frozen=True)
class TheoreticalPeak:
    """cores × SIMD lanes × 2 (FMA) × FMA units × clock — a reference beside the measured peak, never used in the
    floor. ``flops`` is None (and ``note`` says why) where the ISA or the clock cannot be read. ``clock_source`` says
    which clock was used: the OS's maximum boost clock where it tells one, else the reported clock, which a boosting
    CPU exceeds; so a measured peak can beat it, and then ``below_measured`` and ``label`` say so."""

    flops: float | None
    note: str
    clock_mhz: float | None = None
    clock_source: str | None = None
    below_measured: bool = False
    label: str = UPPER_REFERENCE

    def against(self, measured_flops: float) -> TheoreticalPeak:
        """Flagged (``below_measured``, relabelled) when ``measured_flops`` exceeds it."""
        if self.flops is None or measured_flops <= self.flops:
            return self
        why = ("the reported clock is below the boost clock" if self.clock_source == REPORTED_CLOCK
               else "an assumed lane or FMA-unit count is too low for this CPU")
        return replace(self, below_measured=True, label=NOT_A_BOUND.format(why=why))


@dataclass(frozen=True)
class DevicePeak:
    """The best measured compute rate for one precision and the best bandwidth, from the same rounds as the models."""

    device: str
    precision: str
    peak_flops: float
    bandwidth_bytes_s: float
    winner: str
    candidates: tuple[dict[str, object], ...] = ()
    theoretical_peak: TheoreticalPeak | None = None

    def as_dict(self) -> dict[str, object]:
        return {"available": True, **asdict(self)}


class NoPeakMeasured(ValueError):
    """No compute candidate of a precision, or no bandwidth candidate, was measured; ``candidates`` are the ones that
    were tried (with their reasons)."""

    def __init__(self, reason: str, candidates: tuple[dict[str, object], ...] = ()) -> None:
        super().__init__(reason)
        self.candidates = candidates


def floor_ms(flops: float, weight_bytes: float, peak: DevicePeak) -> float:
    """max(FLOPs / peak, weight bytes / bandwidth), in ms (DESIGN §7, without the per-kernel launch term)."""
    return max(flops / peak.peak_flops, weight_bytes / peak.bandwidth_bytes_s) * 1e3


def efficiency(floor: float, median_ms: float) -> float:
    return floor / median_ms if median_ms > 0 else float("nan")


def rates(candidates: Sequence[PeakCandidate], samples: Mapping[str, list[float]],
          failures: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """Each candidate's rate from its minimum time (work / min seconds); a failed candidate (``failures``: name →
    reason) or one never timed is kept with ``status`` "failed", its reason and no rate."""
    out = []
    for c in candidates:
        entry: dict[str, object] = {"name": c.name, "kind": c.kind, "precision": c.precision, "work": c.work}
        times = [t for t in samples.get(c.name) or [] if math.isfinite(t) and t > 0]
        reason = (failures or {}).get(c.name) or (None if times else "not timed (no round ran)")
        if reason:
            entry |= {"status": "failed", "reason": reason, "min_ms": None, "rate": None}
        else:
            entry |= {"status": "ok", "min_ms": round(min(times), 6), "rate": c.work / (min(times) / 1e3)}
        out.append(entry)
    return out


def device_peak(device: str, precision: str, measured: list[dict[str, object]], *,
                theoretical: TheoreticalPeak | None = None) -> DevicePeak:
    """The best measured compute candidate of ``precision`` and the best bandwidth candidate; raises
    :class:`NoPeakMeasured` (saying why) when either is missing — never falls back to another precision."""
    compute = [m for m in measured if m["kind"] == "compute" and m["precision"] == precision]
    copies = [m for m in measured if m["kind"] == "bandwidth"]
    ok_compute, ok_copies = ([m for m in ms if m["status"] == "ok"] for ms in (compute, copies))
    if not ok_compute or not ok_copies:
        raise NoPeakMeasured(_why_no_peak(device, precision, compute, copies, bool(ok_compute)),
                             tuple(compute + copies))
    best = max(ok_compute, key=lambda m: float(m["rate"]))
    copy = max(ok_copies, key=lambda m: float(m["rate"]))
    return DevicePeak(device, precision, float(best["rate"]), float(copy["rate"]), str(best["name"]),
                      tuple(compute + copies), theoretical.against(float(best["rate"])) if theoretical else None)


def _why_no_peak(device: str, precision: str, compute: list[dict[str, object]], copies: list[dict[str, object]],
                 compute_ok: bool) -> str:
    if not compute:
        return f"no {precision} peak candidate runs on {device}"
    if not copies:
        return "no bandwidth candidate was timed"
    failed, what = (copies, "the bandwidth candidate") if compute_ok else (compute, f"every {precision} candidate")
    reasons = "; ".join(f"{m['name']}: {m['reason']}" for m in failed)
    return f"{what} failed ({reasons})"


# --- candidates -----------------------------------------------------------------------------------------------------

# --- the theoretical reference ---------------------------------------------------------------------------------------

FMA_UNITS = 2
"""Assumed FMA pipes of the full SIMD width per core (2 on Intel server cores; AMD Zen 4 runs 512-bit ops on its
two 256-bit pipes, i.e. one 512-bit pipe: see :func:`_fma_units`)."""
SYSFS_CPU = Path("/sys/devices/system/cpu")
BOOST_CLOCK = "maximum boost clock, cpufreq cpuinfo_max_freq"
REPORTED_CLOCK = "reported clock, /proc/cpuinfo 'cpu MHz'; boost may exceed it"


def _fma_units(text: str, bits: int) -> int:
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "")
    amd = "AuthenticAMD" in text
    return 1 if amd and bits == 512 and family == "25" else FMA_UNITS


def cpu_clock_mhz(cpuinfo: str, sysfs: Path = SYSFS_CPU) -> tuple[float | None, str]:
    """(MHz, which clock): the highest ``cpufreq/cpuinfo_max_freq`` (the boost clock, kHz) where the OS exposes it,
    else the ``cpu MHz`` that /proc/cpuinfo reports (nominal or current: a boosting CPU runs faster)."""
    boost = [_number(p) for p in sysfs.glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq")]
    if any(boost):
        return max(b for b in boost if b) / 1e3, BOOST_CLOCK
    reported = [float(line.split(":", 1)[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
    return (max(reported), REPORTED_CLOCK) if reported else (None, "")


def _number(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _lanes(precision: str, flags: set[str], bits: int) -> tuple[int, str, str]:
    """Multiply-adds per SIMD instruction, what they are, and why that many."""
    if precision == "int8":
        if ("avx512_vnni" if bits == 512 else "avx_vnni") in flags:
            return bits // 8, "int8 lanes", "VNNI"
        return bits // 16, "int8 lanes", "no VNNI: vpmaddubsw + vpmaddwd, half the VNNI rate"
    if precision == "bf16" and bits == 512 and "avx512_bf16" in flags:
        return bits // 16, "bf16 pairs", "AVX512-BF16 dot products; AMX tiles, where present, go beyond"
    if precision == "fp16" and bits == 512 and "avx512_fp16" in flags:
        return bits // 16, "fp16 lanes", "AVX512-FP16"
    if precision == "fp16":
        return bits // 32, "fp32 lanes", "fp16 is computed in fp32 without AVX512-FP16"
    return bits // 32, "fp32 lanes", ""


def theoretical_peak(precision: str, cores: int, cpuinfo: str | None = None, *,
                     sysfs: Path = SYSFS_CPU) -> TheoreticalPeak:
    """cores × SIMD lanes × 2 (FMA) × FMA units × clock, labelled with what it assumes and which clock it used;
    ``flops`` None when the ISA or the clock cannot be read (and for GPUs, which callers do not ask)."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    flags = set(parse_cpu_flags(text))
    mhz, source = cpu_clock_mhz(text, sysfs)
    if mhz is None or not flags:
        return TheoreticalPeak(None, "not derivable (no ISA flags or clock in /proc/cpuinfo)")
    bits = 512 if "avx512f" in flags else 256 if {"avx2", "fma"} <= flags else 128
    lanes, what, why = _lanes(precision, flags, bits)
    units = _fma_units(text, bits)
    note = (f"{cores} cores × {lanes} {what} ({bits}-bit{', ' + why if why else ''}) × 2 (FMA) × {units} FMA "
            f"unit(s) (assumed) × {mhz:.0f} MHz ({source})")
    return TheoreticalPeak(cores * lanes * 2 * units * mhz * 1e6, note, mhz, source)


def usable_cores(threads: int | None) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(threads, available) if threads else available


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    from vanilladeploy.machine import cpu_model

    return f"{cpu_model()} ({torch.get_num_threads()} threads)"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def vanillanet_conv_shapes(variants: Sequence[str], img_size: int, *, count: int = 2) -> list[tuple[int, int, int]]:
    """(in, out, pixels) of the deployed VanillaNets' dense 1×1 stage convolutions with the most FLOPs: stage i maps
    dims[i] → dims[i+1] at the spatial size it receives."""
    from vanilladeploy.exporters.onnx_export import feature_sizes
    from vanilladeploy.models.vanillanet import get_variant

    shapes = set()
    for name in variants:
        spec = get_variant(name)
        sizes = feature_sizes(spec, img_size)
        shapes |= {(spec.dims[i], spec.dims[i + 1], sizes[i] ** 2) for i in range(len(spec.strides))}
    return sorted((s for s in shapes if s[2] > 1), key=lambda s: -s[0] * s[1] * s[2])[:count]


__all__ = ["FLOOR_EXCEEDED", "DevicePeak", "NoPeakMeasured", "TheoreticalPeak", "cpu_clock_mhz", "device_name",
           "device_peak", "efficiency", "floor_ms", "rates", "theoretical_peak", "usable_cores",
           "vanillanet_conv_shapes"]
