"""What an ONNX file takes and records, read from its header alone (``load_external_data=False``; our exports embed
their weights, so the read still goes through the file once): the input's element type and dims, the
``metadata_props`` an export writes (precision, variant, preprocessing)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class OnnxInput:
    """What an ONNX file takes and records, read in one load (our exports embed their weights, so a load reads the
    whole file): its input's element type and dims (-1: dynamic), its ``metadata_props``."""

    dtype: np.dtype
    dims: list[int]
    meta: dict[str, str]

    @property
    def pixels(self) -> bool:
        return self.dtype == np.uint8

    @property
    def precision(self) -> str:
        """The ``precision`` an exported ONNX records (fp32 when it records none)."""
        return self.meta.get("precision", "fp32")


def read_onnx_input(path: Path) -> OnnxInput:
    import onnx

    model = onnx.load(path, load_external_data=False)
    tensor_type = model.graph.input[0].type.tensor_type
    return OnnxInput(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)),
                     [d.dim_value or -1 for d in tensor_type.shape.dim], {p.key: p.value for p in model.metadata_props})


def onnx_precision_of(path: Path) -> str:
    """The ``precision`` an exported ONNX records (fp32 when it records none)."""
    return read_onnx_input(path).precision


__all__ = ["OnnxInput", "onnx_precision_of", "read_onnx_input"]
