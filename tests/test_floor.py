"""benchmarks/floor.py: the floor arithmetic, peaks from the MINIMUM time of subjects timed in the rounds, the best
candidate wins, efficiency above 1 is flagged, the ISA-derived theoretical reference."""

from __future__ import annotations

import pytest

from benchmarks.floor import (DevicePeak, PeakCandidate, device_peak, efficiency, floor_ms, peak_candidates, rates,
                              theoretical_peak, vanillanet_conv_shapes)
from benchmarks.harness import measure_interleaved
from vanilladeploy.bench import _finish

PEAK = DevicePeak("test device", "fp32", peak_flops=100e9, bandwidth_bytes_s=10e9, winner="gemm")


def test_floor_is_the_larger_of_compute_and_memory_time() -> None:
    assert floor_ms(12e9, 130e6, PEAK) == pytest.approx(120.0)  # compute-bound: 12 GFLOP at 100 GFLOP/s
    assert floor_ms(1e9, 500e6, PEAK) == pytest.approx(50.0)  # memory-bound: 500 MB at 10 GB/s
    assert efficiency(120.0, 240.0) == 0.5


def _candidate(name: str, kind: str, precision: str, work: float) -> PeakCandidate:
    return PeakCandidate(name, kind, precision, work, subject=lambda: 0.0)


def test_peak_comes_from_the_minimum_time_and_the_best_candidate() -> None:
    candidates = [_candidate("mm", "compute", "fp32", 2e9), _candidate("conv", "compute", "fp32", 1e9),
                  _candidate("q", "compute", "int8", 4e9), _candidate("copy", "bandwidth", "any", 1e9)]
    samples = {"mm": [30.0, 20.0, 25.0], "conv": [8.0, 9.0], "q": [10.0], "copy": [100.0, 50.0]}
    measured = rates(candidates, samples)
    assert [m["min_ms"] for m in measured] == [20.0, 8.0, 10.0, 50.0]
    fp32 = device_peak("cpu", "fp32", measured)
    assert fp32.winner == "conv" and fp32.peak_flops == pytest.approx(125e9)  # 1 GFLOP in 8 ms beats 2 in 20
    assert fp32.bandwidth_bytes_s == pytest.approx(20e9)
    assert device_peak("cpu", "int8", measured).peak_flops == pytest.approx(400e9)
    with pytest.raises(ValueError):
        device_peak("cpu", "fp16", measured)


def test_a_record_above_its_floor_is_flagged() -> None:
    from benchmarks.harness import summarize

    record = {"flops": 12e9, "weight_bytes": 1e6}
    _finish(record, summarize([100.0, 100.0, 100.0], batch=1), PEAK)  # floor 120 ms, median 100: beats the floor
    assert record["efficiency"] == pytest.approx(1.2) and record["floor_exceeded"] is True
    assert record["note"] == "floor exceeded: peak under-measured" and record["peak_used"] == "gemm"
    _finish(record, summarize([240.0] * 3, batch=1), PEAK)
    assert record["efficiency"] == pytest.approx(0.5) and record["floor_exceeded"] is False and record["note"] is None


ZEN4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2600.000\n" \
       "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
SKYLAKE = "vendor_id\t: GenuineIntel\ncpu family\t: 6\ncpu MHz\t\t: 2000.000\nflags\t\t: avx2 fma avx512f\n"
AVX2 = "vendor_id\t: AuthenticAMD\ncpu family\t: 23\ncpu MHz\t\t: 3000.000\nflags\t\t: avx2 fma\n"


@pytest.mark.parametrize(("text", "precision", "cores", "expected"), [
    (ZEN4, "fp32", 2, 2 * 16 * 2 * 1 * 2.6e9),  # 512-bit double-pumped on two 256-bit pipes: one 512-bit unit
    (ZEN4, "int8", 2, 2 * 64 * 2 * 1 * 2.6e9),
    (SKYLAKE, "fp32", 4, 4 * 16 * 2 * 2 * 2.0e9),
    (AVX2, "fp32", 2, 2 * 8 * 2 * 2 * 3.0e9),
    (SKYLAKE, "int8", 4, None),  # no VNNI: not derived
    ("", "fp32", 2, None),
])
def test_theoretical_peak_from_the_isa(text: str, precision: str, cores: int, expected: float | None) -> None:
    flops, note = theoretical_peak(precision, cores, text)
    assert flops == (pytest.approx(expected) if expected else None)
    assert ("assumed" in note and "reported" in note) if expected else note


def test_conv_shapes_are_the_models_largest_stage_convs() -> None:
    assert vanillanet_conv_shapes(["vanillanet_5"], 224) == [(512, 1024, 56 * 56), (1024, 2048, 28 * 28)]


def test_real_candidates_run_in_the_rounds() -> None:
    candidates = peak_candidates("cpu", ["fp32", "int8"], [(64, 128, 64)], gemm_n=128, copy_bytes=1 << 20,
                                 threads=1)
    names = [c.name for c in candidates]
    assert any("torch.mm" in n for n in names) and any("MatMulInteger" in n for n in names)
    assert any("QDQ Conv1x1 64→128" in n for n in names) and any(n.startswith("copy") for n in names)
    samples = measure_interleaved({c.name: c.subject for c in candidates}, warmup=1, iters=2)
    measured = rates(candidates, samples)
    assert all(m["rate"] > 1e6 for m in measured)
    assert device_peak("cpu", "int8", measured).winner.endswith(("int8", "uint8×int8", "int8×int8"))
