"""Runtimes behind one small interface: a runner is a context manager with ``infer(x) -> y`` on NumPy arrays, and
``subject(inputs)`` times it the one way of its device (:mod:`vanilladeploy.runtimes.timing`).

Lifecycle (as in Polygraphy): ``with Runner(...) as r: r.infer(x)``; ``activate`` does the expensive set-up
(building a session), ``deactivate`` releases it. Heavy optional imports happen in ``activate``.
:class:`ChunkedRunner` fits any batch to a model's batch limits (a fixed-batch graph, an engine profile's range).
Every ONNX Runtime session is made by :func:`ort_session` and every OpenVINO compile by :func:`compile_openvino`, so
their settings are the same wherever they should be (the Triton Python-backend model too, or, where vanilladeploy is
not importable, its tested copies of :func:`ort_session_options` and :func:`openvino_compile_config`). torch is
imported only by the runners that need it, so a Triton stub can import the factories without it.
"""

from __future__ import annotations

import functools
import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from vanilladeploy.errors import UsageError
from vanilladeploy.machine import bf16_missing
from vanilladeploy.runtimes import ONNX_RUNTIMES
from vanilladeploy.runtimes.timing import Subject, timed_on_clock

if TYPE_CHECKING:
    import torch


def as_model_input(x: np.ndarray, dtype: type, model: object) -> np.ndarray:
    """``x`` as a graph input of ``dtype``: a float32 graph takes any numeric array (cast, as ever); a uint8 graph
    (``export --input uint8``) only uint8 pixels — anything else is refused, never rounded to pixels."""
    if np.dtype(dtype) == np.uint8 and np.asarray(x).dtype != np.uint8:
        raise UsageError(f"{model} takes uint8 pixels (0-255, N×3×H×W RGB, after resize and crop), not "
                         f"{np.asarray(x).dtype} data; give uint8 pixels (vanilladeploy.load(...).predict makes them "
                         "from images).")
    return np.ascontiguousarray(x, dtype=dtype)


class Runner(ABC):
    """A model in one runtime: maps an NCHW batch (float32, or uint8 pixels for a uint8-input graph) to logits.

    The base class owns the lifecycle (as Polygraphy's base runner does): :meth:`activate` and :meth:`deactivate`
    (or ``with runner:``) run a runtime's :meth:`activate_impl` and :meth:`deactivate_impl` once each,
    :attr:`is_active` says which, and :meth:`infer` outside it is one clear error. A runtime implements only the
    ``*_impl`` hooks."""

    name: str = "runner"
    is_active: bool = False

    def activate(self) -> None:
        """Prepare the runtime (:meth:`activate_impl`: load a session, move weights), unless active already."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        """Release what :meth:`activate` took (:meth:`deactivate_impl`), if anything."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def infer(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one input batch, from an active runner."""
        if not self.is_active:
            raise RuntimeError(f"{type(self).__name__}.infer before activate (use it as a context manager: "
                               "'with runner:')")
        return self.infer_impl(x)

    def activate_impl(self) -> None:
        """The runtime's own set-up (nothing by default)."""

    def deactivate_impl(self) -> None:
        """The runtime's own release (nothing by default)."""

    @abstractmethod
    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        """Outputs for one input batch (the runner is active)."""

    def subject(self, inputs: Sequence[np.ndarray], *, include_copies: bool = False) -> Subject:
        """A timing subject for an active runner: each call runs the next of ``inputs`` (in rotation) and returns
        its latency in ms. On the CPU that is ``infer`` on a clock (host arrays in and out: nothing to copy);
        device runners override it to time on their stream, with host↔device copies outside the timed region
        unless ``include_copies``. Runs once before returning (set-up that a first call does is not timed)."""
        rotation = itertools.cycle(inputs)

        def step() -> None:
            self.infer(next(rotation))

        step()
        return timed_on_clock(step)

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

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


Provider = str | tuple[str, dict[str, Any]]
"""An ONNX Runtime execution provider: its name, or its name and its options (``("CUDAExecutionProvider",
{"device_id": 1})``)."""


def ort_session_options(*, threads: int | None = None, spinning: bool | None = None) -> Any:
    """The ``SessionOptions`` of every session :func:`ort_session` makes: errors-only logging, sequential execution
    (no inter-op pool runs), every graph optimization; ``threads`` intra-op threads (and one inter-op thread) when
    given, else ONNX Runtime's default (one per physical core); ``spinning`` False stops idle intra-op threads from
    spinning (several sessions or processes on few cores), True states the default, None leaves it unstated."""
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


