"""A model on a server we did not start, addressed by its URL: what it takes and gives (``describe_served``) and a
runner that sends it batches (``TritonRunner``), over the KServe v2 protocol that Triton and KServe's Triton runtime
both speak (HTTP or gRPC, through ``tritonclient``).

The server is not ours: every call has a timeout, nothing is retried, and what we learn comes from its own answers
(model metadata; the model config and repository index where the server offers those Triton extensions).

Which file a model is: every repository vanilladeploy writes records its sha256 in the model config's parameters
(:data:`~vanilladeploy.triton.config.IDENTITY_PARAMETERS`); :func:`check_identity` refuses a served model
that records another file than the one its answers are checked against, before any load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.errors import MissingDependencyError, UsageError
from vanilladeploy.extras import install_hint
from vanilladeploy.runtimes.runners import ChunkedRunner, Runner
from vanilladeploy.serving.server import ServerError
from vanilladeploy.triton.config import IDENTITY_PARAMETERS
from vanilladeploy.verify import TOLERANCE_INT8_ENGINE, tolerance_for

PROTOCOLS = ("http", "grpc")
DTYPES = {"FP32": np.float32, "FP16": np.float16, "UINT8": np.uint8}
"""Input datatypes a served classifier may take (KServe v2 names) and the NumPy type sent for each."""


@dataclass(frozen=True)
class Endpoint:
    """``host:port`` and the protocol spoken there (``https://`` means HTTP over TLS)."""

    address: str
    protocol: str
    ssl: bool = False

    def __str__(self) -> str:
        return f"{'https' if self.ssl else self.protocol}://{self.address}"


@dataclass(frozen=True)
class ServedModel:
    """One model on an endpoint: its input (name, datatype, shape with -1 for a dynamic batch), its output and the
    batches one request may carry (``min_batch``..``max_batch``; None: no limit; equal: a fixed batch)."""

    endpoint: Endpoint
    name: str
    input_name: str
    datatype: str
    shape: tuple[int, ...]
    output_name: str
    min_batch: int
    max_batch: int | None
    version: str = ""  # the server's version (its /v2 metadata), for the record
    recorded: dict[str, str] = field(default_factory=dict)  # its config's sha256 parameters (IDENTITY_PARAMETERS)
    engine: bool = False  # its config says a TensorRT plan
    bf16: bool = False  # its config asks for bf16 (precision bf16, or the native OpenVINO backend's HINT_BF16)

    @property
    def img_size(self) -> int | None:
        return self.shape[-1] if len(self.shape) == 4 and self.shape[-1] > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"url": str(self.endpoint), "model": self.name, "input": self.input_name, "datatype": self.datatype,
                "shape": list(self.shape), "output": self.output_name,
                "batch": {"min": self.min_batch, "max": self.max_batch},
                "server_version": self.version, "recorded_sha256": dict(self.recorded), "engine": self.engine,
                "bf16": self.bf16}


