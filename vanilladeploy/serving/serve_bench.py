"""``vanilladeploy serve-bench``: what serving costs. Per client concurrency, in one run, three rows:

- **served**: the artifact through a real Triton server (HTTP, gRPC or both), run by ``runtime`` inside its python
  backend with the config ``vanilladeploy repo`` writes;
- **in-process**: the same file in the same runtime, precision and settings in this process (the served config's
  threads and spinning, as ``model.py`` reads them: :func:`in_process_settings`), shared by the client threads as
  one server instance would share it (ONNX Runtime's thread-safe session; OpenVINO one request at a time, LATENCY);
- **baseline**: in-process ONNX Runtime on ``baseline`` (default: the served file), e.g. the fp32 export beside a
  served int8 one, with the ONNX Runtime settings the served config gives ``model.py``.

Each served row carries ``vs_in_process`` (served ÷ in-process img/s: the serving overhead; 1.0 is free) and
``vs_baseline``. When in-process and baseline are the same file in the same runtime (ONNX Runtime serving its own
file) they are one row with both roles. Every answer is checked against its own model run in process (rel. L2
within :func:`~vanilladeploy.verify.tolerance_for` its precision), so throughput never counts wrong answers, and
:meth:`LoadResult.failure` says why a run with any failed request or wrong answer fails (the command exits 1).
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import UsageError
from vanilladeploy.exporters.onnx_header import OnnxInput, onnx_precision_of, read_onnx_input
from vanilladeploy.machine import machine_info
from vanilladeploy.runtimes.runners import onnx_runner
from vanilladeploy.serving.client import (
    DTYPES,
    ServedModel,
    TritonRunner,
    check_identity,
    describe_served,
    parse_endpoint,
    served_tolerance,
)
from vanilladeploy.serving.load import Check, Send, SenderFactory, Wrong, measure_load, shared_sender_factory
from vanilladeploy.serving.server import TritonPorts, TritonServer, server_version
from vanilladeploy.steps import Progress, Step, silent
from vanilladeploy.triton.config import RepoOptions, parse_config, python_parameters
from vanilladeploy.triton.python_model import openvino_arguments, ort_arguments
from vanilladeploy.triton.repository import check_runtime, resolve_repo_source, write_repository
from vanilladeploy.validate import check_path
from vanilladeploy.verify import compare, tolerance_for

DEFAULT_REQUESTS = 32
"""Per concurrency level and row: ~1 minute for VanillaNet-5 at 224 px on 2 cores, every level and row."""
SERVED, IN_PROCESS, BASELINE = "served", "in-process", "baseline"


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    machine: dict[str, Any]
    config: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": self.config,
                "machine": self.machine, "records": self.records}

    def failure(self) -> str | None:
        """Why this run fails, or None when every request of every row was answered right: the count of wrong
        answers with the worst error, and of failed requests with the first one."""
        bad = [r for r in self.records if r["errors"]]
        if not bad:
            return None
        wrong = sum(r.get("wrong_answers", 0) for r in bad)
        failed = sum(r["errors"] for r in bad) - wrong
        total = sum(r["requests"] for r in self.records)
        rows = sorted({f"{r['backend']} at concurrency {r['concurrency']}" for r in bad})
        parts = []
        if wrong:
            worst = max((r["worst_rel_l2"] for r in bad if r.get("worst_rel_l2") is not None),
                        key=lambda v: v if isinstance(v, float) else float("inf"))  # "nan": not finite
            shown = f"{worst:.2e}" if isinstance(worst, float) else "not finite"
            parts.append(f"{wrong} wrong answer{'s' * (wrong != 1)} (worst rel. L2 {shown}, tolerance "
                         f"{self.config.get('tolerance', 0):.0e})")
        if failed:
            first = next(r["first_error"] for r in bad if r["errors"] > r.get("wrong_answers", 0))
            parts.append(f"{failed} failed request{'s' * (failed != 1)} (e.g. {first})")
        return f"{' and '.join(parts)} of {total} requests, in {'; '.join(rows)}."


@dataclass(frozen=True)
class Contender:
    """One row per concurrency level: who answers, in which roles, checked against what."""

    backend: str
    roles: tuple[str, ...]
    factory: SenderFactory
    check: Check
    inputs: Sequence[np.ndarray] | None = None  # its own requests (a float baseline beside a pixels model), else all


def free_ports(host: str = "127.0.0.1") -> TritonPorts:
    """Three ports free on ``host`` now (the OS picks them)."""
    sockets = [socket.socket() for _ in range(3)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return TritonPorts(*(s.getsockname()[1] for s in sockets))
    finally:
        for s in sockets:
            s.close()


def _checker(references: Sequence[np.ndarray], what: str, tolerance: float) -> Check:
    def check(i: int, y: np.ndarray) -> Wrong | None:
        c = compare(y, references[i], tolerance=tolerance)
        return None if c else Wrong(c.rel_l2, f"{what} in process")

    return check


def in_process_precision(parameters: dict[str, str]) -> str:
    """The OpenVINO runner precision the served config computes in: bf16 when asked, else fp32 (int8 is the graph);
    read by ``model.py``'s own reader (:func:`vanilladeploy.triton.python_model.openvino_arguments`)."""
    return str(openvino_arguments(parameters)["precision"])


