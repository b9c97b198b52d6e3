"""Triton Python-backend model: ONNX Runtime or OpenVINO inside Triton (copied as ``<model>/1/model.py`` by
``vanilladeploy repo``).

It loads ``model.onnx`` from its own version directory and runs the requests that Triton's dynamic batcher hands it,
then answers each request with its own rows of the logits. An exported detector (several outputs: boxes, scores,
labels, num_detections) runs each request alone, since requests differ in height and width, and answers every
output. A request whose input is malformed gets its own error response; the others still run. With
``max_batch_size`` 0 the config's ``dims`` are the whole shape (batch included) and each request runs alone. An
instance of kind GPU runs on ONNX Runtime's CUDA provider where this onnxruntime has it, else on the CPU.

Who makes the session: where the stub's Python has vanilladeploy (``vanilladeploy serve``, ``serve-bench``,
``optimize``: the server runs this environment's Python), vanilladeploy's own factories,
:func:`vanilladeploy.runtimes.runners.ort_session` and :func:`~vanilladeploy.runtimes.runners.compile_openvino`, so
the settings are those of every other session; a stock Triton container has only numpy and the runtime (vanilladeploy
would bring torch), and there the copies below make them — :func:`ort_session_options`, :func:`openvino_config` and
:func:`bf16_missing`, held identical to the factories' by tests/test_triton_python_model.py. The server's log says which
(``… made by vanilladeploy.runtimes.runners.ort_session`` or ``… made by model.py``).

How it runs is read from the config's parameters, which ``vanilladeploy repo`` writes out in full (the values
measured in docs/serving.md); a parameter that is absent means the runtime's own default:

- ``runtime``: ``onnxruntime`` (default) or ``openvino`` (OpenVINO's CPU plugin).
- ONNX Runtime: ``ort_threads`` (intra-op threads, and then one inter-op thread; 0: one per physical core; the
  environment's ``VANILLADEPLOY_ORT_THREADS`` wins) and ``ort_spinning`` (``0``: idle intra-op threads sleep instead
  of spinning, leaving the cores to Triton's own threads and to the clients). Errors-only logging, sequential
  execution, every graph optimization. The whole dynamic batch is one ``run``.
- OpenVINO: ``precision`` (fp32 and int8 compute in f32 — int8 is the QDQ graph's own — bf16 in bf16) is passed as
  ``INFERENCE_PRECISION_HINT`` and then read back from the compiled model: a model compiled in anything else is
  refused at load time (on a CPU with native bf16 OpenVINO's default would be bf16); bf16 needs native bf16 (an
  avx512_bf16 or amx_bf16 CPU flag, and BF16 among the plugin's capabilities). ``openvino_hint`` LATENCY runs
  the whole dynamic batch as one synchronous inference (one stream, every core); THROUGHPUT runs each request of
  the batch on an ``AsyncInferQueue`` of ``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests, so every stream works (one
  synchronous request would use one stream of several). ``openvino_threads``: ``INFERENCE_NUM_THREADS`` (0: all).
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: only the pure helpers below are usable
    pb_utils = None

OPENVINO_PRECISIONS = {"": "f32", "fp32": "f32", "int8": "f32", "bf16": "bf16"}
"""The ``precision`` parameter → OpenVINO's inference precision (type name) it must compile to."""
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT")
INPUT_TYPES = {"TYPE_FP32": np.float32, "TYPE_UINT8": np.uint8}
"""The config's input ``data_type`` → what a request must carry (uint8: the pixels of an ``--input uint8`` export)."""


def expected_shape(dims, max_batch_size):
    """The full input shape a request must have: ``-1`` (any) for Triton's batch dimension, then ``dims``."""
    dims = tuple(int(d) for d in dims)
    return (-1, *dims) if max_batch_size > 0 else dims


def shape_problem(name, x, shape, dtype=np.float32):
    """None when ``x`` is of ``dtype`` (FP32, or UINT8 pixels) with ``shape`` (``-1`` matches any size), else what
    is wrong."""
    if x.dtype != dtype:
        return f"input '{name}' must be {'UINT8' if dtype == np.uint8 else 'FP32'}, got {x.dtype}"
    if x.ndim != len(shape) or any(d not in (-1, n) for d, n in zip(shape, x.shape)):
        wanted = ", ".join("N" if d == -1 else str(d) for d in shape)
        return f"input '{name}' must have shape [{wanted}], got {list(x.shape)}"
    return None


def providers(instance_kind, available):
    """CUDA first for a GPU instance where ONNX Runtime has it; the CPU always."""
    gpu = instance_kind == "GPU" and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]


def split_rows(y, xs):
    """``y``'s rows back per input of ``xs`` (each input's own batch, in order)."""
    ends = np.cumsum([len(x) for x in xs])
    return [np.ascontiguousarray(part) for part in np.split(y, ends[:-1])]


def factories():
    """:mod:`vanilladeploy.runtimes.runners` where this Python has vanilladeploy, else None (a stock container)."""
    try:
        from vanilladeploy.runtimes import runners
    except ImportError:
        return None
    return runners


