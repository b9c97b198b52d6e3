"""``vanilladeploy repo``: an export (or an ONNX file, or an engine with its sidecar) → a Triton model repository.

Writes ``REPO/<name>/config.pbtxt``, ``REPO/<name>/1/<model file>`` (and ``labels.txt``, ``vanilladeploy.json`` with
the sha256 of every file and of the source) as ONE set: the model directory is swapped in whole
(:class:`vanilladeploy.atomic.ArtifactWriter`), so a Triton reading the repository sees the old model, none, or the
new one. Other models in ``REPO`` are left alone. What Triton would refuse at load time is refused here (exit 2).
"""

from __future__ import annotations

import importlib.resources
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vanilladeploy import __version__
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import CheckpointError, MissingDependencyError, UsageError
from vanilladeploy.extras import install_hint
from vanilladeploy.runtimes import ONNX_RUNTIMES
from vanilladeploy.triton.config import (
    IDENTITY_PARAMETERS,
    LABELS_FILE,
    MODEL_FILES,
    ModelSignature,
    RepoError,
    RepoOptions,
    build_config,
    check_model_name,
    check_servable,
    config_text,
    parse_config,
    plan_filename,
    resolve_backend,
    resolve_kind,
    signature_from_onnx,
    signature_from_sidecar,
)
from vanilladeploy.triton.ensemble import ImagePlan, plan_image_ensemble, recorded_preprocess, write_image_ensemble
from vanilladeploy.validate import check_path

PYTHON_MODEL = importlib.resources.files("vanilladeploy.triton") / "python_model.py"
"""The Triton Python-backend model, found as a resource of the installed package (wherever it lives)."""
EXPORT_AGAIN = "export again with `vanilladeploy export` (add --trt for an engine)"


@dataclass(frozen=True)
class RepoSource:
    """The file to serve, the ONNX it is (or was built from), what the export recorded about them."""

    model_file: Path
    onnx_file: Path
    name: str
    sidecar: dict[str, Any] | None = None
    recorded_sha256: dict[str, str] | None = None  # file name → sha256, from the export report


@dataclass(frozen=True)
class RepoResult:
    repository: Path
    model_dir: Path
    backend: str
    config_text: str
    files: tuple[Path, ...]
    sha256: dict[str, str]


def _require_serve_extra() -> None:
    try:
        import google.protobuf  # noqa: F401
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(f"writing Triton configs needs tritonclient[grpc] ({e}): "
                                     f"{install_hint('serve')}") \
            from None


def resolve_repo_source(source: Path, *, backend: str | None = None) -> RepoSource:
    """An export directory (its report names the files), a ``.onnx``, or a ``.engine`` with ``.engine.json``."""
    if source.is_dir():
        return _from_export_dir(source, backend)
    if not source.exists():
        raise UsageError(f"{source}: no such file or directory (give an export directory, a .onnx or an .engine).")
    if source.suffix == ".engine":
        return _from_engine(source, recorded=None)
    if source.suffix == ".onnx":
        return RepoSource(source, source, _variant_of(source))
    raise UsageError(f"{source}: not an export directory, .onnx or .engine file.")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"{path}: not readable JSON ({type(e).__name__}: {e}); {EXPORT_AGAIN}.") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: not a JSON object; {EXPORT_AGAIN}.")
    return data


def _incomplete(path: Path, e: Exception) -> UsageError:
    return UsageError(f"{path}: incomplete or malformed ({type(e).__name__}: {e}); {EXPORT_AGAIN}.")


