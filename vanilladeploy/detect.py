"""Running an exported detector on images: the test pipeline's preprocessing, a session that returns every output,
boxes mapped back to the original image, and box-level agreement between two artifacts.

The preprocessing is mmdetection 2.x's test pipeline as the ONNX records it (``img_scale``, ``pixel_mean``,
``pixel_std``, ``size_divisor`` in ``metadata_props``): keep-ratio resize so that the long side is at most 1333 and
the short side at most 800 (scale = min(1333 / long, 800 / short), sizes rounded as ``mmcv.imrescale`` does),
bilinear (PIL's, where mmcv uses OpenCV's: pixel values differ slightly), normalization in RGB, zero padding at the
right and bottom to a multiple of 32. Boxes come back divided by the resize scale and clipped to the image.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.errors import UsageError


@dataclass(frozen=True)
class DetPreprocess:
    img_scale: tuple[int, int] = (1333, 800)
    mean: tuple[float, ...] = (123.675, 116.28, 103.53)
    std: tuple[float, ...] = (58.395, 57.12, 57.375)
    size_divisor: int = 32

    @classmethod
    def from_metadata(cls, meta: dict[str, str]) -> DetPreprocess:
        try:
            long, short = (int(v) for v in meta["img_scale"].split("x"))
            mean = tuple(float(v) for v in meta["pixel_mean"].split(","))
            std = tuple(float(v) for v in meta["pixel_std"].split(","))
            return cls((long, short), mean, std, int(meta["size_divisor"]))
        except (KeyError, ValueError) as e:
            raise UsageError(f"the detector ONNX records no readable preprocessing ({e}); re-export it with "
                             "vanilladeploy export.") from None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the keep-ratio resize (``mmcv.imrescale``: int(x·scale + 0.5))."""
        long, short = max(self.img_scale), min(self.img_scale)
        scale = min(long / max(width, height), short / min(width, height))
        return int(width * scale + 0.5), int(height * scale + 0.5)

    def __call__(self, image: Any) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
        """(1×3×H×W float32 padded input, (x scale, y scale), original (width, height)) for a PIL image."""
        from PIL import Image

        image = image.convert("RGB")
        width, height = image.size
        new_w, new_h = self.resized_size(width, height)
        pixels = np.asarray(image.resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
        pixels = (pixels - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        d = self.size_divisor
        padded = np.zeros((-(-new_h // d) * d, -(-new_w // d) * d, 3), np.float32)
        padded[:new_h, :new_w] = pixels
        return padded.transpose(2, 0, 1)[None].copy(), (new_w / width, new_h / height), (width, height)


@dataclass(frozen=True)
class Detections:
    """One image's detections, best first: boxes (k, 4) x1 y1 x2 y2, scores (k,), labels (k,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def names(self) -> list[str]:
        return [self.classes[i] if self.classes and 0 <= i < len(self.classes) else str(i) for i in self.labels]


def split_outputs(outputs: Sequence[np.ndarray], classes: tuple[str, ...] | None = None) -> list[Detections]:
    """The graph's (boxes, scores, labels, num_detections) as one :class:`Detections` per image."""
    boxes, scores, labels, counts = outputs[:4]
    return [Detections(boxes[b, :k], scores[b, :k], labels[b, :k], classes)
            for b, k in enumerate(int(c) for c in counts)]


def is_detector_onnx(path: Path) -> bool:
    """Whether an ONNX file is an exported detector (its ``metadata_props`` name one), read without its weights."""
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # not ours to judge here: the classifier path reports unreadable files
        return False
    return any(p.key == "detector" for p in model.metadata_props)


class DetectorSession:
    """An exported detector ONNX in ONNX Runtime or OpenVINO (``precision`` fp32 or bf16): every output."""

    def __init__(self, path: Path, *, runtime: str = "onnxruntime", precision: str = "fp32") -> None:
        import onnx

        if not Path(path).is_file():
            raise UsageError(f"{path}: no such file.")
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as e:  # protobuf's DecodeError and friends
            raise UsageError(f"{path}: not a readable ONNX file ({type(e).__name__}).") from None
        self.meta = {p.key: p.value for p in model.metadata_props}
        if self.meta.get("part") != "detector":
            raise UsageError(f"{path} is not an exported detector with boxes out (metadata part="
                             f"{self.meta.get('part')!r}); export the checkpoint with --part detector.")
        self.path, self.runtime, self.precision = Path(path), runtime, precision
        self.graph_precision = self.meta.get("precision", "fp32")
        """What the graph itself computes in (fp32, fp16, int8), as its metadata records."""
        self.preprocess = DetPreprocess.from_metadata(self.meta)
        self.classes = tuple(json.loads(self.meta["classes"])) if "classes" in self.meta else None
        if runtime == "onnxruntime":
            if precision != "fp32":
                raise UsageError(f"ONNX Runtime runs the graph's own precision; {precision} is OpenVINO's.")
            from vanilladeploy.runtimes.runners import ort_session

            session = ort_session(path)
            self._run = lambda x: session.run(None, {session.get_inputs()[0].name: x})
        elif runtime == "openvino":
            from vanilladeploy.extras import require
            from vanilladeploy.runtimes.runners import compile_openvino

            require("openvino", "--runtime openvino")
            request = compile_openvino(path, precision).create_infer_request()

            def run(x: np.ndarray) -> list[np.ndarray]:
                request.infer({0: x})
                return [np.array(t.data, copy=True) for t in request.output_tensors]

            self._run = run
        else:
            raise UsageError(f"runtime {runtime!r}: choose onnxruntime or openvino.")

    def close(self) -> None:
        self._run = None

    def __enter__(self) -> DetectorSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(self, x: np.ndarray) -> list[Detections]:
        """Detections in the input tensor's pixels for a preprocessed batch."""
        return split_outputs(self._run(np.ascontiguousarray(x, dtype=np.float32)), self.classes)

    def detect(self, image: Any) -> Detections:
        """One image (a path or a PIL image): preprocessed as recorded, boxes in the original image's pixels."""
        from PIL import Image

        if isinstance(image, (str, Path)):
            try:
                image = Image.open(image)
                image.load()
            except OSError as e:
                raise UsageError(f"{image}: cannot read the image ({e}).") from None
        x, (sx, sy), (width, height) = self.preprocess(image)
        det = self.infer(x)[0]
        boxes = det.boxes / np.asarray([sx, sy, sx, sy], np.float32)
        boxes = np.minimum(np.maximum(boxes, 0), np.asarray([width, height, width, height], np.float32))
        return Detections(boxes, det.scores, det.labels, det.classes)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area = lambda t: (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])  # noqa: E731
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-12)


@dataclass
class BoxAgreement:
    """Detections of an artifact against a reference's, matched greedily (best score first) to the unmatched
    reference box of the same label with the highest IoU ≥ ``iou_threshold``."""

    reference: int = 0
    detections: int = 0
    matched: int = 0
    iou_sum: float = 0.0
    score_diff_sum: float = 0.0
    max_score_diff: float = 0.0
    iou_threshold: float = 0.5

    def add(self, det: Detections, ref: Detections) -> None:
        self.reference, self.detections = self.reference + len(ref), self.detections + len(det)
        if not len(det) or not len(ref):
            return
        iou = box_iou(det.boxes.astype(np.float64), ref.boxes.astype(np.float64))
        iou[det.labels[:, None] != ref.labels[None, :]] = 0.0
        free = np.ones(len(ref), dtype=bool)
        for i in np.argsort(-det.scores, kind="stable"):
            j = int(np.argmax(np.where(free, iou[i], -1.0)))
            if free[j] and iou[i, j] >= self.iou_threshold:
                free[j] = False
                diff = abs(float(det.scores[i]) - float(ref.scores[j]))
                self.matched += 1
                self.iou_sum += float(iou[i, j])
                self.score_diff_sum += diff
                self.max_score_diff = max(self.max_score_diff, diff)

    @property
    def recall(self) -> float:
        """Share of the reference's detections matched (1.0 when both found nothing)."""
        return self.matched / self.reference if self.reference else float(self.detections == 0)

    @property
    def precision(self) -> float:
        return self.matched / self.detections if self.detections else float(self.reference == 0)

    @property
    def mean_iou(self) -> float:
        return self.iou_sum / self.matched if self.matched else float(self.reference == self.detections == 0)

    @property
    def mean_score_diff(self) -> float:
        return self.score_diff_sum / self.matched if self.matched else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"reference_detections": self.reference, "detections": self.detections, "matched": self.matched,
                "recall": round(self.recall, 6), "precision": round(self.precision, 6),
                "mean_iou": round(self.mean_iou, 6), "mean_score_diff": self.mean_score_diff,
                "max_score_diff": self.max_score_diff, "iou_threshold": self.iou_threshold}

    def summary(self) -> str:
        return (f"{self.matched}/{self.reference} reference boxes matched (recall {100 * self.recall:.2f}%, "
                f"precision {100 * self.precision:.2f}%), mean IoU {self.mean_iou:.4f}, mean score Δ "
                f"{self.mean_score_diff:.1e}")


@dataclass(frozen=True)
class BoxGate:
    """The bar a lower-precision detector must clear against fp32 (docs/detection.md)."""

    min_recall: float
    min_mean_iou: float
    max_mean_score_diff: float

    def failures(self, a: BoxAgreement) -> list[str]:
        out = []
        if a.recall < self.min_recall:
            out.append(f"recall {a.recall:.4f} < {self.min_recall}")
        if a.precision < self.min_recall:
            out.append(f"precision {a.precision:.4f} < {self.min_recall}")
        if a.mean_iou < self.min_mean_iou:
            out.append(f"mean IoU {a.mean_iou:.4f} < {self.min_mean_iou}")
        if a.mean_score_diff > self.max_mean_score_diff:
            out.append(f"mean score Δ {a.mean_score_diff:.2e} > {self.max_mean_score_diff}")
        return out


GATE_FP32 = BoxGate(0.99, 0.999, 1e-4)
"""Another fp32 runtime (OpenVINO fp32 against ONNX Runtime): the same boxes but for near-threshold candidates."""
GATE_REDUCED = BoxGate(0.90, 0.90, 2e-2)
"""bf16, fp16 and int8 against fp32: nine in ten boxes kept both ways, matched boxes overlapping ≥ 0.9 on average,
scores within 0.02 on average. Our thresholds: set on random-weight detectors (OpenVINO bf16 reached recall 0.94,
mean IoU 0.92 there), not yet on a trained one."""


def _open_image(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image.convert("RGB")


def gate_for(session: DetectorSession) -> BoxGate:
    """:data:`GATE_FP32` for an fp32 graph computed in fp32 (another runtime, the same math), else
    :data:`GATE_REDUCED`."""
    return GATE_FP32 if session.graph_precision == "fp32" and session.precision == "fp32" else GATE_REDUCED


def compare_detectors(artifacts: Sequence[str | Path], data: Path, *, limit: int | None = None,
                      runtime: str = "onnxruntime", precision: str = "fp32", progress: Any = None
                      ) -> dict[str, Any]:
    """``vanilladeploy eval`` for detectors: every artifact after the first (run in ``runtime`` at ``precision``)
    against the first (ONNX Runtime), image by image — preprocessed by the first's recorded pipeline — with boxes
    matched by label and IoU ≥ 0.5 (:class:`BoxAgreement`) and the verdict of :func:`gate_for`."""
    from vanilladeploy.images import scan_folder

    folder = scan_folder(Path(data))
    files = folder.files[:limit] if limit else folder.files
    sessions = [DetectorSession(Path(artifacts[0]))] + [DetectorSession(Path(a), runtime=runtime,
                                                                         precision=precision) for a in artifacts[1:]]
    results, skipped, timing = [BoxAgreement() for _ in sessions[1:]], [], [0.0] * len(sessions)
    import time

    for n, path in enumerate(files):
        try:
            x, _, _ = sessions[0].preprocess(_open_image(path))
        except (OSError, ValueError, SyntaxError) as e:
            skipped.append(f"{path}: {e}")
            continue
        dets = []
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            dets.append(session.infer(x)[0])
            timing[i] += time.perf_counter() - start
        for result, det in zip(results, dets[1:]):
            result.add(det, dets[0])
        if progress is not None:
            progress(n + 1, len(files))
    if len(skipped) == len(files):
        raise UsageError(f"{data}: none of the {len(files)} images could be read ({skipped[0] if skipped else ''}).")
    images = len(files) - len(skipped)
    rows = [{"name": Path(artifacts[0]).name, "runtime": f"onnxruntime, {sessions[0].graph_precision} graph",
             "reference": True, "detections": results[0].reference if results else None,
             "images_per_s": images / timing[0]}]
    for session, result, t in zip(sessions[1:], results, timing[1:]):
        gate = gate_for(session)
        failures = gate.failures(result)
        rows.append({"name": session.path.name, "runtime": f"{runtime} {precision}, {session.graph_precision} graph",
                     **result.as_dict(), "gate": vars(gate), "passed": not failures, "failures": failures,
                     "images_per_s": images / t})
    return {"data": str(data), "images": images, "skipped": skipped, "artifacts": rows}


__all__ = ["BoxAgreement", "BoxGate", "DetPreprocess", "DetectorSession", "Detections", "GATE_FP32", "GATE_REDUCED",
           "box_iou", "compare_detectors", "gate_for", "is_detector_onnx", "split_outputs"]
