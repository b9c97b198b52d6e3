"""``vanilladeploy optimize``: the fastest verified deployment of a checkpoint on THIS machine.

Every candidate this machine can run — {ONNX Runtime, OpenVINO, TensorRT where present} × {fp32, fp16/bf16 where the
runtime has it, int8} — is built from one export, verified through its gate on the held-out split of ``--calib``
against the verified fp32 ONNX in ONNX Runtime (the reference), and the verified ones are timed in ONE interleaved run
at ``--batch``. The fastest verified one wins; ``OUT/`` holds the export, the candidates' files, a Triton model
repository for the winner (``OUT/triton/``) and ``OUT/optimize.json``, published together.

Gates (against the fp32 reference on the held-out images): fp32 mean rel. L2 ≤ 1e-5; fp16/bf16 mean rel. L2 ≤ 1e-2
and top-1 agreement ≥ ``--min-agreement``; int8 top-1 agreement ≥ ``--min-agreement`` (as ``export``'s int8 gate).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import UsageError, VerificationError
from vanilladeploy.evaluate import Artifact, evaluate
from vanilladeploy.exporters.fp16_graph import fp16_export
from vanilladeploy.exporters.onnx_export import input_shape
from vanilladeploy.extras import available, install_hint
from vanilladeploy.images import Preprocess, scan_folder
from vanilladeploy.machine import machine_info
from vanilladeploy.pipeline.export import ExportOptions, export_checkpoint
from vanilladeploy.pipeline.int8 import EVAL_BATCH, split_folder
from vanilladeploy.pipeline.options import Int8Options
from vanilladeploy.runtimes import ARTIFACT_RUNTIMES, RUNTIMES
from vanilladeploy.runtimes.runners import (
    OnnxRuntimeRunner,
    PrecisionUnavailable,
    Runner,
    bf16_missing,
    onnx_runner,
)
from vanilladeploy.runtimes.timing import measure_interleaved, summarize
from vanilladeploy.steps import Progress, Step, silent
from vanilladeploy.triton.config import RepoOptions
from vanilladeploy.validate import check_path
from vanilladeploy.verify import TOLERANCE_FP16, TOLERANCE_FP32, TOLERANCE_TRT_FP32

OPTIMIZE_RUNTIMES = ARTIFACT_RUNTIMES  # from the one table of runtimes
PRECISIONS = {name: RUNTIMES[name].precisions for name in OPTIMIZE_RUNTIMES}  # every precision the table lists
"""What each runtime is asked to run: the graph's precision (ONNX Runtime, TensorRT) or its own (OpenVINO bf16)."""


@dataclass
class OptimizeOptions:
    """What ``vanilladeploy optimize`` was asked for; ``None`` means the default."""

    calib: Path
    out_dir: Path | None = None
    batch: int = 1
    min_agreement: float = Int8Options.min_agreement
    runtimes: tuple[str, ...] = OPTIMIZE_RUNTIMES
    calib_count: int = Int8Options.calib_count
    holdout_count: int = Int8Options.holdout_count
    img_size: int | None = None
    arch: str | None = None
    key: str | None = None
    warmup: int = 3
    iters: int = 20
    budget_s: float | None = None


ENGINE_SIDECARS: dict[str, dict[str, Any]] = {}
"""A built engine's sidecar (candidate name → it), from its build until :func:`record_verified` writes it with the
gate's verdict (kept out of :class:`Candidate`: optimize.json's rows stay as they were)."""


@dataclass
class Candidate:
    """One runtime × precision: its file, its gate's figures, its time, or why it was skipped or failed."""

    runtime: str
    precision: str
    artifact: str | None = None
    verified: bool = False
    agreement: float | None = None
    rel_l2: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    reason: str | None = None
    inference_precision: str | None = None
    """What the runtime reports it computes in once compiled (OpenVINO's ``INFERENCE_PRECISION_HINT``)."""

    @property
    def name(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass
class OptimizeResult:
    out_dir: Path
    candidates: list[Candidate]
    chosen: Candidate
    machine: dict[str, Any]
    config: dict[str, Any] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"chosen": asdict(self.chosen), "candidates": [asdict(c) for c in self.candidates],
                "machine": self.machine, "config": self.config}