def ort_settings(params, environ):
    """What the ONNX Runtime session is set to: intra-op threads (0: one per physical core) and whether idle threads
    spin."""
    threads = environ.get("VANILLADEPLOY_ORT_THREADS") or params.get("ort_threads") or "0"
    return {"intra_op_num_threads": int(threads), "allow_spinning": params.get("ort_spinning", "1") != "0"}


def ort_arguments(params, environ):
    """:func:`ort_settings` as ``ort_session``'s keywords: ``threads`` (None: ONNX Runtime's default, one per
    physical core) and ``spinning`` (always stated)."""
    settings = ort_settings(params, environ)
    return {"threads": settings["intra_op_num_threads"] or None, "spinning": settings["allow_spinning"]}


def ort_session_options(*, threads=None, spinning=None):
    """A copy of :func:`vanilladeploy.runtimes.runners.ort_session_options`, for a Python without vanilladeploy."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if spinning is not None:
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return options


def _ort_session(path, *, threads, spinning, providers):
    import onnxruntime as ort

    return ort.InferenceSession(path, ort_session_options(threads=threads, spinning=spinning), providers=providers)


class OnnxRuntimeSession:
    """``[x, ...] -> [logits, ...]`` as one ONNX Runtime run over the concatenated batch; the session made by
    vanilladeploy's ``ort_session`` unless vanilladeploy is missing or ``local`` (then by this file's copy)."""

    def __init__(self, path, params, args, *, local=False):
        import onnxruntime as ort

        chosen = providers(args.get("model_instance_kind"), ort.get_available_providers())
        if chosen[0] == "CUDAExecutionProvider":
            chosen[0] = (chosen[0], {"device_id": int(args.get("model_instance_device_id") or 0)})
        runners = None if local else factories()
        make = runners.ort_session if runners else _ort_session
        self.made_by = "vanilladeploy.runtimes.runners.ort_session" if runners else "model.py"
        self.session = make(path, providers=chosen, **ort_arguments(params, os.environ))

    def __call__(self, name, xs):
        return split_rows(self.session.run(None, {name: np.concatenate(xs)})[0], xs)

    def run_all(self, name, x):
        """Every output of one run on ``x`` (a detector: boxes, scores, labels, num_detections)."""
        return self.session.run(None, {name: x})


def openvino_arguments(params):
    """The config's parameters as ``compile_openvino``'s: ``precision`` (bf16, else fp32: int8 is the QDQ graph's,
    computed in f32), ``hint``, ``threads`` (None: every core); a ValueError names a parameter it cannot serve."""
    precision, hint = params.get("precision", ""), params.get("openvino_hint") or "LATENCY"
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision {precision!r}: OpenVINO serves fp32, int8 (the QDQ graph) or bf16")
    if hint not in OPENVINO_HINTS:
        raise ValueError(f"openvino_hint {hint!r}: choose {' or '.join(OPENVINO_HINTS)}")
    threads = max(int(params.get("openvino_threads") or 0), 0)
    return {"precision": "bf16" if precision == "bf16" else "fp32", "hint": hint, "threads": threads or None}


def openvino_config(params):
    """The compile config — the hint, the inference precision stated explicitly, the thread count if capped — as
    :func:`vanilladeploy.runtimes.runners.openvino_compile_config` makes it (a copy, for a Python without it)."""
    arguments = openvino_arguments(params)
    config = {"PERFORMANCE_HINT": arguments["hint"],
              "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[arguments["precision"]]}
    if arguments["threads"]:
        config["INFERENCE_NUM_THREADS"] = str(arguments["threads"])
    return config


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""A copy of :data:`vanilladeploy.machine.BF16_FLAGS`: the CPU flags of native bf16 arithmetic."""


def cpu_flags(cpuinfo=None):
    """The flags of the first ``flags`` line of ``cpuinfo`` (default: /proc/cpuinfo's text), empty where there is
    none: how :func:`vanilladeploy.machine.cpu_flags` reads /proc/cpuinfo (a copy)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                cpuinfo = f.read()
        except OSError:
            return frozenset()
    return next((frozenset(value.split()) for key, sep, value in (line.partition(":") for line in
                 cpuinfo.splitlines()) if sep and key.strip().lower() == "flags"), frozenset())


def bf16_missing(flags, capabilities):
    """Why bf16 is not native here, or None: :func:`vanilladeploy.machine.bf16_missing`'s decision (a copy)."""
    if not any(f in flags for f in BF16_FLAGS):
        return f"this CPU has no native bf16 (neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo)"
    if "BF16" not in capabilities:
        return "OpenVINO's CPU plugin reports no BF16 capability on this CPU"
    return None


