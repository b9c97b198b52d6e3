"""benchmarks/floor.py: the floor arithmetic, peaks from the MINIMUM time of subjects timed in the rounds, the best
candidate of the record's own precision wins (CUDA int8 included, selected without a GPU), failing candidates are
recorded and skipped, a precision without a peak has no floor, efficiency above 1 is flagged, and the ISA-derived
theoretical reference (boost clock where the OS tells it) is flagged when a measured peak beats it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vanilladeploy.benchmarks.floor import (
    BOOST_CLOCK,
    REPORTED_CLOCK,
    DevicePeak,
    NoPeakMeasured,
    device_peak,
    efficiency,
    floor_ms,
    rates,
    theoretical_peak,
    vanillanet_conv_shapes,
)
from vanilladeploy.benchmarks.peaks import PeakCandidate, gemm_shapes, guard, int_mm_accepts, peak_candidates
from vanilladeploy.benchmarks.run import _finish, _peaks
from vanilladeploy.runtimes.timing import measure_interleaved, summarize

PEAK = DevicePeak("test device", "fp32", peak_flops=100e9, bandwidth_bytes_s=10e9, winner="gemm")


def test_floor_is_the_larger_of_compute_and_memory_time() -> None:
    assert floor_ms(12e9, 130e6, PEAK) == pytest.approx(120.0)  # compute-bound: 12 GFLOP at 100 GFLOP/s
    assert floor_ms(1e9, 500e6, PEAK) == pytest.approx(50.0)  # memory-bound: 500 MB at 10 GB/s
    assert efficiency(120.0, 240.0) == 0.5


def _candidate(name: str, kind: str, precision: str, work: float) -> PeakCandidate:
    return PeakCandidate(name, kind, precision, work, prepare=lambda: (lambda: 1.0))


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
    with pytest.raises(NoPeakMeasured, match="no fp16 peak candidate runs on cpu"):
        device_peak("cpu", "fp16", measured)


def test_a_record_above_its_floor_is_flagged_and_one_without_a_peak_has_no_floor() -> None:
    record = {"flops": 12e9, "weight_bytes": 1e6}
    _finish(record, summarize([100.0, 100.0, 100.0], batch=1), PEAK)  # floor 120 ms, median 100: beats the floor
    assert record["efficiency"] == pytest.approx(1.2) and record["floor_exceeded"] is True
    assert record["note"] == "floor exceeded: peak under-measured" and record["peak_used"] == "gemm"
    _finish(record, summarize([240.0] * 3, batch=1), PEAK)
    assert record["efficiency"] == pytest.approx(0.5) and record["floor_exceeded"] is False and record["note"] is None
    _finish(record, summarize([240.0] * 3, batch=1), None, "every int8 candidate failed (x: OOM)")
    assert record["status"] == "ok" and record["stats"]["median_ms"] == 240.0
    assert record["floor_ms"] is record["efficiency"] is record["peak_used"] is record["floor_exceeded"] is None
    assert record["note"] == "floor unavailable: every int8 candidate failed (x: OOM)"


# --- failing candidates ----------------------------------------------------------------------------------------------

def _raises(message: str) -> None:
    raise RuntimeError(message)


def _fails_on_third_call() -> float:
    _fails_on_third_call.calls = getattr(_fails_on_third_call, "calls", 0) + 1
    if _fails_on_third_call.calls >= 3:
        raise RuntimeError("CUDA out of memory")
    return 2.0


def test_a_failing_candidate_is_recorded_with_its_reason_and_skipped() -> None:
    _fails_on_third_call.calls = 0  # the trial call and round 1 run, round 2 fails
    candidates = [_candidate("mm", "compute", "fp32", 1e9), _candidate("copy", "bandwidth", "any", 1e9),
                  PeakCandidate("qdq", "compute", "fp32", 1e12, prepare=lambda: _raises("quantize_qdq failed")),
                  PeakCandidate("ort", "compute", "fp32", 1e12, prepare=lambda: _fails_on_third_call)]
    guarded = guard(candidates)  # must not raise
    assert [g.error for g in guarded[:2]] == [None, None]
    assert guarded[2].error == "RuntimeError: quantize_qdq failed" and guarded[2]() == math.inf
    samples = measure_interleaved({g.name: g for g in guarded if not g.error}, warmup=0, iters=3)
    assert guarded[3].error == "RuntimeError: CUDA out of memory" and samples["ort"] == [2.0, math.inf, math.inf]
    measured = rates(candidates, samples, {g.name: g.error for g in guarded if g.error})
    by_name = {m["name"]: m for m in measured}
    assert by_name["qdq"]["status"] == "failed" and by_name["qdq"]["reason"] == "RuntimeError: quantize_qdq failed"
    assert by_name["ort"]["status"] == "failed" and by_name["ort"]["rate"] is None  # its 2 ms sample is not used
    peak = device_peak("cpu", "fp32", measured)
    assert peak.winner == "mm" and {c["name"] for c in peak.candidates} == {"mm", "copy", "qdq", "ort"}
    only_failed = [m for m in measured if m["name"] != "mm"]
    with pytest.raises(NoPeakMeasured, match="every fp32 candidate failed .*quantize_qdq failed") as info:
        device_peak("cpu", "fp32", only_failed)
    assert {c["status"] for c in info.value.candidates} == {"ok", "failed"}


# --- CUDA candidates, built and selected without a GPU ---------------------------------------------------------------

def test_cuda_candidates_are_listed_without_touching_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_cuda(*_: object) -> None:
        raise AssertionError("building the candidate list initialized CUDA")

    monkeypatch.setattr(torch.cuda, "_lazy_init", no_cuda)
    candidates = peak_candidates("cuda", ["fp32", "fp16", "int8"], [(512, 1024, 3136)], gemm_n=8192,
                                 copy_bytes=1 << 30)
    by = {p: [c.name for c in candidates if c.precision == p] for p in ("fp32", "fp16", "int8", "any")}
    assert by["int8"] == ["torch._int_mm 8192 int8 (cuda)", "torch._int_mm 4096 int8 (cuda)",
                          "torch._int_mm 6144×2048×4096 int8 (cuda)"]
    assert by["fp16"] == ["torch.mm 8192 fp16 (cuda)", "torch.mm 4096 fp16 (cuda)",
                          "torch.mm 6144×2048×4096 fp16 (cuda)", "torch Conv1x1 512→1024 @56×56 fp16 (cuda)"]
    assert len(by["fp32"]) == 4 and by["any"] == ["copy 1024 MiB (cuda)"]
    assert not any("onnxruntime" in c.name for c in candidates)
    int8 = next(c for c in candidates if c.precision == "int8")
    assert int8.work == 2.0 * 8192**3


def test_int_mm_shapes() -> None:
    assert gemm_shapes(2048) == [(2048, 2048, 2048), (1024, 1024, 1024), (1536, 512, 1024)]
    assert all(int_mm_accepts(*s) for n in (64, 256, 2048, 8192) for s in gemm_shapes(n))
    assert int_mm_accepts(24, 8, 8) and not int_mm_accepts(16, 8, 8) and not int_mm_accepts(32, 12, 8)
    assert not int_mm_accepts(32, 8, 4)


def _fake_cuda_measurement(drop_int8: bool = False) -> list[dict[str, object]]:
    candidates = peak_candidates("cuda", ["fp32", "int8"], [], gemm_n=8192, copy_bytes=1 << 30)
    if drop_int8:
        candidates = [c for c in candidates if c.precision != "int8"]
    ms = {"fp32": 20.0, "int8": 1.0, "any": 1.0}  # int8 GEMMs run 20× faster than fp32 ones
    return rates(candidates, {c.name: [ms[c.precision]] for c in candidates})


def test_int8_records_use_the_int8_peak_on_cuda() -> None:
    peaks, unavailable = _peaks(_fake_cuda_measurement(), device="cuda", label="NVIDIA H100",
                                precisions=["fp32", "int8"], timed=["fp32", "int8"], cores=1)
    assert not unavailable and peaks["int8"].winner == "torch._int_mm 8192 int8 (cuda)"
    assert peaks["int8"].peak_flops == pytest.approx(20 * peaks["fp32"].peak_flops)
    assert peaks["fp32"].winner.startswith("torch.mm 8192 fp32") and peaks["int8"].theoretical_peak is None


@pytest.mark.parametrize("precisions", [["int8"], ["fp32", "int8"]])
def test_a_precision_without_a_peak_has_none_never_another_ones(precisions: list[str]) -> None:
    peaks, unavailable = _peaks(_fake_cuda_measurement(drop_int8=True), device="cuda", label="NVIDIA H100",
                                precisions=precisions, timed=precisions, cores=1)
    assert "int8" not in peaks and unavailable["int8"]["available"] is False
    assert unavailable["int8"]["reason"] == "no int8 peak candidate runs on NVIDIA H100"
    assert set(peaks) == set(precisions) - {"int8"}
    peaks, unavailable = _peaks(_fake_cuda_measurement(), device="cuda", label="gpu", precisions=["fp32", "fp16"],
                                timed=["fp32"], cores=1)
    assert "fp16" not in peaks and "no fp16 record was timed on cuda" in unavailable["fp16"]["reason"]


def test_candidates_only_for_the_precisions_asked() -> None:
    assert peak_candidates("cpu", [], [(64, 128, 64)], gemm_n=64, copy_bytes=1 << 16) == []
    names = [c.name for c in peak_candidates("cpu", ["fp32"], [], gemm_n=64, copy_bytes=1 << 16)]
    assert not any("fp16" in n or "int8" in n for n in names)


# --- the theoretical reference ---------------------------------------------------------------------------------------

ZEN4 = "vendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel name\t: AMD EPYC\ncpu MHz\t\t: 2600.000\n" \
       "flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni\n"
SKYLAKE = "vendor_id\t: GenuineIntel\ncpu family\t: 6\ncpu MHz\t\t: 2000.000\nflags\t\t: avx2 fma avx512f\n"
SAPPHIRE = "vendor_id\t: GenuineIntel\ncpu family\t: 6\ncpu MHz\t\t: 2000.000\n" \
           "flags\t\t: avx2 fma avx512f avx512_vnni avx512_fp16\n"
AVX2 = "vendor_id\t: AuthenticAMD\ncpu family\t: 23\ncpu MHz\t\t: 3000.000\nflags\t\t: avx2 fma\n"


@pytest.mark.parametrize(("text", "precision", "cores", "expected", "lanes"), [
    (ZEN4, "fp32", 2, 2 * 16 * 2 * 1 * 2.6e9, "16 fp32 lanes (512-bit)"),  # 512-bit double-pumped: one 512-bit unit
    (ZEN4, "int8", 2, 2 * 64 * 2 * 1 * 2.6e9, "64 int8 lanes (512-bit, VNNI)"),
    (ZEN4, "fp16", 2, 2 * 16 * 2 * 1 * 2.6e9, "16 fp32 lanes (512-bit, fp16 is computed in fp32"),
    (SAPPHIRE, "fp16", 4, 4 * 32 * 2 * 2 * 2.0e9, "32 fp16 lanes (512-bit, AVX512-FP16)"),
    (SKYLAKE, "fp32", 4, 4 * 16 * 2 * 2 * 2.0e9, "16 fp32 lanes (512-bit)"),
    (SKYLAKE, "int8", 4, 4 * 32 * 2 * 2 * 2.0e9, "32 int8 lanes (512-bit, no VNNI"),  # AVX-512 without VNNI: half rate
    (AVX2, "fp32", 2, 2 * 8 * 2 * 2 * 3.0e9, "8 fp32 lanes (256-bit)"),
    (AVX2, "int8", 2, 2 * 16 * 2 * 2 * 3.0e9, "16 int8 lanes (256-bit, no VNNI"),
    ("", "fp32", 2, None, None),
])
def test_theoretical_peak_from_the_isa(tmp_path: Path, text: str, precision: str, cores: int,
                                       expected: float | None, lanes: str | None) -> None:
    peak = theoretical_peak(precision, cores, text, sysfs=tmp_path)  # no cpufreq here: the reported clock
    assert peak.flops == (pytest.approx(expected) if expected else None)
    if expected:
        assert lanes in peak.note and "assumed" in peak.note and peak.clock_source == REPORTED_CLOCK
        assert peak.label == "upper reference (ISA-derived)" and not peak.below_measured
    else:
        assert "not derivable" in peak.note


def test_theoretical_peak_uses_the_boost_clock_where_the_os_tells_it(tmp_path: Path) -> None:
    for cpu, khz in (("cpu0", "3700000\n"), ("cpu1", "3500000\n")):
        (tmp_path / cpu / "cpufreq").mkdir(parents=True)
        (tmp_path / cpu / "cpufreq" / "cpuinfo_max_freq").write_text(khz)
    peak = theoretical_peak("fp32", 2, ZEN4, sysfs=tmp_path)
    assert peak.clock_mhz == 3700.0 and peak.clock_source == BOOST_CLOCK and "3700 MHz" in peak.note
    assert peak.flops == pytest.approx(2 * 16 * 2 * 1 * 3.7e9)


def test_a_measured_peak_above_the_theoretical_one_is_flagged(tmp_path: Path) -> None:
    theory = theoretical_peak("fp32", 2, ZEN4, sysfs=tmp_path)  # 166 GFLOP/s at the reported 2.6 GHz
    measured = rates([_candidate("ort", "compute", "fp32", 2.1e9), _candidate("copy", "bandwidth", "any", 1e9)],
                     {"ort": [10.0], "copy": [50.0]})  # 210 GFLOP/s, as on the Zen 4 machine
    peak = device_peak("cpu", "fp32", measured, theoretical=theory)
    reference = peak.as_dict()["theoretical_peak"]
    assert reference["below_measured"] is True and reference["flops"] == pytest.approx(166.4e9)
    assert reference["label"].startswith("reference, not a bound") and "below the boost clock" in reference["label"]
    assert peak.theoretical_peak is not None and peak.theoretical_peak.label == reference["label"]
    assert peak.theoretical_peak.flops == reference["flops"]
    slower = rates([_candidate("ort", "compute", "fp32", 1e9), _candidate("copy", "bandwidth", "any", 1e9)],
                   {"ort": [10.0], "copy": [50.0]})
    kept = device_peak("cpu", "fp32", slower, theoretical=theory).theoretical_peak
    assert kept is not None and not kept.below_measured and kept.label == "upper reference (ISA-derived)"


def test_conv_shapes_are_the_models_largest_stage_convs() -> None:
    assert vanillanet_conv_shapes(["vanillanet_5"], 224) == [(512, 1024, 56 * 56), (1024, 2048, 28 * 28)]


def test_real_candidates_run_in_the_rounds() -> None:
    candidates = peak_candidates("cpu", ["fp32", "int8"], [(64, 128, 64)], gemm_n=128, copy_bytes=1 << 20,
                                 threads=1)
    names = [c.name for c in candidates]
    assert {n for n in names if n.startswith(("torch.mm", "onnxruntime MatMul "))} == {
        "torch.mm 128 fp32 (cpu)", "torch.mm 64 fp32 (cpu)", "torch.mm 96×32×64 fp32 (cpu)",
        "onnxruntime MatMul 128 fp32", "onnxruntime MatMul 64 fp32", "onnxruntime MatMul 96×32×64 fp32"}
    int8 = ["onnxruntime MatMulInteger 128 uint8×int8", "onnxruntime MatMulInteger 128 int8×int8",
            "onnxruntime QDQ Conv1x1 64→128 @8×8 int8", "openvino Conv1x1 64→128 @8×8 int8"]
    assert [c.name for c in candidates if c.precision == "int8"] == int8
    guarded = guard(candidates)
    assert [g.error for g in guarded] == [None] * len(guarded)
    samples = measure_interleaved({g.name: g for g in guarded}, warmup=1, iters=2)
    measured = rates(candidates, samples)
    assert all(m["status"] == "ok" and m["rate"] > 1e6 for m in measured)
    peak = device_peak("cpu", "int8", measured)
    int8_rates = {str(m["name"]): m["rate"] for m in measured if m["name"] in int8}
    assert peak.winner in int8 and peak.peak_flops == int8_rates[peak.winner]  # an int8 kernel's own rate
    assert [m["name"] for m in peak.candidates] == [*int8, "copy 1 MiB (cpu)"]  # only int8 ones competed


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU: the CUDA peak kernels run only there")
def test_every_cuda_peak_candidate_runs_on_this_gpu() -> None:
    """The fakes above prove the bookkeeping; this proves the kernels (torch.mm fp32/fp16, torch._int_mm, 1×1 conv,
    copy) run on a real GPU — a candidate that fails would silently leave its precision without a floor."""
    shapes = vanillanet_conv_shapes(["vanillanet_5"], 64)
    guarded = guard(peak_candidates("cuda", ["fp32", "fp16", "int8"], shapes, gemm_n=256, copy_bytes=1 << 20))
    assert {g.candidate.precision for g in guarded} >= {"fp32", "fp16", "int8"}
    assert [(g.name, g.error) for g in guarded if g.error] == []
