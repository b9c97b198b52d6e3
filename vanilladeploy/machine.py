"""What machine this is: CPU model and ISA flags, GPU state, library versions — recorded beside every measured
number. Imports only the standard library: torch is asked only when it is already loaded or a GPU is named.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from vanilladeploy import __version__

ISA_FLAGS = ("avx2", "fma", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide which kernels (fp32, VNNI int8, bf16, AMX) a CPU runtime can use."""
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""Native bf16 arithmetic (OpenVINO's bf16 needs one; without it the plugin would silently compute in fp32)."""
INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni")
"""Native int8 dot products."""


@cache
def _cpuinfo() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())


def parse_cpu_flags(text: str) -> frozenset[str]:
    """The feature flags in a CPU description: the first ``flags`` line of /proc/cpuinfo, lscpu's ``Flags:``
    line, or a bare line of flags (as ``lscpu`` or a cloud provider lists them); empty when there is none."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == "flags":
            return frozenset(value.split())
    lines = [line for line in text.splitlines() if line.strip()]
    return frozenset(lines[0].split()) if len(lines) == 1 and ":" not in lines[0] else frozenset()


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (empty where /proc/cpuinfo is unreadable)."""
    return parse_cpu_flags(_cpuinfo())


def bf16_missing(flags: frozenset[str] | None = None, capabilities: Sequence[str] | None = None) -> str | None:
    """Why this CPU cannot compute in bf16 natively, or None when it can: its /proc/cpuinfo ``flags`` need
    avx512_bf16 or amx_bf16 (elsewhere OpenVINO would emulate bf16 or fall back to fp32), and OpenVINO's CPU plugin
    must list BF16 among its ``OPTIMIZATION_CAPABILITIES`` (when given)."""
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in BF16_FLAGS):
        return (f"this CPU has no native bf16 (neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo); it would run "
                "in fp32 — use fp32 or int8 here, or a CPU with AVX-512 BF16 or AMX")
    if capabilities is not None and "BF16" not in capabilities:
        return (f"OpenVINO's CPU plugin reports no BF16 capability on this CPU (OPTIMIZATION_CAPABILITIES: "
                f"{' '.join(capabilities)}); update openvino")
    return None


def describe_cpu(info: dict[str, Any]) -> str:
    """``AMD EPYC (2 threads) [avx2 fma avx512f …]``: the CPU of a :func:`machine_info` and the ISA flags that
    decide its kernels, as every quoted figure should carry them."""
    isa = info.get("cpu_isa")
    return f"{info['cpu']} [{' '.join(isa)}]" if isa else str(info["cpu"])


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """The machine and versions a measurement ran on; the GPU's name and state with ``device="cuda"``."""
    versions = {"vanilladeploy": __version__, "python": platform.python_version()}
    for module, dist in (("torch", "torch"), ("onnxruntime", "onnxruntime"), ("onnx", "onnx"),
                         ("tensorrt", "tensorrt"), ("torchvision", "torchvision"), ("openvino", "openvino")):
        loaded = sys.modules.get(module)
        versions[module] = str(getattr(loaded, "__version__", None) or _version(dist) or "") or None
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else usable_cores()
    info: dict[str, Any] = {"cpu": f"{cpu_model()} ({threads} threads)", "cpu_count": os.cpu_count(),
                            "cpu_isa": [f for f in ISA_FLAGS if f in cpu_flags()],
                            "platform": platform.platform(), "versions": versions}
    if device == "cuda":
        import torch

        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "gpu_before": gpu_state()}
    return info


__all__ = ["BF16_FLAGS", "INT8_FLAGS", "ISA_FLAGS", "bf16_missing", "cpu_flags", "cpu_model", "describe_cpu",
           "gpu_state", "machine_info", "parse_cpu_flags", "usable_cores"]
