"""A Triton model configuration from the graph itself, with Triton's own schema (``model_config_pb2``).

Pure: a :class:`ModelSignature` read from an ONNX file or an engine sidecar, plus :class:`RepoOptions`, give a
``ModelConfig`` message and its ``config.pbtxt`` text; :func:`check_servable` refuses, before anything is written,
what Triton would refuse at load time (a fixed batch under ``max_batch_size > 0``, an engine profile below
``max_batch_size``, an input that is neither float32 nor uint8 pixels, an output that is not float32, the wrong
backend for the file); :func:`check_model_name` refuses a
name that is not one safe directory of the repository. ``dims`` exclude the batch dimension when
``max_batch_size > 0``. proto3 text output drops zero/default values (``KIND_AUTO``, a delay of 0), which Triton
reads back as the same defaults.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "python")
KINDS = ("cpu", "gpu")
MODEL_FILES = {"onnxruntime": "model.onnx", "openvino": "model.onnx", "tensorrt": "model.plan", "python": "model.py"}
"""What Triton loads from ``<name>/1/`` per backend (the python backend's ``model.py`` runs ``model.onnx``)."""
LABELS_FILE = "labels.txt"
TRITON_DTYPES = {"float32": "TYPE_FP32", "uint8": "TYPE_UINT8", "int64": "TYPE_INT64"}
"""A tensor's element type (numpy's name, as :class:`TensorSpec` holds it) → Triton's ``DataType``: float32, uint8
for the pixel input of an ``export --input uint8`` graph, int64 for a detector's ``labels`` and ``num_detections``."""
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "num_detections")
"""An exported detector's outputs (``export DET.pth``): int64 labels and counts beside the float32 boxes and scores."""
IDENTITY_PARAMETERS = ("artifact_sha256", "onnx_sha256")
"""Config parameters that say which file a model is: the sha256 of the file served, and (for an engine) of the ONNX
it was built from. Every backend ignores parameters it does not read; ``serve-bench``/``eval --url`` read these
back through the server (:func:`vanilladeploy.serving.client.check_identity`)."""
MODEL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
"""A model name is one directory of the repository: letters, digits, ``_ . -``, not starting with ``.`` or ``-``."""


OPENVINO_BACKEND_PRECISION = (
    "Triton's native OpenVINO backend can be told bf16 (its parameter HINT_BF16) but not fp32, and on a CPU with "
    "native bf16 (avx512_bf16, amx_bf16) OpenVINO computes in bf16 unless told otherwise: this {precision} artifact "
    "would be served in a precision nobody verified. Serve it with --backend python --runtime openvino (model.py "
    "tells OpenVINO the precision), or --backend onnxruntime; the native OpenVINO backend takes an artifact verified "
    "in OpenVINO bf16 (an optimize output whose winner is openvino bf16)")
"""Why ``--backend openvino`` is refused for anything but a bf16-verified artifact (openvino_backend's
``ParseParameterHelper`` knows INFERENCE_NUM_THREADS, COMPILATION_NUM_THREADS, HINT_BF16=YES, NUM_STREAMS and
PERFORMANCE_HINT, from 2022 through its 2026 main branch: nothing sets f32)."""


class RepoError(ValueError):
    """Triton would refuse this model at load time (or the options contradict the file); says what to change."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # ONNX / TensorRT element type name, e.g. "float32"
    shape: tuple[int, ...]  # -1 for a dynamic dimension (the batch)


@dataclass(frozen=True)
class ModelSignature:
    """Inputs and outputs of a model file, and what kind of file it is."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    kind: str  # "onnx" or "engine"
    profile_max: int | None = None  # an engine's optimization-profile max batch
    compute_capability: str | None = None  # an engine's GPU, "8.0"

    @property
    def detector(self) -> bool:
        return tuple(t.name for t in self.outputs) == DETECTOR_OUTPUTS

    @property
    def dynamic_batch(self) -> bool:
        return all(t.shape and t.shape[0] == -1 for t in (*self.inputs, *self.outputs))


@dataclass(frozen=True)
class RepoOptions:
    """What ``vanilladeploy repo`` was asked for; ``None`` means the default."""

    name: str | None = None
    backend: str | None = None  # None: onnxruntime for an ONNX file, tensorrt for an engine
    max_batch: int = 32
    instances: int = 1
    kind: str | None = None  # None: gpu for the tensorrt backend, cpu otherwise
    max_queue_delay_us: int = 500
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()  # (): run whatever is queued (per-image cost flat in batch here)
    labels: str | None = None  # a file of class names, or "imagenet"
    parameters: dict[str, str] = field(default_factory=dict)


