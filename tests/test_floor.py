"""benchmarks/floor.py: the floor arithmetic, efficiency, and the per-machine cache of measured peaks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import benchmarks.floor as floor
from benchmarks.floor import DevicePeak, efficiency, floor_ms, load_or_measure

PEAK = DevicePeak("test device", "float32", peak_flops=100e9, bandwidth_bytes_s=10e9, gemm_n=8, copy_bytes=8)


def test_floor_is_the_larger_of_compute_and_memory_time() -> None:
    assert floor_ms(12e9, 130e6, PEAK) == pytest.approx(120.0)  # compute-bound: 12 GFLOP at 100 GFLOP/s
    assert floor_ms(1e9, 500e6, PEAK) == pytest.approx(50.0)  # memory-bound: 500 MB at 10 GB/s
    assert efficiency(120.0, 240.0) == 0.5


def test_peaks_are_cached_per_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_measure(device: str, dtype: torch.dtype) -> DevicePeak:
        calls.append((device, dtype))
        return PEAK

    monkeypatch.setattr(floor, "measure_peak", fake_measure)
    cache = tmp_path / "peaks.json"
    assert load_or_measure(cache, "cpu", torch.float32) == (PEAK, False)
    assert load_or_measure(cache, "cpu", torch.float32) == (PEAK, True)
    assert len(calls) == 1 and len(json.loads(cache.read_text())) == 1
    load_or_measure(cache, "cpu", torch.float16)  # another dtype is another entry
    assert len(calls) == 2 and len(json.loads(cache.read_text())) == 2
    cache.write_text("not json")  # a corrupt cache is re-measured, not fatal
    assert load_or_measure(cache, "cpu", torch.float32) == (PEAK, False)


def test_real_measurement_is_plausible() -> None:
    peak = floor.measure_peak("cpu", torch.float32)
    assert peak.peak_flops > 1e8 and peak.bandwidth_bytes_s > 1e8 and "threads" in peak.device
