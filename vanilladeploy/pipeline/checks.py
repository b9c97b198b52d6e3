"""A runtime's outputs against the export's reference, as the report records them: what the fp16-typed ONNX
(:mod:`.fp16`) and the TensorRT engine (:mod:`.trt_export`) share, and the record of every runtime in the report's
``verification`` section (:class:`RuntimeCheck`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vanilladeploy.runtimes.runners import Runner
from vanilladeploy.verify import Top1Agreement, VerifyResult, top1_agreement, verify_outputs


@dataclass(frozen=True)
class RuntimeCheck:
    """Relative L2 (and max-abs) against the reference and, for a reduced precision, top-1 agreement; truthy when
    both pass. ``as_dict`` is the result's own record, plus ``top1`` and the combined ``passed`` when measured."""

    result: VerifyResult
    top1: Top1Agreement | None = None

    @property
    def passed(self) -> bool:
        return bool(self.result) and (self.top1 is None or bool(self.top1))

    def __bool__(self) -> bool:
        return self.passed

    def as_dict(self) -> dict[str, Any]:
        record = dict(self.result.as_dict())
        if self.top1 is not None:
            record["top1"] = self.top1.as_dict()
            record["passed"] = self.passed
        return record


@dataclass(frozen=True)
class RunFailure:
    """A runtime that could not run the artifact at all (an engine that does not fit this GPU, a CUDA error)."""

    error: str

    @property
    def passed(self) -> bool:
        return False

    def __bool__(self) -> bool:
        return False

    def as_dict(self) -> dict[str, Any]:
        return {"passed": False, "error": self.error}


def verify_against(name: str, runner: Runner, *, inputs: Sequence[np.ndarray], references: Sequence[np.ndarray],
                   tolerance: float, max_batch: int, top1: bool) -> RuntimeCheck:
    """Run ``runner`` on ``inputs`` (each split to at most ``max_batch``) against ``references``: rel L2 and, with
    ``top1`` (fp16, int8), top-1 agreement, both required to pass."""
    with runner:
        outputs = [np.concatenate([runner.infer(x[i:i + max_batch]) for i in range(0, len(x), max_batch)])
                   for x in inputs]
    result = verify_outputs(name, outputs, references, tolerance=tolerance)
    agreement = top1_agreement(outputs, references, tolerance=tolerance) if top1 else None
    return RuntimeCheck(result, agreement)


__all__ = ["RunFailure", "RuntimeCheck", "verify_against"]
