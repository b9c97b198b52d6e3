"""Triton Python-backend model: ONNX Runtime inside Triton (copied as ``<model>/1/model.py`` by ``vanilladeploy repo``).

Self-contained (it runs in Triton's stub process and imports nothing of vanilladeploy): it loads ``model.onnx`` from
its own version directory and runs the requests that Triton's dynamic batcher hands it as ONE batch, then splits the
logits back per request. A request whose input is malformed gets its own error response; the others still run.
Threads: ``VANILLADEPLOY_ORT_THREADS`` (environment) or the config parameter ``ort_threads``; default: ONNX Runtime's.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        directory = os.path.join(args["model_repository"], args["model_version"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = os.environ.get("VANILLADEPLOY_ORT_THREADS") or params.get("ort_threads") or "0"
        options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(os.path.join(directory, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.sample_shape = tuple(int(d) for d in config["input"][0]["dims"])

    def _check(self, x):
        if x.dtype != np.float32:
            return f"input '{self.input_name}' must be FP32, got {x.dtype}"
        if x.ndim != len(self.sample_shape) + 1 or tuple(x.shape[1:]) != self.sample_shape:
            return f"input '{self.input_name}' must have shape [N, {', '.join(map(str, self.sample_shape))}], " \
                   f"got {list(x.shape)}"
        return None

    def execute(self, requests):
        batches, responses = [], [None] * len(requests)
        for i, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, self.input_name)
            x = None if tensor is None else tensor.as_numpy()
            problem = f"missing input '{self.input_name}'" if x is None else self._check(x)
            if problem:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem))
            else:
                batches.append((i, x))
        if batches:
            logits = self.session.run([self.output_name], {self.input_name: np.concatenate([x for _, x in batches])})[0]
            start = 0
            for i, x in batches:
                out = pb_utils.Tensor(self.output_name, np.ascontiguousarray(logits[start:start + len(x)]))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                start += len(x)
        return responses

    def finalize(self):
        self.session = None
