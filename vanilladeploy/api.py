"""The Python API: what the commands do, callable from a notebook or a service, with the same checks and errors.

    import vanilladeploy as vd
    result = vd.export("ckpt.pth", out_dir="build")   # an ExportResult; truthy when everything verified
    model = vd.load(result.onnx)                      # a checkpoint, deploy .pth, .onnx or .engine
    logits = model.predict(["cat.jpg"])               # preprocessed as the artifact records
    boxes = vd.load("export/retinanet_vanillanet_13/retinanet_vanillanet_13.onnx").detect("street.jpg").boxes
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.detect import DetectorSession, is_detector_onnx
from vanilladeploy.evaluate import Artifact, EvalResult, choose_preprocess, open_artifact
from vanilladeploy.evaluate import evaluate as _evaluate
from vanilladeploy.images import Preprocess, load_image
from vanilladeploy.pipeline.detection import DetectionExportResult
from vanilladeploy.pipeline.export import ExportResult, export_checkpoint, export_options
from vanilladeploy.steps import Progress, silent

DEPENDENT_OPTIONS = (
    ("--trt", lambda o: bool(o.get("trt")),
     ("workspace", "trt_profile", "batch", "timing_cache", "opt_level", "trt_shapes")),  # batch: trt_profile's old name
    ("--precision int8", lambda o: o.get("precision") == "int8",
     ("calib", "calib_count", "calib_method", "min_agreement", "max_rel_l2", "fallback", "max_fallback",
      "holdout_count")),
)
"""Options that do nothing without another (named as the command spells it): refused by :func:`export`, for the
command and the API alike, before the checkpoint is read."""


def check_dependent_options(options: dict[str, Any]) -> None:
    """Refuse an option given (not None) without the one it depends on (:data:`DEPENDENT_OPTIONS`)."""
    from vanilladeploy.validate import needs

    for requirement, present, names in DEPENDENT_OPTIONS:
        needs(requirement, present(options), {f"--{n.replace('_', '-')}": options.get(n) for n in names})


def export(source: str | Path, *, progress: Progress = silent, **options: Any
           ) -> ExportResult | DetectionExportResult:
    """``vanilladeploy export`` as a function: ``source`` is a checkpoint file or a variant name; ``options`` are
    the command's options as keywords (``out_dir``, ``img_size``, ``precision``, ``calib``, ``trt``, …). Raises a
    :class:`~vanilladeploy.errors.VanillaDeployError` for what the command refuses; a failure after publishing
    (an unverified int8 model, no TensorRT for ``trt=True``) is ``result.error`` and makes the result falsy.
    A detection checkpoint gives a :class:`~vanilladeploy.pipeline.detection.DetectionExportResult` (the options
    of :func:`~vanilladeploy.pipeline.detection.detection_options`: ``part``, ``det_config``, ``verify_sizes``,
    ``openvino``, ``precision`` with ``calib``…, ``trt`` with ``trt_shapes``…, ``out_dir``)."""
    from vanilladeploy.pipeline.detection import classifier_options, detection_options, export_detector
    from vanilladeploy.source import resolve_source

    check_dependent_options(options)
    ckpt = resolve_source(str(source), key=options.get("key"), seed=options.get("seed") or 0)  # read once
    if ckpt.form == "detector":
        return export_detector(ckpt, detection_options(**options), progress=progress)
    return export_checkpoint(str(source), export_options(**classifier_options(source, options)), progress=progress,
                             checkpoint=ckpt)


class Model:
    """A loaded artifact and the preprocessing it carries; ``predict`` maps images to logits (its runner is activated
    on the first call: the runner owns that state). Close it (or use ``with``) to release its runtime session."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.preprocess: Preprocess = choose_preprocess([artifact])

    @property
    def kind(self) -> str:
        return self.artifact.kind

    def predict(self, images: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Logits (N × classes) for ``images``: paths or PIL images, preprocessed as the artifact records (resize,
        center crop, normalize — a model exported with ``--input uint8`` gets the uint8 pixels and normalizes them
        itself), or an N×3×H×W array: uint8 pixels (after resize and crop; normalized here for a float model), or
        float values taken as already preprocessed (a uint8 model refuses those)."""
        if isinstance(images, np.ndarray):
            x = self.preprocess.model_input(images)
        else:
            x = np.stack([self._prepare(image) for image in images])
        self.artifact.runner.activate()  # once: a no-op while active
        return self.artifact.runner.infer(x)

    def _prepare(self, image: Any) -> np.ndarray:
        if isinstance(image, (str, Path)):
            return load_image(Path(image), self.preprocess)
        return self.preprocess(image)

    def close(self) -> None:
        self.artifact.runner.deactivate()  # a no-op unless active

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(artifact: str | Path, *, arch: str | None = None, runtime: str = "onnxruntime",
         precision: str = "fp32") -> Model | DetectorSession:
    """A training checkpoint (run in training form with λ as trained), a deploy ``.pth``, an ``.onnx`` (fp32, fp16
    or int8, in ``runtime``: ONNX Runtime, or OpenVINO computing in ``precision`` fp32 or bf16) or a TensorRT
    ``.engine``, ready to ``predict``; an exported detector (``export DET.pth``) ready to ``detect(image)``."""
    if str(artifact).endswith(".onnx") and is_detector_onnx(Path(artifact)):
        return DetectorSession(Path(artifact), runtime=runtime, precision=precision)
    return Model(open_artifact(str(artifact), arch=arch, runtime=runtime, precision=precision))


def evaluate(artifacts: Sequence[str | Path], data: str | Path, *, limit: int | None = None, batch: int = 32,
             arch: str | None = None, runtime: str = "onnxruntime", precision: str = "fp32",
             progress: Progress = silent) -> EvalResult:
    """``vanilladeploy eval``: accuracy and agreement with the first artifact on an image folder."""
    return _evaluate([str(a) for a in artifacts], Path(data), limit=limit, batch=batch, arch=arch, progress=progress,
                     runtime=runtime, precision=precision)


__all__ = ["DetectorSession", "ExportResult", "Model", "Preprocess", "evaluate", "export", "load"]
