"""The thin layer over TensorRT (10.x and 11.x Python API): build an engine from ONNX, run it on torch CUDA tensors.

Everything decidable without TensorRT (options, sidecar, trtexec line, compatibility) lives in
:mod:`.trt_plan` and :mod:`vanilladeploy.exporters.trt_compat` and is tested in CI; this module only calls TensorRT and
is tested where TensorRT and a GPU exist (``pytest -m gpu``). ``tensorrt`` is imported inside the functions.

Precision: TensorRT 10 builds a weakly typed network from the fp32 ONNX, with ``BuilderFlag.FP16`` for fp16 and
``BuilderFlag.TF32`` cleared for fp32. TensorRT 11 only builds strongly typed networks and has no FP16 flag, so fp16
comes from the fp16-typed ONNX copy (:func:`vanilladeploy.exporters.fp16_graph.convert_to_fp16`).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vanilladeploy.atomic import write_atomically
from vanilladeploy.checkpoint import sha256_of
from vanilladeploy.runtimes.runners import Runner
from vanilladeploy.runtimes.timing import Subject, cuda_subject
from vanilladeploy.runtimes.trt_plan import (
    EngineBuildError,
    EngineMismatchError,
    TensorRTUnavailable,
    TrtBuildOptions,
    check_engine_sidecar,
    engine_sidecar,
    profile_shapes,
    tensorrt_missing,
)


def import_tensorrt() -> Any:
    """The ``tensorrt`` module; raises :class:`TensorRTUnavailable` (naming the fix) without it or a GPU."""
    reason = tensorrt_missing()
    if reason:
        raise TensorRTUnavailable(reason)
    import tensorrt

    return tensorrt


def tensorrt_major(trt: Any) -> int:
    return int(trt.__version__.split(".")[0])


def strongly_typed_only() -> bool:
    """True on TensorRT 11+, which builds only strongly typed networks: fp16 must come from the fp16-typed ONNX
    (``BuilderFlag.FP16`` is gone); False on TensorRT 10, which takes the fp32 ONNX and the FP16 flag."""
    return tensorrt_major(import_tensorrt()) >= 11


def _logger(trt: Any, lines: list[str], verbose: bool) -> Any:
    """A logger that keeps TensorRT's messages (for errors and the build log) instead of printing them."""
    threshold = trt.ILogger.Severity.VERBOSE if verbose else trt.ILogger.Severity.WARNING

    class _Keep(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            if int(severity) <= int(threshold):
                lines.append(f"[{severity.name}] {msg}")

    return _Keep()


@dataclass
class BuiltEngine:
    """A serialized engine, with what the build reported."""

    plan: bytes
    tensorrt_version: str
    strongly_typed: bool
    build_s: float
    log: list[str]
    layer_info: str | None  # the engine inspector's JSON, when ``detailed_log`` was asked


def build_engine(onnx_path: Path, opts: TrtBuildOptions) -> BuiltEngine:
    """Parse ``onnx_path`` and build a serialized engine (fp16 on TensorRT 11: pass the fp16-typed ONNX)."""
    trt = import_tensorrt()
    lines: list[str] = []
    logger = _logger(trt, lines, opts.detailed_log)
    builder = trt.Builder(logger)
    strongly_typed = strongly_typed_only()
    network = builder.create_network(0)  # explicit batch always (10.x); strongly typed always (11.x)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT's ONNX parser refused {onnx_path.name}: {errors}")
    config = _builder_config(trt, builder, network, opts, strongly_typed)
    start = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - start
    if plan is None:
        errors = [line for line in lines if line.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
        raise EngineBuildError(f"TensorRT could not build {onnx_path.name}: {'; '.join(errors) or 'no details'}")
    if opts.timing_cache is not None:
        cache = bytes(memoryview(config.get_timing_cache().serialize()))
        write_atomically(opts.timing_cache, lambda tmp: tmp.write_bytes(cache))
    plan_bytes = bytes(memoryview(plan))
    return BuiltEngine(plan_bytes, trt.__version__, strongly_typed, build_s, lines,
                       _layer_info(trt, logger, plan_bytes) if opts.detailed_log else None)


def _builder_config(trt: Any, builder: Any, network: Any, opts: TrtBuildOptions, strongly_typed: bool) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    config.builder_optimization_level = opts.opt_level
    if opts.precision == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if opts.precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    if opts.precision == "int8" and not strongly_typed:  # explicit quantization: the Q/DQ of the int8 ONNX
        config.set_flag(trt.BuilderFlag.INT8)
        if opts.float_layers:  # the Convs --fallback kept in float: fp16 kernels allowed for them
            config.set_flag(trt.BuilderFlag.FP16)
    if opts.detailed_log:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile, dynamic = builder.create_optimization_profile(), False
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if shape and -1 in shape:
            dynamic = True
            shapes = profile_shapes(opts, shape)  # batch, and height × width where opts.shapes sets them
            profile.set_shape(tensor.name, shapes["min"], shapes["opt"], shapes["max"])
    if dynamic:
        config.add_optimization_profile(profile)
    if opts.timing_cache is not None:
        data = opts.timing_cache.read_bytes() if opts.timing_cache.exists() else b""
        config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False)
    return config


def _layer_info(trt: Any, logger: Any, plan: bytes) -> str:
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    inspector = engine.create_engine_inspector()
    return inspector.get_engine_information(trt.LayerInformationFormat.JSON)


def gpu_identity() -> tuple[str, tuple[int, int]]:
    """Name and compute capability of the current CUDA device (what engines are tied to)."""
    index = torch.cuda.current_device()
    return torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)


