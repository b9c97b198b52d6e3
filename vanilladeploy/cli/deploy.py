"""``vanilladeploy deploy``: the files a cluster needs (a Triton model repository for the stock container, a KServe
InferenceService, or a Deployment + Service + HPA), sized from a ``serve-bench`` measurement when given. Parse, call
:mod:`vanilladeploy.cluster.plan`, render."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import err, out, run_command, wide, wrote
from vanilladeploy.cli.options import Images, Labels, Verbose
from vanilladeploy.cluster.sizing import BURST, DEFAULT_REPLICAS, HEADROOM

if TYPE_CHECKING:
    from vanilladeploy.cluster.plan import DeployPlan


def deploy(
    source: Annotated[Path, typer.Argument(help="An export directory, an optimize output directory, a .onnx, or a "
                                           "TensorRT .engine with its .engine.json sidecar.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Writes OUT/repository/, the YAML files and "
                                          "OUT/deploy.json; OUT is replaced as a whole.", show_default=False)],
    kserve: Annotated[bool, typer.Option("--kserve", help="Write inferenceservice.yaml (KServe, Triton runtime; "
                                         "needs --storage-uri).")] = False,
    k8s: Annotated[bool, typer.Option("--k8s", help="Write deployment.yaml, service.yaml and hpa.yaml (a cluster "
                                      "without KServe).")] = False,
    storage_uri: Annotated[Optional[str], typer.Option("--storage-uri", help="Where you will upload OUT/repository "
                                                       "(s3://, gs://, pvc://, https:// …); required with --kserve.",
                                                       show_default=False)] = None,
    pvc: Annotated[Optional[str], typer.Option("--pvc", help="--k8s: the PersistentVolumeClaim you fill with "
                                               "OUT/repository (mounted read-only at /models).",
                                               show_default="<name>-models")] = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Kubernetes name of the service.",
                                                show_default="the model name, '_' as '-'")] = None,
    triton_version: Annotated[Optional[str], typer.Option("--triton-version", help="Triton container release "
                                                          "(YY.MM). An engine needs the release whose TensorRT built "
                                                          "it.", show_default="24.10; an engine: its TensorRT's")
                              ] = None,
    kserve_mode: Annotated[Literal["Standard", "RawDeployment"], typer.Option(
        "--kserve-mode", help="serving.kserve.io/deploymentMode: Standard for KServe ≥ 0.16, RawDeployment for "
        "0.15.")] = "Standard",
    backend: Annotated[Optional[Literal["onnxruntime", "openvino", "tensorrt", "python"]], typer.Option(
        "--backend", help="Triton backend (python needs onnxruntime/numpy added to the image).",
        show_default="onnxruntime for ONNX, tensorrt for an engine")] = None,
    labels: Labels = None,
    replicas: Annotated[Optional[str], typer.Option("--replicas", help="MIN:MAX replicas when nothing is measured.",
                                                    show_default=f"{DEFAULT_REPLICAS[0]}:{DEFAULT_REPLICAS[1]}")
                        ] = None,
    target_rps: Annotated[Optional[float], typer.Option("--target-rps", help="Requests/s to serve (with --p99-ms "
                                                        "and --bench).", show_default=False)] = None,
    p99_ms: Annotated[Optional[float], typer.Option("--p99-ms", help="p99 latency bound per request, ms.",
                                                    show_default=False)] = None,
    bench: Annotated[Optional[Path], typer.Option("--bench", help="A serve-bench JSON of this artifact.",
                                                  show_default=False)] = None,
    images: Images = False,
    verbose: Verbose = False,
) -> None:
    """Write what a cluster needs to serve the model on the stock Triton container: OUT/repository/ (native
    backends), with --kserve an InferenceService, with --k8s a Deployment, Service and autoscaling/v2 HPA.

    Sizing from a measurement (--target-rps R --p99-ms P --bench FILE): one replica serves C requests/s, the best
    served row of the serve-bench FILE with p99 ≤ P; minReplicas = ceil(R × 1.25 / C) (headroom 1.25: each replica
    runs at 80 % at the target, the HPA's CPU target), maxReplicas = 2 × minReplicas, CPU = the measured machine's
    cores. Memory is an estimate. A bench file of another artifact is refused. Nothing is applied to a cluster.
    """
    from vanilladeploy.cluster.plan import DeployOptions, plan_deploy, write_deploy

    def run() -> None:
        opts = DeployOptions(kserve=kserve, k8s=k8s, storage_uri=storage_uri, pvc=pvc, name=name,
                             triton_release=triton_version, kserve_mode=kserve_mode, backend=backend, labels=labels,
                             replicas=replicas, target_rps=target_rps, p99_ms=p99_ms, bench=bench, images=images)
        plan = plan_deploy(source, out_dir, opts)
        for line in plan.warnings:
            err.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True)
        _render_sizing(plan, replicas_given=replicas is not None)
        result = write_deploy(plan, out_dir)
        for path in result.files:
            wrote(path)
        _render_next(plan, out_dir)

    run_command(verbose, run)


def _render_sizing(plan: DeployPlan, *, replicas_given: bool) -> None:
    s, repo, release = plan.sizing, plan.repo, plan.release
    trt = f", TensorRT {release.tensorrt}" if release.tensorrt else ""
    server = f"server {release.server}{trt}" if release.server else "not in our release table"
    out.print(f"Triton {release.release} ({server}): {plan.spec.image}, {repo.backend} backend", soft_wrap=True)
    if s.capacity is None:
        out.print(f"no measurement (--bench): replicas {s.min_replicas}:{s.max_replicas} "
                  f"({'--replicas' if replicas_given else 'default'}); CPU {s.cpu} and memory {s.memory} per replica "
                  "are defaults, not measured.", soft_wrap=True)
        return
    c = s.capacity
    table = Table(title=f"sizing for {s.target_rps:g} req/s at p99 ≤ {s.p99_bound_ms:g} ms", header_style="bold")
    for col in ("per-replica img/s", "at concurrency", "p99 ms", "headroom", "replicas min:max", "CPU", "memory"):
        table.add_column(col, justify="right")
    table.add_row(f"{c.img_s:.1f}", f"{c.concurrency} ({c.row})", f"{c.p99_ms:.1f}", f"{HEADROOM:g}",
                  f"{s.min_replicas}:{s.max_replicas}", s.cpu, s.memory)
    wide().print(table)
    out.print(f"bench file matched {escape(s.matched_by or '')}; maxReplicas = {BURST} × minReplicas; memory is an "
              "estimate (serve-bench measures none).", soft_wrap=True)
    if s.measured_with and not s.measured_with.startswith(repo.backend):
        out.print(f"[yellow]note:[/] measured on Triton's {escape(s.measured_with)} backend, deployed on its "
                  f"{repo.backend} backend: the per-replica figure carries over only approximately; measure again "
                  "in the cluster.", soft_wrap=True)


def _render_next(plan: DeployPlan, out_dir: Path) -> None:
    spec, model = plan.spec, plan.repo.opts.name
    repo = escape(str(out_dir / "repository"))
    if "inferenceservice.yaml" in plan.files:
        out.print(f"KServe: upload {repo}/ to {escape(spec.storage_uri or '')} (its root holds {model}/config.pbtxt), "
                  f"then kubectl apply -f {escape(str(out_dir / 'inferenceservice.yaml'))}", soft_wrap=True)
    if "deployment.yaml" in plan.files:
        applied = " ".join(f"-f {escape(str(out_dir / f))}" for f in ("deployment.yaml", "service.yaml", "hpa.yaml"))
        out.print(f"Kubernetes: copy {repo}/* onto the PersistentVolumeClaim {escape(spec.pvc or '')} (its root "
                  f"holds {model}/config.pbtxt), then kubectl apply {applied}", soft_wrap=True)
