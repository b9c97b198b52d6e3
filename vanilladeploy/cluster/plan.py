"""``vanilladeploy deploy``: an export, an ``optimize`` output or a TensorRT engine → the files a cluster needs.

``OUT/repository/`` is a model repository for the STOCK Triton container (``nvcr.io/nvidia/tritonserver:<release>-
py3``): native backends only by default (onnxruntime for an ONNX, tensorrt for an engine, openvino when asked), as
:func:`vanilladeploy.triton.repository.plan_repository` checks it. With ``kserve`` an ``inferenceservice.yaml``; with
``k8s`` a ``deployment.yaml``, ``service.yaml`` and ``hpa.yaml`` (:mod:`vanilladeploy.cluster.manifests`); replicas and
resources from :mod:`vanilladeploy.cluster.sizing`; ``deploy.json`` records what was decided and from what.

Every refusal comes from :func:`plan_deploy`, before anything is written; :func:`write_deploy` publishes ``OUT`` as
one set (:class:`vanilladeploy.atomic.ArtifactWriter`: the previous set, none, or the new one, never a mix).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vanilladeploy import __version__
from vanilladeploy.atomic import ArtifactWriter, check_output_dir
from vanilladeploy.cluster.manifests import KSERVE_MODES, ClusterSpec, manifests, to_yaml
from vanilladeploy.cluster.sizing import SCALE_TARGET_PERCENT, ArtifactIdentity, Sizing, shm_mib, size
from vanilladeploy.errors import OutputError, UsageError
from vanilladeploy.extras import require
from vanilladeploy.triton.config import RepoOptions, parse_config
from vanilladeploy.triton.repository import RepoPlan, plan_repository, write_planned


@dataclass(frozen=True)
class TritonRelease:
    release: str  # the container release, the image tag's "24.10"
    server: str | None = None  # Triton Inference Server version
    tensorrt: str | None = None  # TensorRT in the -py3 container; None: not in our table


# Verified: server, all rows (server build.py @v2.x.0); TensorRT, only 24.08/10/12, 25.01 (NVIDIA rel. notes text)
TRITON_RELEASES = {r.release: r for r in (
    TritonRelease("24.05", "2.46.0", "10.0.1.6"), TritonRelease("24.06", "2.47.0", "10.1.0.27"),
    TritonRelease("24.07", "2.48.0", "10.2.0.19"), TritonRelease("24.08", "2.49.0", "10.3.0.26"),
    TritonRelease("24.09", "2.50.0", "10.4.0.26"), TritonRelease("24.10", "2.51.0", "10.5.0.18"),
    TritonRelease("24.11", "2.52.0", "10.6.0.26"), TritonRelease("24.12", "2.53.0", "10.7.0.23"),
    TritonRelease("25.01", "2.54.0", "10.8.0.43"), TritonRelease("25.02", "2.55.0", "10.8.0.43"),
    TritonRelease("25.03", "2.56.0", "10.9.0.34"),
)}
"""Triton container release → server version → TensorRT version of its ``-py3`` image. Servers: ``build.py`` at each
``v2.x.0`` tag of triton-inference-server/server. TensorRT: NVIDIA's Triton release notes (the table "Triton
Inference Server Container Versions", docs.nvidia.com/deeplearning/triton-inference-server/release-notes/); the
TensorRT column of the ``-trtllm-python-py3`` table on the server repository's compatibility page agrees for 24.05,
24.08, 24.09, 24.11, 24.12 and 25.01 (that container lagged a version in 24.06, 24.07 and 24.10, so it cannot confirm
those). A release outside the table is accepted for an ONNX (nothing to check) and refused for an engine."""
DEFAULT_RELEASE = "24.10"
"""Triton 2.51, the server the nvidia-pytriton wheel bundles: the one every served figure here was measured on."""
STORAGE_SCHEMES = ("gs", "s3", "pvc", "hdfs", "webhdfs", "http", "https", "oci")
"""What KServe's storage initializer downloads from."""
DNS_LABEL = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
"""A Kubernetes name that is a DNS-1035 label: a Service's, and what KServe requires of an InferenceService."""
PYTHON_BACKEND_WARNING = ("--backend python: the stock Triton image has the python backend but not what model.py "
                          "imports (onnxruntime or openvino, numpy); build an image FROM it with those installed, "
                          "or deploy with the native onnxruntime backend (the default).")

