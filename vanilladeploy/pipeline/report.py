"""The export report: one typed section per part of ``<name>.report.json``, filled by the pipeline's steps
(:mod:`.export`, :mod:`.openvino`, :mod:`.int8`, :mod:`.fp16`, :mod:`.trt_export`) and rendered by the CLI.

``as_dict`` is the JSON form: a section's fields in declaration order (those in ``OPTIONAL`` only when set), values
with an ``as_dict`` of their own through it, other dataclasses field by field, tuples as lists. The field order IS
the report's key order, which readers rely on; ``tests/test_report.py`` holds the written file byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, ClassVar

from vanilladeploy.exporters.contract import ContractResult
from vanilladeploy.exporters.trt_compat import CompatResult
from vanilladeploy.images import Preprocess
from vanilladeploy.pipeline.checks import RunFailure, RuntimeCheck
from vanilladeploy.pipeline.fallback import LayerSensitivity, Trial
from vanilladeploy.reparam import LayerCertificate
from vanilladeploy.verify import VerifyResult


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data (see the module docstring)."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class Section:
    """A report section: ``as_dict`` writes the fields in order, those named in ``OPTIONAL`` only when not None,
    under the key ``KEYS`` gives (else the field's name)."""

    OPTIONAL: ClassVar[frozenset[str]] = frozenset()
    KEYS: ClassVar[dict[str, str]] = {}

    def as_dict(self) -> dict[str, Any]:
        return {self.KEYS.get(f.name, f.name): plain(getattr(self, f.name)) for f in fields(self)
                if not (f.name in self.OPTIONAL and getattr(self, f.name) is None)}


# What was read and detected: the sections vanilladeploy.source.describe makes (also `vanilladeploy inspect`'s).
@dataclass(frozen=True)
class ToolSection(Section):
    name: str
    version: str
    torch: str
    onnx: str
    python: str


@dataclass(frozen=True)
class SourceSection(Section):
    path: str
    sha256: str | None
    untrained: bool
    container_key: str | None
    form: str


@dataclass(frozen=True)
class ArchitectureSection(Section):
    variant: str
    depth: int
    act_num: int
    num_classes: int
    detected_from: str


@dataclass(frozen=True)
class LambdaSection(Section):
    value: float
    exact: bool
    epoch: int | None
    decay_epochs: int | None
    decay_linear: bool | None
    assumed: bool
    note: str


# What was proved: every runtime against the training-form reference (λ = 1).
@dataclass(frozen=True)
class VerificationInputs(Section):
    count: int
    batch: int
    img_size: int
    seed: int
    distribution: str = "N(0,1)"


@dataclass(frozen=True)
class TrainedLambdaCheck:
    """``--allow-inexact``: the fused model against the network as trained (λ < 1); informative, never a gate."""

    result: VerifyResult
    value: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.result.as_dict(), "lambda": self.value}


@dataclass
class VerificationSection(Section):
    OPTIONAL = frozenset({"torch", "against_trained_lambda", "onnxruntime", "openvino", "onnxruntime_fp16", "pixels"})

    inputs: VerificationInputs
    torch: RuntimeCheck | None = None
    """The fused model in torch (absent for a deploy-form source: it is the reference)."""
    against_trained_lambda: TrainedLambdaCheck | None = None
    onnxruntime: RuntimeCheck | None = None
    openvino: RuntimeCheck | None = None
    onnxruntime_fp16: RuntimeCheck | None = None
    pixels: VerificationInputs | None = None
    """``--input uint8``: the graphs' inputs (uniform uint8 pixels), against the fused float model fed the same
    pixels normalized; ``inputs`` are then the torch check's only."""


@dataclass(frozen=True)
class InputSection(Section):
    """``--input uint8``: what the graph takes, and where the normalization x = (p/255 − mean)/std went."""

    dtype: str
    layout: str
    normalization: str
    """Folded into the stem conv, or (a stem that pads) its mean subtracted explicitly before it."""
    reason: str
    bytes_per_image: int
    float32_bytes_per_image: int
    reference: str


@dataclass(frozen=True)
class ReparameterizationSection(Section):
    """One certificate per merged layer, or why nothing was merged."""

    OPTIONAL = frozenset({"certificates", "skipped"})

    certificates: tuple[LayerCertificate, ...] | None = None
    skipped: str | None = None


@dataclass(frozen=True)
class OnnxSection(Section):
    opset: int
    nodes_emitted: int
    simplified: bool
    contract: ContractResult


@dataclass(frozen=True)
class OpenVinoSection(Section):
    ir: str
    weights: str
    openvino: str
    """OpenVINO's version."""
    precision: str | None
    """What the compiled model reports it computes in."""
    device: str = "CPU"