def in_process_settings(parameters: dict[str, str]) -> dict[str, Any]:
    """How the in-process row runs the served config's runtime, read as ``model.py`` reads it (one reader each):
    ONNX Runtime with the threads (0: one per physical core; ``VANILLADEPLOY_ORT_THREADS`` wins) and spinning it
    gives its session; OpenVINO with its precision and threads (0: every core; a negative count is every core there
    too), hint LATENCY (one request at a time over every core: what one instance does with its batches)."""
    if parameters["runtime"] == "openvino":
        served = openvino_arguments(parameters)
        return {"precision": served["precision"], "hint": "LATENCY", "threads": served["threads"] or 0}
    return _ort_settings(parameters)


def _ort_settings(parameters: dict[str, str]) -> dict[str, Any]:
    """The ONNX Runtime threads and spinning ``model.py`` runs with under ``parameters`` (recorded as they are)."""
    arguments = ort_arguments(parameters, os.environ)
    return {"threads": arguments["threads"] or 0, "spinning": arguments["spinning"]}


def _runner_options(settings: dict[str, Any]) -> dict[str, Any]:
    return {**settings, "threads": settings["threads"] or None}  # 0: the runtime's default


def _shared_session(session: Any) -> SenderFactory:
    """One ONNX Runtime session shared by every thread (``run`` is thread-safe), as one server instance shares it."""
    name = session.get_inputs()[0].name

    def send(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: x})[0]

    return lambda: send


@contextmanager
def _in_process(onnx_path: Path, parameters: dict[str, str], inputs: Sequence[np.ndarray],
                precision: str, tolerance: float) -> Iterator[Contender]:
    """The served file in the served runtime, precision and settings, in this process; its answers are every served
    answer's reference."""
    runtime = parameters["runtime"]
    with onnx_runner(onnx_path, runtime, **_runner_options(in_process_settings(parameters))) as runner:
        references = [runner.infer(x) for x in inputs]
        factory = shared_sender_factory(runner.infer) if runtime == "openvino" else _shared_session(runner.session)
        yield Contender(f"{runtime}-inprocess ({precision})", (IN_PROCESS,), factory,
                        _checker(references, f"{runtime} {precision}", tolerance))


def _baseline(path: Path, inputs: Sequence[np.ndarray], parameters: dict[str, str]) -> Contender:
    feed = _as_taken_by(path, inputs)
    with onnx_runner(path, "onnxruntime", **_runner_options(_ort_settings(parameters))) as runner:
        references = [runner.infer(x) for x in feed]  # a model that cannot take them is refused here, by name
        factory = _shared_session(runner.session)  # keeps the session: deactivate only drops the runner's reference
    check = _checker(references, "ONNX Runtime", tolerance_for(onnx_precision_of(path)))
    return Contender("onnxruntime-inprocess", (BASELINE,), factory, check, feed)