IMAGES_WARNING = ("--images: the ensemble's preprocess step runs on the python backend and imports vanilladeploy "
                  "(numpy, Pillow); build the server image FROM the stock one with "
                  "`pip install 'vanilladeploy[eval]'`, "
                  "or send tensors to the classifier instead.")


@dataclass(frozen=True)
class DeployOptions:
    """What ``vanilladeploy deploy`` was asked for; ``None`` means the default."""

    kserve: bool = False
    k8s: bool = False
    storage_uri: str | None = None
    pvc: str | None = None
    name: str | None = None  # the Kubernetes name; default: the model's, made a DNS label
    triton_release: str | None = None
    kserve_mode: str = "Standard"
    backend: str | None = None
    labels: str | None = None
    replicas: str | None = None
    target_rps: float | None = None
    p99_ms: float | None = None
    bench: Path | None = None
    images: bool = False  # the image ensemble beside the classifier (triton/ensemble.py)


@dataclass(frozen=True)
class DeployPlan:
    """Everything :func:`write_deploy` writes, every check passed."""

    repo: RepoPlan
    release: TritonRelease
    sizing: Sizing
    spec: ClusterSpec
    files: dict[str, dict[str, Any]]  # YAML file name → serialized object
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class DeployResult:
    out: Path
    files: tuple[Path, ...]
    plan: DeployPlan


def k8s_name(model: str, name: str | None) -> str:
    """``--name``, or the model's name in lower case with ``_`` and ``.`` as ``-`` (vanillanet_5 → vanillanet-5)."""
    candidate = name if name is not None else re.sub(r"[_.]", "-", model.lower())
    if not DNS_LABEL.fullmatch(candidate):
        raise UsageError(f"--name {candidate!r}: a Kubernetes Service or InferenceService name is 1-63 lower-case "
                         "letters, digits or '-', starting with a letter and not ending with '-'; pass --name.")
    return candidate


def resolve_release(requested: str | None, engine_trt: str | None) -> TritonRelease:
    """The Triton release to run: ``requested`` (``YY.MM``) or the default; for an engine, one whose TensorRT is
    the engine's (major.minor.patch: a plan loads only in the TensorRT that built it), refused otherwise."""
    if requested is not None and not re.fullmatch(r"\d{2}\.\d{2}", requested):
        raise UsageError(f"--triton-version {requested!r}: give a Triton container release such as 24.10.")
    if engine_trt is None:
        release = requested or DEFAULT_RELEASE
        return TRITON_RELEASES.get(release, TritonRelease(release))
    built = _trt3(engine_trt)
    matches = [r for r in TRITON_RELEASES.values() if _trt3(r.tensorrt) == built]
    if requested is None:
        if not matches:
            raise UsageError(f"the engine was built with TensorRT {engine_trt}, which no Triton release in our table "
                             f"ships ({_trt_table()}); rebuild the engine with one of those.")
        return matches[-1]
    chosen = TRITON_RELEASES.get(requested)
    if chosen is None or _trt3(chosen.tensorrt) != built:
        has = f"ships TensorRT {chosen.tensorrt}" if chosen else "is not in our table, so its TensorRT is unknown"
        fits = f"pass --triton-version {matches[-1].release}" if matches else "rebuild the engine"
        raise UsageError(f"--triton-version {requested} {has}, but the engine was built with TensorRT {engine_trt} "
                         f"and would not load: {fits}.")
    return chosen


def _trt3(version: str | None) -> tuple[str, ...]:
    return tuple((version or "").split(".")[:3])


def _trt_table() -> str:
    return ", ".join(f"{r.release}: {r.tensorrt}" for r in TRITON_RELEASES.values())


