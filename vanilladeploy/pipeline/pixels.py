"""``export --input uint8``: a graph that takes uint8 pixels (NCHW, RGB, 0–255, after the recorded resize and crop)
and normalizes them itself, so clients send 4× fewer bytes (150,528 instead of 602,112 per 224-pixel image).

Where the normalization x = (p/255 − mean)/std goes is decided from the architecture, never from a name: a stem conv
without padding (4×4, stride 4: every variant but the ada one) takes it into its weights exactly
(:func:`vanilladeploy.reparam.fold_pixel_normalization`), and the graph starts Cast → stem Conv. A stem that
zero-pads (the ada variant: stride 3, padding 1) reads its padded zeros as normalized zeros, i.e. the pixel 255·mean,
not 0; there the mean stays an explicit op before the stem (Cast → Sub(255·mean) → stem Conv) and only the scale
1/(255·std) is folded into the weights (exact with padding: a zero stays zero when scaled). Every check of a graph (ONNX
Runtime, OpenVINO, fp16, int8 calibration) then runs on pixels: seeded uniform uint8 pixels against the fused float
model fed the same pixels normalized (rel. L2 ≤ 1e-5 for fp32).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor

from vanilladeploy.errors import UsageError
from vanilladeploy.exporters.onnx_export import PixelInput
from vanilladeploy.images import INPUT_DTYPES, Preprocess
from vanilladeploy.models.vanillanet import VanillaNet, VariantSpec
from vanilladeploy.pipeline.report import ExportReport, InputSection, VerificationInputs
from vanilladeploy.reparam import fold_pixel_normalization
from vanilladeploy.runtimes.runners import TorchRunner

PIXELS = "uniform uint8 pixels 0-255"
"""The distribution of the pixel inputs, as the report's ``verification.pixels`` records it."""
REFERENCE = "the fused float model (torch) fed the same pixels normalized: x = (p/255 - mean)/std"


def check_input_option(input_dtype: str, *, trt: bool) -> None:
    """Refuse, before any work, an ``--input`` that cannot be honoured (the CLI and the API share it)."""
    if input_dtype not in INPUT_DTYPES:
        raise UsageError(f"--input {input_dtype}: choose one of {', '.join(INPUT_DTYPES)}.")
    if input_dtype == "uint8" and trt:
        raise UsageError("--input uint8 with --trt is not supported: the TensorRT step builds and verifies engines "
                         "on float32 input only. Export --input uint8 without --trt (ONNX Runtime, OpenVINO), or "
                         "--trt with float32 input.")


def stem_pads(spec: VariantSpec) -> bool:
    """Whether the stem conv zero-pads its input: then the normalization cannot be folded into its weights."""
    return spec.stem_stride_padding[1] > 0


def graph_weights(state_dict: Mapping[str, Tensor], spec: VariantSpec, pre: Preprocess
                  ) -> tuple[Mapping[str, Tensor], PixelInput | None]:
    """What the ONNX emitter is given for ``pre.input_dtype``: float32 — the state dict as it is and no pixel
    input; uint8 — the normalization folded into the stem and a bare Cast or, for a padded stem, its scale folded
    and an explicit Sub of the mean."""
    if pre.input_dtype != "uint8":
        return state_dict, None
    if stem_pads(spec):
        return fold_pixel_normalization(state_dict, pre.mean, pre.std, fold_mean=False), PixelInput(tuple(pre.mean))
    return fold_pixel_normalization(state_dict, pre.mean, pre.std), PixelInput()


def input_section(spec: VariantSpec, pre: Preprocess) -> InputSection:
    """The report's ``input`` section for a uint8 export of ``spec``."""
    stride, pad = spec.stem_stride_padding
    if stem_pads(spec):
        where = "mean explicit (Cast → Sub before stem/conv), 1/(255·std) folded into stem/conv"
        why = (f"the stem conv pads its input (4x4, stride {stride}, padding {pad}): a padded zero of the normalized "
               "input is the pixel 255·mean, so the mean cannot be folded into its weights")
    else:
        where = "folded into stem/conv"
        why = f"the stem conv has no padding (4x4, stride {stride}): the normalization folds exactly into its weights"
    pixels = 3 * pre.img_size * pre.img_size
    return InputSection("uint8", "NCHW, RGB, 0-255, after resize and crop", where, why, pixels, 4 * pixels, REFERENCE)


def check_on_pixels(deploy: VanillaNet, spec: VariantSpec, pre: Preprocess, inputs: VerificationInputs,
                    report: ExportReport) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The inputs and references every graph check of a uint8 export runs on: ``inputs.count`` seeded batches of
    uniform uint8 pixels, and the fused float model's logits on the same pixels normalized. Records them (the
    report's ``verification.pixels``) and the ``input`` section."""
    rng = np.random.default_rng(inputs.seed)
    shape = (inputs.batch, 3, inputs.img_size, inputs.img_size)
    pixels = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(inputs.count)]
    with TorchRunner(deploy) as runner:
        references = [runner.infer(pre.normalize(p)) for p in pixels]
    report.verification.pixels = VerificationInputs(inputs.count, inputs.batch, inputs.img_size, inputs.seed, PIXELS)
    report.input = input_section(spec, pre)
    return pixels, references


def random_input(shape: tuple[int, ...], input_dtype: str, *, seed: int = 0) -> np.ndarray:
    """One seeded batch a graph of ``input_dtype`` takes: N(0, 1) float32, or uniform uint8 pixels."""
    rng = np.random.default_rng(seed)
    if input_dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape, dtype=np.float32)


__all__ = ["PIXELS", "REFERENCE", "check_input_option", "check_on_pixels", "graph_weights", "input_section",
           "random_input", "stem_pads"]
