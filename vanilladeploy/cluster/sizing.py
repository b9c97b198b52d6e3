"""How many Triton replicas, with how much CPU and memory, for a target load: from a ``serve-bench`` measurement of
the same artifact when there is one, else from ``--replicas``.

From a measurement (``--target-rps R --p99-ms P --bench FILE``): the served rows of the ``serve-bench`` JSON (one per
protocol and client concurrency) whose p99 is within ``P`` and that had no errors; the one with the highest
throughput is one replica's capacity, ``C`` requests/s (img/s ÷ images per request). Then

    minReplicas = ceil(R × HEADROOM / C),   maxReplicas = BURST × minReplicas,

so at the target every replica runs at 1/HEADROOM (80 %) of its measured capacity — the CPU utilization the
autoscaler is told to hold (:data:`SCALE_TARGET_PERCENT`) — and bursts up to twice the target find room. The CPU
request is the cores the measurement had (``machine.cpu_count``): the measured throughput is what those cores
served. Memory is an estimate, not a measurement (``serve-bench`` records none): :func:`memory_request`.

A bench file of another artifact sizes nothing: it is refused (:func:`check_bench_artifact`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vanilladeploy.errors import CheckpointError, UsageError

HEADROOM = 1.25
"""Replicas serve the target at 1/HEADROOM = 80 % of their measured capacity."""
SCALE_TARGET_PERCENT = round(100 / HEADROOM)
"""The autoscaler's CPU utilization target: what a replica runs at when the load is the target."""
BURST = 2
"""maxReplicas = BURST × minReplicas when sized from a measurement."""
DEFAULT_REPLICAS = (1, 3)
"""minReplicas, maxReplicas without a measurement or ``--replicas``."""
DEFAULT_CPU = 2
"""Cores per replica without a measurement (the 2-core machines every figure in docs/serving.md was measured on)."""
BASE_MEMORY_MIB = 1024
"""The Triton server process and its backend before the model (memory_request)."""


@dataclass(frozen=True)
class ArtifactIdentity:
    """What a bench file must have measured: this model file (by sha256) or, failing a record of it, a model of
    this name, precision and per-sample input shape."""

    name: str
    sha256: str
    precision: str
    input_dims: tuple[int, ...]


@dataclass(frozen=True)
class Capacity:
    """One replica's measured capacity: the best served row within the p99 bound."""

    img_s: float
    rps: float
    concurrency: int
    p99_ms: float
    row: str  # the served row, e.g. "triton-grpc"
    batch: int


@dataclass(frozen=True)
class Sizing:
    min_replicas: int
    max_replicas: int
    cpu: str
    memory: str
    capacity: Capacity | None = None
    target_rps: float | None = None
    p99_bound_ms: float | None = None
    matched_by: str | None = None  # how the bench file was found to be of this artifact
    measured_with: str | None = None  # the bench's Triton backend, e.g. "python (onnxruntime)"

    def as_dict(self) -> dict[str, Any]:
        return {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas, "cpu": self.cpu,
                "memory": self.memory, "headroom": HEADROOM, "scale_target_percent": SCALE_TARGET_PERCENT,
                "target_rps": self.target_rps, "p99_bound_ms": self.p99_bound_ms,
                "capacity": None if self.capacity is None else vars(self.capacity),
                "bench_matched_by": self.matched_by, "measured_with": self.measured_with}


