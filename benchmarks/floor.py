"""The physical floor: no implementation can beat max(FLOPs / peak FLOP/s, weight bytes / memory bandwidth).

A floor is only a floor if the peak is the machine's best, measured under the same conditions as the models. So the
peak is measured INSIDE the interleaved rounds, by *peak subjects* timed beside the models (same clock boost, same
contention): several candidate kernels — ``torch.mm`` and ONNX Runtime ``MatMul`` at large shapes, the models' own
largest 1×1 convolutions as ONNX Runtime ``Conv``, ``MatMulInteger`` for int8 — and a large copy for bandwidth. Each
candidate's rate comes from its MINIMUM time (a lower bound on what the kernel needs), while models report medians;
the peak is the best candidate. A record that still beats its floor is flagged ("floor exceeded: peak under-measured")
instead of printed as a plain efficiency above 1. An ISA-derived theoretical peak (cores × SIMD lanes × FMA units ×
reported clock) is reported beside it as an upper reference, never used in the floor.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import Subject, timed_on_clock

FLOOR_EXCEEDED = "floor exceeded: peak under-measured"


@dataclass(frozen=True)
class PeakCandidate:
    """One kernel timed in the rounds: ``work`` FLOP (int8: ops) or bytes per call."""

    name: str
    kind: str  # "compute" or "bandwidth"
    precision: str  # fp32 | fp16 | int8 for compute; "any" for bandwidth
    work: float
    subject: Subject = field(repr=False, compare=False)


@dataclass(frozen=True)
class DevicePeak:
    """The best measured compute rate for one precision and the best bandwidth, from the same rounds as the models."""

    device: str
    precision: str
    peak_flops: float
    bandwidth_bytes_s: float
    winner: str
    candidates: tuple[dict[str, object], ...] = ()
    theoretical_flops: float | None = None
    theoretical_note: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def floor_ms(flops: float, weight_bytes: float, peak: DevicePeak) -> float:
    """max(FLOPs / peak, weight bytes / bandwidth), in ms (DESIGN §7, without the per-kernel launch term)."""
    return max(flops / peak.peak_flops, weight_bytes / peak.bandwidth_bytes_s) * 1e3


def efficiency(floor: float, median_ms: float) -> float:
    return floor / median_ms if median_ms > 0 else float("nan")


def rates(candidates: Sequence[PeakCandidate], samples: dict[str, list[float]]) -> list[dict[str, object]]:
    """Each candidate's rate from its minimum time (work / min seconds)."""
    out = []
    for c in candidates:
        best_ms = min(samples.get(c.name) or [float("inf")])
        out.append({"name": c.name, "kind": c.kind, "precision": c.precision, "work": c.work,
                    "min_ms": round(best_ms, 6), "rate": c.work / (best_ms / 1e3) if best_ms > 0 else 0.0})
    return out


def device_peak(device: str, precision: str, measured: list[dict[str, object]], *,
                theoretical: tuple[float | None, str] = (None, "")) -> DevicePeak:
    """The best compute candidate of ``precision`` and the best bandwidth candidate."""
    compute = [m for m in measured if m["kind"] == "compute" and m["precision"] == precision]
    copies = [m for m in measured if m["kind"] == "bandwidth"]
    if not compute or not copies:
        raise ValueError(f"no {precision} peak candidate was measured")
    best, copy = max(compute, key=lambda m: m["rate"]), max(copies, key=lambda m: m["rate"])
    return DevicePeak(device, precision, float(best["rate"]), float(copy["rate"]), str(best["name"]),
                      tuple(compute + copies), *theoretical)


# --- candidates -----------------------------------------------------------------------------------------------------

def peak_candidates(device: str, precisions: Sequence[str], conv_shapes: Sequence[tuple[int, int, int]], *,
                    gemm_n: int, copy_bytes: int, threads: int | None = None) -> list[PeakCandidate]:
    """The kernels whose best rate is the peak: for ``precisions`` (fp32, fp16 on CUDA, int8 via ONNX Runtime) and
    a copy for bandwidth. ``conv_shapes`` are (in, out, pixels) of the models' largest dense 1×1 convolutions."""
    found: list[PeakCandidate] = [_copy(device, copy_bytes)]
    for precision in precisions:
        if precision in ("fp32", "fp16"):
            found.append(_torch_mm(device, precision, gemm_n))
        if device == "cpu" and precision == "fp32":
            found.append(_ort_matmul(gemm_n, threads))
            found += [_ort_conv1x1(cin, cout, pixels, threads) for cin, cout, pixels in conv_shapes]
        if device == "cpu" and precision == "int8":
            found += [_ort_matmul_integer(gemm_n, a, threads) for a in ("uint8", "int8")]
            found += [_ort_qdq_conv1x1(cin, cout, pixels, threads) for cin, cout, pixels in conv_shapes]
    return found