# --precision int8 (vanilladeploy/pipeline/int8.py).
@dataclass(frozen=True)
class CalibrationRecord(Section):
    method: str
    folder: str
    images: int
    skipped: int
    split_seed: int
    files_sha256: str
    quantized_convs: int


@dataclass(frozen=True)
class HoldoutRecord(Section):
    images: int
    skipped: int


@dataclass(frozen=True)
class Int8Verification(Section):
    against: str
    agreement_top1: float | None
    mean_rel_l2: float | None
    worst: dict[str, Any] | None
    """The held-out image farthest from fp32: ``{"path", "rel_l2"}`` as :mod:`vanilladeploy.evaluate` gives it."""
    min_agreement: float
    max_rel_l2: float | None
    passed: bool


@dataclass(frozen=True)
class FallbackRecord(Section):
    mode: str
    max_fallback: int
    float_layers: tuple[str, ...]
    steps: tuple[Trial, ...]


@dataclass(frozen=True)
class Int8Latency(Section):
    """What the float layers cost: fp32, fully int8 and the chosen mix, one interleaved run."""

    runtime: str
    batch: int
    rounds: int
    fp32_median_ms: float
    int8_median_ms: float
    mixed_median_ms: float


@dataclass(frozen=True)
class Int8Section(Section):
    OPTIONAL = frozenset({"sensitivity", "latency_ms"})

    file: str
    verified: bool
    preprocessing: Preprocess
    calibration: CalibrationRecord
    holdout: HoldoutRecord
    verification: Int8Verification
    float_layers: tuple[str, ...]
    fallback: FallbackRecord
    sensitivity: tuple[LayerSensitivity, ...] | None = None
    """Only when ``--fallback auto`` searched."""
    latency_ms: Int8Latency | None = None
    """Only when some Convs stay float."""


# --trt (vanilladeploy/pipeline/trt_export.py).
@dataclass(frozen=True)
class TrtexecLines(Section):
    """The equivalent trtexec builds, for TensorRT 10 and 11."""

    tensorrt10: str
    tensorrt11: str


@dataclass(frozen=True)
class BuiltEngine(Section):
    engine: str
    verified: bool
    verification: RuntimeCheck | RunFailure
    tensorrt_version: str
    gpu: Any
    build_s: float


@dataclass
class TensorRTSection:
    """Written as ``status: "built"`` with the engine's fields, or ``status: "not built"`` with the reason."""

    precision: str
    profile: str
    compatibility: CompatResult
    trtexec: TrtexecLines | None = None
    built: BuiltEngine | None = None
    missing: str | None = None
    """Why no engine was built here (TensorRT or a GPU missing), with the fix."""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "profile": self.profile,
                               "compatibility": self.compatibility.as_dict()}
        if self.trtexec is not None:
            out["trtexec"] = self.trtexec.as_dict()
        if self.built is not None:
            out.update(status="built", **self.built.as_dict())
        elif self.missing is not None:
            out.update(status="not built", reason=self.missing)
        return out


@dataclass(frozen=True)
class ArtifactRecord(Section):
    sha256: str
    bytes: int


@dataclass
class ExportReport(Section):
    """The whole report; the steps set their sections, the pipeline ``artifacts`` and ``timings_s`` last."""

    OPTIONAL = frozenset({"input", "reparameterization", "onnx", "openvino", "int8", "tensorrt"})
    KEYS = {"lambda_": "lambda"}

    tool: ToolSection
    created: str
    source: SourceSection
    architecture: ArchitectureSection
    lambda_: LambdaSection
    preprocessing: Preprocess
    verification: VerificationSection
    input: InputSection | None = None
    """Only for ``--input uint8``."""
    reparameterization: ReparameterizationSection | None = None
    onnx: OnnxSection | None = None
    openvino: OpenVinoSection | None = None
    int8: Int8Section | None = None
    tensorrt: TensorRTSection | None = None
    artifacts: dict[str, ArtifactRecord] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    @classmethod
    def described(cls, info: dict[str, Any], *, preprocessing: Preprocess, verification: VerificationSection
                  ) -> ExportReport:
        """The report's first sections from :func:`vanilladeploy.source.describe`'s ``info`` (their one home)."""
        return cls(ToolSection(**info["tool"]), info["created"], SourceSection(**info["source"]),
                   ArchitectureSection(**info["architecture"]), LambdaSection(**info["lambda"]), preprocessing,
                   verification)


__all__ = ["ArchitectureSection", "ArtifactRecord", "BuiltEngine", "CalibrationRecord", "ExportReport",
           "FallbackRecord", "HoldoutRecord", "InputSection", "Int8Latency", "Int8Section", "Int8Verification",
           "LambdaSection", "OnnxSection", "OpenVinoSection", "ReparameterizationSection", "Section", "SourceSection",
           "TensorRTSection", "ToolSection", "TrainedLambdaCheck", "TrtexecLines", "VerificationInputs",
           "VerificationSection", "plain"]