def build_with_sidecar(onnx_path: Path, opts: TrtBuildOptions, *, input_shape: Sequence[int]
                       ) -> tuple[BuiltEngine, dict[str, Any]]:
    """The one engine build: :func:`build_engine`, then the sidecar that goes beside the plan (this TensorRT, this
    GPU, the profile, the ONNX it was built from). Its ``verified`` and ``verification`` are the caller's to add once
    it has run the engine against its reference: a sidecar without them was never checked."""
    built = build_engine(onnx_path, opts)
    gpu_name, cc = gpu_identity()
    sidecar = engine_sidecar(trt_version=built.tensorrt_version, gpu_name=gpu_name, compute_capability=cc, opts=opts,
                             onnx_sha256=sha256_of(onnx_path), onnx_name=onnx_path.name,
                             input_shape=tuple(input_shape), build_s=built.build_s,
                             strongly_typed=built.strongly_typed)
    return built, sidecar


class TensorRTRunner(Runner):
    """Runs a serialized engine with torch CUDA tensors as buffers on a torch CUDA stream; optionally replays a
    CUDA graph. With a ``sidecar`` (the engine's JSON; for an engine file, ``<engine>.json`` is read when present),
    refuses an engine built for another GPU or TensorRT version."""

    name = "tensorrt"

    def __init__(self, engine: Path | bytes, *, sidecar: dict[str, Any] | None = None, cuda_graph: bool = False
                 ) -> None:
        if sidecar is None and isinstance(engine, Path) and engine.with_name(engine.name + ".json").is_file():
            sidecar = json.loads(engine.with_name(engine.name + ".json").read_text(encoding="utf-8"))
        self.engine_source, self.sidecar, self.cuda_graph = engine, sidecar, cuda_graph
        self.context: Any = None

    def activate_impl(self) -> None:
        trt = import_tensorrt()
        label = self.engine_source if isinstance(self.engine_source, Path) else Path("<engine bytes>")
        if self.sidecar is not None:
            name, cc = gpu_identity()
            check_engine_sidecar(self.sidecar, trt_version=trt.__version__, gpu_name=name, compute_capability=cc,
                                 engine=label)
        plan = self.engine_source.read_bytes() if isinstance(self.engine_source, Path) else self.engine_source
        self._lines: list[str] = []
        self.runtime = trt.Runtime(_logger(trt, self._lines, False))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise EngineMismatchError(f"TensorRT could not load {label}: {'; '.join(self._lines) or 'no details'}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        is_input = {n: self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_name = next(n for n in names if is_input[n])
        self.output_names = [n for n in names if not is_input[n]]
        self.output_name = self.output_names[0]
        self._dtypes = {n: _torch_dtype(trt, self.engine.get_tensor_dtype(n)) for n in names}
        self.stream = torch.cuda.Stream()
        self._shape: tuple[int, ...] | None = None

    def deactivate_impl(self) -> None:
        self.graph = None
        self.context = self.engine = self.runtime = None

    def prepare(self, shape: tuple[int, ...]) -> torch.Tensor:
        """Allocate input/output buffers for ``shape`` (and capture the CUDA graph); returns the input buffer."""
        if not self.is_active:
            raise RuntimeError("TensorRTRunner used before activate (use it as a context manager: 'with runner:')")
        if shape != self._shape:
            self.context.set_input_shape(self.input_name, shape)
            self.input = torch.zeros(shape, dtype=self._dtypes[self.input_name], device="cuda")
            self.context.set_tensor_address(self.input_name, self.input.data_ptr())
            self.outputs = {}  # every output bound (a detector has four: boxes, scores, labels, num_detections)
            for name in self.output_names:
                out_shape = tuple(self.context.get_tensor_shape(name))
                self.outputs[name] = torch.empty(out_shape, dtype=self._dtypes[name], device="cuda")
                self.context.set_tensor_address(name, self.outputs[name].data_ptr())
            self.output = self.outputs[self.output_name]
            self._shape, self.graph = shape, None
            self._enqueue()  # the first enqueue after a shape change does deferred set-up; never capture it
            self.stream.synchronize()
            if self.cuda_graph:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph, stream=self.stream):
                    self._enqueue()
        return self.input

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")

    def launch(self) -> None:
        """Run once on the prepared buffers, asynchronously on ``self.stream`` (graph replay when captured)."""
        with torch.cuda.stream(self.stream):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._enqueue()

    def subject(self, inputs: Sequence[np.ndarray], *, include_copies: bool = False) -> Subject:
        """Timed with CUDA events on the runner's stream. Without ``include_copies`` the next input is copied into
        the bound buffer on the device before the timed region, and the output stays there; with it, the pinned
        host input's copy in and the output's copy out are timed too."""
        buffer = self.prepare(tuple(inputs[0].shape))
        tensors = [torch.from_numpy(np.ascontiguousarray(x)).to(buffer.dtype) for x in inputs]
        on_device = itertools.cycle([t.cuda() for t in tensors])
        pinned = itertools.cycle([t.pin_memory() for t in tensors])

        def step() -> None:
            if include_copies:
                with torch.cuda.stream(self.stream):
                    buffer.copy_(next(pinned), non_blocking=True)
            self.launch()
            if include_copies:
                with torch.cuda.stream(self.stream):
                    self.output.cpu()

        def before() -> None:
            with torch.cuda.stream(self.stream):
                buffer.copy_(next(on_device))

        return cuda_subject(step, before=None if include_copies else before, stream=self.stream)

    def infer_impl(self, x: np.ndarray) -> np.ndarray:
        buffer = self.prepare(tuple(x.shape))
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            buffer.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(buffer.device, buffer.dtype))
            self.launch()
            result = self.output.float().cpu()
        return result.numpy()


    def infer_all(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name, for one input batch."""
        buffer = self.prepare(tuple(x.shape))
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            buffer.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(buffer.device, buffer.dtype))
            self.launch()
            results = {name: t.cpu() for name, t in self.outputs.items()}
        self.stream.synchronize()
        return {name: t.numpy() for name, t in results.items()}


def _torch_dtype(trt: Any, dtype: Any) -> torch.dtype:
    table = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32, trt.bool: torch.bool}
    if hasattr(trt, "int64"):  # TensorRT ≥ 10: a detector's labels and counts
        table[trt.int64] = torch.int64
    if dtype not in table:
        raise EngineBuildError(f"engine I/O type {dtype} is not supported by this runner")
    return table[dtype]


__all__ = ["BuiltEngine", "TensorRTRunner", "build_engine", "gpu_identity", "import_tensorrt",
           "strongly_typed_only", "tensorrt_major"]