def parse_endpoint(url: str, protocol: str | None = None) -> Endpoint:
    """``HOST:PORT``, ``http://HOST:PORT``, ``https://HOST:PORT`` or ``grpc://HOST:PORT``; a scheme and
    ``protocol`` must agree; without either, HTTP."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if scheme not in ("", "http", "https", "grpc"):
        raise UsageError(f"--url {url}: the scheme must be http, https or grpc (or none: HOST:PORT).")
    host, colon, port = rest.rstrip("/").rpartition(":")
    if not colon or not host or not port.isdigit() or "/" in rest.rstrip("/"):
        raise UsageError(f"--url {url}: give HOST:PORT (e.g. 127.0.0.1:8000 for HTTP, :8001 for gRPC), "
                         "optionally with http://, https:// or grpc://.")
    implied = {"http": "http", "https": "http", "grpc": "grpc"}.get(scheme)
    if protocol is not None and protocol not in PROTOCOLS:
        raise UsageError(f"--protocol {protocol}: a URL speaks one protocol, http or grpc.")
    if implied and protocol and implied != protocol:
        raise UsageError(f"--url {url} is {implied}, but --protocol says {protocol}: give one of them.")
    return Endpoint(f"{host}:{port}", protocol or implied or "http", ssl=scheme == "https")


def client_for(endpoint: Endpoint, timeout_s: float) -> Any:
    """A tritonclient client for ``endpoint`` (one per thread: the HTTP client cannot cross threads)."""
    try:
        module = _module(endpoint)
    except ImportError as e:
        raise MissingDependencyError(f"talking to a server needs tritonclient ({e}): {install_hint('serve')}") \
            from None
    if endpoint.protocol == "http":
        return module.InferenceServerClient(endpoint.address, ssl=endpoint.ssl, network_timeout=timeout_s,
                                            connection_timeout=timeout_s)
    return module.InferenceServerClient(endpoint.address)


def describe_served(endpoint: Endpoint, model: str | None = None, *, timeout_s: float = 10.0) -> ServedModel:
    """Ask the server what ``model`` (default: its one ready model) takes and gives. Refuses, with what the
    server said, a server that does not answer, a model that is not ready, or one that is not an image classifier
    (one NCHW input of FP32/FP16/UINT8, one output)."""
    client = client_for(endpoint, timeout_s)
    version = _ask(endpoint, "its metadata", lambda: _json(endpoint, client.get_server_metadata(**_t(endpoint,
                                                                                                       timeout_s))))
    name = model or _only_model(endpoint, client, timeout_s)
    ready = _ask(endpoint, f"whether {name} is ready",
                 lambda: client.is_model_ready(name, **_t(endpoint, timeout_s)))
    if not ready:
        raise ServerError(f"{endpoint}: model {name!r} is not ready there (is the name right? --model NAME).")
    meta = _ask(endpoint, f"{name}'s metadata",
                lambda: _json(endpoint, client.get_model_metadata(name, **_t(endpoint, timeout_s))))
    inputs, outputs = meta.get("inputs") or [], meta.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1 or inputs[0].get("datatype") not in DTYPES:
        raise UsageError(f"{endpoint}: {name} takes {[(i.get('name'), i.get('datatype')) for i in inputs]} and gives "
                         f"{[o.get('name') for o in outputs]}; a VanillaNet classifier takes one image batch "
                         f"({', '.join(DTYPES)}) and gives one logits tensor.")
    shape = tuple(int(d) for d in inputs[0].get("shape", []))
    config = _config(endpoint, client, name, timeout_s)
    low, high = (1, _max_batch(config)) if shape[:1] == (-1,) else (shape[0], shape[0])
    return ServedModel(endpoint, name, inputs[0]["name"], inputs[0]["datatype"], shape, outputs[0]["name"], low, high,
                       str(version.get("version", "?")), _recorded(config), *_computes(config))


def _t(endpoint: Endpoint, timeout_s: float) -> dict[str, float]:
    """The per-call timeout keyword of the gRPC client (the HTTP client has its own, set at creation)."""
    return {"client_timeout": timeout_s} if endpoint.protocol == "grpc" else {}


def _json(endpoint: Endpoint, answer: Any) -> dict[str, Any]:
    """HTTP answers are dicts; gRPC answers are protobuf messages (made dicts here, numbers as the JSON says)."""
    if isinstance(answer, dict):
        return answer
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(answer, preserving_proto_field_name=True)


def _ask(endpoint: Endpoint, what: str, call: Any) -> Any:
    try:
        return call()
    except Exception as e:  # tritonclient raises its own exception types, and connection errors, per protocol
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ServerError(f"{endpoint}: asking {what} failed: {text} (is a KServe v2 / Triton server listening "
                          "there, speaking this protocol?)") from None


def _only_model(endpoint: Endpoint, client: Any, timeout_s: float) -> str:
    index = _ask(endpoint, "its model list (Triton's repository index; give --model NAME if it does not offer it)",
                 lambda: client.get_model_repository_index(**_t(endpoint, timeout_s)))
    entries = _json(endpoint, index).get("models", []) if not isinstance(index, list) else index
    names = sorted({m["name"] for m in entries if str(m.get("state", "READY")).upper() == "READY"})
    if len(names) != 1:
        raise UsageError(f"{endpoint} serves {len(names)} ready models ({', '.join(names) or 'none'}): name one "
                         "with --model NAME.")
    return names[0]


def _config(endpoint: Endpoint, client: Any, name: str, timeout_s: float) -> dict[str, Any] | None:
    """The model config (a Triton extension), None when the server does not offer it."""
    try:
        config = _json(endpoint, client.get_model_config(name, **_t(endpoint, timeout_s)))
    except Exception:  # not every KServe v2 server offers the config extension
        return None
    return config.get("config", config)


def _max_batch(config: dict[str, Any] | None) -> int | None:
    """For an input whose batch is -1: ``max_batch_size`` from the model config, None when it is 0 (no batching:
    the -1 is the model's own, any batch goes); 1 (one image per request) when the server gives no config."""
    if config is None:
        return 1
    return int(config.get("max_batch_size", 0) or 0) or None


def _parameters(config: dict[str, Any] | None) -> dict[str, str]:
    """The config's parameters as strings (HTTP and gRPC both give ``{"string_value": …}``; "" where it is not)."""
    return {str(k): str(v.get("string_value", "")) if isinstance(v, dict) else ""
            for k, v in ((config or {}).get("parameters") or {}).items()}


def _recorded(config: dict[str, Any] | None) -> dict[str, str]:
    """The sha256 values the config's parameters record."""
    parameters = _parameters(config)
    return {key: parameters[key] for key in IDENTITY_PARAMETERS if parameters.get(key)}


def _computes(config: dict[str, Any] | None) -> tuple[bool, bool]:
    """(a TensorRT plan, asks for bf16), as the config says."""
    config, parameters = config or {}, _parameters(config)
    engine = config.get("platform") == "tensorrt_plan" or config.get("backend") == "tensorrt"
    return engine, parameters.get("precision") == "bf16" or parameters.get("HINT_BF16", "").lower() == "yes"


def served_tolerance(served: ServedModel, precision: str) -> float:
    """The bound a served answer is held to against the local ONNX (of ``precision``) run in process: an engine's
    loosest (its own precision is not in its config), bf16's where the config asks for bf16, else the file's."""
    if served.engine:
        return TOLERANCE_INT8_ENGINE
    return tolerance_for("bf16" if served.bf16 else precision)


def check_identity(served: ServedModel, files: Sequence[Path]) -> str:
    """Refuse (exit 2, both hashes named) a served model whose config records the sha256 of a file that is none
    of ``files`` (the artifacts its answers are checked against), before any request is timed. Returns what to
    say about it: the file it matched, or that the server does not say (then only its answers can tell)."""
    if not served.recorded:
        return (f"{served.name} does not record which file it serves (no {IDENTITY_PARAMETERS[0]} in its model "
                "config): it is measured, and every answer checked against the local artifact")
    local = {sha256_of(f): f for f in files}
    match = next(((digest, local[digest]) for digest in served.recorded.values() if digest in local), None)
    if match is None:
        said = ", ".join(f"{key} {digest}" for key, digest in served.recorded.items())
        mine = ", ".join(f"{f.name} {digest}" for digest, f in local.items())
        raise UsageError(f"{served.endpoint} serves {served.name} made from another file: its config records {said}, "
                         f"but {mine}: not the same artifact (--model NAME picks another model there).")
    return f"{served.name} records sha256 {match[0][:12]}…, the sha256 of {match[1].name}"


class TritonRunner(Runner):
    """A served model as a runner: ``infer`` sends one batch (cast to the served datatype) and returns its
    output. One client per runner; use one runner per thread."""

    name = "triton"

    def __init__(self, served: ServedModel, *, timeout_s: float = 60.0) -> None:
        self.served, self.timeout_s, self.client = served, timeout_s, None

    def activate_impl(self) -> None:
        self.client = client_for(self.served.endpoint, self.timeout_s)

    def deactivate_impl(self) -> None:
        self.client.close()
        self.client = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        module = _module(self.served.endpoint)
        tensor = module.InferInput(self.served.input_name, list(x.shape), self.served.datatype)
        tensor.set_data_from_numpy(np.ascontiguousarray(x, dtype=DTYPES[self.served.datatype]))
        outputs = [module.InferRequestedOutput(self.served.output_name)]
        answer = self.client.infer(self.served.name, [tensor], outputs=outputs, **_t(self.served.endpoint,
                                                                                       self.timeout_s))
        return answer.as_numpy(self.served.output_name)


def _module(endpoint: Endpoint) -> Any:
    """tritonclient's module for the endpoint's protocol."""
    if endpoint.protocol == "http":
        import tritonclient.http as module
    else:
        import tritonclient.grpc as module
    return module


def fitted_runner(served: ServedModel, *, timeout_s: float = 60.0) -> Runner:
    """A :class:`TritonRunner` that sends batches the model accepts: chunks of at most ``max_batch``, a fixed
    batch padded to it."""
    return ChunkedRunner(TritonRunner(served, timeout_s=timeout_s), min_batch=served.min_batch,
                         max_batch=served.max_batch)


__all__ = ["DTYPES", "PROTOCOLS", "Endpoint", "ServedModel", "TritonRunner", "check_identity", "client_for",
           "describe_served", "fitted_runner", "parse_endpoint", "served_tolerance"]