def _from_export_dir(directory: Path, backend: str | None) -> RepoSource:
    reports = sorted(directory.glob("*.report.json"))
    if not reports:
        raise UsageError(f"{directory} holds no <variant>.report.json: give the directory `vanilladeploy export` "
                         "wrote, or the .onnx file itself.")
    report = _read_json(reports[0])
    if "detector" in report:
        return _detector_export(directory, report, reports[0], backend)
    try:
        variant = str(report["architecture"]["variant"])
        recorded = {str(name): str(info["sha256"]) for name, info in (report.get("artifacts") or {}).items()}
        engine = (report.get("tensorrt") or {}).get("engine")
    except (KeyError, TypeError, AttributeError) as e:
        raise _incomplete(reports[0], e) from None
    if backend == "tensorrt":
        if not engine:
            raise UsageError(f"{directory}: this export has no TensorRT engine (export again with --trt on a machine "
                             "with TensorRT), or choose --backend onnxruntime/python.")
        return _from_engine(directory / str(engine), recorded=recorded)
    onnx_file = directory / f"{variant}.onnx"
    if not onnx_file.is_file():
        raise UsageError(f"{onnx_file}: missing, though {reports[0].name} names it; {EXPORT_AGAIN}, or give the "
                         ".onnx file itself.")
    return RepoSource(onnx_file, onnx_file, variant, recorded_sha256=recorded)


def _detector_export(directory: Path, report: dict[str, Any], path: Path, backend: str | None) -> RepoSource:
    """The fp32 ONNX of an ``export DET.pth`` directory (its engine with ``--backend tensorrt``)."""
    try:
        recorded = {str(name): str(info["sha256"]) for name, info in (report.get("artifacts") or {}).items()}
        built = (report.get("tensorrt") or {}).get("built") or {}
    except (KeyError, TypeError, AttributeError) as e:
        raise _incomplete(path, e) from None
    if backend == "tensorrt":
        if not built.get("engine"):
            raise UsageError(f"{directory}: this export has no TensorRT engine (export again with --trt on a machine "
                             "with TensorRT), or choose --backend onnxruntime/openvino.")
        return _from_engine(directory / str(built["engine"]), recorded=recorded)
    onnx_name = next((n for n in recorded if n.endswith(".onnx") and not n.endswith((".fp16.onnx", ".int8.onnx"))),
                     None)
    if onnx_name is None or not (directory / onnx_name).is_file():
        raise UsageError(f"{directory}: the ONNX that {path.name} names is missing; {EXPORT_AGAIN}.")
    return RepoSource(directory / onnx_name, directory / onnx_name, onnx_name.split(".")[0], recorded_sha256=recorded)


def _from_engine(engine: Path, *, recorded: dict[str, str] | None) -> RepoSource:
    sidecar_path = engine.with_name(engine.name + ".json")
    if not engine.is_file():
        raise UsageError(f"{engine}: missing (the export report names it); {EXPORT_AGAIN}.")
    if not sidecar_path.is_file():
        raise UsageError(f"{engine}: its sidecar {sidecar_path.name} is missing; without it the engine's batch "
                         "profile and GPU are unknown. Use the directory `vanilladeploy export --trt` wrote.")
    sidecar = _read_json(sidecar_path)
    try:
        onnx_file = engine.with_name(str(sidecar["onnx"]["name"]))
    except (KeyError, TypeError) as e:
        raise _incomplete(sidecar_path, e) from None
    if not onnx_file.is_file():
        raise UsageError(f"{engine}: the ONNX it was built from ({onnx_file.name}) is not beside it.")
    return RepoSource(engine, onnx_file, _variant_of(onnx_file), sidecar, recorded)


def _variant_of(onnx_file: Path) -> str:
    import onnx

    try:
        model = onnx.load(onnx_file, load_external_data=False)
    except Exception as e:
        raise CheckpointError(f"{onnx_file}: not a readable ONNX file ({type(e).__name__}).") from None
    meta = {p.key: p.value for p in model.metadata_props}
    return meta.get("variant") or onnx_file.name.split(".")[0]


def _signature(src: RepoSource) -> ModelSignature:
    try:
        onnx_signature = signature_from_onnx(src.onnx_file)
    except Exception as e:
        raise CheckpointError(f"{src.onnx_file}: not a readable ONNX file ({type(e).__name__}: {e}).") from None
    if src.sidecar is None:
        return onnx_signature
    try:
        return signature_from_sidecar(src.sidecar, onnx_signature)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _incomplete(src.model_file.with_name(src.model_file.name + ".json"), e) from None


