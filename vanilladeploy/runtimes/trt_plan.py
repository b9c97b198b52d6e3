"""Everything about a TensorRT build that does not need TensorRT: options, sizes, the equivalent ``trtexec`` command,
the engine's JSON sidecar and the check that an engine matches the machine that wants to run it.

:mod:`.tensorrt` is the thin layer that calls TensorRT with these.
"""

from __future__ import annotations

import importlib
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vanilladeploy.exporters.trt_compat import BatchProfile, ShapeProfile
from vanilladeploy.extras import install_hint

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_WORKSPACE_BYTES = 4 << 30
DEFAULT_OPT_LEVEL = 3
INSTALL_HINT = install_hint("trt")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30,
          "kb": 10**3, "mb": 10**6, "gb": 10**9}


class TensorRTUnavailable(RuntimeError):
    """TensorRT or a CUDA GPU is missing; the message names what and how to install it."""


class EngineMismatchError(RuntimeError):
    """An engine was built for another GPU or TensorRT version (engines are not portable)."""


class EngineBuildError(RuntimeError):
    """TensorRT could not parse the ONNX or build the engine; the message carries the parser/builder errors."""


def parse_size(text: str) -> int:
    """Bytes from ``"4294967296"``, ``"4GiB"``, ``"512MiB"``, ``"2G"`` (binary) or ``"1GB"`` (decimal)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match and match[2].lower()
    if not match or unit not in _UNITS:
        raise ValueError(f"size {text!r}: write bytes or a number with B, KiB, MiB, GiB (e.g. 4GiB)")
    size = int(float(match[1]) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"size {text!r} must be positive")
    return size


@dataclass(frozen=True)
class TrtBuildOptions:
    """What to build: ``precision`` fp32 (TF32 off) or fp16; the batch profile; builder settings."""

    precision: str = "fp32"
    profile: BatchProfile = BatchProfile()
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    timing_cache: Path | None = None
    opt_level: int = DEFAULT_OPT_LEVEL
    detailed_log: bool = False
    shapes: ShapeProfile | None = None
    """A dynamic height and width (a detector's input): their min/opt/max in the optimization profile."""
    float_layers: tuple[str, ...] = ()
    """int8 only: the Convs the QDQ ONNX leaves in float (``--fallback``); TensorRT 10 builds them with the FP16 flag
    on (weakly typed: fp16 kernels allowed), TensorRT 11 as typed in the graph (float32)."""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if not 0 <= self.opt_level <= 5:
            raise ValueError(f"builder optimization level {self.opt_level}: choose 0 … 5")


def engine_name(stem: str, precision: str) -> str:
    """``<name>.<precision>.engine``: a plain serialized engine, readable by ``trtexec --loadEngine``."""
    return f"{stem}.{precision}.engine"


def tensorrt_missing() -> str | None:
    """Why a TensorRT build cannot run here (with the fix), or None when TensorRT and a CUDA GPU are present."""
    try:
        trt = importlib.import_module("tensorrt")
        if getattr(trt, "__file__", None) is None:  # a namespace package: only tensorrt-stubs' .pyi files
            raise ModuleNotFoundError("only the type stubs are installed")
        getattr(trt, "Builder")
    except Exception as e:  # ImportError, or a stub package whose import fails or lacks the API
        detail = "is not installed" if isinstance(e, ModuleNotFoundError) else f"cannot be imported ({e})"
        return f"TensorRT {detail}: {INSTALL_HINT}"
    import torch

    if not torch.cuda.is_available():
        return f"TensorRT is installed but no CUDA GPU is visible (torch.cuda.is_available() is False): {INSTALL_HINT}"
    return None


def profile_shapes(opts: TrtBuildOptions, shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """The input's min/opt/max shapes of the optimization profile: the batch profile, and the height × width
    profile where ``opts.shapes`` sets one (the other dimensions as in ``shape``)."""
    p, s = opts.profile, opts.shapes
    out = {}
    for key, batch in (("min", p.min), ("opt", p.opt), ("max", p.max)):
        hw = None if s is None else getattr(s, key)
        out[key] = (batch, *shape[1:]) if hw is None else (batch, *shape[1:-2], *hw)
    return out


def trtexec_command(onnx_path: Path, engine_path: Path, *, input_name: str, input_shape: tuple[int, ...],
                    dynamic_batch: bool, opts: TrtBuildOptions, tensorrt_major: int) -> str:
    """The ``trtexec`` line that builds the same engine (and times it at the opt batch), for TensorRT 10 or 11.

    For fp16, TensorRT 10 takes the fp32 ONNX with ``--fp16``; TensorRT 11 (strongly typed only) takes the
    fp16-typed ONNX copy, passed here as ``onnx_path``. int8 is always the QDQ ONNX (``--int8`` on TensorRT 10).
    """
    args = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}"]
    if dynamic_batch or opts.shapes is not None:
        shapes = profile_shapes(opts, input_shape)
        args += [f"--{k}Shapes={input_name}:{'x'.join(map(str, shapes[k]))}" for k in ("min", "opt", "max")]
        args.append(f"--shapes={input_name}:{'x'.join(map(str, shapes['opt']))}")
    if opts.precision == "fp16" and tensorrt_major < 11:
        args.append("--fp16")
    if opts.precision == "int8" and tensorrt_major < 11:  # the QDQ ONNX: explicit quantization
        args.append("--int8")
        if opts.float_layers:  # the Convs --fallback kept in float run in fp16 rather than fp32
            args.append("--fp16")
    if opts.precision == "fp32":
        args.append("--noTF32")
    workspace = opts.workspace_bytes
    args.append(f"--memPoolSize=workspace:{workspace >> 20}M" if workspace % (1 << 20) == 0
                else f"--memPoolSize=workspace:{workspace}B")
    args.append(f"--builderOptimizationLevel={opts.opt_level}")
    if opts.timing_cache:
        args.append(f"--timingCacheFile={opts.timing_cache}")
    if tensorrt_major < 11:  # timing switches; TensorRT 11's trtexec takes them as no-ops and warns
        args += ["--useCudaGraph", "--noDataTransfers"]
    return shlex.join(args)


def engine_sidecar(*, trt_version: str, gpu_name: str, compute_capability: tuple[int, int], opts: TrtBuildOptions,
                   onnx_sha256: str, onnx_name: str, input_shape: tuple[int, ...], build_s: float,
                   strongly_typed: bool) -> dict[str, Any]:
    """The JSON written next to an engine: what it was built from, with what, for which GPU."""
    shapes = profile_shapes(opts, input_shape)
    return {
        "tensorrt_version": trt_version,
        "gpu": {"name": gpu_name, "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}"},
        "precision": opts.precision, "tf32": False if opts.precision == "fp32" else None,
        "strongly_typed": strongly_typed,
        "profile": {k: list(v) for k, v in shapes.items()},
        "workspace_bytes": opts.workspace_bytes, "builder_optimization_level": opts.opt_level,
        "onnx": {"name": onnx_name, "sha256": onnx_sha256}, "build_s": round(build_s, 3),
    }


def check_engine_sidecar(sidecar: dict[str, Any], *, trt_version: str, gpu_name: str,
                         compute_capability: tuple[int, int], engine: Path) -> None:
    """Raise :class:`EngineMismatchError` when the engine was built for another TensorRT or GPU than this one."""
    built_trt = str(sidecar.get("tensorrt_version"))
    gpu = sidecar.get("gpu") or {}
    here_cc = f"{compute_capability[0]}.{compute_capability[1]}"
    if built_trt != trt_version:
        raise EngineMismatchError(f"{engine} was built with TensorRT {built_trt}, this is TensorRT {trt_version}; "
                                  "engines are not portable across versions: rebuild it here (vanilladeploy export "
                                  "--trt).")
    if gpu.get("compute_capability") != here_cc or gpu.get("name") != gpu_name:
        raise EngineMismatchError(f"{engine} was built for {gpu.get('name')} (compute capability "
                                  f"{gpu.get('compute_capability')}), this GPU is {gpu_name} ({here_cc}); engines are "
                                  "not portable across GPUs: rebuild it on this GPU.")


__all__ = ["DEFAULT_WORKSPACE_BYTES", "EngineBuildError", "EngineMismatchError", "INSTALL_HINT", "PRECISIONS",
           "TensorRTUnavailable", "TrtBuildOptions", "check_engine_sidecar", "engine_name", "engine_sidecar",
           "parse_size", "profile_shapes", "tensorrt_missing", "trtexec_command"]
