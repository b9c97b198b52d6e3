"""``vanilladeploy serve-bench``: the same model through a real Triton server (HTTP, gRPC) and in-process ONNX
Runtime, at several client concurrencies, in one run. Every answer is checked against in-process ONNX Runtime
(rel. L2 ≤ 1e-5), so throughput never counts wrong answers.
"""

from __future__ import annotations

import socket
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.load import Check, measure_load, onnxruntime_sender_factory, triton_sender_factory
from exporters.runners import onnx_runner
from exporters.triton_repo import RepoOptions, parse_config
from vanilladeploy.machine import machine_info
from vanilladeploy.serving.repository import check_runtime, write_repository
from vanilladeploy.serving.server import TritonPorts, TritonServer, server_version
from vanilladeploy.steps import Progress, Step, silent
from vanilladeploy.validate import check_path
from vanilladeploy.verify import compare

DEFAULT_REQUESTS = 32
"""Per concurrency level and backend: ~1 minute for VanillaNet-5 at 224 px on 2 cores, every level and backend."""


@dataclass
class LoadResult:
    records: list[dict[str, Any]]
    machine: dict[str, Any]
    config: dict[str, Any]

    def document(self) -> dict[str, Any]:
        return {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": self.config,
                "machine": self.machine, "records": self.records}


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


def _checker(references: Sequence[np.ndarray]) -> Check:
    def check(i: int, y: np.ndarray) -> str | None:
        c = compare(y, references[i])
        return None if c else f"wrong answer: rel L2 {c.rel_l2:.2e} against in-process ONNX Runtime"

    return check


def _references(onnx_path: Path, runtime: str, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """What the served model must answer: the same file in the same runtime, in process."""
    with onnx_runner(onnx_path, runtime) as runner:
        return [runner.infer(x) for x in inputs]


def run_serve_bench(source: Path, *, concurrency: Sequence[int] = (1, 4, 16), requests: int | None = None,
                    batch: int = 1, protocol: str = "both", runtime: str = "onnxruntime",
                    baseline: Path | None = None, progress: Progress = silent) -> LoadResult:
    """Start Triton on free loopback ports with ``source`` (run by ``runtime`` inside its python backend), load it,
    and time in-process ONNX Runtime on ``baseline`` (default: the same ONNX) alike. Every answer is checked against
    its own model run in process."""
    check_runtime({"runtime": runtime}, "python")
    check_path("--baseline", baseline, directory=False, must_exist=True)
    requests = requests or DEFAULT_REQUESTS
    protocols = ["http", "grpc"] if protocol == "both" else [protocol]
    max_batch = max(32, batch * max(concurrency))
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-serve-bench-") as scratch:
        repo = write_repository(source, Path(scratch), RepoOptions(backend="python", max_batch=max_batch, kind="cpu",
                                                                   parameters={"runtime": runtime}))
        model, onnx_path = repo.model_dir.name, repo.model_dir / "1" / "model.onnx"
        served_precision = onnx_precision_of(onnx_path)
        shape = (batch, *parse_config(repo.config_text).input[0].dims)
        rng = np.random.default_rng(0)
        inputs = [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]
        check = _checker(_references(onnx_path, runtime, inputs))
        local_path = baseline or onnx_path
        local = onnxruntime_sender_factory(str(local_path))
        local_check = _checker(_references(local_path, "onnxruntime", inputs))
        records = []
        progress(Step("Starting Triton Inference Server"))
        with TritonServer(Path(scratch), free_ports(), model=model) as server:
            version = server_version(server)
            served = "" if runtime == "onnxruntime" else f" ({runtime} {served_precision})"
            for level in concurrency:
                urls = {"http": server.http_url, "grpc": server.grpc_url}
                runs = [(f"triton-{p}{served}", triton_sender_factory(urls[p], p, model)) for p in protocols]
                runs.append(("onnxruntime-inprocess", local))
                for backend, factory in runs:
                    progress(Step(f"{backend} · concurrency {level}"))
                    stats = measure_load(factory, inputs, concurrency=level, requests=requests,
                                         check=local_check if factory is local else check)
                    records.append({"model": model, "backend": backend, "batch": batch, **stats.as_dict()})
    config = {"source": str(source), "concurrency": list(concurrency), "requests": requests, "batch": batch,
              "protocols": protocols, "triton": version, "triton_backend": f"python ({runtime})",
              "served_precision": served_precision, "in_process": {"runtime": "onnxruntime",
                                                             "file": str(baseline or source)},
              "max_batch": max_batch, "dynamic_batching_delay_us": RepoOptions().max_queue_delay_us}
    return LoadResult(records, machine_info("cpu"), config)


def onnx_precision_of(path: Path) -> str:
    """The ``precision`` an exported ONNX records (fp32 when it records none)."""
    import onnx

    meta = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    return meta.get("precision", "fp32")


__all__ = ["DEFAULT_REQUESTS", "LoadResult", "free_ports", "run_serve_bench"]