def _verify_recorded(src: RepoSource) -> str:
    """The model file's sha256, checked against the export report's record when there is one."""
    digest = sha256_of(src.model_file)
    expected = (src.recorded_sha256 or {}).get(src.model_file.name)
    if expected is not None and expected != digest:
        raise CheckpointError(f"{src.model_file}: its sha256 differs from the export report's; the file changed after "
                              "the export. Export again.")
    return digest


def model_repository_of(path: Path) -> Path | None:
    """The one model directory of a Triton model repository written by ``repo`` or ``optimize`` (``path/<name>/
    config.pbtxt``), or None when ``path`` is not such a repository."""
    models = sorted(path.glob("*/config.pbtxt")) if path.is_dir() else []
    if len(models) > 1:
        raise UsageError(f"{path} holds {len(models)} models ({', '.join(m.parent.name for m in models)}); serve "
                         "serves one: give its export directory, or a repository with one model.")
    return models[0].parent if models else None


PYTHON_RUNTIMES = ONNX_RUNTIMES
"""What the python backend's model.py can run the ONNX in (the config parameter ``runtime``): the runtimes of the
one table that run our ONNX files on the CPU."""


def check_runtime(parameters: dict[str, str], backend: str) -> None:
    """``--runtime`` names one of :data:`PYTHON_RUNTIMES` and needs the python backend (a native backend is its own
    runtime); OpenVINO's ``precision`` and ``openvino_hint`` are ones ``model.py`` accepts (it would refuse them at
    load time, inside Triton)."""
    runtime, hint = parameters.get("runtime"), parameters.get("openvino_hint")
    if hint is not None and runtime != "openvino":
        raise UsageError("--openvino-hint is how OpenVINO runs inside Triton: add --runtime openvino.")
    if runtime is None:
        return
    if runtime not in PYTHON_RUNTIMES:
        raise UsageError(f"--runtime {runtime}: choose {', '.join(PYTHON_RUNTIMES)}.")
    if backend != "python" and runtime != "onnxruntime":
        raise UsageError(f"--runtime {runtime} runs inside Triton's python backend, not the {backend} backend: add "
                         "--backend python.")
    if runtime == "openvino":
        from vanilladeploy.triton.python_model import OPENVINO_HINTS, openvino_config

        if hint is not None and hint not in OPENVINO_HINTS:
            raise UsageError(f"--openvino-hint {hint!r} (the config's openvino_hint): choose "
                             f"{' or '.join(OPENVINO_HINTS)}.")
        try:
            openvino_config(parameters)
        except ValueError as e:
            raise UsageError(f"{e}.") from None


def check_labels(labels: str | None) -> None:
    """``--labels``: 'imagenet', or a file of class names that exists."""
    if labels is not None and labels != "imagenet":
        check_path("--labels", Path(labels), directory=False, must_exist=True)


@dataclass(frozen=True)
class RepoPlan:
    """What :func:`write_repository` would write, every check passed, nothing written yet."""
    src: RepoSource
    digest: str
    backend: str
    opts: RepoOptions
    labels: list[str] | None
    config_text: str
    model_file: str
    images: ImagePlan | None = None  # the image ensemble beside the model (--images)

    @property
    def served_model(self) -> str:
        """The model a client calls (and a server loads, with what it is made of): the ensemble with --images."""
        assert self.opts.name is not None
        return self.images.ensemble_name if self.images else self.opts.name


