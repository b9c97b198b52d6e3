"""Triton Python-backend model: ONNX Runtime or OpenVINO inside Triton (copied as ``<model>/1/model.py`` by
``vanilladeploy repo``).

Self-contained (it runs in Triton's stub process and imports nothing of vanilladeploy): it loads ``model.onnx`` from
its own version directory and runs the requests that Triton's dynamic batcher hands it as ONE batch, then splits the
logits back per request. A request whose input is malformed gets its own error response; the others still run.
With ``max_batch_size`` 0 the config's ``dims`` are the whole shape (batch included) and each request runs alone.
An instance of kind GPU runs on ONNX Runtime's CUDA provider where this onnxruntime has it, else on the CPU.
Threads: ``VANILLADEPLOY_ORT_THREADS`` (environment) or the config parameter ``ort_threads``; default: ONNX Runtime's.
The config parameter ``runtime`` = ``openvino`` runs the model in OpenVINO's CPU plugin instead (``PERFORMANCE_HINT``
THROUGHPUT; ``precision`` ``bf16`` as its inference precision, refused at load time where the CPU cannot do it).
"""

import json
import os

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: only the pure helpers below are usable
    pb_utils = None


def expected_shape(dims, max_batch_size):
    """The full input shape a request must have: ``-1`` (any) for Triton's batch dimension, then ``dims``."""
    dims = tuple(int(d) for d in dims)
    return (-1, *dims) if max_batch_size > 0 else dims


def shape_problem(name, x, shape):
    """None when ``x`` is FP32 with ``shape`` (``-1`` matches any size), else what is wrong."""
    if x.dtype != np.float32:
        return f"input '{name}' must be FP32, got {x.dtype}"
    if x.ndim != len(shape) or any(d not in (-1, n) for d, n in zip(shape, x.shape)):
        wanted = ", ".join("N" if d == -1 else str(d) for d in shape)
        return f"input '{name}' must have shape [{wanted}], got {list(x.shape)}"
    return None


def providers(instance_kind, available):
    """CUDA first for a GPU instance where ONNX Runtime has it; the CPU always."""
    gpu = instance_kind == "GPU" and "CUDAExecutionProvider" in available
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if gpu else ["CPUExecutionProvider"]


def onnxruntime_session(path, params, args):
    """``x -> logits`` in ONNX Runtime (CUDA first for a GPU instance where it has it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    threads = os.environ.get("VANILLADEPLOY_ORT_THREADS") or params.get("ort_threads") or "0"
    options.intra_op_num_threads = int(threads)
    chosen = providers(args.get("model_instance_kind"), ort.get_available_providers())
    if chosen[0] == "CUDAExecutionProvider":
        chosen[0] = (chosen[0], {"device_id": int(args.get("model_instance_device_id") or 0)})
    session = ort.InferenceSession(path, options, providers=chosen)
    return lambda name, x: session.run(None, {name: x})[0]


def openvino_session(path, params):
    """``x -> logits`` in OpenVINO's CPU plugin; bf16 only where the plugin computes in it (never fp32 instead)."""
    import openvino as ov

    precision = {"bf16": "bf16"}.get(params.get("precision", ""), "f32")
    core = ov.Core()
    if precision == "bf16" and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        raise RuntimeError("precision bf16: this CPU has no native bf16 (OpenVINO's CPU plugin reports no BF16)")
    compiled = core.compile_model(path, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT",
                                                "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def run(name, x):
        request.infer({0: x})
        return np.array(request.get_output_tensor(0).data, copy=True)

    return run


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
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        max_batch_size = int(config.get("max_batch_size", 0))
        self.batched = max_batch_size > 0
        self.shape = expected_shape(config["input"][0]["dims"], max_batch_size)

    def execute(self, requests):
        batches, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            x = None if tensor is None else tensor.as_numpy()
            problem = f"missing input '{self.input_name}'" if x is None else shape_problem(self.input_name, x,
                                                                                            self.shape)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                batches.append((i, x))
        for group in [batches] if self.batched else [[b] for b in batches]:  # max_batch_size 0: one by one
            if group:
                self._run(group, responses)
        return responses

    def _run(self, group, responses):
        """One ONNX Runtime call for the requests of ``group``; each gets its own rows of the logits."""
        logits = self.session(self.input_name, np.concatenate([x for _, x in group]))
        start = 0
        for i, x in group:
            out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(logits[start:start + len(x)]))
            responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
            start += len(x)

    def finalize(self):
        self.session = None
