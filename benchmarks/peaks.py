"""Peak subjects: the kernels whose best rate, timed INSIDE the interleaved rounds beside the models, is each
precision's peak (see :mod:`vanilladeploy.benchmarks.floor`). On the CPU: ``torch.mm`` and ONNX Runtime ``MatMul`` at a
few large shapes and the models' own largest 1×1 convolutions (fp32), ``MatMulInteger`` and the QDQ conv (int8), and the
same 1×1 convolutions compiled by OpenVINO in fp32, bf16 and int8 (its AMX/VNNI kernels go beyond ONNX Runtime's, so a
floor without them would be exceeded by OpenVINO's rows). On CUDA: ``torch.mm``/conv (fp32/fp16), ``torch._int_mm``
(int8). Plus a large copy for bandwidth. A candidate that fails is recorded with its reason, never ends the run."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vanilladeploy.runtimes.timing import Subject, cuda_subject, timed_on_clock


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
    openvino = [_openvino_conv1x1(precision, cin, cout, pixels, threads) for cin, cout, pixels in convs]
    if precision == "bf16":  # OpenVINO's precision only
        return openvino
    if precision == "int8":
        n = shapes[0][0]
        return [*(_ort_matmul_integer(n, a, threads) for a in ("uint8", "int8")),
                *(_ort_conv1x1("int8", cin, cout, pixels, threads) for cin, cout, pixels in convs), *openvino]
    found = [_torch_mm("cpu", precision, s) for s in shapes]
    if precision == "fp32":
        found += [_ort_matmul(s, threads) for s in shapes]
        found += [_ort_conv1x1("fp32", cin, cout, pixels, threads) for cin, cout, pixels in convs]
        found += openvino
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

        return _fastest_of(cuda_subject(step))
    return _fastest_of(timed_on_clock(step))


def _fastest_of(subject: Subject, repeats: int = REPEATS) -> Subject:
    """In each round, ``repeats`` back-to-back calls; the fastest is the round's sample."""
    return lambda: min(subject() for _ in range(repeats))


def _ort_session(model: object, threads: int | None) -> object:
    from vanilladeploy.runtimes.runners import ort_session

    return ort_session(model.SerializeToString(), threads=threads)


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


def _ort_conv1x1(precision: str, cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    """A models' 1×1 conv shape in ONNX Runtime: fp32, or (int8) the symmetric QDQ graph our int8 export writes, run
    with its quantized conv kernel; 2·cin·cout·pixels FLOP (int8: ops)."""
    side = int(round(pixels ** 0.5))

    def prepare() -> Subject:
        build, seed = (_qdq_conv1x1_graph, 3) if precision == "int8" else (_conv1x1_graph, 1)
        model, feed = build(cin, cout, side, seed=seed)
        session = _ort_session(model, threads)
        return _subject("cpu", lambda: session.run(None, feed))

    what = "QDQ Conv1x1" if precision == "int8" else "Conv1x1"
    return PeakCandidate(f"onnxruntime {what} {cin}→{cout} @{side}×{side} {precision}", "compute", precision,
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


def _qdq_conv1x1_graph(cin: int, cout: int, side: int, seed: int) -> tuple[object, dict[str, np.ndarray]]:
    """:func:`_conv1x1_graph` as the symmetric QDQ graph our int8 export writes."""
    import tempfile

    import onnx

    from vanilladeploy.exporters.qdq import quantize_qdq

    model, feed = _conv1x1_graph(cin, cout, side, seed=seed)
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-peak-") as scratch:
        onnx.save(model, f"{scratch}/fp32.onnx")
        quantize_qdq(Path(f"{scratch}/fp32.onnx"), Path(f"{scratch}/int8.onnx"), [feed["x"]])
        return onnx.load(f"{scratch}/int8.onnx"), feed


def _openvino_conv1x1(precision: str, cin: int, cout: int, pixels: int, threads: int | None) -> PeakCandidate:
    """A models' 1×1 conv shape compiled by OpenVINO's CPU plugin: fp32, bf16 (inference precision; AMX or
    AVX-512 BF16), or the QDQ graph (its int8 kernels: VNNI or AMX); 2·cin·cout·pixels (int8: ops)."""
    side = int(round(pixels ** 0.5))

    def prepare() -> Subject:
        import openvino as ov

        from vanilladeploy.runtimes.runners import compile_openvino

        model, feed = (_qdq_conv1x1_graph if precision == "int8" else _conv1x1_graph)(cin, cout, side, seed=4)
        core = ov.Core()
        request = compile_openvino(core.read_model(model.SerializeToString(), b""), "bf16" if precision == "bf16"
                                   else "fp32", hint="LATENCY", threads=threads, core=core).create_infer_request()
        x = feed["x"]
        return _subject("cpu", lambda: request.infer({0: x}))

    return PeakCandidate(f"openvino Conv1x1 {cin}→{cout} @{side}×{side} {precision}", "compute", precision,
                         2.0 * cin * cout * side * side, prepare)


__all__ = ["REPEATS", "GuardedPeak", "PeakCandidate", "gemm_shapes", "guard", "int_mm_accepts", "peak_candidates"]
