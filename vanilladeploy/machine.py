"""What machine this is: CPU model and ISA flags, GPU state, library versions — recorded beside every measured
number. Imports only the standard library: torch is asked only when it is already loaded or a GPU is named.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
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


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is unreadable)."""
    return frozenset(next((line.split(":", 1)[1].split() for line in _cpuinfo().splitlines()
                           if line.startswith("flags")), []))


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
                            "platform": platform.platform(), "versions": versions}
    if device == "cuda":
        import torch

        info |= {"gpu": torch.cuda.get_device_name(), "cuda": torch.version.cuda, "gpu_before": gpu_state()}
    return info


__all__ = ["BF16_FLAGS", "INT8_FLAGS", "ISA_FLAGS", "cpu_flags", "cpu_model", "gpu_state", "machine_info",
           "usable_cores"]