def parse_replicas(text: str) -> tuple[int, int]:
    """``--replicas MIN:MAX`` with 1 ≤ MIN ≤ MAX."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise UsageError(f"--replicas {text!r}: give MIN:MAX with 1 ≤ MIN ≤ MAX, e.g. --replicas 2:6.")
    return int(match[1]), int(match[2])


def memory_request(model_bytes: int, shm_mib: int = 0) -> str:
    """``BASE_MEMORY_MIB`` + 3 × the model file + ``shm_mib`` (a memory-backed ``/dev/shm`` counts against the
    pod's limit), rounded up to 256 MiB: the weights once in the file cache, once in the runtime's session, once
    more for its arena and the batch's activations. An estimate: ``serve-bench`` records no memory; the only figure
    measured here (docs/serving.md, soak test) is 237 MB RSS for server and Python-backend stub with VanillaNet-5 at
    32 px, about a fifth of what this gives for it (1280 MiB)."""
    mib = BASE_MEMORY_MIB + 3 * model_bytes / 2**20 + shm_mib
    return f"{math.ceil(mib / 256) * 256}Mi"


DYNAMIC_SIDE = 1344
"""A dynamic height or width (a detector's) counts as the largest side a detector is verified and profiled at."""
SHM_BASE_MIB = 64
"""The container runtime's default ``/dev/shm``: what a python-backend stub gets without one of its own."""


def shm_mib(*, max_batch: int, instances: int, input_dims: tuple[int, ...]) -> int:
    """``/dev/shm`` for python-backend models (their stubs exchange every tensor with the server through it):
    ``SHM_BASE_MIB`` + per instance a full batch of float32 input twice over (the request's tensor and the model's
    own; an image ensemble's encoded bytes are smaller than their float32 pixels; a dynamic side counts as
    :data:`DYNAMIC_SIDE`), rounded up to 64 MiB."""
    per_image = 4 * math.prod(d if d > 0 else DYNAMIC_SIDE for d in input_dims)
    mib = SHM_BASE_MIB + instances * max(max_batch, 1) * per_image * 2 / 2**20
    return math.ceil(mib / 64) * 64


def read_bench(path: Path) -> dict[str, Any]:
    """A ``serve-bench`` JSON document (``config``, ``machine``, ``records``), or a one-line refusal."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"--bench {path}: not readable JSON ({type(e).__name__}: {e}).") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("records"), list) or not isinstance(
            doc.get("config"), dict):
        raise UsageError(f"--bench {path}: not a serve-bench result (no config and records); write one with "
                         "`vanilladeploy serve-bench SOURCE --json-out FILE`.")
    return doc


def served_records(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows measured through Triton (``roles`` has "served"; older files: the backend is ``triton-…``)."""
    return [r for r in doc["records"] if isinstance(r, dict) and (
        "served" in (r.get("roles") or []) or str(r.get("backend", "")).startswith("triton-"))]


def check_bench_artifact(doc: dict[str, Any], artifact: ArtifactIdentity, path: Path) -> str:
    """Refuse a bench file of another artifact; return how it was matched. By sha256 where the file records one
    (``config.source_sha256``) or where its ``config.source`` is still on this machine; else by model name,
    precision and input shape, and the returned line says so."""
    config = doc["config"]
    digest = config.get("source_sha256") or _source_sha256(config.get("source"))
    if digest is not None:
        if digest != artifact.sha256:
            raise UsageError(f"--bench {path} measured another file (sha256 {digest[:12]}…, this artifact's is "
                             f"{artifact.sha256[:12]}…): run `vanilladeploy serve-bench` on this artifact.")
        return "by sha256"
    models = sorted({str(r.get("model")) for r in served_records(doc)})
    precision = str(config.get("served_precision", "fp32"))
    dims = _bench_input_dims(config)
    if models != [artifact.name] or precision != artifact.precision or dims not in (None, artifact.input_dims):
        raise UsageError(f"--bench {path} measured {', '.join(models) or 'no model'} ({precision}, input "
                         f"{list(dims) if dims else '?'}), not this artifact ({artifact.name}, {artifact.precision}, "
                         f"input {list(artifact.input_dims)}): run `vanilladeploy serve-bench` on this artifact.")
    return ("by model name, precision and input shape only (the file records no sha256 and its source "
            f"{config.get('source')!r} is not on this machine)")


def _source_sha256(source: object) -> str | None:
    """The sha256 of the model file a bench's ``config.source`` names, when that source is still here."""
    if not isinstance(source, str) or not Path(source).exists():
        return None
    from vanilladeploy.checkpoint import sha256_of
    from vanilladeploy.triton.repository import resolve_repo_source

    try:
        return sha256_of(resolve_repo_source(Path(source)).model_file)
    except (UsageError, CheckpointError, OSError):
        return None


def _bench_input_dims(config: dict[str, Any]) -> tuple[int, ...] | None:
    text = config.get("model_config")
    if not isinstance(text, str):
        return None
    from vanilladeploy.triton.config import parse_config

    try:
        return tuple(parse_config(text).input[0].dims)
    except Exception:  # an unparsable config recorded by hand: fall back to name and precision
        return None


def pick_capacity(doc: dict[str, Any], p99_ms: float, path: Path) -> Capacity:
    """The served row with the highest img/s among those with no errors and p99 ≤ ``p99_ms``."""
    rows = [r for r in served_records(doc) if (r.get("stats") or {}).get("p99_ms") is not None]
    fits = [r for r in rows if not r.get("errors") and r["stats"]["p99_ms"] <= p99_ms]
    if not fits:
        best = min(rows, key=lambda r: r["stats"]["p99_ms"], default=None)
        seen = f"the lowest p99 was {best['stats']['p99_ms']:.1f} ms" if best else "it has no served rows"
        raise UsageError(f"--bench {path}: no served row without errors has p99 ≤ {p99_ms:g} ms ({seen}); raise "
                         "--p99-ms, or measure lower concurrencies.")
    r = max(fits, key=lambda r: float(r["throughput_img_s"]))
    batch = int(r.get("batch") or 1)
    return Capacity(float(r["throughput_img_s"]), float(r["throughput_img_s"]) / batch, int(r["concurrency"]),
                    float(r["stats"]["p99_ms"]), str(r.get("backend")), batch)


def replicas_for(target_rps: float, capacity: Capacity) -> tuple[int, int]:
    """(minReplicas, maxReplicas) = (ceil(R × HEADROOM / C), BURST × that); see the module docstring."""
    need = max(1, math.ceil(round(target_rps * HEADROOM / capacity.rps, 9)))
    return need, BURST * need


def size(*, artifact: ArtifactIdentity, model_bytes: int, bench: Path | None = None, target_rps: float | None = None,
         p99_ms: float | None = None, replicas: str | None = None, engine: bool = False, shm: int = 0) -> Sizing:
    """The replicas and resources for this artifact, ``shm`` MiB of memory-backed ``/dev/shm`` included (every
    option check first; see the module docstring)."""
    memory = memory_request(model_bytes, shm)
    given = [name for name, v in (("--target-rps", target_rps), ("--p99-ms", p99_ms), ("--bench", bench))
             if v is not None]
    if not given:
        low, high = parse_replicas(replicas) if replicas is not None else DEFAULT_REPLICAS
        return Sizing(low, high, str(DEFAULT_CPU), memory)
    if len(given) < 3:
        raise UsageError(f"{', '.join(given)} without the others: sizing from a measurement needs --target-rps, "
                         "--p99-ms and --bench together.")
    if replicas:
        raise UsageError("--replicas and --bench both set the replicas: give one of them.")
    if not (target_rps or 0) > 0 or not (p99_ms or 0) > 0:
        raise UsageError(f"--target-rps {target_rps} and --p99-ms {p99_ms} must both be above 0.")
    if engine:
        raise UsageError("--bench: serve-bench measures the ONNX in ONNX Runtime or OpenVINO on the CPU, which says "
                         "nothing about a TensorRT engine's throughput; size it with --replicas MIN:MAX.")
    assert bench is not None and target_rps is not None and p99_ms is not None
    doc = read_bench(bench)
    matched = check_bench_artifact(doc, artifact, bench)
    capacity = pick_capacity(doc, p99_ms, bench)
    low, high = replicas_for(target_rps, capacity)
    cores = (doc.get("machine") or {}).get("cpu_count") or DEFAULT_CPU
    return Sizing(low, high, str(cores), memory, capacity, target_rps, p99_ms, matched,
                  doc["config"].get("triton_backend"))


__all__ = ["BURST", "DEFAULT_REPLICAS", "HEADROOM", "SCALE_TARGET_PERCENT", "ArtifactIdentity", "Capacity", "Sizing",
           "check_bench_artifact", "memory_request", "parse_replicas", "pick_capacity", "read_bench",
           "replicas_for", "shm_mib", "size"]
