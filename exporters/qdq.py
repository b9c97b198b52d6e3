"""INT8 as explicit quantization (QDQ): the form ONNX Runtime runs with int8 kernels and TensorRT 10/11 builds by
explicit quantization, from one calibration.

:func:`quantize_qdq` runs ONNX Runtime's static quantization on our fp32 graph: weights int8 per output channel,
symmetric; activations int8, symmetric (zero point 0: TensorRT's Q/DQ must be symmetric); biases stay float (TensorRT
fuses them; an int32 bias DQ is not what its parser expects). Activation ranges come from the calibration batches
(``minmax``, ``entropy`` or ``percentile``); the same batches give the same scales; a fixed-batch graph gets them
regrouped to its batch. :func:`check_qdq` is the contract: every Conv reads its data input and its weight through a
DequantizeLinear of int8 data with zero point 0, and the data's QuantizeLinear quantizes to int8 with zero point 0.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper

from vanilladeploy.exporters.contract import fixed_batch_of

METHODS = ("minmax", "entropy", "percentile")


@dataclass(frozen=True)
class Int8Result:
    path: Path
    method: str
    calibration_batches: int
    quantized_convs: int
    problems: tuple[str, ...]

    def __bool__(self) -> bool:
        return not self.problems


class CalibrationDataError(ValueError):
    """No calibration batch at all (every calibration image was unreadable, or none were given)."""


class OnnxRuntimeTooOld(RuntimeError):
    """The installed onnxruntime lacks a quantization feature a calibration method needs."""


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over our batches (no data kept beyond the current one)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray], dtype: npt.DTypeLike = np.float32) -> None:
        self.input_name, self.batches, self.count, self.dtype = input_name, iter(batches), 0, dtype

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        if x is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(x, dtype=self.dtype)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


def rebatch(batches: Iterable[np.ndarray], size: int | None) -> Iterator[np.ndarray]:
    """``batches`` regrouped into batches of exactly ``size`` images (a fixed-batch graph accepts no other), images
    carried over from one batch to the next; the last is padded by repeating its final image (a repeated image
    widens no range). ``size=None`` (dynamic batch): the batches as they are."""
    if size is None:
        yield from batches
        return
    pending: list[np.ndarray] = []
    for x in batches:
        pending.extend(x)
        while len(pending) >= size:
            yield np.stack(pending[:size])
            del pending[:size]
    if pending:
        yield np.stack(pending + [pending[-1]] * (size - len(pending)))


def quantize_qdq(fp32_onnx: Path, out: Path, calibration: Iterable[np.ndarray], *, method: str = "minmax",
                 keep_float: Sequence[str] = (), ranges: Path | None = None,
                 op_types: Sequence[str] | None = None) -> Int8Result:
    """Calibrate ``fp32_onnx`` on the ``calibration`` batches (N×3×H×W of the graph's input type: float32, or uint8
    pixels; regrouped to the graph's batch when it is fixed) and write the QDQ model to ``out``, the Convs named in
    ``keep_float`` left in float32. ``ranges``: a file of activation ranges — read when it exists (no calibration
    pass: the same ranges give the same scales, so variants of one calibration differ only in their float layers),
    else computed and saved there. ``op_types``: quantize only these ops (a detector: its Convs, never the
    post-processing), else every op ONNX Runtime quantizes. Raises :class:`CalibrationDataError` before any
    calibration run when there is no batch at all."""
    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    graph_input = onnx.load(fp32_onnx, load_external_data=False).graph.input[0]
    if ranges is not None and ranges.is_file():
        reader = _Reader(graph_input.name, ())
    else:
        batches = rebatch(calibration, fixed_batch_of(graph_input))
        first = next(batches, None)
        if first is None:
            raise CalibrationDataError("no calibration batches were given (every calibration image was unreadable?)")
        dtype = helper.tensor_dtype_to_np_dtype(graph_input.type.tensor_type.elem_type)
        reader = _Reader(graph_input.name, itertools.chain([first], batches), dtype)
    _quantize_static(fp32_onnx, out, reader, method, keep_float=keep_float, ranges=ranges, op_types=op_types)
    model = onnx.load(out)
    problems = tuple(check_qdq(model, keep_float=frozenset(keep_float)))
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv") - len(keep_float)
    return Int8Result(out, method, reader.count, convs, problems)


ENTROPY_BINS = (2048, 128)
"""Histogram bins and quantized bins for the entropy (KL) method, as TensorRT's entropy calibrator uses them.
ONNX Runtime's ``quantize_static`` builds its entropy calibrator with 128 and 128, where the threshold search has a
single candidate — the full range — so "entropy" would silently equal "minmax"; we calibrate with these instead."""


def _quantize_static(fp32_onnx: Path, out: Path, reader: _Reader, method: str, *, keep_float: Sequence[str] = (),
                     ranges: Path | None = None, op_types: Sequence[str] | None = None) -> None:
    """ONNX Runtime's static quantization, symmetric int8 QDQ, per-channel weights, float bias; quietly."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" warnings: our graph is simplified
    try:  # ORT writes its augmented calibration model into a temporary directory of its own, and prints progress
        with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory(prefix="vanilladeploy-calib-") \
                as scratch:
            cache: dict[str, object] = {}
            if method == "entropy" and not (ranges is not None and ranges.is_file()):
                cache["calibration_cache_path"] = _entropy_ranges(fp32_onnx, reader, Path(scratch), save_to=ranges)
            elif ranges is not None:
                cache["calibration_cache_path"] = ranges  # read when it exists, else computed and written there
            hit = "calibration_cache_path" in cache and Path(cache["calibration_cache_path"]).is_file()
            quantize_static(str(fp32_onnx), str(out), None if hit else reader, quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                            calibrate_method=calibrate, nodes_to_exclude=list(keep_float),
                            op_types_to_quantize=list(op_types) if op_types else None,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False}, **cache)
    finally:
        logging.getLogger().setLevel(quiet)


