"""``serve``: write a repository for a source in a scratch directory, run a real Triton server on it, and keep the
model honest while it serves (:mod:`vanilladeploy.serving.watch`) until SIGTERM or Ctrl-C.

Everything ``serve`` can refuse is refused by :func:`check_serve_options` before anything is written or started.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vanilladeploy.errors import UsageError
from vanilladeploy.serving.health import HEALTH_INTERVAL_S
from vanilladeploy.serving.server import (
    StartAborted,
    TritonPorts,
    TritonServer,
    check_ports_free,
    default_kind,
    find_tritonserver,
    server_version,
)
from vanilladeploy.serving.watch import ModelWatch
from vanilladeploy.triton.config import RepoOptions, parse_config
from vanilladeploy.triton.repository import (
    RepoPlan,
    check_labels,
    check_runtime,
    model_repository_of,
    plan_repository,
    write_planned,
)

WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class ServingInfo:
    model: str
    server_version: str
    http_url: str
    grpc_url: str
    metrics_url: str
    example_command: str
    kind: str = "cpu"  # where the model's instances run
    runtime: str = "onnxruntime"  # what runs the model inside the python backend (the config's ``runtime``)


def check_serve_options(source: Path, ports: TritonPorts, opts: RepoOptions,
                        host: str = "127.0.0.1", *, images: bool = False) -> RepoPlan | None:
    """Everything ``serve`` refuses, before it writes or starts anything: ports that clash or are busy, a source it
    cannot serve (or a repository whose model is not on the python backend), options Triton would refuse for that
    model (e.g. ``--max-batch`` > 0 for an export with a fixed batch), a missing labels file, no Triton server
    binary. Returns the repository to write (``opts.kind`` None: :func:`default_kind`; with ``images`` the image
    ensemble too), or None for a repository that is served as it is."""
    if len(set(ports.named().values())) < 3:
        raise UsageError(f"--http-port, --grpc-port and --metrics-port must differ (got {ports.http}, {ports.grpc}, "
                         f"{ports.metrics}).")
    check_labels(opts.labels)
    check_runtime(opts.parameters, "python")
    find_tritonserver()
    check_ports_free(ports, host)
    model_dir = model_repository_of(source)
    if model_dir is None:
        return plan_repository(source, opts if opts.kind is not None else replace(opts, kind=default_kind()),
                               images=images)
    if images:
        raise UsageError(f"{source} is a model repository, served as it is: --images adds an image ensemble to a "
                         "repository written from an export (`vanilladeploy serve EXPORT --images`, or `repo "
                         "--images`).")
    backend = parse_config((model_dir / "config.pbtxt").read_text()).backend
    if backend != "python":
        raise UsageError(f"{source}: its model runs on Triton's {backend} backend, which the nvidia-pytriton "
                         "wheel's server does not have (it has the python backend only); serve it with a "
                         "production Triton, or serve the export here with `vanilladeploy serve EXPORT "
                         "--runtime openvino`.")
    return None


def serve_forever(source: Path, ports: TritonPorts, opts: RepoOptions, *,
                  on_ready: Callable[[ServingInfo], None], on_event: Callable[[str], None] = lambda _: None,
                  host: str = "127.0.0.1", images: bool = False, health_interval_s: float = HEALTH_INTERVAL_S,
                  health_timeout_s: float | None = None) -> None:
    """Check everything (:func:`check_serve_options`), write a repository for ``source`` in a scratch directory,
    serve it until SIGTERM (returns) or SIGINT (``KeyboardInterrupt``); the server is stopped and the scratch
    directory removed either way. SIGTERM is handled from the first line on: during start-up it aborts the start
    (and returns) at the next check. While it serves, a backend stub that dies is noticed and the model reloaded
    (``on_event`` hears of it, and of the start), and so is one that does not answer a health inference every
    ``health_interval_s`` (0: none) within ``health_timeout_s`` (None: derived from its latency,
    :mod:`vanilladeploy.serving.health`); a server that dies, or a reload that fails, raises :class:`ServerError`
    with the reason."""
    if not health_interval_s >= 0:
        raise UsageError(f"--health-interval {health_interval_s:g}: give seconds ≥ 0 (0: no health inferences).")
    if health_timeout_s is not None and not health_timeout_s > 0:
        raise UsageError(f"--health-timeout {health_timeout_s:g}: give seconds above 0, or leave it out (derived "
                         "from the model's latency).")
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        plan = check_serve_options(source, ports, opts, host, images=images)
        on_event("Starting Triton Inference Server (loopback) …")
        with tempfile.TemporaryDirectory(prefix=f"vanilladeploy-repo-{os.getpid()}-") as scratch:
            if plan is None:  # written by repo or optimize: served as it is
                shutil.copytree(source, scratch, dirs_exist_ok=True)
                model_dir = model_repository_of(Path(scratch))
                assert model_dir is not None
                config_text = (model_dir / "config.pbtxt").read_text()
            else:
                result = write_planned(plan, Path(scratch))
                model_dir, config_text = result.model_dir, result.config_text
            served = plan.served_model if plan else model_dir.name
            if not stop.is_set():
                _serve(Path(scratch), served, parse_config(config_text), ports, stop=stop, on_ready=on_ready,
                       on_event=on_event, host=host, health=(health_interval_s, health_timeout_s))
    finally:
        signal.signal(signal.SIGTERM, previous)


def _serve(repository: Path, model: str, cfg: Any, ports: TritonPorts, *, stop: threading.Event,
           on_ready: Callable[[ServingInfo], None], on_event: Callable[[str], None], host: str,
           health: tuple[float, float | None]) -> None:
    """Serve ``model`` (loaded with what it is made of: an image ensemble's steps); ``cfg`` is the classifier's."""
    from tritonclient.grpc import model_config_pb2 as mc  # parse_config made ``cfg`` with it

    detector = any(o.name == "boxes" for o in cfg.output)
    dims = [int(d) if int(d) > 0 else 320 if detector else 1 for d in cfg.input[0].dims]  # a dynamic dimension: 1,
    shape = [1, *dims] if cfg.max_batch_size > 0 else dims                               # a detector's H, W: 320
    kind = "gpu" if any(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in cfg.instance_group) else "cpu"
    runtime = cfg.parameters["runtime"].string_value if "runtime" in cfg.parameters else "onnxruntime"
    try:
        with TritonServer(repository, ports, host=host, model=model, abort=stop) as server:
            watch = ModelWatch(server, model, on_event=on_event, health_interval_s=health[0],
                               health_timeout_s=health[1])  # lists the stubs now, before it is announced
            example = (example_image_command(server.http_url, model) if model != cfg.name else
                       example_client_command(server.http_url, model, shape, detector=detector))
            on_ready(ServingInfo(model, server_version(server), server.http_url, server.grpc_url, server.metrics_url,
                                 example, kind, runtime))
            while not stop.wait(WATCH_INTERVAL_S):
                watch.check()
    except StartAborted:
        return


def example_image_command(http_url: str, model: str) -> str:
    """A one-line tritonclient request sending one encoded image file (IMAGE.jpg) to the image ensemble ``model``
    and printing its top-3 (score:index:label with labels)."""
    host = http_url.removeprefix("http://")
    return (f"{shlex.quote(sys.executable)} -c \"import numpy as np, pathlib, tritonclient.http as t; "
            f"c = t.InferenceServerClient('{host}'); x = t.InferInput('image', [1, 1], 'BYTES'); "
            "x.set_data_from_numpy(np.array([[pathlib.Path('IMAGE.jpg').read_bytes()]], dtype=object)); "
            f"print(c.infer('{model}', [x], outputs=[t.InferRequestedOutput('logits', class_count=3)])"
            ".as_numpy('logits'))\"")


def example_client_command(http_url: str, model: str, shape: list[int], *, detector: bool = False) -> str:
    """A one-line tritonclient request (a random batch of ``shape``, batch included) that prints the top class (a
    detector: its count of detections and first box), run by this interpreter (it has tritonclient and numpy)."""
    host = http_url.removeprefix("http://")
    answer = ("r = c.infer('{m}', [x]); print(r.as_numpy('num_detections'), r.as_numpy('boxes')[0, :1])" if detector
              else "print(c.infer('{m}', [x]).as_numpy('logits').argmax(1))").format(m=model)
    return (f"{shlex.quote(sys.executable)} -c \"import numpy as np, tritonclient.http as t; "
            f"c = t.InferenceServerClient('{host}'); x = t.InferInput('input', {shape}, 'FP32'); "
            f"x.set_data_from_numpy(np.random.rand(*{shape}).astype('float32')); {answer}\"")


__all__ = ["ServingInfo", "check_serve_options", "example_client_command", "serve_forever"]