def check_optimize_options(source: str, opts: OptimizeOptions) -> None:
    unknown = [r for r in opts.runtimes if r not in OPTIMIZE_RUNTIMES]
    if not opts.runtimes or unknown:
        raise UsageError(f"--runtimes {','.join(opts.runtimes)}: choose from {', '.join(OPTIMIZE_RUNTIMES)}.")
    if opts.batch < 1 or opts.iters < 1 or opts.warmup < 0:
        raise UsageError("--batch and --iters must be ≥ 1, --warmup ≥ 0.")
    check_path("--out", opts.out_dir, directory=True)


def optimize(source: str, opts: OptimizeOptions, *, progress: Progress = silent) -> OptimizeResult:
    """Export, build, verify, time and choose; raises when the fp32 reference itself fails (exit 1) or an option is
    refused (exit 2). Nothing is published on failure."""
    check_optimize_options(source, opts)
    export_opts = ExportOptions(
        arch=opts.arch, key=opts.key, img_size=opts.img_size, precision="int8",
        int8=Int8Options(opts.calib, calib_count=opts.calib_count, min_agreement=opts.min_agreement,
                         holdout_count=opts.holdout_count))
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-optimize-") as scratch:
        work = Path(scratch)
        exported = export_checkpoint(source, replace(export_opts, out_dir=work / "export"), progress=progress)
        report = exported.typed_report  # precision int8: its int8 section is always there
        name = report.architecture.variant
        fp16 = work / "export" / f"{name}.fp16.onnx"
        fp32_model = onnx.load(exported.onnx)
        onnx.save(fp16_export(fp32_model), fp16)
        files = {"fp32": exported.onnx, "fp16": fp16, "int8": work / "export" / f"{name}.int8.onnx"}
        candidates = _candidates(opts.runtimes, files)
        meta = {p.key: p.value for p in fp32_model.metadata_props}
        pre = Preprocess.from_metadata(meta)
        runners = _verify(candidates, files["fp32"], opts, pre, progress)
        _time(candidates, runners, opts, pre.img_size, progress)
        chosen = _choose(candidates)
        _triton(chosen, files, work, name)
        out_dir = opts.out_dir or Path("optimize") / name
        for c in candidates:  # paths as they will be once published
            c.artifact = c.artifact and str(out_dir / Path(c.artifact).relative_to(work))
        result = OptimizeResult(out_dir, candidates, chosen, machine_info("cpu"), {
            "source": source, "batch": opts.batch, "min_agreement": opts.min_agreement, "runtimes": opts.runtimes,
            "iters": opts.iters, "warmup": opts.warmup, "held_out_images": report.int8.holdout.images})
        (work / "optimize.json").write_text(json.dumps(result.document(), indent=2, default=str) + "\n")
        _publish(work, out_dir)
    return result


def _candidates(runtimes: tuple[str, ...], files: dict[str, Path]) -> list[Candidate]:
    """Every runtime × precision asked for; those this machine cannot run carry their reason already."""
    candidates = []
    for runtime in runtimes:
        for precision in PRECISIONS[runtime]:
            c = Candidate(runtime, precision, str(files["fp32" if precision == "bf16" else precision]))
            c.reason = _unavailable(runtime, precision)
            candidates.append(c)
    return candidates


def _unavailable(runtime: str, precision: str) -> str | None:
    if runtime == "tensorrt":
        from vanilladeploy.runtimes.trt_plan import tensorrt_missing

        return tensorrt_missing()
    if runtime == "openvino" and not available("openvino"):
        return f"openvino is not installed: {install_hint('openvino')}"
    if precision == "bf16":
        return bf16_missing()
    return None