def _compile_openvino(path, params):
    """``compile_openvino``'s compile, for a Python without vanilladeploy: bf16 only where native."""
    import openvino as ov

    core, config = ov.Core(), openvino_config(params)
    if config["INFERENCE_PRECISION_HINT"] == "bf16":
        missing = bf16_missing(cpu_flags(), core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if missing:
            raise RuntimeError(f"precision bf16: {missing}")
    return core.compile_model(core.read_model(path), "CPU", config)


def compiled_precision(compiled, wanted):
    """The type name (``f32``, ``bf16``) the compiled model computes in; raises unless it is ``wanted``."""
    name = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if name != wanted:
        raise RuntimeError(f"OpenVINO compiled the model in {name}, not the {wanted} asked for "
                           "(INFERENCE_PRECISION_HINT); serve precision fp32 here, or on a CPU that computes in it")
    return name


class OpenVinoSession:
    """``[x, ...] -> [logits, ...]`` in OpenVINO's CPU plugin, compiled by vanilladeploy's ``compile_openvino``
    unless vanilladeploy is missing or ``local`` (then by this file's copy); ``compiled``, ``config`` and
    ``precision`` (what the compiled model reports it computes in) are readable, for tests and logs."""

    def __init__(self, path, params, *, local=False):
        import openvino as ov

        arguments, runners = openvino_arguments(params), None if local else factories()
        if runners:
            self.config = runners.openvino_compile_config(**arguments)
            self.compiled = runners.compile_openvino(path, **arguments)
        else:
            self.config, self.compiled = openvino_config(params), _compile_openvino(path, params)
        self.made_by = "vanilladeploy.runtimes.runners.compile_openvino" if runners else "model.py"
        self.precision = compiled_precision(self.compiled, self.config["INFERENCE_PRECISION_HINT"])
        if self.config["PERFORMANCE_HINT"] == "THROUGHPUT":
            jobs = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
            self.queue, self.request = ov.AsyncInferQueue(self.compiled, jobs), None
            self.queue.set_callback(_keep_output)
        else:
            self.queue, self.request = None, self.compiled.create_infer_request()

    def run_all(self, name, x):
        """Every output of one synchronous inference on ``x`` (a detector's four), in the model's output order."""
        if self.request is None:  # THROUGHPUT: one request of our own beside the queue's
            self.request = self.compiled.create_infer_request()
        self.request.infer({0: x})
        return [np.array(t.data, copy=True) for t in self.request.output_tensors]

    def __call__(self, name, xs):
        if self.queue is None:  # one synchronous inference over the whole batch
            self.request.infer({0: np.concatenate(xs)})
            return split_rows(np.array(self.request.get_output_tensor(0).data, copy=True), xs)
        results = [None] * len(xs)
        for i, x in enumerate(xs):  # each request on the next free stream
            self.queue.start_async({0: x}, (results, i))
        self.queue.wait_all()
        return results


def _keep_output(request, slot):
    results, i = slot
    results[i] = np.array(request.get_output_tensor(0).data, copy=True)


def openvino_session(path, params, *, local=False):
    """An :class:`OpenVinoSession` for ``path`` with the config's ``params`` (usable outside Triton; ``local``:
    compiled by this file's copy even where vanilladeploy is importable)."""
    return OpenVinoSession(path, params, local=local)


def onnxruntime_session(path, params, args, *, local=False):
    """An :class:`OnnxRuntimeSession` for ``path`` (CUDA first for a GPU instance where it has it; ``local``: made
    by this file's copy even where vanilladeploy is importable)."""
    return OnnxRuntimeSession(path, params, args, local=local)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        directory = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        path = os.path.join(directory, "model.onnx")
        if params.get("runtime") == "openvino":
            self.session = openvino_session(path, params)
        else:
            self.session = onnxruntime_session(path, params, args)
        if getattr(pb_utils, "Logger", None) is not None:  # the python backend's logger (Triton 23.04 on)
            pb_utils.Logger.log_info(f"{config.get('name', 'model')}: {type(self.session).__name__} made by "
                                     f"{self.session.made_by}")
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]
        self.detector = len(self.output_names) > 1  # boxes, scores, labels, num_detections: every output answered
        max_batch_size = int(config.get("max_batch_size", 0))
        self.batched = max_batch_size > 0
        self.shape = expected_shape(config["input"][0]["dims"], max_batch_size)
        self.dtype = INPUT_TYPES.get(config["input"][0].get("data_type", "TYPE_FP32"), np.float32)

    def execute(self, requests):
        batches, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            x = None if tensor is None else tensor.as_numpy()
            problem = f"missing input '{self.input_name}'" if x is None else shape_problem(self.input_name, x,
                                                                                            self.shape, self.dtype)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                batches.append((i, x))
        alone = not self.batched or self.detector  # a detector's requests differ in height and width
        for group in [[b] for b in batches] if alone else [batches]:  # max_batch_size 0: one by one
            if group:
                self._run(group, responses)
        return responses

    def _run(self, group, responses):
        """One inference for the requests of ``group``; each gets its own rows of the logits (a detector: one
        request, every output)."""
        if self.detector:
            (i, x), = group
            outputs = self.session.run_all(self.input_name, x)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(name, np.ascontiguousarray(y)) for name, y in zip(self.output_names, outputs)])
            return
        outputs = self.session(self.input_name, [x for _, x in group])
        for (i, _), logits in zip(group, outputs):
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, logits)])

    def finalize(self):
        self.session = None