def plan_repository(source: Path, opts: RepoOptions, *, images: bool = False) -> RepoPlan:
    """Every check :func:`write_repository` makes (source, labels, backend, batch, runtime, name), nothing written;
    with ``images``, the image ensemble's too (:mod:`vanilladeploy.triton.ensemble`)."""
    check_labels(opts.labels)
    _require_serve_extra()
    src = resolve_repo_source(source, backend=opts.backend)
    digest = _verify_recorded(src)
    signature = _signature(src)
    try:
        backend = resolve_backend(signature, opts)
        check_servable(signature, opts, backend)
        check_runtime(opts.parameters, backend)
        name = src.name if opts.name is None else opts.name
        check_model_name(name)
    except RepoError as e:
        raise UsageError(f"{e}.") from None
    opts = replace(opts, name=name, kind=resolve_kind(opts, backend))
    if signature.detector and (opts.labels or images):
        raise UsageError(f"{'--labels' if opts.labels else '--images'} is for classifiers: a detector's class names "
                         "are in its ONNX metadata, and its image ensemble is not built yet (docs/detection.md).")
    labels = _labels(opts.labels, classes=signature.outputs[0].shape[-1])
    identity = dict(zip(IDENTITY_PARAMETERS, (digest, *(() if src.onnx_file == src.model_file
                                                          else (sha256_of(src.onnx_file),)))))
    cfg = build_config(signature, opts, name=name, backend=backend, labels_file=LABELS_FILE if labels else None,
                       identity=identity)
    text = config_text(cfg)
    parse_config(text)  # what Triton does first on load
    model_file = plan_filename(signature) if backend == "tensorrt" else MODEL_FILES["onnxruntime"]
    image_plan = plan_image_ensemble(name, signature.inputs, signature.outputs, opts,
                                     recorded_preprocess(src.onnx_file), labels) if images else None
    return RepoPlan(src, digest, backend, opts, labels, text, model_file, image_plan)


def write_repository(source: Path, out: Path, opts: RepoOptions, *, images: bool = False) -> RepoResult:
    """Check, then write ``out/<name>/`` as one set (and the image ensemble's models with ``images``); returns what
    was written."""
    check_path("--out", out, directory=True)
    return write_planned(plan_repository(source, opts, images=images), out)


def write_planned(plan: RepoPlan, out: Path) -> RepoResult:
    """Write what :func:`plan_repository` planned as ``out/<name>/`` (``out``: a usable directory), as one set."""
    assert plan.opts.name is not None
    model_dir = out / plan.opts.name
    files, sums = _write_model_dir(model_dir, plan.src, plan.model_file, plan.backend, plan.config_text, plan.labels, {
        "tool": {"name": "vanilladeploy", "version": __version__}, "backend": plan.backend,
        "source": {"path": str(plan.src.model_file), "sha256": plan.digest}, "options": dict(vars(plan.opts))})
    if plan.images:
        files = (*files, *write_image_ensemble(plan.images, out))
    return RepoResult(out, model_dir, plan.backend, plan.config_text, files, sums)


def _write_model_dir(model_dir: Path, src: RepoSource, model_file: str, backend: str, config: str,
                     labels: list[str] | None, manifest: dict[str, Any]) -> tuple[tuple[Path, ...], dict[str, str]]:
    """``config.pbtxt``, ``1/<model file>`` (+ ``model.py``), labels and the sha256 manifest, swapped in whole."""
    with ArtifactWriter(model_dir) as writer:
        writer.stage("config.pbtxt").write_text(config, encoding="utf-8")
        shutil.copyfile(src.model_file, writer.stage(f"1/{model_file}"))
        if backend == "python":
            writer.stage(f"1/{MODEL_FILES['python']}").write_bytes(PYTHON_MODEL.read_bytes())
        if labels:
            writer.stage(LABELS_FILE).write_text("\n".join(labels) + "\n", encoding="utf-8")
        sums = {str(p.relative_to(writer.staged()[0].parent)): sha256_of(p) for p in writer.staged()}
        manifest = {**manifest, "files": sums}
        writer.stage("vanilladeploy.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        return tuple(writer.commit()), sums


def _labels(labels: str | None, *, classes: int) -> list[str] | None:
    if labels is None:
        return None
    if labels == "imagenet":
        try:
            from torchvision.models._meta import _IMAGENET_CATEGORIES as names
        except ImportError:
            raise MissingDependencyError("--labels imagenet takes the class names from torchvision: "
                                         f"{install_hint('bench')}, or pass a file with one name per line.") from None
    else:
        try:
            names = [line.strip() for line in Path(labels).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--labels {labels}: cannot read it ({e}).") from None
    if len(names) != classes:
        raise UsageError(f"--labels: {len(names)} class names, but the model has {classes} classes.")
    return list(names)


__all__ = ["RepoPlan", "RepoResult", "RepoSource", "plan_repository", "resolve_repo_source", "write_planned",
           "write_repository"]
