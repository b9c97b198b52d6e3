"""Triton Python-backend model: the preprocess step of an image ensemble (copied as ``<model>_preprocess/1/model.py``
by :mod:`vanilladeploy.triton.ensemble`).

Input ``image``: BYTES, one encoded image per batch element (``[N, 1]``). Output: the classifier's input, ``[N, 3,
H, W]``, made by :class:`vanilladeploy.images.Preprocess` from the preprocessing the config's ``preprocessing``
parameter holds (the artifact's ONNX metadata): decode, RGB, resize and center crop as the official eval does, then
normalized float32, or uint8 pixels for a model that takes them. Each request is answered on its own: one whose image
cannot be decoded gets an INVALID_ARG error (HTTP 400) naming the element and why, and the other requests of the
dynamic batch still get their tensors.
"""

import io
import json

import numpy as np

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # imported outside Triton: only ``preprocess_request`` is usable
    pb_utils = None


def preprocess_request(encoded, preprocess):
    """``[N, 1]`` encoded images → (``[N, 3, H, W]`` array, None), or (None, what is wrong with the first bad one)."""
    from PIL import Image

    rows = []
    for i, element in enumerate(np.asarray(encoded, dtype=object).reshape(len(encoded), -1)[:, 0]):
        try:
            with Image.open(io.BytesIO(bytes(element))) as image:
                image.load()
                rows.append(preprocess(image))
        except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError…
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            return None, f"image {i} of the request could not be read as an image: {why}"
    return np.stack(rows), None


class TritonPythonModel:
    def initialize(self, args):
        from vanilladeploy.images import Preprocess

        config = json.loads(args["model_config"])
        meta = json.loads(config["parameters"]["preprocessing"]["string_value"])
        self.preprocess = Preprocess.from_metadata(meta)
        self.output = config["output"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
            tensor, problem = preprocess_request(encoded, self.preprocess)
            if problem is not None:
                error = pb_utils.TritonError(problem, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output, tensor)]))
        return responses
