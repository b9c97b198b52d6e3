"""Backends behind one small interface: a runner is a context manager with ``infer(x) -> y`` on NumPy arrays.

Lifecycle (as in Polygraphy): ``with Runner(...) as r: r.infer(x)``; ``activate`` does the expensive set-up
(building a session), ``deactivate`` releases it. Heavy optional imports happen in ``activate``.
:class:`ChunkedRunner` fits any batch to a model's batch limits (a fixed-batch graph, an engine profile's range).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import onnx


class Runner(ABC):
    """One backend that maps an NCHW float32 batch to logits."""

    name: str = "runner"

    def activate(self) -> None:
        """Prepare the backend (load a session, move weights); called by ``__enter__``."""

    def deactivate(self) -> None:
        """Release what ``activate`` took; called by ``__exit__``."""

    @abstractmethod
    def infer(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one input batch."""

    def __enter__(self) -> Runner:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()


class TorchRunner(Runner):
    """Eager PyTorch on the CPU, in eval mode, without autograd."""

    name = "torch"

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module.eval()

    def infer(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on its CPU execution provider (the ``providers`` list may ask for others)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path, *, providers: list[str] | None = None) -> None:
        self.model_path = model_path
        self.providers = providers or ["CPUExecutionProvider"]
        self.session = None

    def activate(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.model_path), options, providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name

    def deactivate(self) -> None:
        self.session = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.session is None:
            raise RuntimeError("OnnxRuntimeRunner.infer called outside 'with runner:'")
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]


class ChunkedRunner(Runner):
    """Feeds another runner only batches it accepts, so callers may pass any batch size.

    At most ``max_batch`` images per call (an engine profile's max); at least ``min_batch`` (a short chunk is
    padded by repeating its last image and the padding's outputs are dropped). A fixed-batch graph has
    ``min_batch = max_batch = N``. Outputs are concatenated in input order.
    """

    def __init__(self, inner: Runner, *, min_batch: int = 1, max_batch: int | None = None) -> None:
        if min_batch < 1 or (max_batch is not None and max_batch < min_batch):
            raise ValueError(f"batch limits {min_batch}..{max_batch}: need 1 ≤ min_batch ≤ max_batch")
        self.inner, self.min_batch, self.max_batch = inner, min_batch, max_batch
        self.name = inner.name

    def activate(self) -> None:
        self.inner.activate()

    def deactivate(self) -> None:
        self.inner.deactivate()

    def infer(self, x: np.ndarray) -> np.ndarray:
        if len(x) == 0:
            raise ValueError("ChunkedRunner.infer: an empty batch")
        step = self.max_batch or len(x)
        outputs = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            n = len(chunk)
            if n < self.min_batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.min_batch - n, axis=0)])
            outputs.append(self.inner.infer(chunk)[:n])
        return np.concatenate(outputs)


def fixed_batch_of(model_input: onnx.ValueInfoProto) -> int | None:
    """The fixed batch size of an ONNX graph input, or None when it is dynamic (symbolic or unset)."""
    dims = model_input.type.tensor_type.shape.dim
    return dims[0].dim_value if len(dims) > 0 and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names → OpenVINO's ``INFERENCE_PRECISION_HINT`` (int8 is a graph property: a QDQ ONNX, run as is)."""


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin on an ONNX file (fp32, or an int8 QDQ graph as is) or an IR ``.xml``.

    ``precision`` bf16 asks the plugin to compute in bfloat16 (``INFERENCE_PRECISION_HINT``); the compiled model is
    then asked what it really runs in, and a CPU that cannot do bf16 is refused (:class:`PrecisionUnavailable`),
    never silently run in fp32. ``hint`` LATENCY suits batch 1, THROUGHPUT serving; ``threads`` caps
    ``INFERENCE_NUM_THREADS``.
    """

    name = "openvino"

    def __init__(self, model_path: Path, *, precision: str = "fp32", hint: str = "LATENCY",
                 threads: int | None = None) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r}: choose {', '.join(OPENVINO_PRECISIONS)}")
        self.model_path, self.precision, self.hint, self.threads = Path(model_path), precision, hint, threads
        self.request = None

    def config(self) -> dict[str, str]:
        config = {"PERFORMANCE_HINT": self.hint, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[self.precision]}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = str(self.threads)
        return config

    def activate(self) -> None:
        import openvino as ov

        core = ov.Core()
        if self.precision == "bf16":
            missing = bf16_missing() or ("" if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES") else
                                         "OpenVINO's CPU plugin reports no BF16 capability on this CPU")
            if missing:
                raise PrecisionUnavailable(f"OpenVINO bf16: {missing}")
        compiled = core.compile_model(core.read_model(str(self.model_path)), "CPU", self.config())
        runs_in = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
        if self.precision == "bf16" and "bf16" not in runs_in.lower():
            raise PrecisionUnavailable(f"OpenVINO compiled the model in {runs_in}, not bf16: {bf16_missing()}")
        self.compiled, self.request = compiled, compiled.create_infer_request()

    def deactivate(self) -> None:
        self.request = self.compiled = None

    def infer(self, x: np.ndarray) -> np.ndarray:
        if self.request is None:
            raise RuntimeError("OpenVinoRunner.infer called outside 'with runner:'")
        self.request.infer({0: np.ascontiguousarray(x, dtype=np.float32)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


class PrecisionUnavailable(RuntimeError):
    """The CPU cannot compute in the precision asked for; the message names the missing ISA flag."""


def bf16_missing(flags: frozenset[str] | None = None) -> str | None:
    """Why this CPU has no native bf16 (the /proc/cpuinfo flags it lacks), or None when it has one."""
    from vanilladeploy.machine import BF16_FLAGS, cpu_flags

    flags = cpu_flags() if flags is None else flags
    if any(f in flags for f in BF16_FLAGS):
        return None
    return (f"this CPU has no native bf16 (neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo); it would run in "
            "fp32 — use fp32 or int8 here, or a CPU with AVX-512 BF16 or AMX")


RUNTIMES = ("onnxruntime", "openvino")
"""The runtimes that run our ONNX files (fp32, fp16, the int8 QDQ graph) on the CPU."""


def onnx_runner(model_path: Path, runtime: str = "onnxruntime", *, precision: str = "fp32", hint: str = "LATENCY",
                threads: int | None = None) -> Runner:
    """A runner for an ONNX file in ``runtime``; ``precision`` bf16 is OpenVINO's (the graph stays fp32)."""
    if runtime == "openvino":
        return OpenVinoRunner(model_path, precision=precision, hint=hint, threads=threads)
    if runtime != "onnxruntime":
        raise ValueError(f"runtime {runtime!r}: choose {', '.join(RUNTIMES)}")
    if precision not in ("fp32",):
        raise ValueError(f"ONNX Runtime runs the graph's own precision; {precision} is an OpenVINO precision")
    return OnnxRuntimeRunner(model_path)