def _copy(device: str, size: int) -> PeakCandidate:
    src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    step = lambda: dst.copy_(src)  # noqa: E731
    return PeakCandidate(f"copy {size >> 20} MiB ({device})", "bandwidth", "any", 2.0 * size, _subject(device, step))


def _torch_mm(device: str, precision: str, n: int) -> PeakCandidate:
    dtype = torch.float16 if precision == "fp16" else torch.float32
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))

    @torch.inference_mode()
    def step() -> None:
        torch.mm(a, b)

    return PeakCandidate(f"torch.mm {n} {precision} ({device})", "compute", precision, 2.0 * n**3,
                         _subject(device, step))


REPEATS = 3
"""Calls per round of a peak subject; it reports the fastest (warm caches, threads awake): a lower bound."""


def _subject(device: str, step: Callable[[], object]) -> Subject:
    if device == "cuda":
        from benchmarks.backends import cuda_subject  # lazy: backends imports this module's siblings

        return _fastest_of(cuda_subject(step))
    return _fastest_of(timed_on_clock(step))


def _fastest_of(subject: Subject, repeats: int = REPEATS) -> Subject:
    """In each round, ``repeats`` back-to-back calls; the fastest is the round's sample."""
    return lambda: min(subject() for _ in range(repeats))


def _ort_session(model: object, threads: int | None) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _graph(node: object, inputs: list[object], initializers: list[object], out_type: int) -> object:
    from onnx import helper

    output = helper.make_tensor_value_info("y", out_type, None)
    graph = helper.make_graph([node], "peak", inputs, [output], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _ort_matmul(n: int, threads: int | None) -> PeakCandidate:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    b = numpy_helper.from_array(rng.standard_normal((n, n), dtype=np.float32), "b")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])
    session = _ort_session(_graph(helper.make_node("MatMul", ["x", "b"], ["y"]), [x], [b], TensorProto.FLOAT),
                           threads)
    feed = {"x": rng.standard_normal((n, n), dtype=np.float32)}
    return PeakCandidate(f"onnxruntime MatMul {n} fp32", "compute", "fp32", 2.0 * n**3,
                         _subject("cpu", lambda: session.run(None, feed)))


def _ort_conv1x1(cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    from onnx import TensorProto, helper, numpy_helper

    side = int(round(pixels ** 0.5))
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1), dtype=np.float32) * 0.01, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, side, side])
    session = _ort_session(_graph(helper.make_node("Conv", ["x", "w"], ["y"]), [x], [w], TensorProto.FLOAT), threads)
    feed = {"x": rng.standard_normal((1, cin, side, side), dtype=np.float32)}
    return PeakCandidate(f"onnxruntime Conv1x1 {cin}→{cout} @{side}×{side} fp32", "compute", "fp32",
                         2.0 * cin * cout * side * side, _subject("cpu", lambda: session.run(None, feed)))


def _ort_qdq_conv1x1(cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    """A models' 1×1 conv shape as the symmetric QDQ graph our int8 export writes (ONNX Runtime runs it with its
    quantized conv kernel); 2·cin·cout·pixels int8 ops."""
    import tempfile

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from exporters.int8 import quantize_qdq

    side = int(round(pixels ** 0.5))
    rng = np.random.default_rng(3)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1), dtype=np.float32) * 0.01, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, side, side])
    model = _graph(helper.make_node("Conv", ["x", "w"], ["y"]), [x], [w], TensorProto.FLOAT)
    feed = {"x": rng.standard_normal((1, cin, side, side), dtype=np.float32)}
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-peak-") as scratch:
        onnx.save(model, f"{scratch}/fp32.onnx")
        quantize_qdq(Path(f"{scratch}/fp32.onnx"), Path(f"{scratch}/int8.onnx"), [feed["x"]])
        session = _ort_session(onnx.load(f"{scratch}/int8.onnx"), threads)
    return PeakCandidate(f"onnxruntime QDQ Conv1x1 {cin}→{cout} @{side}×{side} int8", "compute", "int8",
                         2.0 * cin * cout * side * side, _subject("cpu", lambda: session.run(None, feed)))


