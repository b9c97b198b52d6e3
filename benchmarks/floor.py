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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import Subject, timed_on_clock

FLOOR_EXCEEDED = "floor exceeded: peak under-measured"


@dataclass(frozen=True)
class PeakCandidate:
    """One kernel timed in the rounds: ``work`` FLOP (int8: ops) or bytes per call. ``prepare`` allocates its inputs
    (tensors, an ONNX Runtime session) and returns the subject; nothing is allocated before it is called, so a list
    of candidates (even for "cuda") can be built anywhere."""

    name: str
    kind: str  # "compute" or "bandwidth"
    precision: str  # fp32 | fp16 | int8 for compute; "any" for bandwidth
    work: float
    prepare: Callable[[], Subject] = field(repr=False, compare=False)


class GuardedPeak:
    """A candidate as a subject that cannot end the run: if preparing it, its first (trial) call or any later call
    raises, ``error`` keeps the reason and every further call returns +inf (never a minimum)."""

    def __init__(self, candidate: PeakCandidate) -> None:
        self.candidate, self.error = candidate, None
        self._subject: Subject | None = None
        try:
            self._subject = candidate.prepare()
            self._subject()  # a kernel that cannot run here fails now, before the rounds
        except Exception as e:  # quantizer, ORT session, CUDA OOM …: a finding, not the end of the benchmark
            self._fail(e)

    @property
    def name(self) -> str:
        return self.candidate.name

    def __call__(self) -> float:
        if self._subject is not None:
            try:
                return self._subject()
            except Exception as e:
                self._fail(e)
        return math.inf

    def _fail(self, e: Exception) -> None:
        text = str(e).strip().splitlines()
        self.error, self._subject = f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__, None
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()


def guard(candidates: Sequence[PeakCandidate]) -> list[GuardedPeak]:
    """Prepare every candidate; the ones that fail stay in the list with their ``error``."""
    return [GuardedPeak(c) for c in candidates]


UPPER_REFERENCE = "upper reference (ISA-derived)"
NOT_A_BOUND = "reference, not a bound (a measured peak exceeds it: {why})"


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