def check_options(opts: DeployOptions) -> None:
    """The option checks that need no source: what each target needs, and nothing given for a target not asked."""
    if opts.kserve and not opts.storage_uri:
        raise UsageError("--kserve needs --storage-uri: where you will upload OUT/repository (e.g. "
                         "s3://bucket/vanillanet-5); KServe's storage initializer downloads it into the pod.")
    if opts.storage_uri and not opts.kserve:
        raise UsageError("--storage-uri is for --kserve; add --kserve, or drop it.")
    uri = opts.storage_uri
    if uri and ("://" not in uri or uri.split("://")[0] not in STORAGE_SCHEMES):
        raise UsageError(f"--storage-uri {uri!r}: give a URI KServe downloads from "
                         f"({', '.join(s + '://' for s in STORAGE_SCHEMES)}).")
    if opts.pvc is not None and not opts.k8s:
        raise UsageError("--pvc is for --k8s; add --k8s, or drop it.")
    if opts.pvc is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", opts.pvc):
        raise UsageError(f"--pvc {opts.pvc!r}: a PersistentVolumeClaim name is lower-case letters, digits, '-' "
                         "or '.'.")
    if opts.kserve_mode not in KSERVE_MODES:
        raise UsageError(f"--kserve-mode {opts.kserve_mode}: choose {' or '.join(KSERVE_MODES)}.")
    if opts.kserve or opts.k8s:
        require("deploy", "deploy --kserve/--k8s")


def _identity(plan: RepoPlan) -> ArtifactIdentity:
    from vanilladeploy.exporters.onnx_header import onnx_precision_of

    dims = tuple(parse_config(plan.config_text).input[0].dims)
    return ArtifactIdentity(plan.opts.name or plan.src.name, plan.digest, onnx_precision_of(plan.src.onnx_file), dims)


def _engine_tensorrt(repo: RepoPlan) -> str | None:
    """The TensorRT version an engine was built with (its sidecar's record); None for an ONNX."""
    if repo.backend != "tensorrt":
        return None
    version = (repo.src.sidecar or {}).get("tensorrt_version")
    if not version:
        raise UsageError(f"{repo.src.model_file}: its sidecar records no tensorrt_version, so no Triton release can "
                         "be matched to it; export again with --trt.")
    return str(version)


def plan_deploy(source: Path, out: Path, opts: DeployOptions) -> DeployPlan:
    """Every check ``deploy`` makes (options, output directory, source, repository, Triton release, bench file),
    and what it would write; nothing written."""
    check_output_dir(out)
    check_options(opts)
    model_file, backend, parameters = deploy_source(source, opts.backend)
    repo = plan_repository(model_file, RepoOptions(backend=backend, labels=opts.labels, parameters=parameters),
                           images=opts.images)
    warnings = ((PYTHON_BACKEND_WARNING,) if repo.backend == "python" else ()) + \
        ((IMAGES_WARNING,) if opts.images else ())
    release = resolve_release(opts.triton_release, _engine_tensorrt(repo))
    identity = _identity(repo)
    shm = shm_mib(max_batch=repo.opts.max_batch, instances=repo.opts.instances, input_dims=identity.input_dims) \
        if repo.backend == "python" or opts.images else 0
    sizing = size(artifact=identity, model_bytes=repo.src.model_file.stat().st_size, bench=opts.bench,
                  target_rps=opts.target_rps, p99_ms=opts.p99_ms, replicas=opts.replicas,
                  engine=repo.backend == "tensorrt", shm=shm)
    name = k8s_name(repo.opts.name or repo.src.name, opts.name)
    spec = ClusterSpec(name=name, release=release.release, cpu=sizing.cpu, memory=sizing.memory,
                       gpu=repo.backend == "tensorrt", min_replicas=sizing.min_replicas,
                       max_replicas=sizing.max_replicas, scale_target=SCALE_TARGET_PERCENT,
                       storage_uri=opts.storage_uri, pvc=(opts.pvc or f"{name}-models") if opts.k8s else None,
                       kserve_mode=opts.kserve_mode, shm=f"{shm}Mi" if shm else None)
    return DeployPlan(repo, release, sizing, spec, manifests(spec, kserve=opts.kserve, k8s=opts.k8s), warnings)