def _verify(candidates: list[Candidate], fp32: Path, opts: OptimizeOptions, pre: Preprocess,
            progress: Progress) -> dict[str, Runner]:
    """Each candidate that runs here on the held-out images beside the fp32 reference; sets its gate's figures.
    A candidate that cannot be built or run on this machine keeps a row with the reason, never ends the run."""
    folder = scan_folder(opts.calib)
    split = split_folder(folder, calib_count=opts.calib_count, holdout_count=opts.holdout_count)
    probe = np.zeros((1, 3, pre.img_size, pre.img_size), dtype=np.float32)
    runners = {}
    for c in (c for c in candidates if c.reason is None):
        runner = _try_runner(c, lambda: _runner(c, opts, progress), probe)
        if runner is not None:
            runners[c.name] = runner
        else:
            record_verified(c)  # an engine built but unable to run here: its sidecar says unverified, and why
    runnable = [c for c in candidates if c.name in runners]
    reference = Artifact("reference", "onnx fp32", OnnxRuntimeRunner(fp32), pre.img_size)
    opened = [reference, *(Artifact(c.name, c.name, runners[c.name], pre.img_size) for c in runnable)]
    progress(Step(f"Verifying {len(runnable)} candidates on {len(split.holdout)} held-out images"))
    rows = evaluate(opened, opts.calib, indices=split.holdout, preprocess=pre, progress=progress).rows[1:]
    for c, row in zip(runnable, rows):
        c.agreement, c.rel_l2 = row["agreement_top1"], row["mean_rel_l2"]
        c.verified, c.reason = _gate(c, opts.min_agreement)
        record_verified(c)
    return {c.name: runners[c.name] for c in runnable if c.verified}


def _try_runner(c: Candidate, build: Callable[[], Runner], probe: np.ndarray) -> Runner | None:
    """The candidate's runner once it has started and answered ``probe`` here, else None with ``c.reason`` set:
    a runtime that refuses the precision on this CPU (:class:`PrecisionUnavailable`, its own reason), an engine
    that does not build, a graph the runtime cannot compile."""
    try:
        runner = build()
        with runner:
            runner.infer(probe)
            c.inference_precision = getattr(runner, "compiled_precision", None)
        return runner
    except PrecisionUnavailable as e:
        c.reason = str(e)
    except Exception as e:  # any other failure of one candidate is that candidate's result, not the run's
        first = str(e).splitlines()[0] if str(e) else ""
        c.reason = f"could not run on this machine: {type(e).__name__}: {first}"
    return None


def _runner(c: Candidate, opts: OptimizeOptions, progress: Progress) -> Runner:
    """ONNX Runtime or OpenVINO on the candidate's ONNX; for TensorRT, the engine built from it here (its file
    written beside the ONNX, so ``c.artifact`` names the engine)."""
    if c.runtime != "tensorrt":
        return onnx_runner(Path(c.artifact), c.runtime, precision="bf16" if c.precision == "bf16" else "fp32")
    from vanilladeploy.exporters.trt_compat import BatchProfile
    from vanilladeploy.runtimes.tensorrt import TensorRTRunner, build_with_sidecar
    from vanilladeploy.runtimes.trt_plan import TrtBuildOptions, engine_name

    progress(Step(f"Building the TensorRT {c.precision} engine (minutes)"))
    onnx_file = Path(c.artifact)
    trt_opts = TrtBuildOptions(precision=c.precision, profile=BatchProfile(1, opts.batch, max(opts.batch, EVAL_BATCH)))
    built, sidecar = build_with_sidecar(onnx_file, trt_opts, input_shape=input_shape(onnx_file))
    engine = onnx_file.with_name(engine_name(onnx_file.name.split(".")[0], c.precision))
    engine.write_bytes(built.plan)
    c.artifact = str(engine)
    ENGINE_SIDECARS[c.name] = sidecar  # written beside the engine once its gate has run: record_verified
    return TensorRTRunner(built.plan)


def record_verified(c: Candidate) -> None:
    """An engine's sidecar, written beside it with its gate's verdict (``verified``, and what was measured): what
    ``repo`` and ``deploy`` read. Nothing for a candidate that is not an engine."""
    if c.name not in ENGINE_SIDECARS:
        return
    sidecar = {**ENGINE_SIDECARS.pop(c.name), "verified": c.verified,
               "verification": {"agreement_top1": c.agreement, "mean_rel_l2": c.rel_l2, "reason": c.reason}}
    engine = Path(c.artifact)
    engine.with_name(engine.name + ".json").write_text(json.dumps(sidecar, indent=2) + "\n")


