"""``vanilladeploy repo``, ``serve`` and ``serve-bench``: a Triton model repository, a real Triton server, and load
through it. Parse, call :mod:`vanilladeploy.serving`, render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import ProgressDisplay, err, ms, out, print_json, run_command, wide, write_json
from vanilladeploy.cli.options import (
    DEFAULT_INSTANCES,
    DEFAULT_MAX_BATCH,
    DEFAULT_QUEUE_DELAY_US,
    ExportSource,
    Images,
    Instances,
    JsonPrint,
    Labels,
    MaxBatch,
    OpenVinoHint,
    QueueDelay,
    Runtime,
    ServedName,
    ServerUrl,
    Verbose,
)

RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}


def runtime_parameters(runtime: str | None, openvino_hint: str | None) -> dict[str, str]:
    """The python backend's parameters asked for on the command line (``check_runtime`` refuses a bad pair)."""
    parameters = {} if runtime is None else {"runtime": runtime}
    if openvino_hint is not None:
        parameters["openvino_hint"] = openvino_hint.upper()
    return parameters


def repo(
    source: Annotated[Path, typer.Argument(help="An export directory (with its report), a .onnx, or a TensorRT "
                                           ".engine with its .engine.json sidecar.", show_default=False)],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="The Triton model repository (other models in it are "
                                          "left alone).", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name.", show_default="the variant")] = None,
    backend: Annotated[Optional[Literal["onnxruntime", "openvino", "tensorrt", "python"]], typer.Option(
        "--backend", help="Triton backend; python = ONNX Runtime (or --runtime openvino) inside Triton's Python "
        "backend, the one `vanilladeploy serve` runs here; openvino = Triton's native OpenVINO backend (production "
        "containers).",
        show_default="onnxruntime for ONNX, tensorrt for an engine")] = None,
    max_batch: MaxBatch = DEFAULT_MAX_BATCH,
    instances: Instances = DEFAULT_INSTANCES,
    kind: Annotated[Optional[Literal["cpu", "gpu"]], typer.Option("--kind", help="Where instances run.",
                                                                  show_default="gpu for tensorrt, cpu otherwise")
                    ] = None,
    max_queue_delay_us: QueueDelay = DEFAULT_QUEUE_DELAY_US,
    labels: Labels = None,
    runtime: Runtime = None,
    openvino_hint: OpenVinoHint = None,
    images: Images = False,
    verbose: Verbose = False,
) -> None:
    """Write a Triton Inference Server model repository: REPO/<name>/config.pbtxt and REPO/<name>/1/<model> (with
    --images also <name>_preprocess and the ensemble <name>_image)."""
    from vanilladeploy.triton.config import RepoOptions
    from vanilladeploy.triton.repository import write_repository

    def run() -> None:
        opts = RepoOptions(name=name, backend=backend, max_batch=max_batch, instances=instances, kind=kind,
                           max_queue_delay_us=max_queue_delay_us, labels=labels,
                           parameters=runtime_parameters(runtime, openvino_hint))
        result = write_repository(source, out_dir, opts, images=images)
        out.print(escape(result.config_text), soft_wrap=True)
        for path in result.files:
            out.print(f"  wrote {escape(str(path))}", soft_wrap=True)
        here = ("here: [bold]vanilladeploy serve " + escape(str(result.repository)) + "[/]"
                if result.backend == "python" else "not here: the nvidia-pytriton wheel's server has only the python "
                "backend")
        out.print(f"\nServe it: [bold]tritonserver --model-repository {escape(str(result.repository))}[/] (a Triton "
                  f"with the {escape(result.backend)} backend), or {here}", soft_wrap=True)

    run_command(verbose, run)