def _ort_matmul_integer(n: int, a_type: str, threads: int | None) -> PeakCandidate:
    """int8 GEMM (``MatMulInteger``: int8 weights, uint8 or int8 activations → int32); 2·n³ int8 ops."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b")
    elem = TensorProto.UINT8 if a_type == "uint8" else TensorProto.INT8
    x = helper.make_tensor_value_info("x", elem, [n, n])
    node = helper.make_node("MatMulInteger", ["x", "b"], ["y"])
    session = _ort_session(_graph(node, [x], [b], TensorProto.INT32), threads)
    low, high = (0, 256) if a_type == "uint8" else (-127, 128)
    feed = {"x": rng.integers(low, high, (n, n), dtype=np.uint8 if a_type == "uint8" else np.int8)}
    return PeakCandidate(f"onnxruntime MatMulInteger {n} {a_type}×int8", "compute", "int8", 2.0 * n**3,
                         _subject("cpu", lambda: session.run(None, feed)))


# --- the theoretical reference ---------------------------------------------------------------------------------------

FMA_UNITS = 2
"""Assumed FMA pipes of the full SIMD width per core (2 on Intel server cores; AMD Zen 4 runs 512-bit ops on its
two 256-bit pipes, i.e. one 512-bit pipe: see :func:`_fma_units`)."""


def _fma_units(text: str, bits: int) -> int:
    family = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("cpu family")), "")
    amd = "AuthenticAMD" in text
    return 1 if amd and bits == 512 and family == "25" else FMA_UNITS


def theoretical_peak(precision: str, cores: int, cpuinfo: str | None = None) -> tuple[float | None, str]:
    """cores × SIMD lanes × 2 (FMA) × FMA units × the reported clock — an upper reference, labelled with what it
    assumes; None when the ISA or the clock cannot be read (or for GPUs)."""
    text = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    mhz = next((float(line.split(":", 1)[1]) for line in text.splitlines() if line.startswith("cpu MHz")), None)
    if mhz is None or not flags:
        return None, "not derivable (no ISA flags or clock in /proc/cpuinfo)"
    bits = 512 if "avx512f" in flags else 256 if {"avx2", "fma"} <= flags else 128
    if precision == "int8":
        if bits == 512 and "avx512_vnni" not in flags:
            return None, "not derived for int8 without AVX-512 VNNI"
        lanes = bits // 8  # int8 multiply-adds per instruction (VNNI: 4 per 32-bit lane)
    else:
        lanes = bits // 32
    units = _fma_units(text, bits)
    flops = cores * lanes * 2 * units * mhz * 1e6
    return flops, (f"theoretical: {cores} cores × {lanes} {precision} lanes ({bits}-bit) × 2 (FMA) × {units} FMA "
                   f"unit(s) (assumed) × {mhz:.0f} MHz (reported; boost may exceed it)")


def usable_cores(threads: int | None) -> int:
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(threads, available) if threads else available


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


def vanillanet_conv_shapes(variants: Sequence[str], img_size: int, *, count: int = 2) -> list[tuple[int, int, int]]:
    """(in, out, pixels) of the deployed VanillaNets' dense 1×1 stage convolutions with the most FLOPs: stage i maps
    dims[i] → dims[i+1] at the spatial size it receives."""
    from exporters.onnx_export import feature_sizes
    from models.vanillanet import get_variant

    shapes = set()
    for name in variants:
        spec = get_variant(name)
        sizes = feature_sizes(spec, img_size)
        shapes |= {(spec.dims[i], spec.dims[i + 1], sizes[i] ** 2) for i in range(len(spec.strides))}
    return sorted((s for s in shapes if s[2] > 1), key=lambda s: -s[0] * s[1] * s[2])[:count]


__all__ = ["FLOOR_EXCEEDED", "DevicePeak", "PeakCandidate", "device_name", "device_peak", "efficiency", "floor_ms",
           "peak_candidates", "rates", "theoretical_peak", "usable_cores", "vanillanet_conv_shapes"]
