"""vanilladeploy/machine.py and every decision made on a CPU's description (native bf16, VNNI/AMX int8, SIMD width
of the theoretical peak, doctor's readiness), tested on REAL descriptions (tests/fixtures/cpuinfo/): an AVX2-only
EPYC, an AVX-512 + bf16 EPYC without AMX, a Sapphire Rapids Xeon with AMX — whatever CPU runs the tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import AMX, AMX_CPUINFO, AVX2_ONLY, AVX512_BF16_NO_AMX, CPUINFO, cpu_flags_of

from vanilladeploy.benchmarks.floor import theoretical_peak
from vanilladeploy.machine import (
    INT8_FLAGS,
    bf16_missing,
    cpu_flags,
    describe_cpu,
    machine_info,
    parse_cpu_flags,
)


def test_each_real_description_reads_as_the_cpu_it_is() -> None:
    avx2, zen, spr = cpu_flags_of(AVX2_ONLY), cpu_flags_of(AVX512_BF16_NO_AMX), cpu_flags_of(AMX)
    assert {"avx2", "fma"} <= avx2 and not {f for f in avx2 if f.startswith(("avx512", "amx"))}
    assert {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"} <= zen and not {f for f in zen if f.startswith("amx")}
    assert {"avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"} <= spr
    assert len(avx2) > 80 and len(zen) > 80 and len(spr) > 80  # whole lines, not the first word


def test_lscpu_and_proc_cpuinfo_spellings_read_alike() -> None:
    zen = cpu_flags_of(AVX512_BF16_NO_AMX)
    assert parse_cpu_flags("Architecture:  x86_64\nFlags:         " + " ".join(sorted(zen)) + "\n") == zen
    assert parse_cpu_flags("processor\t: 0\nvendor_id\t: AuthenticAMD\n") == frozenset()  # no flags line: none
    assert parse_cpu_flags("") == frozenset()


def test_this_machines_flags_come_from_its_proc_cpuinfo() -> None:
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    assert cpu_flags() == parse_cpu_flags(path.read_text(encoding="utf-8")) and cpu_flags()


@pytest.mark.parametrize(("cpu", "native"), [(AVX2_ONLY, False), (AVX512_BF16_NO_AMX, True), (AMX, True),
                                           (AMX_CPUINFO, True)])
def test_native_bf16_is_decided_by_the_cpus_own_flags(cpu: str, native: bool) -> None:
    reason = bf16_missing(cpu_flags_of(cpu))
    assert (reason is None) == native, reason
    if not native:
        assert "avx512_bf16" in reason and "amx_bf16" in reason


def test_bf16_also_needs_openvinos_cpu_plugin_to_report_it() -> None:
    from openvino.properties.device import Capability  # the plugin's own capability names

    zen, avx2 = cpu_flags_of(AVX512_BF16_NO_AMX), cpu_flags_of(AVX2_ONLY)
    assert bf16_missing(zen, [Capability.FP32, Capability.BF16, Capability.INT8]) is None
    reason = bf16_missing(zen, [Capability.FP32, Capability.INT8])
    assert reason and "OPTIMIZATION_CAPABILITIES" in reason and "BF16" in reason
    assert "avx512_bf16" in bf16_missing(avx2, [Capability.FP32, Capability.BF16])  # the flags decide first


@pytest.mark.parametrize(("cpu", "int8"), [(AVX2_ONLY, ()), (AVX512_BF16_NO_AMX, ("avx512_vnni",)),
                                           (AMX, ("amx_int8", "avx512_vnni")),
                                           (AMX_CPUINFO, ("amx_int8", "avx512_vnni"))])
def test_native_int8_kernels_by_cpu(cpu: str, int8: tuple[str, ...]) -> None:
    flags = cpu_flags_of(cpu)
    assert {f for f in INT8_FLAGS if f in flags} >= set(int8) and (not int8) == (not flags & set(INT8_FLAGS))


@pytest.mark.parametrize(("cpu", "precision", "note"), [
    (AVX2_ONLY, "fp32", "256-bit"), (AVX2_ONLY, "int8", "no VNNI"), (AVX2_ONLY, "bf16", "fp32 lanes"),
    (AVX512_BF16_NO_AMX, "fp32", "512-bit"), (AVX512_BF16_NO_AMX, "int8", "VNNI"),
    (AVX512_BF16_NO_AMX, "bf16", "AVX512-BF16"), (AMX, "bf16", "AVX512-BF16"), (AMX, "int8", "VNNI"),
    (AMX_CPUINFO, "bf16", "AVX512-BF16"), (AMX_CPUINFO, "int8", "VNNI"),
])
def test_the_theoretical_peak_follows_the_cpus_simd(cpu: str, precision: str, note: str, tmp_path: Path) -> None:
    text = (CPUINFO / cpu).read_text(encoding="utf-8")
    if "flags" not in text:  # a bare flags line (lscpu): give it the clock line /proc/cpuinfo would have
        text = f"flags\t\t: {text.strip()}\ncpu MHz\t\t: 2000.000\n"
    peak = theoretical_peak(precision, 2, text, sysfs=tmp_path)  # no sysfs clocks: the cpuinfo clock is used
    assert peak.flops and note in peak.note, peak.note
    if note == "no VNNI":
        assert "VNNI," not in peak.note


def test_measurements_carry_the_isa_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("vanilladeploy.machine.cpu_flags", lambda: cpu_flags_of(AVX512_BF16_NO_AMX))
    info = machine_info()
    assert {"avx512f", "avx512_vnni", "avx512_bf16"} <= set(info["cpu_isa"]) and "amx_bf16" not in info["cpu_isa"]
    assert describe_cpu(info).endswith("]") and "avx512_bf16" in describe_cpu(info)