def deploy_source(source: Path, backend: str | None) -> tuple[Path, str | None, dict[str, str]]:
    """The model file to deploy, the backend for it and what the config must say about how it runs: an
    ``optimize`` output (``optimize.json``) gives its winner from ``OUT/export/`` on the native backend of the
    winner's runtime (or ``backend``), told the runtime and precision it was verified in — an OpenVINO winner
    verified in fp32 or int8 on the python backend running OpenVINO, since the native one cannot be told that
    precision; anything else is what ``repo`` takes (an export directory, a .onnx, an .engine with its sidecar)."""
    report = source / "optimize.json" if source.is_dir() else None
    if report is None or not report.is_file():
        return source, backend, {}
    try:
        chosen = json.loads(report.read_text(encoding="utf-8"))["chosen"]
        artifact, runtime = source / "export" / Path(chosen["artifact"]).name, str(chosen["runtime"])
        precision = str(chosen.get("precision") or "fp32")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UsageError(f"{report}: not a readable optimize result ({type(e).__name__}: {e}).") from None
    if not artifact.is_file():
        raise UsageError(f"{artifact}: the winner optimize.json names is missing; run optimize again.")
    if backend is None:  # the winner runtime's native backend; OpenVINO's only where it can be told the precision
        backend = {"tensorrt": "tensorrt", "openvino": "openvino" if precision == "bf16" else "python"}.get(
            runtime, "onnxruntime")
    if backend == "python":
        return artifact, backend, {"runtime": runtime, **({"precision": precision} if runtime == "openvino" else {})}
    return artifact, backend, {"precision": precision} if backend == "openvino" else {}


def write_deploy(plan: DeployPlan, out: Path) -> DeployResult:
    """Write ``out/repository/<model>/``, the YAML files and ``deploy.json`` as ONE set."""
    comment = (f"written by vanilladeploy {__version__} deploy: Triton {plan.release.release} "
               f"({plan.spec.image}), model {plan.repo.opts.name} (sha256 {plan.repo.digest[:12]}…)")
    try:
        with ArtifactWriter(out) as writer:
            manifest = writer.stage("deploy.json")
            for name, doc in plan.files.items():
                writer.stage(name).write_text(to_yaml(doc, comment=comment), encoding="utf-8")
            repo = write_planned(plan.repo, manifest.parent / "repository")
            manifest.write_text(json.dumps(_record(plan), indent=2) + "\n", encoding="utf-8")
            written = writer.commit()
    except OSError as e:
        raise OutputError(f"cannot write to {out}: {e.strerror or e}. Choose another --out.") from None
    model_files = tuple(out / p.relative_to(manifest.parent) for p in repo.files)
    return DeployResult(out, (*written, *model_files), plan)


def _record(plan: DeployPlan) -> dict[str, Any]:
    return {"tool": {"name": "vanilladeploy", "version": __version__},
            "source": {"path": str(plan.repo.src.model_file), "sha256": plan.repo.digest},
            "model": plan.repo.opts.name, "backend": plan.repo.backend,
            "triton": {**vars(plan.release), "image": plan.spec.image},
            "kubernetes": {"name": plan.spec.name, "pvc": plan.spec.pvc, "storage_uri": plan.spec.storage_uri,
                           "kserve_mode": plan.spec.kserve_mode},
            "sizing": plan.sizing.as_dict(), "files": sorted(plan.files), "warnings": list(plan.warnings)}


__all__ = ["DEFAULT_RELEASE", "TRITON_RELEASES", "DeployOptions", "DeployPlan", "DeployResult", "TritonRelease",
           "check_options", "deploy_source", "k8s_name", "plan_deploy", "resolve_release", "write_deploy"]
