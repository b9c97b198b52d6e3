"""Backends behind one small interface: a runner is a context manager with ``infer(x) -> y`` on NumPy arrays.

Lifecycle (as in Polygraphy): ``with Runner(...) as r: r.infer(x)``; ``activate`` does the expensive set-up
(building a session), ``deactivate`` releases it. Heavy optional imports happen in ``activate``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType

import numpy as np
import torch


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