def _gate(c: Candidate, min_agreement: float) -> tuple[bool, str | None]:
    if c.precision == "fp32":
        bound = TOLERANCE_TRT_FP32 if c.runtime == "tensorrt" else TOLERANCE_FP32  # design §5
        ok = c.rel_l2 <= bound
        return ok, None if ok else f"mean rel. L2 {c.rel_l2:.2e} > {bound:.0e} against the fp32 reference"
    if c.precision in ("fp16", "bf16") and c.rel_l2 > TOLERANCE_FP16:
        return False, f"mean rel. L2 {c.rel_l2:.2e} > {TOLERANCE_FP16:.0e} against the fp32 reference"
    ok = c.agreement >= min_agreement
    return ok, None if ok else f"top-1 agreement {c.agreement}% < --min-agreement {min_agreement}%"


def _time(candidates: list[Candidate], runners: dict[str, Runner], opts: OptimizeOptions, img_size: int,
          progress: Progress) -> None:
    """The verified candidates in one interleaved run at ``opts.batch`` (every runner active together)."""
    x = np.random.default_rng(0).standard_normal((opts.batch, 3, img_size, img_size), dtype=np.float32)
    for runner in runners.values():
        runner.activate()
    try:
        subjects = _subjects(runners, x)
        samples = measure_interleaved(subjects, warmup=opts.warmup, iters=opts.iters, budget_s=opts.budget_s,
                                      on_round=lambda done, total: progress(Step("Timing (interleaved rounds)",
                                                                                 done, total)))
    finally:
        for runner in runners.values():
            runner.deactivate()
    for c in candidates:
        if c.name in samples:
            stats = summarize(samples[c.name], batch=opts.batch)
            c.median_ms, c.p90_ms = round(stats.median_ms, 3), round(stats.p90_ms, 3)
    candidates.sort(key=lambda c: (not c.verified, c.median_ms or 0.0))


def _subjects(runners: dict[str, Runner], x: np.ndarray) -> dict[str, Callable[[], float]]:
    """One timed subject per runner, latency in ms, made by the runner the one way of its device (the way ``bench``
    times it too: the clock on the CPU, CUDA events with the input already on the GPU for TensorRT): the one seam
    every timing passes through, so a test can force the timings, and with them the winner."""
    return {name: runner.subject([x]) for name, runner in runners.items()}


def _choose(candidates: list[Candidate]) -> Candidate:
    """The fastest verified candidate; none verified is a failed verification (exit 1), with every reason."""
    verified = [c for c in candidates if c.verified]
    if not verified:
        reasons = "; ".join(f"{c.name}: {c.reason}" for c in candidates)
        raise VerificationError(f"no candidate passed its gate on this machine ({reasons}).")
    return min(verified, key=lambda c: c.median_ms)


def _triton(chosen: Candidate, files: dict[str, Path], work: Path, name: str) -> None:
    """A Triton model repository for the winner: the python backend running its runtime and precision."""
    from vanilladeploy.triton.repository import write_repository

    if chosen.runtime == "tensorrt":  # Triton's native TensorRT backend, on the GPU the engine was built for
        write_repository(Path(chosen.artifact), work / "triton", RepoOptions(name=name, backend="tensorrt",
                                                                            max_batch=EVAL_BATCH))
        return
    params = {"runtime": chosen.runtime, "precision": chosen.precision}
    write_repository(Path(chosen.artifact), work / "triton",
                     RepoOptions(name=name, backend="python", parameters=params))


def _publish(work: Path, out_dir: Path) -> None:
    writer = ArtifactWriter(out_dir)
    with writer:
        for path in sorted(p for p in work.rglob("*") if p.is_file() and p.name != ".vanilladeploy"):
            path.replace(writer.stage(str(path.relative_to(work))))
        writer.commit()


__all__ = ["Candidate", "OPTIMIZE_RUNTIMES", "OptimizeOptions", "OptimizeResult", "check_optimize_options",
           "optimize"]
