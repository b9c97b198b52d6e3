"""INT8 as explicit quantization (QDQ): the form ONNX Runtime runs with int8 kernels and TensorRT 10/11 builds by
explicit quantization, from one calibration.

:func:`quantize_qdq` runs ONNX Runtime's static quantization on our fp32 graph: weights int8 per output channel,
symmetric; activations int8, symmetric (zero point 0: TensorRT's Q/DQ must be symmetric); biases stay float (TensorRT
fuses them; an int32 bias DQ is not what its parser expects). Activation ranges come from the calibration batches
(``minmax``, ``entropy`` or ``percentile``); the same batches give the same scales. :func:`check_qdq` is the
contract: every Conv reads its data input and its weight through a DequantizeLinear with zero point 0.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

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


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over our batches (no data kept beyond the current one)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self.input_name, self.batches, self.count = input_name, iter(batches), 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.batches, None)
        if x is None:
            return None
        self.count += 1
        return {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self.get_next, None)


def quantize_qdq(fp32_onnx: Path, out: Path, calibration: Iterable[np.ndarray], *, method: str = "minmax"
                 ) -> Int8Result:
    """Calibrate ``fp32_onnx`` on the ``calibration`` batches (N×3×H×W float32) and write the QDQ model to ``out``."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in METHODS:
        raise ValueError(f"calibration method {method!r}: choose one of {', '.join(METHODS)}")
    calibrate = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                 "percentile": CalibrationMethod.Percentile}[method]
    input_name = onnx.load(fp32_onnx, load_external_data=False).graph.input[0].name
    reader = _Reader(input_name, calibration)
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # ORT's "consider pre-processing" warnings: our graph is simplified
    try:  # ORT writes its augmented calibration model into a temporary directory of its own, and prints progress
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(str(fp32_onnx), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                            calibrate_method=calibrate,
                            extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                           "QuantizeBias": False})
    finally:
        logging.getLogger().setLevel(quiet)
    if reader.count == 0:
        out.unlink(missing_ok=True)
        raise ValueError("no calibration batches were given")
    model = onnx.load(out)
    problems = tuple(check_qdq(model))
    convs = sum(1 for n in model.graph.node if n.op_type == "Conv")
    return Int8Result(out, method, reader.count, convs, problems)


def check_qdq(model: onnx.ModelProto) -> list[str]:
    """Problems with the int8 contract: each Conv's data input and weight come from DequantizeLinear with an int8
    zero point of 0 (symmetric); weight scales per output channel."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    problems = []
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        for role, name in (("data", conv.input[0]), ("weight", conv.input[1])):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                problems.append(f"Conv {conv.name}: its {role} input is not dequantized (no QDQ)")
                continue
            problems += _check_zero_point(conv.name, role, dq, inits)
            if role == "weight":
                scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
                out_channels = numpy_helper.to_array(inits[dq.input[0]]).shape[0] if dq.input[0] in inits else -1
                if scale is None or scale.size != out_channels:
                    problems.append(f"Conv {conv.name}: weight scale is not per output channel")
    return problems


def _check_zero_point(conv: str, role: str, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> list[str]:
    if len(dq.input) < 3 or dq.input[2] not in inits:
        return []  # no zero point input: 0 by definition (int8 when the quantized input is int8)
    zero = numpy_helper.to_array(inits[dq.input[2]])
    if zero.dtype != np.int8 or zero.any():
        return [f"Conv {conv}: {role} zero point is {zero.dtype} {zero.ravel()[:3]}, not int8 0 (asymmetric)"]
    return []


def quantization_scales(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every Q/DQ scale initializer by name (to compare two calibrations)."""
    scales = {n.input[1] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer if i.name in scales}


__all__ = ["METHODS", "Int8Result", "check_qdq", "quantization_scales", "quantize_qdq"]