def serve(
    source: Annotated[Path, typer.Argument(help="An export directory, a .onnx file, or a Triton model repository "
                                           "written by repo or optimize (served as it is).", show_default=False)],
    http_port: Annotated[int, typer.Option("--http-port", min=1, max=65535, help="HTTP/REST (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535, help="gRPC (KServe v2).")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=1, max=65535, help="Prometheus metrics.")]
    = 8002,
    max_batch: MaxBatch = DEFAULT_MAX_BATCH,
    instances: Instances = DEFAULT_INSTANCES,
    max_queue_delay_us: QueueDelay = DEFAULT_QUEUE_DELAY_US,
    labels: Labels = None,
    runtime: Runtime = None,
    openvino_hint: OpenVinoHint = None,
    images: Images = False,
    health_interval: Annotated[float, typer.Option(
        "--health-interval", help="Seconds between health inferences (a real request, one image of zeros): a "
        "backend stub that is alive but does not answer is killed and the model reloaded. 0: none.")] = 5.0,
    health_timeout: Annotated[Optional[float], typer.Option(
        "--health-timeout", help="Seconds a health inference may take.",
        show_default="2 × max-batch × its latency measured at the start, at least 5")] = None,
    verbose: Verbose = False,
) -> None:
    """Serve the model on a real Triton Inference Server (loopback) until Ctrl-C or SIGTERM.

    Needs the serve extra (vanilladeploy[serve]: the nvidia-pytriton wheel carries the tritonserver
    binary). The model runs in ONNX Runtime inside Triton's Python backend (on the GPU where one and
    onnxruntime's CUDA provider exist, else the CPU). A backend stub that dies, or does not answer a
    health inference in time, is noticed and the model reloaded (not ready meanwhile). Exit 0 on
    SIGTERM, 130 on Ctrl-C, 2 when the server dies or a reload fails (with the reason from its log).
    """
    from vanilladeploy.serving.serve import serve_forever
    from vanilladeploy.serving.server import TritonPorts
    from vanilladeploy.triton.config import RepoOptions

    def run() -> None:
        ports = TritonPorts(http=http_port, grpc=grpc_port, metrics=metrics_port)
        opts = RepoOptions(backend="python", max_batch=max_batch, instances=instances, kind=None,
                           max_queue_delay_us=max_queue_delay_us, labels=labels,
                           parameters=runtime_parameters(runtime, openvino_hint))
        serve_forever(source, ports, opts, on_ready=_render_serving, images=images,
                      on_event=lambda message: err.print(escape(message), soft_wrap=True),
                      health_interval_s=health_interval, health_timeout_s=health_timeout)

    run_command(verbose, run)


def _render_serving(info: Any) -> None:
    out.print(f"[green]serving[/] model [bold]{escape(info.model)}[/] on Triton Inference Server "
              f"{escape(info.server_version)} (python backend, {escape(RUNTIME_NAMES.get(info.runtime, info.runtime))} "
              f"on the {escape(info.kind.upper())})",
              soft_wrap=True)
    out.print(f"  HTTP    {escape(info.http_url)}\n  gRPC    {escape(info.grpc_url)}\n  metrics "
              f"{escape(info.metrics_url)}\n  ready   {escape(info.http_url)}/v2/health/ready", soft_wrap=True)
    out.print(f"Try: [bold]{escape(info.example_command)}[/]", soft_wrap=True)
    out.print("Ctrl-C or SIGTERM stops the server.")


def serve_bench(
    source: ExportSource,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated client concurrencies.")]
    = "1,4,16",
    requests: Annotated[Optional[int], typer.Option("--requests", min=1, help="Requests per concurrency level "
                                                    "and row.", show_default="per level")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per request.")] = 1,
    protocol: Annotated[Optional[Literal["http", "grpc", "both"]], typer.Option(
        "--protocol", help="Triton protocol(s); with --url one of http or grpc.",
        show_default="both; with --url: the URL's scheme, else http")] = None,
    runtime: Runtime = None,
    openvino_hint: OpenVinoHint = None,
    baseline: Annotated[Optional[Path], typer.Option("--baseline", help="The ONNX that in-process ONNX Runtime "
                                                     "runs beside Triton (e.g. the fp32 export, when Triton serves "
                                                     "the int8 one).", show_default="the served ONNX")] = None,
    as_json: JsonPrint = False,
    json_path: Annotated[Path, typer.Option("--json-out", help="Results JSON.")] = Path("bench/serve.json"),
    url: ServerUrl = None,
    model: ServedName = None,
    verbose: Verbose = False,
) -> None:
    """What serving costs: per client concurrency, the artifact through a real Triton server (started here, on
    loopback; or the one at --url, e.g. a KServe endpoint, serving SOURCE), the same file in the same runtime in
    process, and in-process ONNX Runtime on --baseline; throughput, p50/p99 latency, errors, served ÷ in-process.
    Every answer is checked against its own model in process: any wrong answer or failed request exits 1 (after
    the table and the JSON), naming the count and the worst error. With --url, a model whose config records the
    sha256 of another file than SOURCE is refused before any load (exit 2)."""
    from vanilladeploy.errors import VerificationError
    from vanilladeploy.serving.serve_bench import run_serve_bench
    from vanilladeploy.triton.config import RepoOptions
    from vanilladeploy.validate import check_path, int_list

    def run() -> None:
        levels = int_list("--concurrency", concurrency)
        check_path("--json-out", json_path, directory=False)
        with ProgressDisplay() as progress:
            result = run_serve_bench(source, concurrency=levels, requests=requests, batch=batch,
                                     protocol=protocol, runtime="onnxruntime" if runtime is None else runtime,
                                     baseline=baseline, url=url, model=model, progress=progress,
                                     options=RepoOptions(parameters=runtime_parameters(runtime, openvino_hint)))
        if as_json:
            print_json(result.document())
        else:
            _render_load(result.records, result.config.get("identity"))
        write_json(json_path, result.document(), quiet=as_json)
        failure = result.failure()
        if failure:
            raise VerificationError(f"serve-bench: {failure}")

    run_command(verbose, run)


def _render_load(records: list[dict[str, Any]], identity: str | None = None) -> None:
    table = Table(title="serve-bench: served through Triton vs the same artifact in process vs the baseline",
                  header_style="bold")
    for col in ("concurrency", "role", "run by", "errors", "img/s", "p50 ms", "p99 ms", "× in-process",
                "× baseline", "our CPU s"):  # "run by": the record's "backend" field (what served or ran the row)
        table.add_column(col, justify="left" if col in ("role", "run by") else "right", no_wrap=True)
    for r in sorted(records, key=lambda r: r["concurrency"]):  # stable: served, in-process, baseline per level
        s = r["stats"] or {}
        table.add_row(str(r["concurrency"]), " + ".join(r["roles"]), r["backend"], str(r["errors"]),
                      f"{r['throughput_img_s']:.1f}", ms(s.get("median_ms")), ms(s.get("p99_ms")),
                      _ratio(r.get("vs_in_process")), _ratio(r.get("vs_baseline")), _cpu(r.get("process_cpu_s")),
                      end_section=r is _last_of_level(records, r["concurrency"]))
    wide().print(table)
    first = records[0] if records else {}
    out.print(f"{first.get('model', '')}, batch {first.get('batch', '')}, {first.get('requests', '')} requests per "
              "row and level; × in-process = served img/s ÷ the same file in the same runtime in process; our CPU s = "
              "this process's CPU time over the row (served rows: the clients' own cost).", soft_wrap=True)
    if identity:
        out.print(escape(f"{identity}."), soft_wrap=True)


def _cpu(x: Any) -> str:
    return "" if x is None else f"{x:.2f}"


def _ratio(x: Any) -> str:
    return "" if x is None else f"{x:.2f}×"


def _last_of_level(records: list[dict[str, Any]], level: int) -> dict[str, Any]:
    return [r for r in records if r["concurrency"] == level][-1]