PYTHON_PARAMETERS: dict[str, dict[str, str]] = {
    "onnxruntime": {"ort_threads": "0", "ort_spinning": "0"},
    "openvino": {"openvino_hint": "LATENCY", "openvino_threads": "0"},
}
"""What the python backend's ``model.py`` is told per runtime unless asked otherwise, written into every config so
the config records how the model runs (why these: docs/serving.md, measured). ``ort_threads`` 0 is one intra-op
thread per physical core; ``ort_spinning`` 0 lets idle ONNX Runtime threads sleep instead of spinning against
Triton's and the clients' threads; ``openvino_hint`` LATENCY runs each dynamic batch as one inference over every
core; ``openvino_threads`` 0 is all of them."""


def python_parameters(parameters: dict[str, str]) -> dict[str, str]:
    """The python backend's parameters in full: the runtime (onnxruntime unless named), its defaults, then what
    was asked for."""
    runtime = parameters.get("runtime") or "onnxruntime"
    return {"runtime": runtime, **PYTHON_PARAMETERS.get(runtime, {}), **parameters}


def signature_from_onnx(path: Path) -> ModelSignature:
    """The graph inputs/outputs of an ONNX file (no weights loaded)."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    return ModelSignature(tuple(_onnx_tensor(t) for t in model.graph.input),
                          tuple(_onnx_tensor(t) for t in model.graph.output), "onnx")


def _onnx_tensor(value: Any) -> TensorSpec:
    import onnx

    t = value.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
    return TensorSpec(value.name, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name, shape)


def signature_from_sidecar(sidecar: dict[str, Any], onnx_signature: ModelSignature) -> ModelSignature:
    """An engine's I/O: names and per-sample shapes from the ONNX it was built from, the batch from its profile
    (the JSON sidecar written by ``vanilladeploy.runtimes.trt_plan.engine_sidecar``)."""
    profile = sidecar["profile"]
    low, high = int(profile["min"][0]), int(profile["max"][0])
    batch = -1 if low != high else high

    def rebatched(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t.name, t.dtype, (batch, *t.shape[1:]))
                     for t in specs)

    return ModelSignature(rebatched(onnx_signature.inputs), rebatched(onnx_signature.outputs), "engine", high,
                          str(sidecar["gpu"]["compute_capability"]))


def resolve_backend(signature: ModelSignature, opts: RepoOptions) -> str:
    backend = opts.backend or ("tensorrt" if signature.kind == "engine" else "onnxruntime")
    if backend not in BACKENDS:
        raise RepoError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")
    if (backend == "tensorrt") != (signature.kind == "engine"):
        wanted = "a TensorRT engine (.engine with its .engine.json)" if backend == "tensorrt" else "an ONNX file"
        raise RepoError(f"--backend {backend} needs {wanted}; give that, or pick another --backend")
    return backend


def check_model_name(name: str) -> None:
    """Refuse a name that is not exactly one safe directory of the repository (``..``, ``a/b``, ``""``, ``.x``)."""
    if not MODEL_NAME.fullmatch(name):
        raise RepoError(f"--name {name!r}: a Triton model name is one directory name of 1-128 letters, digits, "
                        "'_', '.' or '-', not starting with '.' or '-'; pass e.g. --name vanillanet_5")


def resolve_kind(opts: RepoOptions, backend: str) -> str:
    """``--kind`` as given, else gpu for the tensorrt backend (a plan only runs there) and cpu otherwise."""
    return opts.kind or ("gpu" if backend == "tensorrt" else "cpu")


def check_servable(signature: ModelSignature, opts: RepoOptions, backend: str) -> None:
    """Raise :class:`RepoError` for what Triton would refuse at load time."""
    if opts.max_batch < 0 or opts.instances < 1:
        raise RepoError("--max-batch must be ≥ 0 and --instances ≥ 1")
    if any(not 1 <= size <= max(opts.max_batch, 1) for size in opts.preferred_batch_sizes):
        raise RepoError(f"preferred batch sizes {list(opts.preferred_batch_sizes)}: each must be 1..--max-batch "
                        f"({opts.max_batch})")
    if opts.kind is not None and opts.kind not in KINDS:
        raise RepoError(f"--kind {opts.kind}: choose cpu or gpu")
    if backend == "tensorrt" and resolve_kind(opts, backend) != "gpu":
        raise RepoError("--backend tensorrt runs on the GPU: pass --kind gpu")
    if backend == "openvino" and resolve_kind(opts, backend) != "cpu":
        raise RepoError("--backend openvino runs on the CPU: pass --kind cpu")
    if backend == "openvino" and opts.parameters.get("precision") != "bf16":
        raise RepoError(OPENVINO_BACKEND_PRECISION.format(precision=opts.parameters.get("precision") or "fp32"))
    if not signature.inputs or not signature.outputs:
        raise RepoError("the model has no inputs or no outputs")
    bad = [t for t in signature.inputs if t.dtype not in ("float32", "uint8")]
    bad += [t for t in signature.outputs if t.dtype != "float32" and not (signature.detector and t.dtype == "int64")]
    if bad:
        raise RepoError(f"tensor {bad[0].name!r} is {bad[0].dtype}; vanilladeploy serves float32 I/O, or uint8 "
                        "pixels in (export --input uint8); an fp16/int8 ONNX from vanilladeploy keeps its input type "
                        "and float32 logits")
    if opts.max_batch > 0 and not signature.dynamic_batch:
        fixed = signature.inputs[0].shape[0] if signature.inputs[0].shape else "none"
        raise RepoError(f"the model's batch dimension is fixed ({fixed}), but --max-batch {opts.max_batch} makes "
                        "Triton add its own batch dimension; export without --static-batch, or pass --max-batch 0")
    if signature.profile_max is not None and opts.max_batch > signature.profile_max:
        raise RepoError(f"the engine's optimization profile allows batches up to {signature.profile_max}, below "
                        f"--max-batch {opts.max_batch} (Triton refuses it: \"model maximum is "
                        f"{signature.profile_max}\"); pass --max-batch {signature.profile_max} or rebuild with "
                        f"--trt-profile 1/1/{opts.max_batch}")


def plan_filename(signature: ModelSignature) -> str:
    """``model.sm90.plan`` for a plan built on compute capability 9.0: a plan is tied to its GPU, so it is filed
    under ``cc_model_filenames`` only; a GPU of another compute capability looks for the default ``model.plan``,
    finds none and refuses to load the model, instead of deserializing a plan it cannot run."""
    cc = signature.compute_capability
    return f"model.sm{cc.replace('.', '')}.plan" if cc else MODEL_FILES["tensorrt"]


def build_config(signature: ModelSignature, opts: RepoOptions, *, name: str, backend: str,
                 labels_file: str | None = None, identity: dict[str, str] | None = None) -> Any:
    """The ``ModelConfig`` message for ``signature`` served by ``backend``; ``identity``: the
    :data:`IDENTITY_PARAMETERS` to record."""
    from tritonclient.grpc import model_config_pb2 as mc

    cfg = mc.ModelConfig(name=name, max_batch_size=opts.max_batch)
    if backend == "onnxruntime":
        cfg.platform, cfg.backend = "onnxruntime_onnx", "onnxruntime"
    elif backend == "tensorrt":
        cfg.platform, cfg.backend = "tensorrt_plan", "tensorrt"
        if signature.compute_capability:  # only that GPU finds a plan; another has no model.plan and refuses
            cfg.cc_model_filenames[signature.compute_capability] = plan_filename(signature)
    elif backend == "openvino":  # Triton's native OpenVINO backend reads the ONNX as is
        cfg.backend, cfg.default_model_filename = "openvino", MODEL_FILES["openvino"]
        cfg.parameters["PERFORMANCE_HINT"].string_value = "THROUGHPUT"
        cfg.parameters["HINT_BF16"].string_value = "YES"  # the precision verified (check_servable: bf16 only)
    else:
        cfg.backend = "python"
        for key, value in python_parameters(opts.parameters).items():
            cfg.parameters[key].string_value = value
    for spec, container in ((signature.inputs, cfg.input), (signature.outputs, cfg.output)):
        for t in spec:
            entry = container.add(name=t.name, data_type=mc.DataType.Value(TRITON_DTYPES[t.dtype]))
            dims = t.shape[1:] if opts.max_batch > 0 else t.shape
            entry.dims.extend(dims or [1])
            if not dims:  # one value per image (num_detections): Triton needs a dim, the model has none
                entry.reshape.SetInParent()
    if labels_file:
        cfg.output[0].label_filename = labels_file
    group = cfg.instance_group.add(count=opts.instances)
    gpu = resolve_kind(opts, backend) == "gpu"
    group.kind = mc.ModelInstanceGroup.KIND_GPU if gpu else mc.ModelInstanceGroup.KIND_CPU
    if opts.dynamic_batching and opts.max_batch > 0:
        cfg.dynamic_batching.SetInParent()  # present even with a delay of 0 and no preferred sizes
        cfg.dynamic_batching.max_queue_delay_microseconds = opts.max_queue_delay_us
        cfg.dynamic_batching.preferred_batch_size.extend(opts.preferred_batch_sizes)
    for key, value in {**opts.parameters, **(identity or {})}.items():
        cfg.parameters[key].string_value = value
    return cfg


def config_text(cfg: Any) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def parse_config(text: str) -> Any:
    """``config.pbtxt`` text → ``ModelConfig`` (what Triton does on load); raises on anything it would not parse."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


__all__ = ["BACKENDS", "DETECTOR_OUTPUTS", "IDENTITY_PARAMETERS", "LABELS_FILE", "MODEL_FILES",
           "OPENVINO_BACKEND_PRECISION", "PYTHON_PARAMETERS", "TRITON_DTYPES", "ModelSignature", "RepoError",
           "RepoOptions", "TensorSpec", "build_config", "check_model_name", "check_servable", "config_text",
           "parse_config", "plan_filename", "python_parameters", "resolve_backend", "resolve_kind",
           "signature_from_onnx", "signature_from_sidecar"]