def ort_session(model: str | Path | bytes, *, threads: int | None = None, spinning: bool | None = None,
                providers: Sequence[Provider] = ("CPUExecutionProvider",)) -> Any:
    """The one way an ONNX Runtime session is made: :func:`ort_session_options` (``threads``, ``spinning``) on
    ``providers`` in order."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, ort_session_options(threads=threads, spinning=spinning),
                                providers=list(providers))


@functools.lru_cache(maxsize=1)
def max_supported_opset() -> int:
    """The newest default-domain opset that the installed onnx (full check) and ONNX Runtime (session creation) both
    accept, probed from onnx's newest downwards on a one-node graph; ``MIN_OPSET - 1`` when none is accepted."""
    import onnx
    from onnx import TensorProto, helper

    from vanilladeploy.exporters.onnx_export import MIN_OPSET

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        opsets = [helper.make_opsetid("", opset)]
        try:
            model = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets))
            onnx.checker.check_model(model, full_check=True)
            ort_session(model.SerializeToString())
            return opset
        except Exception:  # this opset is too new for one of them: try the next older
            continue
    return MIN_OPSET - 1


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on its CPU execution provider (the ``providers`` list may ask for others), the session made by
    :func:`ort_session` with ``threads`` and ``spinning``. With the CUDA provider, :meth:`subject` keeps inputs and
    outputs on the GPU (I/O binding to torch CUDA tensors)."""

    name = "onnxruntime"

    def __init__(self, model_path: Path | str | bytes, *, providers: list[str] | None = None,
                 threads: int | None = None, spinning: bool | None = None) -> None:
        self.model_path = model_path
        self.providers = providers or ["CPUExecutionProvider"]
        self.threads, self.spinning = threads, spinning
        self.session = None

    def activate_impl(self) -> None:
        self.session = ort_session(self.model_path, threads=self.threads, spinning=self.spinning,
                                   providers=self.providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name
        self.input_dtype = np.uint8 if self.session.get_inputs()[0].type == "tensor(uint8)" else np.float32

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        model = self.model_path if isinstance(self.model_path, (str, Path)) else "this ONNX"
        return self.session.run(None, {self.input_name: as_model_input(x, self.input_dtype, model)})[0]

    def subject(self, inputs: Sequence[np.ndarray], *, include_copies: bool = False) -> Subject:
        if include_copies or "CUDAExecutionProvider" not in self.session.get_providers():
            return super().subject(inputs, include_copies=include_copies)
        import torch

        from vanilladeploy.runtimes.timing import cuda_subject

        device_inputs = itertools.cycle([torch.from_numpy(np.ascontiguousarray(x)).cuda() for x in inputs])
        binding = self.session.io_binding()

        def step() -> None:
            x = next(device_inputs)
            binding.bind_input(self.input_name, "cuda", 0, np.float32, tuple(x.shape), x.data_ptr())
            binding.bind_output(self.output_name, "cuda")
            self.session.run_with_iobinding(binding)

        step()
        return cuda_subject(step)


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

    def activate_impl(self) -> None:
        self.inner.activate()

    def deactivate_impl(self) -> None:
        self.inner.deactivate()

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
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


OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
"""Our precision names → OpenVINO's element type names for ``INFERENCE_PRECISION_HINT`` (int8 is a graph property:
a QDQ ONNX, run as is, its float parts in the precision stated)."""
OPENVINO_TYPE_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}
"""``openvino.Type.get_type_name()`` → our precision name."""


def openvino_precision_name(reported: Any) -> str:
    """Our name for the precision a compiled model reports. OpenVINO answers ``INFERENCE_PRECISION_HINT`` with an
    ``openvino.Type`` whose ``str()`` is ``<Type: 'bfloat16'>`` and whose ``get_type_name()`` is ``bf16``: compare
    the type name, never the string."""
    name = reported.get_type_name() if hasattr(reported, "get_type_name") else str(reported)
    return OPENVINO_TYPE_NAMES.get(name, name)


def precision_mismatch(asked: str, reported: Any) -> str | None:
    """None when a model compiled for ``asked`` (our name) reports it, else a sentence that says what it runs in."""
    runs_in = openvino_precision_name(reported)
    return None if runs_in == asked else f"OpenVINO compiled the model in {runs_in}, not the {asked} asked for"


def openvino_compile_config(precision: str = "fp32", *, hint: str = "LATENCY",
                            threads: int | None = None) -> dict[str, str]:
    """The config of every :func:`compile_openvino`: the performance ``hint``, the inference precision always
    stated, ``INFERENCE_NUM_THREADS`` only when ``threads`` caps it (else every core)."""
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"OpenVINO precision {precision!r}: choose {', '.join(OPENVINO_PRECISIONS)}")
    config = {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    return config


def compile_openvino(model: str | Path | Any, precision: str = "fp32", *, hint: str = "LATENCY",
                     threads: int | None = None, core: Any = None) -> Any:
    """``model`` (a file, or an ``openvino.Model``) compiled for OpenVINO's CPU plugin, always with its precision
    stated: without ``INFERENCE_PRECISION_HINT`` a CPU with native bf16 silently computes in bf16. bf16 on a CPU
    without it is refused before compiling, and a compiled model that reports another precision than asked is
    refused after (:class:`PrecisionUnavailable`, with the reason)."""
    import openvino as ov

    config = openvino_compile_config(precision, hint=hint, threads=threads)
    core = core or ov.Core()
    if precision == "bf16":
        missing = bf16_missing(capabilities=core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        if missing:
            raise PrecisionUnavailable(f"OpenVINO bf16: {missing}")
    if isinstance(model, (str, Path)):
        model = core.read_model(str(model))
    compiled = core.compile_model(model, "CPU", config)
    problem = precision_mismatch(precision, compiled.get_property("INFERENCE_PRECISION_HINT"))
    if problem:
        raise PrecisionUnavailable(problem)
    return compiled


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin on an ONNX file (fp32, or an int8 QDQ graph as is) or an IR ``.xml``.

    ``precision`` is always stated to the plugin (:func:`compile_openvino`): fp32, or bf16 only on a CPU with
    native bf16 (else :class:`PrecisionUnavailable`, never silently fp32). ``hint`` LATENCY suits one request in
    flight, THROUGHPUT several; ``threads`` caps ``INFERENCE_NUM_THREADS``. Once active, ``compiled_precision`` is
    what the compiled model reports.
    """

    name = "openvino"

    def __init__(self, model_path: Path, *, precision: str = "fp32", hint: str = "LATENCY",
                 threads: int | None = None) -> None:
        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO precision {precision!r}: choose {', '.join(OPENVINO_PRECISIONS)}")
        self.model_path, self.precision, self.hint, self.threads = Path(model_path), precision, hint, threads
        self.request = self.compiled = self.compiled_precision = None

    def activate_impl(self) -> None:
        self.compiled = compile_openvino(self.model_path, self.precision, hint=self.hint, threads=self.threads)
        self.compiled_precision = openvino_precision_name(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        self.request = self.compiled.create_infer_request()
        uint8 = self.compiled.input(0).get_element_type().get_type_name() == "u8"
        self.input_dtype = np.uint8 if uint8 else np.float32

    def deactivate_impl(self) -> None:
        self.request = self.compiled = None

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: as_model_input(x, self.input_dtype, self.model_path)})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


class PrecisionUnavailable(UsageError):
    """The runtime cannot compute in the precision asked for here; the message says why (a missing ISA flag, the
    precision the compiled model reports)."""


def onnx_runner(model_path: Path, runtime: str = "onnxruntime", *, precision: str = "fp32", hint: str = "LATENCY",
                threads: int | None = None, spinning: bool | None = None) -> Runner:
    """A runner for an ONNX file in ``runtime`` (one of :data:`~vanilladeploy.runtimes.ONNX_RUNTIMES`);
    ``precision`` bf16 is OpenVINO's (the graph stays fp32); ``spinning`` is ONNX Runtime's (:func:`ort_session`)."""
    if runtime == "openvino":
        return OpenVinoRunner(model_path, precision=precision, hint=hint, threads=threads)
    if runtime != "onnxruntime":
        raise ValueError(f"runtime {runtime!r}: choose {', '.join(ONNX_RUNTIMES)}")
    if precision not in ("fp32",):
        raise ValueError(f"ONNX Runtime runs the graph's own precision; {precision} is an OpenVINO precision")
    return OnnxRuntimeRunner(model_path, threads=threads, spinning=spinning)