def _as_taken_by(path: Path, inputs: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """``inputs`` as the model at ``path`` takes them: uint8 pixels normalized (its recorded preprocessing) for a
    float model, so a float baseline runs the very images a pixels model is sent; anything else as it is."""
    if inputs[0].dtype != np.uint8:
        return inputs
    taken = read_onnx_input(path)
    if taken.pixels:
        return inputs
    from vanilladeploy.images import Preprocess

    pre = Preprocess.from_metadata(taken.meta) or Preprocess()
    return [pre.normalize(x) for x in inputs]


def _request_batches(shape: tuple[int, ...], *, pixels: bool, dtype: Any = np.float32) -> list[np.ndarray]:
    """Four seeded request batches: uniform uint8 pixels for a model that takes them, else standard normal."""
    rng = np.random.default_rng(0)
    if pixels:
        return [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]
    return [rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(4)]


def _served(server: TritonServer, protocols: Sequence[str], model: str, label: str, check: Check,
            stack: ExitStack) -> list[Contender]:
    urls = {"http": server.http_url, "grpc": server.grpc_url}
    return [Contender(f"triton-{p}{label}", (SERVED,),
                      _remote_factory(describe_served(parse_endpoint(urls[p], p), model), stack), check)
            for p in protocols]


def _remote_factory(served: ServedModel, stack: ExitStack) -> SenderFactory:
    """A :class:`TritonRunner` per client thread (a client cannot cross threads), each closed when ``stack`` is."""

    def factory() -> Send:
        return stack.enter_context(TritonRunner(served, timeout_s=60.0)).infer

    return factory


def _same_file(a: Path, b: Path) -> bool:
    return sha256_of(a) == sha256_of(b)


def _record(contender: Contender, model: str, batch: int, stats: dict[str, Any]) -> dict[str, Any]:
    return {"model": model, "backend": contender.backend, "roles": list(contender.roles), "batch": batch, **stats}


def add_ratios(records: list[dict[str, Any]]) -> None:
    """Each served record gets ``vs_in_process`` and ``vs_baseline``: its img/s ÷ that row's at its concurrency, from
    the rounded figures in the records (None where the divisor is 0)."""
    for served in (r for r in records if SERVED in r["roles"]):
        level = [r for r in records if r["concurrency"] == served["concurrency"]]
        for role, key in ((IN_PROCESS, "vs_in_process"), (BASELINE, "vs_baseline")):
            other = next(r["throughput_img_s"] for r in level if role in r["roles"])
            served[key] = round(served["throughput_img_s"] / other, 3) if other > 0 else None


def run_serve_bench(source: Path, *, concurrency: Sequence[int] = (1, 4, 16), requests: int | None = None,
                    batch: int = 1, protocol: str | None = None, runtime: str = "onnxruntime",
                    baseline: Path | None = None, options: RepoOptions | None = None,
                    url: str | None = None, model: str | None = None,
                    progress: Progress = silent) -> LoadResult:
    """Start Triton on free loopback ports with ``source`` (run by ``runtime`` inside its python backend, with the
    repository ``repo`` would write, or ``options``), load it, and time the same file in process and ONNX Runtime
    on ``baseline`` (default: the served file) alike, every row at every concurrency. With ``url``, no server is
    started: the served row is ``model`` on that server (:func:`run_remote_bench`)."""
    check_path("--baseline", baseline, directory=False, must_exist=True)
    if url is not None:
        return run_remote_bench(source, url, model=model, protocol=protocol, concurrency=concurrency,
                                requests=requests, batch=batch, runtime=runtime, baseline=baseline, progress=progress)
    if model is not None:
        raise UsageError("--model names a model on the server at --url; without --url the served model is SOURCE.")
    protocol = protocol or "both"
    opts = _serving_options(options, runtime, batch * max(concurrency))
    check_runtime(opts.parameters, "python")
    requests = requests or DEFAULT_REQUESTS
    protocols = ["http", "grpc"] if protocol == "both" else [protocol]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-serve-bench-") as scratch, ExitStack() as stack:
        repo = write_repository(source, Path(scratch), opts)
        model, onnx_path = repo.model_dir.name, repo.model_dir / "1" / "model.onnx"
        cfg = parse_config(repo.config_text)
        parameters = {k: v.string_value for k, v in cfg.parameters.items()}
        taken, digest = read_onnx_input(onnx_path), sha256_of(onnx_path)
        precision = taken.precision
        tolerance = tolerance_for("bf16" if parameters["runtime"] == "openvino"
                                  and in_process_precision(parameters) == "bf16" else precision)
        inputs = _request_batches((batch, *cfg.input[0].dims), pixels=taken.pixels)
        local = stack.enter_context(_in_process(onnx_path, parameters, inputs, precision, tolerance))
        progress(Step("Starting Triton Inference Server"))
        server = stack.enter_context(TritonServer(Path(scratch), free_ports(), model=model))
        label = "" if parameters["runtime"] == "onnxruntime" else f" ({parameters['runtime']} {precision})"
        contenders = [*_served(server, protocols, model, label, local.check, stack),
                      *_local_rows(local, baseline, onnx_path, parameters, inputs)]
        records = _measure(contenders, inputs, concurrency, requests, model, progress)
        version = server_version(server)
    add_ratios(records)
    config = {"source": str(source), "source_sha256": digest, "concurrency": list(concurrency),
              "requests": requests, "batch": batch, "protocols": protocols, "triton": version,
              "tolerance": tolerance,
              **_rows_config(source, baseline, parameters, precision),
              "model_config": repo.config_text, "max_batch": opts.max_batch,
              "dynamic_batching_delay_us": opts.max_queue_delay_us,
              "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]}}
    return LoadResult(records, machine_info("cpu"), config)


def run_remote_bench(source: Path, url: str, *, model: str | None = None, protocol: str | None = None,
                     concurrency: Sequence[int] = (1, 4, 16), requests: int | None = None, batch: int = 1,
                     runtime: str = "onnxruntime", baseline: Path | None = None,
                     progress: Progress = silent) -> LoadResult:
    """The served row is ``model`` on a server we did not start (``url``: e.g. a KServe endpoint), every answer
    checked against ``source`` (the artifact it serves: an export directory or an ``.onnx``) run in process by
    ``runtime``; in-process and baseline rows as :func:`run_serve_bench`. Only our requests are bounded here:
    ``requests`` per row and level, a timeout on each."""
    endpoint = parse_endpoint(url, protocol)
    onnx_path = _local_onnx(source)
    requests = requests or DEFAULT_REQUESTS
    load_before = os.getloadavg()
    progress(Step(f"Asking {endpoint} what it serves"))
    served = describe_served(endpoint, model)
    identity = check_identity(served, [onnx_path])
    taken = read_onnx_input(onnx_path)
    inputs = _inputs_for(served, taken, onnx_path.name, batch)
    parameters, precision = {"runtime": runtime}, taken.precision
    tolerance = served_tolerance(served, precision)  # an engine's, or bf16's where the served config asks for it
    with ExitStack() as stack:
        local = stack.enter_context(_in_process(onnx_path, parameters, inputs, precision, tolerance))
        remote = Contender(f"remote-{endpoint.protocol}", (SERVED,), _remote_factory(served, stack), local.check)
        contenders = [remote, *_local_rows(local, baseline, onnx_path, parameters, inputs)]
        records = _measure(contenders, inputs, concurrency, requests, served.name, progress)
    add_ratios(records)
    config = {"source": str(source), "source_sha256": sha256_of(onnx_path), "concurrency": list(concurrency),
              "requests": requests, "batch": batch, "protocols": [endpoint.protocol], "url": str(endpoint),
              "served": served.as_dict(), "identity": identity, "tolerance": tolerance,
              "triton": served.version, **_rows_config(source, baseline, parameters, precision),
              "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]}}
    config["triton_backend"] = "unknown (a server we did not start)"
    return LoadResult(records, machine_info("cpu"), config)


def _local_onnx(source: Path) -> Path:
    """The ONNX the served model was made from, to check its answers in process: an export directory's or a
    ``.onnx`` itself."""
    if not source.exists():
        raise UsageError(f"SOURCE {source}: no such export directory or file.")
    found = resolve_repo_source(source)
    if found.model_file.suffix != ".onnx":
        raise UsageError(f"{source}: serve-bench --url checks answers against an ONNX run in process; give the "
                         f"ONNX the engine was built from ({found.onnx_file}).")
    return found.model_file


def _inputs_for(served: ServedModel, taken: OnnxInput, name: str, batch: int) -> list[np.ndarray]:
    """Four request batches the served model takes, refused when it is not the artifact ``taken`` describes (the
    ONNX ``name``: another image size, channel count or input type)."""
    if list(served.shape[1:]) != taken.dims[1:] or np.dtype(DTYPES[served.datatype]) != taken.dtype:
        raise UsageError(f"{served.endpoint} serves {served.name} taking {served.datatype} {list(served.shape)}, "
                         f"but {name} takes {taken.dtype.name} {taken.dims}: not the same artifact (--model NAME "
                         "picks another model there).")
    if served.min_batch == served.max_batch != batch:
        raise UsageError(f"{served.name} takes batches of exactly {served.min_batch}: use --batch "
                         f"{served.min_batch}.")
    if served.max_batch is not None and served.max_batch < batch:
        raise UsageError(f"{served.name} takes at most {served.max_batch} images per request: --batch "
                         f"{served.max_batch} or less.")
    return _request_batches((batch, *served.shape[1:]), pixels=taken.pixels, dtype=DTYPES[served.datatype])


def _rows_config(source: Path, baseline: Path | None, parameters: dict[str, str], precision: str) -> dict[str, Any]:
    runtime = parameters["runtime"]
    settings = {k: v for k, v in in_process_settings(parameters).items() if k != "precision"}
    return {"triton_backend": f"python ({runtime})", "served_precision": precision,
            "in_process": {"runtime": runtime, "precision": precision, "file": str(source),
                           "shared": _sharing(runtime), **settings},
            "baseline": {"runtime": "onnxruntime", "file": str(baseline or source), **_ort_settings(parameters)}}


def _local_rows(local: Contender, baseline: Path | None, onnx_path: Path, parameters: dict[str, str],
                inputs: Sequence[np.ndarray]) -> list[Contender]:
    """In-process and baseline rows: one row in both roles when they would time the same file in ONNX Runtime."""
    if parameters["runtime"] == "onnxruntime" and (baseline is None or _same_file(baseline, onnx_path)):
        return [replace(local, backend="onnxruntime-inprocess", roles=(IN_PROCESS, BASELINE))]
    return [local, _baseline(baseline or onnx_path, inputs, parameters)]


def _serving_options(options: RepoOptions | None, runtime: str, largest_request: int) -> RepoOptions:
    """The repository to serve: ``options`` (default: what ``repo`` writes) on the python backend, on the CPU,
    with ``runtime`` and a ``max_batch`` that fits the largest batch the clients can queue (at least 32)."""
    opts = options or RepoOptions()
    parameters = python_parameters({**opts.parameters, "runtime": runtime})
    return replace(opts, backend="python", kind="cpu", max_batch=max(opts.max_batch, largest_request),
                   parameters=parameters)


def _sharing(runtime: str) -> str:
    return ("one OpenVINO infer request (LATENCY) behind a lock, as one instance runs its batches"
            if runtime == "openvino" else "one ONNX Runtime session, concurrent run() calls")


def _measure(contenders: Sequence[Contender], inputs: Sequence[np.ndarray], concurrency: Sequence[int],
             requests: int, model: str, progress: Progress) -> list[dict[str, Any]]:
    records = []
    for level in concurrency:
        for contender in contenders:
            progress(Step(f"{contender.backend} · concurrency {level}"))
            stats = measure_load(contender.factory, contender.inputs or inputs, concurrency=level, requests=requests,
                                 check=contender.check)
            records.append(_record(contender, model, len(inputs[0]), stats.as_dict()))
    return records


__all__ = ["BASELINE", "DEFAULT_REQUESTS", "IN_PROCESS", "SERVED", "LoadResult", "add_ratios", "free_ports",
           "in_process_precision", "in_process_settings", "run_remote_bench", "run_serve_bench"]
