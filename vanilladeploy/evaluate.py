"""``vanilladeploy eval``: accuracy and agreement of several artifacts on real images, in one pass.

Every artifact sees the same preprocessed batch (:mod:`vanilladeploy.images`); the first artifact is the reference:
each row reports top-1 agreement with it (%), the mean relative L2 of the logits per image, the worst image, and
top-1/top-5 accuracy when the folder is labelled. A training checkpoint runs in training form with λ as trained; a
deploy ``.pth`` in deploy form; an ``.onnx`` (fp32/fp16/int8) in ONNX Runtime; an ``.engine`` in TensorRT.
Logits are compared batch by batch, never all kept, so a large folder needs little memory. Each runner gets batches
its model accepts (a fixed-batch ONNX: chunks of that batch, the last padded; an engine: within its profile), whatever
``batch`` is. Preprocessing: what an exported ONNX records in its metadata, else the checkpoint's args, else the
defaults, each value labelled with its source.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vanilladeploy.errors import MissingDependencyError, UsageError, VerificationError
from vanilladeploy.exporters.contract import fixed_batch_of
from vanilladeploy.extras import require
from vanilladeploy.images import (
    IMAGE_EXTENSIONS,
    ImageFolder,
    NoReadableImagesError,
    Preprocess,
    iter_batches,
    scan_folder,
)
from vanilladeploy.runtimes import ONNX_RUNTIMES
from vanilladeploy.runtimes.runners import (
    OPENVINO_PRECISIONS,
    ChunkedRunner,
    Runner,
    TorchRunner,
    onnx_runner,
)
from vanilladeploy.source import check_source_options
from vanilladeploy.steps import Progress, Step, silent
from vanilladeploy.validate import check_path

if TYPE_CHECKING:
    import onnx

Batches = Iterator[tuple[np.ndarray, "np.ndarray | None", list[int]]]
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


@dataclass
class Artifact:
    """One thing to evaluate: its runner (already fitted to the model's batch limits), and what it says about
    preprocessing."""

    name: str
    kind: str
    runner: Runner
    img_size: int | None  # fixed by the graph (ONNX input, engine profile), None for torch models
    args: dict[str, Any] = field(default_factory=dict)
    recorded: Preprocess | None = None  # the preprocessing an ONNX records in its metadata_props
    size_source: str = "ONNX graph input"
    input_dtype: str = "float32"  # "uint8": the graph takes pixels (export --input uint8)
    identity: str | None = None  # a served model: which file it says it is (serving.client.check_identity)


def open_artifact(path: str, *, arch: str | None = None, runtime: str = "onnxruntime",
                  precision: str = "fp32") -> Artifact:
    """A runner for a checkpoint (training form, λ as trained), a deploy .pth, an .onnx (in ``runtime``: ONNX
    Runtime, or OpenVINO computing in ``precision`` fp32 or bf16) or an .engine."""
    file = Path(path)
    if file.suffix == ".onnx":
        return _onnx_artifact(file, runtime, precision)
    if file.suffix == ".engine":
        return _engine_artifact(file)
    return _torch_artifact(path, arch)


def _onnx_artifact(file: Path, runtime: str = "onnxruntime", precision: str = "fp32") -> Artifact:
    """An ONNX in ``runtime``; a fixed batch dimension is respected (any --batch is split and padded to it)."""
    import onnx

    if not file.is_file():
        raise UsageError(f"{file}: no such file.")
    try:
        model = onnx.load(file, load_external_data=False)
    except Exception as e:
        raise UsageError(f"{file}: not a readable ONNX file ({type(e).__name__}).") from None
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        recorded = Preprocess.from_metadata(meta)
    except (ValueError, TypeError) as e:
        raise UsageError(f"{file}: its preprocessing metadata (img_size, crop_pct, mean, std) is unreadable ({e}); "
                         "re-export it with vanilladeploy export.") from None
    graph_input = model.graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    size = dims[-1].dim_value if len(dims) == 4 and dims[-1].HasField("dim_value") else None
    runner = onnx_runner(file, runtime, precision=precision)
    fixed = fixed_batch_of(graph_input)
    if fixed is not None:
        runner = ChunkedRunner(runner, min_batch=fixed, max_batch=fixed)
    kind = f"onnx {onnx_precision(model, meta)}" + ("" if runtime == "onnxruntime" else
                                                    f" ({runtime}{'' if precision == 'fp32' else ' ' + precision})")
    pixels = graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    return Artifact(file.name, kind, runner, size, recorded=recorded, input_dtype="uint8" if pixels else "float32")


def onnx_precision(model: onnx.ModelProto, meta: dict[str, str]) -> str:
    """The ``precision`` our exports record; without it, int8 when the graph holds Q/DQ nodes, fp16 when it
    stores float16 initializers, else fp32."""
    from onnx import TensorProto

    if meta.get("precision"):
        return meta["precision"]
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def _engine_artifact(file: Path) -> Artifact:
    """A TensorRT engine; with its JSON sidecar, batches are fitted to the engine's profile (min..max)."""
    from vanilladeploy.runtimes.trt_plan import tensorrt_missing

    missing = tensorrt_missing()
    if missing:
        raise MissingDependencyError(f"{file}: {missing}")
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner

    sidecar = file.with_name(file.name + ".json")
    if not sidecar.is_file():
        return Artifact(file.name, "tensorrt engine", TensorRTRunner(file), None)
    try:
        profile = json.loads(sidecar.read_text(encoding="utf-8"))["profile"]
        low, high, size = int(profile["min"][0]), int(profile["max"][0]), int(profile["max"][-1])
        runner = ChunkedRunner(TensorRTRunner(file), min_batch=low, max_batch=high)
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise UsageError(f"{sidecar}: not a readable engine sidecar ({type(e).__name__}: {e}); rebuild the engine "
                         "with vanilladeploy export --trt, or remove the sidecar.") from None
    return Artifact(file.name, "tensorrt engine", runner, size, size_source="engine profile")


def _torch_artifact(path: str, arch: str | None) -> Artifact:
    from vanilladeploy.arch import load_model
    from vanilladeploy.checkpoint import lambda_of
    from vanilladeploy.source import detect, resolve_source

    ckpt = resolve_source(path)
    found = detect(ckpt, arch=arch)
    if ckpt.form == "deploy":
        return Artifact(Path(path).name, "torch deploy", TorchRunner(load_model(ckpt.state_dict, found, deploy=True)),
                        None, ckpt.args)
    model = load_model(ckpt.state_dict, found, deploy=False)
    lam = lambda_of(ckpt)
    model.set_lambda(lam.value)
    return Artifact(Path(path).name, f"torch train (λ={lam.value:.3g})", TorchRunner(model), None, ckpt.args)


def served_artifact(url: str, *, model: str | None = None, protocol: str | None = None,
                    against: Sequence[Path] = ()) -> Artifact:
    """``model`` (default: the only ready one) on the server at ``url``, sent batches it accepts; its image size is
    its input's. When its config records which file it serves, that must be one of ``against`` (the ONNX and
    engine files evaluated beside it), else it is refused before any image is sent."""
    from vanilladeploy.serving.client import check_identity, describe_served, fitted_runner, parse_endpoint

    served = describe_served(parse_endpoint(url, protocol), model)
    identity = (check_identity(served, against) if against else
                "not compared: no ONNX or engine file was given beside it")
    if served.datatype not in ("FP32", "UINT8"):
        raise UsageError(f"{served.name} at {served.endpoint} takes {served.datatype}; eval --url evaluates models "
                         "that take FP32 (normalized) or UINT8 (pixels, export --input uint8) images.")
    return Artifact(f"{served.name} @ {served.endpoint}", f"served ({served.endpoint.protocol})",
                    fitted_runner(served), served.img_size, size_source="the served model's input",
                    input_dtype="uint8" if served.datatype == "UINT8" else "float32", identity=identity)


def choose_preprocess(artifacts: Sequence[Artifact]) -> Preprocess:
    """What an ONNX records (its metadata) when one does, else the checkpoint's args, else the defaults; a graph's
    fixed input size (ONNX input, engine profile) wins for ``img_size``. All artifacts must agree. uint8 pixels
    when any artifact takes them (the others get them normalized: :meth:`Preprocess.model_input`)."""
    sizes = {a.img_size for a in artifacts if a.img_size is not None}
    if len(sizes) > 1:
        raise UsageError(f"the artifacts were exported for different image sizes ({sorted(sizes)}); evaluate "
                         "artifacts of one export together.")
    recorded = {(p.img_size, p.crop_pct, p.mean, p.std): p for p in (a.recorded for a in artifacts) if p}
    if len(recorded) > 1:
        raise UsageError(f"the ONNX files were exported with different preprocessing ({sorted(recorded)}: img_size, "
                         "crop_pct, mean, std); evaluate artifacts of one export together.")
    pre = next(iter(recorded.values()), None) or Preprocess.from_args(next((a.args for a in artifacts if a.args), {}))
    if sizes and (not recorded or pre.img_size not in sizes):
        size = next(iter(sizes))
        label = next(a.size_source for a in artifacts if a.img_size == size)
        pre = replace(pre, img_size=size, sources={**pre.sources, "img_size": label})
    return replace(pre, input_dtype="uint8" if any(a.input_dtype == "uint8" for a in artifacts) else "float32")


@dataclass
class _Tally:
    """Running figures of one artifact against the labels and the reference."""

    name: str
    kind: str
    identity: str | None = None
    top1: int = 0
    top5: int = 0
    agree: int = 0
    rel_l2_sum: float = 0.0
    worst: tuple[float, str] = (-1.0, "")
    seconds: float = 0.0

    def add(self, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None, paths: list[str]) -> None:
        if labels is not None:
            top = np.argsort(-logits, axis=1)[:, :5]
            self.top1 += int((top[:, 0] == labels).sum())
            self.top5 += int((top == labels[:, None]).any(axis=1).sum())
        self.agree += int((logits.argmax(1) == reference.argmax(1)).sum())
        diff = np.linalg.norm((logits - reference).astype(np.float64), axis=1)
        rel = diff / np.maximum(np.linalg.norm(reference.astype(np.float64), axis=1), 1e-30)
        self.rel_l2_sum += float(rel.sum())
        i = int(rel.argmax())
        if rel[i] > self.worst[0]:
            self.worst = (float(rel[i]), paths[i])

    def as_dict(self, images: int, labelled: bool, classes: int) -> dict[str, Any]:
        pct = (lambda n: round(100.0 * n / images, 3)) if images else (lambda n: None)
        return {"name": self.name, "kind": self.kind, "top1": pct(self.top1) if labelled else None,
                "top5": pct(self.top5) if labelled and classes >= 5 else None, "agreement_top1": pct(self.agree),
                "mean_rel_l2": self.rel_l2_sum / images if images else None,
                "worst": {"path": self.worst[1], "rel_l2": self.worst[0]} if images else None,
                "images_per_s": round(images / self.seconds, 2) if self.seconds > 0 else None,
                **({"identity": self.identity} if self.identity else {})}


@dataclass
class EvalResult:
    data: Path
    images: int
    labelled: bool
    preprocessing: dict[str, Any]
    skipped: list[tuple[Path, str]]
    rows: list[dict[str, Any]]

    def gate(self, *, min_agreement: float | None = None, max_rel_l2: float | None = None) -> None:
        """Raise :class:`VerificationError` naming every artifact after the first (the reference) whose top-1
        agreement with it is below ``min_agreement`` % or whose mean rel. L2 is above ``max_rel_l2`` (NaN misses
        every bound); a gate with nothing to compare is refused (:func:`check_gates`)."""
        check_gates(len(self.rows), min_agreement=min_agreement, max_rel_l2=max_rel_l2)
        misses = []
        for row in self.rows[1:]:
            agree, rel = row.get("agreement_top1"), row.get("mean_rel_l2")
            if min_agreement is not None and not (agree is not None and agree >= min_agreement):
                misses.append(f"{row['name']}: top-1 agreement {agree}% < {min_agreement:g}%")
            if max_rel_l2 is not None and not (rel is not None and rel <= max_rel_l2):
                misses.append(f"{row['name']}: mean rel L2 {rel:.2e} > {max_rel_l2:g}" if rel is not None else
                              f"{row['name']}: no mean rel L2")
        if misses:
            raise VerificationError(f"{len(misses)} gate{'s' * (len(misses) != 1)} missed: {'; '.join(misses)}.")

    def as_dict(self) -> dict[str, Any]:
        return {"data": str(self.data), "images": self.images, "labelled": self.labelled,
                "preprocessing": self.preprocessing, "artifacts": self.rows,
                "skipped": {"count": len(self.skipped),
                            "examples": [f"{p.name}: {why}" for p, why in self.skipped[:5]]}}


def check_gates(compared: int, *, min_agreement: float | None = None, max_rel_l2: float | None = None) -> None:
    """A gate holds the artifacts after the first to it: refused where ``compared`` (rows, the served one
    included) is fewer than two — it would pass having compared nothing."""
    given = next((name for name, v in (("--min-agreement", min_agreement), ("--max-rel-l2", max_rel_l2))
                  if v is not None), None)
    if given and compared < 2:
        raise UsageError(f"{given} holds the artifacts after the first to the first: give at least two artifacts, "
                         "or one and --url.")


def check_eval_options(data: Path, *, arch: str | None = None, json_path: Path | None = None,
                       runtime: str = "onnxruntime", precision: str = "fp32", url: str | None = None,
                       protocol: str | None = None, model: str | None = None,
                       max_rel_l2: float | None = None) -> None:
    """What ``eval`` refuses before opening any artifact."""
    if max_rel_l2 is not None and not max_rel_l2 > 0:
        raise UsageError(f"--max-rel-l2 {max_rel_l2:g}: give a bound above 0 (e.g. 1e-5 for fp32, 1e-2 for fp16).")
    if model is not None and url is None:
        raise UsageError("--model names a model on the server at --url; give --url HOST:PORT too.")
    if url is not None:
        from vanilladeploy.serving.client import parse_endpoint

        parse_endpoint(url, protocol)
        require("serve", "--url")
    elif protocol is not None:
        raise UsageError("--protocol is how eval talks to the server at --url; give --url HOST:PORT too.")
    if runtime not in ONNX_RUNTIMES:
        raise UsageError(f"--runtime {runtime}: choose {', '.join(ONNX_RUNTIMES)}.")
    if precision not in OPENVINO_PRECISIONS or (precision != "fp32" and runtime != "openvino"):
        raise UsageError(f"--precision {precision}: ONNX Runtime computes in the graph's own precision (fp32); "
                         f"OpenVINO (--runtime openvino) in {' or '.join(OPENVINO_PRECISIONS)}.")
    if runtime == "openvino":
        require("openvino", "--runtime openvino")
    check_path("--data", data, directory=True, must_exist=True)
    check_path("--json-out", json_path, directory=False)
    if arch is not None:
        check_source_options("", arch=arch, key=None)


def evaluate(artifacts: Sequence[str | Artifact], data: Path, *, limit: int | None = None, batch: int = 32,
             arch: str | None = None, progress: Progress = silent,
             indices: Sequence[int] | None = None, preprocess: Preprocess | None = None,
             runtime: str = "onnxruntime", precision: str = "fp32", url: str | None = None,
             model: str | None = None, protocol: str | None = None) -> EvalResult:
    """Run every artifact (a path, or an :class:`Artifact` already opened) on the folder's images (the first
    ``limit``, or ``indices``), batch by batch, with ``preprocess`` or the one the artifacts imply
    (:func:`choose_preprocess`); with ``url``, the served ``model`` there is one more row (:func:`served_artifact`).
    Raises :class:`~vanilladeploy.images.NoReadableImagesError` before any inference when no selected image is
    readable."""
    if not artifacts:
        raise UsageError("give at least one artifact to evaluate" + (" (the one the server at --url serves: the "
                                                                      "reference)." if url else "."))
    check_eval_options(data, arch=arch, runtime=runtime, precision=precision, url=url, protocol=protocol,
                       model=model)
    folder = scan_folder(data)
    opened = [a if isinstance(a, Artifact) else open_artifact(a, arch=arch, runtime=runtime, precision=precision)
              for a in artifacts]
    if url is not None:
        local = [Path(a) for a in artifacts if not isinstance(a, Artifact) and Path(a).suffix in (".onnx", ".engine")]
        opened.append(served_artifact(url, model=model, protocol=protocol, against=local))
    pre = preprocess or choose_preprocess(opened)
    order = list(indices) if indices is not None else list(range(len(folder.files)))[:limit]
    skipped = folder.ignored_with_reasons() if indices is None else []
    batches = _readable(iter_batches(folder, pre, batch=batch, indices=order, skipped=skipped), data, skipped)
    tallies = [_Tally(a.name, a.kind, a.identity) for a in opened]
    feeds = [replace(pre, input_dtype=a.input_dtype) for a in opened]
    images, classes = _run(opened, tallies, batches, folder,
                           lambda done: progress(Step("Evaluating", done, len(order))), feeds)
    labelled = folder.labels is not None
    return EvalResult(data, images, labelled, pre.as_dict(), skipped,
                      [t.as_dict(images, labelled, classes) for t in tallies])


def _readable(batches: Batches, data: Path, skipped: list[tuple[Path, str]]) -> Batches:
    """``batches`` once the first one is read; none at all is refused here, before any runner starts."""
    first = next(batches, None)
    if first is None:
        example = f", e.g. {skipped[0][0].name}: {skipped[0][1]}" if skipped else ""
        raise NoReadableImagesError(f"no readable images in {data} ({len(skipped)} skipped{example}); give a folder "
                                    f"of images ({', '.join(IMAGE_EXTENSIONS)}) that Pillow can decode.")
    return itertools.chain([first], batches)


def _run(opened: Sequence[Artifact], tallies: Sequence[_Tally], batches: Batches, folder: ImageFolder,
         progress: Callable[[int], None], feeds: Sequence[Preprocess]) -> tuple[int, int]:
    """Every artifact on every batch (as its ``feeds`` entry makes it: pixels, or normalized), tallied against the
    first; returns (images, classes)."""
    images, classes = 0, 0
    with ExitStack() as stack:
        for artifact in opened:
            stack.enter_context(artifact.runner)
        for x, labels, kept in batches:
            outputs = []
            for tally, artifact, feed in zip(tallies, opened, feeds):
                fed = feed.model_input(x)
                start = time.perf_counter()
                outputs.append(artifact.runner.infer(fed))
                tally.seconds += time.perf_counter() - start
            paths = [str(folder.files[i]) for i in kept]
            for tally, y in zip(tallies, outputs):
                tally.add(y, outputs[0], labels, paths)
            images, classes = images + len(x), outputs[0].shape[1]
            progress(images)
    return images, classes


__all__ = ["Artifact", "EvalResult", "check_eval_options", "choose_preprocess", "evaluate", "onnx_precision",
           "open_artifact", "served_artifact"]