def gemm_shapes(n: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of the GEMM candidates: n³, (n/2)³ and a non-square one shaped like a 1×1 convolution (many rows =
    pixels, k and n = a stage's channels). Smaller shapes often run faster (they stay in cache), so several run."""
    half, quarter = max(n // 2, 8), max(n // 4, 8)
    return list(dict.fromkeys([(n, n, n), (half, half, half), (max(n * 3 // 4, 24), quarter, half)]))


def int_mm_accepts(m: int, k: int, n: int) -> bool:
    """The shapes ``torch._int_mm`` takes on CUDA: more than 16 rows, k and n multiples of 8."""
    return m > 16 and k > 0 and k % 8 == 0 and n % 8 == 0


def peak_candidates(device: str, precisions: Sequence[str], conv_shapes: Sequence[tuple[int, int, int]], *,
                    gemm_n: int, copy_bytes: int, threads: int | None = None) -> list[PeakCandidate]:
    """The kernels whose best rate is each precision's peak, and a copy for bandwidth (none without precisions).
    ``conv_shapes`` are (in, out, pixels) of the models' largest dense 1×1 convolutions. Pass only the precisions
    that a timed record needs: every candidate costs time in every round."""
    wanted = list(dict.fromkeys(precisions))
    found = [_copy(device, copy_bytes)] if wanted else []
    for precision in wanted:
        kernels = _cuda_kernels if device == "cuda" else _cpu_kernels
        found += kernels(precision, gemm_shapes(gemm_n), conv_shapes, threads)
    return found


def _cpu_kernels(precision: str, shapes: list[tuple[int, int, int]], convs: Sequence[tuple[int, int, int]],
                 threads: int | None) -> list[PeakCandidate]:
    if precision == "int8":
        n = shapes[0][0]
        return [*(_ort_matmul_integer(n, a, threads) for a in ("uint8", "int8")),
                *(_ort_qdq_conv1x1(cin, cout, pixels, threads) for cin, cout, pixels in convs)]
    found = [_torch_mm("cpu", precision, s) for s in shapes]
    if precision == "fp32":
        found += [_ort_matmul(s, threads) for s in shapes]
        found += [_ort_conv1x1(cin, cout, pixels, threads) for cin, cout, pixels in convs]
    return found


def _cuda_kernels(precision: str, shapes: list[tuple[int, int, int]], convs: Sequence[tuple[int, int, int]],
                  threads: int | None) -> list[PeakCandidate]:
    if precision == "int8":
        return [_torch_int_mm(s) for s in shapes if int_mm_accepts(*s)]
    return [*(_torch_mm("cuda", precision, s) for s in shapes),
            *(_torch_conv1x1("cuda", precision, cin, cout, pixels) for cin, cout, pixels in convs)]


def _shape_name(shape: tuple[int, int, int]) -> str:
    m, k, n = shape
    return str(m) if m == k == n else f"{m}×{k}×{n}"


def _copy(device: str, size: int) -> PeakCandidate:
    def prepare() -> Subject:
        src = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
        dst = torch.empty_like(src)
        return _subject(device, lambda: dst.copy_(src))

    return PeakCandidate(f"copy {size >> 20} MiB ({device})", "bandwidth", "any", 2.0 * size, prepare)


def _torch_mm(device: str, precision: str, shape: tuple[int, int, int]) -> PeakCandidate:
    m, k, n = shape

    def prepare() -> Subject:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
        return _subject(device, torch.inference_mode()(lambda: torch.mm(a, b)))

    return PeakCandidate(f"torch.mm {_shape_name(shape)} {precision} ({device})", "compute", precision,
                         2.0 * m * k * n, prepare)


def _torch_int_mm(shape: tuple[int, int, int]) -> PeakCandidate:
    """int8 GEMM on CUDA (``torch._int_mm``: int8 × int8 → int32, cuBLASLt); 2·m·k·n int8 ops."""
    m, k, n = shape

    def prepare() -> Subject:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda")
        b = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda").t()  # column-major: cuBLASLt's
        # int8 kernels take it on every CUDA version (row-major k×n is unsupported on CUDA 13, and before 12.3 on
        # SM7x)
        return _subject("cuda", torch.inference_mode()(lambda: torch._int_mm(a, b)))

    return PeakCandidate(f"torch._int_mm {_shape_name(shape)} int8 (cuda)", "compute", "int8", 2.0 * m * k * n,
                         prepare)


def _torch_conv1x1(device: str, precision: str, cin: int, cout: int, pixels: int) -> PeakCandidate:
    """A models' 1×1 conv shape as torch conv2d (cuDNN on CUDA, with the same TF32 setting as the models)."""
    side = int(round(pixels ** 0.5))

    def prepare() -> Subject:
        dtype = torch.float16 if precision == "fp16" else torch.float32
        x = torch.randn(1, cin, side, side, device=device).to(dtype)
        w = (torch.randn(cout, cin, 1, 1, device=device) * 0.01).to(dtype)
        return _subject(device, torch.inference_mode()(lambda: torch.nn.functional.conv2d(x, w)))

    return PeakCandidate(f"torch Conv1x1 {cin}→{cout} @{side}×{side} {precision} ({device})", "compute", precision,
                         2.0 * cin * cout * side * side, prepare)


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


def _ort_matmul(shape: tuple[int, int, int], threads: int | None) -> PeakCandidate:
    m, k, n = shape

    def prepare() -> Subject:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(0)
        b = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "b")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])
        model = _graph(helper.make_node("MatMul", ["x", "b"], ["y"]), [x], [b], TensorProto.FLOAT)
        session, feed = _ort_session(model, threads), {"x": rng.standard_normal((m, k), dtype=np.float32)}
        return _subject("cpu", lambda: session.run(None, feed))

    return PeakCandidate(f"onnxruntime MatMul {_shape_name(shape)} fp32", "compute", "fp32", 2.0 * m * k * n,
                         prepare)


def _conv1x1_graph(cin: int, cout: int, side: int, seed: int) -> tuple[object, dict[str, np.ndarray]]:
    """A one-Conv fp32 graph (1×1, ``cin``→``cout``, random weights) and a feed of one ``side``×``side`` image."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((cout, cin, 1, 1), dtype=np.float32) * 0.01, "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, side, side])
    model = _graph(helper.make_node("Conv", ["x", "w"], ["y"]), [x], [w], TensorProto.FLOAT)
    return model, {"x": rng.standard_normal((1, cin, side, side), dtype=np.float32)}


def _ort_conv1x1(cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    side = int(round(pixels ** 0.5))

    def prepare() -> Subject:
        model, feed = _conv1x1_graph(cin, cout, side, seed=1)
        session = _ort_session(model, threads)
        return _subject("cpu", lambda: session.run(None, feed))

    return PeakCandidate(f"onnxruntime Conv1x1 {cin}→{cout} @{side}×{side} fp32", "compute", "fp32",
                         2.0 * cin * cout * side * side, prepare)


def _ort_qdq_conv1x1(cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    """A models' 1×1 conv shape as the symmetric QDQ graph our int8 export writes (ONNX Runtime runs it with its
    quantized conv kernel); 2·cin·cout·pixels int8 ops."""
    side = int(round(pixels ** 0.5))

    def prepare() -> Subject:
        import tempfile

        import onnx

        from exporters.int8 import quantize_qdq

        model, feed = _conv1x1_graph(cin, cout, side, seed=3)
        with tempfile.TemporaryDirectory(prefix="vanilladeploy-peak-") as scratch:
            onnx.save(model, f"{scratch}/fp32.onnx")
            quantize_qdq(Path(f"{scratch}/fp32.onnx"), Path(f"{scratch}/int8.onnx"), [feed["x"]])
            session = _ort_session(onnx.load(f"{scratch}/int8.onnx"), threads)
        return _subject("cpu", lambda: session.run(None, feed))

    return PeakCandidate(f"onnxruntime QDQ Conv1x1 {cin}→{cout} @{side}×{side} int8", "compute", "int8",
                         2.0 * cin * cout * side * side, prepare)


def _ort_matmul_integer(n: int, a_type: str, threads: int | None) -> PeakCandidate:
    """int8 GEMM (``MatMulInteger``: int8 weights, uint8 or int8 activations → int32); 2·n³ int8 ops."""

    def prepare() -> Subject:
        from onnx import TensorProto, helper, numpy_helper

        rng = np.random.default_rng(2)
        b = numpy_helper.from_array(rng.integers(-127, 128, (n, n), dtype=np.int8), "b")
        x = helper.make_tensor_value_info("x", TensorProto.UINT8 if a_type == "uint8" else TensorProto.INT8, [n, n])
        session = _ort_session(_graph(helper.make_node("MatMulInteger", ["x", "b"], ["y"]), [x], [b],
                                      TensorProto.INT32), threads)
        low, high, dtype = (0, 256, np.uint8) if a_type == "uint8" else (-127, 128, np.int8)
        feed = {"x": rng.integers(low, high, (n, n), dtype=dtype)}
        return _subject("cpu", lambda: session.run(None, feed))

    return PeakCandidate(f"onnxruntime MatMulInteger {n} {a_type}×int8", "compute", "int8", 2.0 * n**3, prepare)


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
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
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
    from exporters.onnx_export import feature_sizes
    from models.vanillanet import get_variant

    shapes = set()
    for name in variants:
        spec = get_variant(name)
        sizes = feature_sizes(spec, img_size)
        shapes |= {(spec.dims[i], spec.dims[i + 1], sizes[i] ** 2) for i in range(len(spec.strides))}
    return sorted((s for s in shapes if s[2] > 1), key=lambda s: -s[0] * s[1] * s[2])[:count]


__all__ = ["FLOOR_EXCEEDED", "DevicePeak", "GuardedPeak", "NoPeakMeasured", "PeakCandidate", "TheoreticalPeak",
           "cpu_clock_mhz", "device_name", "device_peak", "efficiency", "floor_ms", "gemm_shapes", "guard",
           "int_mm_accepts", "peak_candidates", "rates", "theoretical_peak", "usable_cores", "vanillanet_conv_shapes"]
