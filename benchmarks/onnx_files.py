"""The ONNX files every ONNX-based runtime times, cached in the bench cache directory: the fp32 export (our emitter for
deployed VanillaNets, torch.onnx for the rest), its fp16-typed copy and its int8 QDQ copy (calibrated on seeded
random inputs: bench times, it does not judge accuracy)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from vanilladeploy.atomic import write_atomically
from vanilladeploy.benchmarks.zoo import ModelEntry, onnx_path_for


class SkipModel(Exception):
    """This runtime cannot run this model (the message says why); it is reported as skipped, never dropped."""


INT8_CALIBRATION = "seeded random inputs (timing only: the scales are not judged here; see vanilladeploy eval)"


def int8_onnx(path: Path, img_size: int) -> Path:
    """The QDQ int8 copy of ``path`` (cached beside it), calibrated on 8 seeded N(0,1) inputs: bench times, it does
    not judge accuracy."""
    import onnx

    from vanilladeploy.exporters.qdq import quantize_qdq

    target = path.with_name(path.stem + ".int8.onnx")
    if not target.exists():
        g = torch.Generator().manual_seed(0)
        batches = [torch.randn(1, 3, img_size, img_size, generator=g).numpy() for _ in range(8)]

        def write(tmp: Path) -> None:
            try:
                result = quantize_qdq(path, tmp, batches)
            except Exception as e:  # a graph ORT's quantizer cannot handle is a skipped model, not a failed run
                raise SkipModel(f"no int8 ONNX: {type(e).__name__}: {e}") from None
            if not result:
                raise SkipModel(f"int8 ONNX breaks the QDQ contract: {result.problems[0]}")
            onnx.checker.check_model(str(tmp))

        write_atomically(target, write)
    return target


def export_onnx(entry: ModelEntry, model: nn.Module, *, img_size: int, cache_dir: Path) -> Path:
    """The model's fp32 ONNX with a dynamic batch, cached in ``cache_dir``: deployed VanillaNets through our
    emitter, everything else through torch.onnx (opset 17: LayerNormalization stays one op)."""
    path = onnx_path_for(entry, cache_dir, img_size=img_size)
    if path.exists():
        return path
    import onnx

    if entry.family == "vanillanet" and entry.form == "deploy":
        from vanilladeploy.exporters.onnx_export import build_onnx
        from vanilladeploy.models.vanillanet import get_variant

        emitted = build_onnx(model.state_dict(), get_variant(entry.base), act_num=model.stem[1].act_num,
                             img_size=img_size)
        return write_atomically(path, lambda tmp: onnx.save(emitted, tmp))

    def trace(tmp: Path) -> None:
        x = torch.zeros(1, 3, img_size, img_size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.float().cpu().eval(), (x,), str(tmp), opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                              dynamo=False)

    return write_atomically(path, trace)


def fp16_onnx(path: Path) -> Path:
    import onnx

    from vanilladeploy.exporters.fp16_graph import convert_to_fp16

    target = path.with_name(path.stem + ".fp16.onnx")
    if not target.exists():
        try:
            converted = convert_to_fp16(onnx.load(path))
        except ValueError as e:
            raise SkipModel(f"no fp16 ONNX: {e}") from None
        write_atomically(target, lambda tmp: onnx.save(converted, tmp))
    return target


def onnx_missing() -> str | None:
    """Why the ONNX export every ONNX-based runtime starts from cannot run (onnx fails to import), or None."""
    try:
        import onnx  # noqa: F401
    except Exception as e:
        return f"onnx is not installed or fails to import ({type(e).__name__}); the models are exported to ONNX first"
    return None


__all__ = ["INT8_CALIBRATION", "SkipModel", "export_onnx", "fp16_onnx", "int8_onnx", "onnx_missing"]
