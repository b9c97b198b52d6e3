"""The physical floor: no implementation can beat max(FLOPs / peak FLOP/s, weight bytes / memory bandwidth).

Peak and bandwidth are *measured* on the machine (a large GEMM, a large copy), not taken from a datasheet, and cached
per machine (device name, dtype, threads, torch version) so later runs skip the measurement. ``efficiency`` =
floor / median latency: 1.0 would be a perfect implementation; launch overheads and small kernels pull it down.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from exporters.files import write_atomically


@dataclass(frozen=True)
class DevicePeak:
    """Measured capability of one device for one dtype."""

    device: str
    dtype: str
    peak_flops: float  # FLOP/s of a large GEMM
    bandwidth_bytes_s: float  # bytes/s of a large device-to-device copy (read + write counted)
    gemm_n: int
    copy_bytes: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def floor_ms(flops: float, weight_bytes: float, peak: DevicePeak) -> float:
    """max(FLOPs / peak, weight bytes / bandwidth), in ms (DESIGN §7, without the per-kernel launch term)."""
    return max(flops / peak.peak_flops, weight_bytes / peak.bandwidth_bytes_s) * 1e3


def efficiency(floor: float, median_ms: float) -> float:
    return floor / median_ms if median_ms > 0 else float("nan")


def _best_seconds(fn, *, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


@torch.inference_mode()
def measure_peak(device: str, dtype: torch.dtype) -> DevicePeak:
    """Best of several runs: an n×n GEMM (2n³ FLOP) and a copy of a large buffer (2 × size bytes moved)."""
    n = 8192 if device == "cuda" else 2048
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up (library choice, page faults)
    gemm_s = _best_seconds(lambda: torch.mm(a, b), repeats=5, device=device)
    size = (1 << 30) if device == "cuda" else (256 << 20)
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = _best_seconds(lambda: dst.copy_(src), repeats=5, device=device)
    return DevicePeak(device_name(device), str(dtype).removeprefix("torch."), 2 * n**3 / gemm_s, 2 * size / copy_s, n,
                      size)


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    import platform

    model = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    return f"{model} ({torch.get_num_threads()} threads)"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def load_or_measure(cache: Path, device: str, dtype: torch.dtype) -> tuple[DevicePeak, bool]:
    """The cached measurement for this device/dtype/threads/torch, or a fresh one (then cached). Returns
    ``(peak, from_cache)``."""
    key = f"{device_name(device)}|{dtype}|torch {torch.__version__}"
    entries = _load(cache)
    if key in entries:
        return DevicePeak(**entries[key]), True
    peak = measure_peak(device, dtype)
    entries[key] = peak.as_dict()
    text = json.dumps(entries, indent=2) + "\n"
    write_atomically(cache, lambda tmp: tmp.write_text(text))
    return peak, False


def _load(cache: Path) -> dict[str, dict]:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = ["DevicePeak", "device_name", "efficiency", "floor_ms", "load_or_measure", "measure_peak"]
