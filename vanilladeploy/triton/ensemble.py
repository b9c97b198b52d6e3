"""Images in, labels out: a Triton ensemble ``<model>_image`` beside a classifier ``<model>`` in a repository.

``<model>_image`` takes ``image``: BYTES, one encoded JPEG/PNG/WebP per batch element. Its first step,
``<model>_preprocess`` (the python backend running :mod:`vanilladeploy.triton.image_model`), decodes each
image and applies exactly the preprocessing the artifact records in its ONNX metadata
(:class:`vanilladeploy.images.Preprocess`, the code ``eval`` and ``vd.load(...).predict`` run); its second step is
the classifier, fed the tensor its input takes (float32 normalized, or uint8 pixels for an ``--input uint8``
export). With labels, the ensemble's output carries them, so Triton's classification extension answers
``score:index:label``. A request holding an image that cannot be decoded gets its own 400 (INVALID_ARG) with one line
saying which and why; the other requests of the dynamic batch are answered.

The preprocess step imports vanilladeploy inside the server, so it needs this package in the server's Python: true
for ``vanilladeploy serve``; in a stock Triton container it must be installed there (docs/serving.md).
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import UsageError
from vanilladeploy.images import Preprocess
from vanilladeploy.triton.config import LABELS_FILE, RepoOptions, TensorSpec, config_text, parse_config

IMAGE_MODEL = importlib.resources.files("vanilladeploy.triton") / "image_model.py"
"""The preprocess step's Python-backend model, found as a resource of the installed package."""
IMAGE_INPUT = "image"
TRITON_TYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "float16": "TYPE_FP16"}


@dataclass(frozen=True)
class ImagePlan:
    """The two extra models of an image ensemble, checked and rendered, nothing written."""

    classifier: str
    preprocess_name: str
    ensemble_name: str
    preprocess_config: str
    ensemble_config: str
    labels: list[str] | None


def image_names(classifier: str) -> tuple[str, str]:
    """(preprocess model, ensemble) names for ``classifier``."""
    return f"{classifier}_preprocess", f"{classifier}_image"


def recorded_preprocess(onnx_file: Path) -> Preprocess:
    """The preprocessing ``onnx_file`` records (refused when it records none: a guess would serve wrong answers
    that look right)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(onnx_file, load_external_data=False).metadata_props}
    try:
        found = Preprocess.from_metadata(meta)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{onnx_file}: its preprocessing metadata is unreadable ({e}); export it again.") from None
    if found is None:
        raise UsageError(f"{onnx_file} records no preprocessing (img_size, crop_pct, mean, std), so --images cannot "
                         "know how its training fed it images; export it with vanilladeploy export.")
    return found


def plan_image_ensemble(classifier: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...],
                        opts: RepoOptions, preprocess: Preprocess, labels: list[str] | None) -> ImagePlan:
    """The preprocess model and the ensemble for ``classifier`` (its one input and output, the options it is
    served with); refused where an ensemble of images cannot work."""
    if opts.max_batch < 1:
        raise UsageError("--images batches encoded images (one per batch element), so the classifier needs "
                         "--max-batch 1 or more (an ONNX exported with a fixed batch cannot take it).")
    if len(inputs) != 1 or len(outputs) != 1 or inputs[0].dtype not in TRITON_TYPES:
        raise UsageError(f"--images needs a classifier with one image input and one output, not {inputs} → "
                         f"{outputs}.")
    (x,), (y,) = inputs, outputs
    if tuple(x.shape[1:]) != (3, preprocess.img_size, preprocess.img_size):
        raise UsageError(f"the classifier takes {list(x.shape)}, but its recorded preprocessing makes "
                         f"3×{preprocess.img_size}×{preprocess.img_size} images; export it again.")
    pre_name, ens_name = image_names(classifier)
    pre = _preprocess_config(pre_name, x, opts, preprocess)
    ens = _model_config(ens_name, opts.max_batch, platform="ensemble")
    ens.input.add(name=IMAGE_INPUT, data_type=_type("TYPE_STRING"), dims=[1])
    ens.output.add(name=y.name, data_type=_type("TYPE_FP32"), dims=list(y.shape[1:]),
                   label_filename=LABELS_FILE if labels else "")
    _add_step(ens, pre_name, {IMAGE_INPUT: IMAGE_INPUT}, {x.name: "pixels"})
    _add_step(ens, classifier, {x.name: "pixels"}, {y.name: y.name})
    return ImagePlan(classifier, pre_name, ens_name, _checked(pre), _checked(ens), labels)


def _preprocess_config(name: str, x: TensorSpec, opts: RepoOptions, preprocess: Preprocess) -> Any:
    cfg = _model_config(name, opts.max_batch, backend="python")
    cfg.input.add(name=IMAGE_INPUT, data_type=_type("TYPE_STRING"), dims=[1])
    cfg.output.add(name=x.name, data_type=_type(TRITON_TYPES[x.dtype]), dims=list(x.shape[1:]))
    cfg.instance_group.add(count=opts.instances, kind=_mc().ModelInstanceGroup.KIND_CPU)
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
    cfg.parameters["preprocessing"].string_value = json.dumps(preprocess.metadata(), sort_keys=True)
    return cfg


def _mc() -> Any:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _type(name: str) -> int:
    return _mc().DataType.Value(name)


def _model_config(name: str, max_batch: int, **kind: str) -> Any:
    return _mc().ModelConfig(name=name, max_batch_size=max_batch, **kind)


def _add_step(ensemble: Any, model: str, inputs: dict[str, str], outputs: dict[str, str]) -> None:
    step = ensemble.ensemble_scheduling.step.add(model_name=model, model_version=-1)
    step.input_map.update(inputs)
    step.output_map.update(outputs)


def _checked(cfg: Any) -> str:
    """Config text, read back with Triton's own ``ModelConfig`` schema as Triton does first on load."""
    text = config_text(cfg)
    parse_config(text)
    return text


def write_image_ensemble(plan: ImagePlan, out: Path) -> list[Path]:
    """``out/<model>_preprocess/`` and ``out/<model>_image/``, each swapped in whole."""
    written = []
    with ArtifactWriter(out / plan.preprocess_name) as writer:
        writer.stage("config.pbtxt").write_text(plan.preprocess_config, encoding="utf-8")
        shutil.copyfile(str(IMAGE_MODEL), writer.stage("1/model.py"))
        written += writer.commit()
    with ArtifactWriter(out / plan.ensemble_name) as writer:
        config = writer.stage("config.pbtxt")
        config.write_text(plan.ensemble_config, encoding="utf-8")
        (config.parent / "1").mkdir()  # an ensemble has no model file, but Triton wants its version directory
        if plan.labels:
            writer.stage(LABELS_FILE).write_text("\n".join(plan.labels) + "\n", encoding="utf-8")
        written += writer.commit()
    return written


__all__ = ["IMAGE_INPUT", "ImagePlan", "image_names", "plan_image_ensemble",
           "recorded_preprocess", "write_image_ensemble"]