def _entropy_ranges(fp32_onnx: Path, reader: _Reader, scratch: Path, *, save_to: Path | None = None) -> Path:
    """Activation ranges by the entropy method with :data:`ENTROPY_BINS`, saved where ``quantize_static`` reads
    precomputed ranges (its ``calibration_cache_path``): ``save_to``, else a file in ``scratch``."""
    import inspect

    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        raise OnnxRuntimeTooOld("--calib-method entropy needs an onnxruntime whose quantize_static takes "
                                "precomputed ranges (calibration_cache_path): pip install -U onnxruntime")
    bins, quantized_bins = ENTROPY_BINS
    calibrator = create_calibrator(fp32_onnx, None, augmented_model_path=str(scratch / "augmented.onnx"),
                                   calibrate_method=CalibrationMethod.Entropy,
                                   extra_options={"symmetric": True, "num_bins": bins,
                                                  "num_quantized_bins": quantized_bins})
    calibrator.collect_data(reader)
    cache = save_to or scratch / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def check_qdq(model: onnx.ModelProto, *, keep_float: frozenset[str] = frozenset()) -> list[str]:
    """Problems with the int8 contract: each Conv's data input and weight come from a DequantizeLinear of int8
    data with zero point 0 (symmetric), the data's QuantizeLinear quantizes to int8 with zero point 0 too, and the
    weight scales are per output channel — except the Convs named in ``keep_float``, whose weight must be a float
    initializer (computed in float), and only those."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    unknown = sorted(keep_float - {n.name for n in convs})
    if unknown:
        problems.append(f"float layers {unknown} are not Conv nodes of the graph")
    for conv in (n for n in convs if n.name in keep_float):
        weight = conv.input[1]
        if weight not in inits or inits[weight].data_type != onnx.TensorProto.FLOAT:
            problems.append(f"Conv {conv.name} is listed as float but its weight is not a float32 initializer")
    for conv in (n for n in convs if n.name not in keep_float):
        for role, name in (("data", conv.input[0]), ("weight", conv.input[1])):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                problems.append(f"Conv {conv.name}: its {role} input is not dequantized (no QDQ)")
                continue
            where = f"Conv {conv.name}: {role}"
            problems += _check_dequantize(where, dq, producers, inits)
            if role == "weight":
                scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
                out_channels = numpy_helper.to_array(inits[dq.input[0]]).shape[0] if dq.input[0] in inits else -1
                if scale is None or scale.size != out_channels:
                    problems.append(f"{where} scale is not per output channel")
    return problems


def _check_dequantize(where: str, dq: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                      inits: dict[str, onnx.TensorProto]) -> list[str]:
    """The DequantizeLinear reads int8 with zero point 0: an int8 initializer, or a QuantizeLinear to int8 0."""
    problems = _check_zero_point(f"{where} DequantizeLinear {dq.name}", dq, inits)
    source, q = dq.input[0], producers.get(dq.input[0])
    if source in inits:
        dtype = helper.tensor_dtype_to_np_dtype(inits[source].data_type)
        if dtype != np.int8:
            problems.append(f"{where} is dequantized from {dtype} data, not int8")
    elif q is not None and q.op_type == "QuantizeLinear":
        problems += _check_zero_point(f"{where} QuantizeLinear {q.name}", q, inits)
    else:
        problems.append(f"{where} is dequantized from {q.op_type if q else 'a graph input'} {source!r}, not from a "
                        "QuantizeLinear or an int8 initializer")
    return problems


def _check_zero_point(where: str, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    """An explicit zero point must be an int8 initializer of zeros. Without one, a QuantizeLinear outputs uint8
    unless its ``output_dtype`` says int8; a DequantizeLinear's type is that of its data (checked by the caller)."""
    if len(node.input) < 3 or not node.input[2]:
        if node.op_type == "DequantizeLinear":
            return []
        dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        return [] if dtype == onnx.TensorProto.INT8 else [f"{where} has no zero point, so it quantizes to uint8, "
                                                           "not int8 (asymmetric)"]
    if node.input[2] not in inits:
        return [f"{where}: zero point {node.input[2]!r} is not a constant initializer"]
    zero = numpy_helper.to_array(inits[node.input[2]])
    if zero.dtype != np.int8 or zero.any():
        return [f"{where}: zero point is {zero.dtype} {zero.ravel()[:3]}, not int8 0 (asymmetric)"]
    return []


def quantization_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Q/DQ scale initializer by name (to compare two calibrations)."""
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in scales}


__all__ = ["ENTROPY_BINS", "METHODS", "CalibrationDataError", "Int8Result", "OnnxRuntimeTooOld", "check_qdq",
           "quantization_scales", "quantize_qdq", "rebatch"]
