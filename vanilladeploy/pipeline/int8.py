"""The ``--precision int8`` part of ``vanilladeploy export``: calibrate on real images, verify on held-out ones.

The ``--calib`` folder is scanned (sorted), shuffled with a fixed seed so classes mix, and split by position: the
first ``calib_count`` images calibrate, the next ``holdout_count`` are held out — disjoint by construction, and at
least ``MIN_HOLDOUT`` (32) of them, else the export is refused before any work. The
int8 QDQ ONNX is then run beside the fp32 ONNX on the held-out images, preprocessed exactly as calibration was (the
official eval transform with the checkpoint's args): top-1 agreement must reach ``min_agreement`` %. A failing int8
model is still published, marked unverified in the report, and the export exits 1 (as for an fp16 engine).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.evaluate import evaluate
from vanilladeploy.exporters.onnx_export import input_shape, set_metadata
from vanilladeploy.exporters.qdq import METHODS, CalibrationDataError, Int8Result, OnnxRuntimeTooOld, quantize_qdq
from vanilladeploy.images import ImageFolder, NoReadableImagesError, Preprocess, iter_batches, scan_folder
from vanilladeploy.pipeline.fallback import Trial, conv_layers, default_max_fallback, parse_fallback, search
from vanilladeploy.pipeline.options import Int8Options
from vanilladeploy.pipeline.pixels import random_input
from vanilladeploy.pipeline.report import (
    CalibrationRecord,
    ExportReport,
    FallbackRecord,
    HoldoutRecord,
    Int8Latency,
    Int8Section,
    Int8Verification,
)
from vanilladeploy.runtimes.runners import OnnxRuntimeRunner
from vanilladeploy.runtimes.timing import measure_interleaved, summarize
from vanilladeploy.steps import StepTimer
from vanilladeploy.validate import check_path

SPLIT_SEED = 0
CALIB_BATCH = 8
EVAL_BATCH = 32
"""Images per batch of the held-out verification (and of the fallback's latency comparison)."""
LATENCY_ROUNDS = 5
MIN_HOLDOUT = 32
"""The fewest held-out images an int8 verdict is given on (fewer refuse the export, exit 2, before any work)."""


def check_int8_options(opts: Int8Options) -> None:
    """Refuse, before any work, options that cannot work — including a folder with too few images to calibrate AND
    hold out."""
    if opts.calib_method not in METHODS:
        raise UsageError(f"--calib-method {opts.calib_method}: choose one of {', '.join(METHODS)}.")
    if opts.calib_count < 1 or opts.holdout_count < 1 or not 0 <= opts.min_agreement <= 100:
        raise UsageError("--calib-count must be ≥ 1 and --min-agreement between 0 and 100.")
    if not opts.fallback.strip(" ,"):
        raise UsageError("--fallback is empty: give auto, none, or a comma list of Conv names.")
    if opts.max_rel_l2 is not None and not opts.max_rel_l2 > 0:
        raise UsageError(f"--max-rel-l2 {opts.max_rel_l2}: give a positive bound such as 0.05.")
    if opts.max_fallback is not None and opts.max_fallback < 1:
        raise UsageError(f"--max-fallback {opts.max_fallback}: give a number of layers ≥ 1.")
    check_path("--calib", opts.calib, directory=True, must_exist=True)
    split_folder(scan_folder(opts.calib), calib_count=opts.calib_count, holdout_count=opts.holdout_count)


@dataclass(frozen=True)
class Split:
    calibration: tuple[int, ...]
    holdout: tuple[int, ...]

    def files_sha256(self, folder: ImageFolder) -> str:
        names = "\n".join(str(folder.files[i].relative_to(folder.root)) for i in sorted(self.calibration))
        return hashlib.sha256(names.encode()).hexdigest()


def holdout_needed(holdout_count: int) -> int:
    """The fewest held-out images a verdict is given on: :data:`MIN_HOLDOUT`, or all asked for when fewer."""
    return min(MIN_HOLDOUT, holdout_count)


def split_folder(folder: ImageFolder, *, calib_count: int, holdout_count: int, seed: int = SPLIT_SEED) -> Split:
    """Seeded shuffle, then the first ``calib_count`` calibrate and the next ``holdout_count`` are held out; at
    least :func:`holdout_needed` must remain held out (a verdict on fewer images says little)."""
    n, need = len(folder.files), holdout_needed(holdout_count)
    if n - calib_count < need:
        readable = sum(map(_readable, folder.files))  # the hint must hold: a broken file is neither kind of image
        more = f"add at least {calib_count + need - readable} images"
        fix = (f"pass --calib-count {readable - need} or {more}" if readable - need >= 1 else
               f"{more} (or {1 + need - readable} with --calib-count 1)")
        broken = f" ({n - readable} unreadable)" if readable < n else ""
        raise UsageError(f"--calib {folder.root}: {n} images{broken}, but --calib-count {calib_count} leaves "
                         f"{max(0, n - calib_count)} held out, fewer than the {need} needed to verify the int8 model; "
                         f"{fix}.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return Split(tuple(order[:calib_count]), tuple(order[calib_count:calib_count + holdout_count]))


def _readable(path: Path) -> bool:
    """Whether Pillow can decode ``path`` (the check ``iter_batches`` will make)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
        return True
    except Exception:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError … for broken files
        return False


def _calibration_batches(folder: ImageFolder, pre: Preprocess, split: Split,
                         skipped: list[tuple[Path, str]]) -> Iterator[np.ndarray]:
    for x, _, _ in iter_batches(folder, pre, batch=CALIB_BATCH, indices=split.calibration, skipped=skipped):
        yield x


def int8_copy(name: str, fp32_onnx: Path, model: onnx.ModelProto, pre: Preprocess, opts: Int8Options,
              writer: ArtifactWriter, timer: StepTimer, report: ExportReport
              ) -> tuple[Path, VanillaDeployError | None]:
    """Stage ``<name>.int8.onnx`` (calibrated and checked with ``pre``, the export's preprocessing; with the float
    layers ``--fallback`` names or finds) and set ``report.int8``; the error returned (agreement too low) is for
    after publishing."""
    folder = scan_folder(opts.calib)
    split = split_folder(folder, calib_count=opts.calib_count, holdout_count=opts.holdout_count)
    layers = conv_layers(model)
    mode, keep = parse_fallback(opts.fallback, layers)
    max_fallback = opts.max_fallback or default_max_fallback(layers)
    path, skipped = writer.stage(f"{name}.int8.onnx"), []
    with tempfile.TemporaryDirectory(prefix="vanilladeploy-int8-") as scratch_dir:
        scratch = Path(scratch_dir)
        ranges, full = scratch / "ranges.json", scratch / "full-int8.onnx"

        def quantize(out: Path, float_layers: tuple[str, ...]) -> Path:
            variant = quantize_qdq(fp32_onnx, out, (), method=opts.calib_method, keep_float=float_layers,
                                   ranges=ranges)
            if not variant:
                raise VerificationError(f"the int8 graph breaks the QDQ contract: {variant.problems[0]}")
            return out

        result = _calibrate(fp32_onnx, full, folder, pre, split, opts, timer, skipped, ranges=ranges)
        if keep:
            quantize(path, keep)
        else:
            shutil.copyfile(full, path)
        with timer.step("int8_verify_s", f"Verifying int8 against fp32 on {len(split.holdout)} held-out images"):
            held = _held_out(fp32_onnx, path, pre, split, opts)
        row, searched = held["artifacts"][1], None
        if not _passes(row, opts) and mode == "auto":
            with timer.step("int8_fallback_s", f"int8 missed its gate: searching float layers (at most "
                                               f"{max_fallback} of {len(layers)} Convs)"):
                searched = search(fp32_onnx, layers, quantize, scratch, opts.calib, split.holdout, pre,
                                  passes=gate(opts), max_fallback=max_fallback,
                                  start=Trial((), row["agreement_top1"], row["mean_rel_l2"]))
            keep = searched.float_layers
            if keep:
                quantize(path, keep)
                held = _held_out(fp32_onnx, path, pre, split, opts)
                row = held["artifacts"][1]
        latency = _latency(fp32_onnx, full, path, batch=min(EVAL_BATCH, len(split.holdout)),
                           input_dtype=pre.input_dtype) if keep else None
    passed = _passes(row, opts)
    _finish_metadata(path, model, opts, len(split.calibration) - len(skipped), keep)
    calibration = CalibrationRecord(opts.calib_method, str(opts.calib), len(split.calibration) - len(skipped),
                                    len(skipped), SPLIT_SEED, split.files_sha256(folder),
                                    result.quantized_convs - len(keep))
    report.int8 = Int8Section(
        path.name, passed, pre, calibration, HoldoutRecord(held["images"], held["skipped"]["count"]),
        Int8Verification("fp32 ONNX (ONNX Runtime)", row["agreement_top1"], row["mean_rel_l2"], row["worst"],
                         opts.min_agreement, opts.max_rel_l2, passed),
        keep, FallbackRecord(mode, max_fallback, keep, tuple(searched.steps) if searched else ()),
        sensitivity=tuple(searched.sensitivity) if searched else None, latency_ms=latency)
    if not passed:
        tried = (f" after keeping {len(keep)} Convs in float ({', '.join(keep)}; --max-fallback {max_fallback})"
                 if searched else "")
        bound = f" and --max-rel-l2 {opts.max_rel_l2}" if opts.max_rel_l2 is not None else ""
        return path, VerificationError(
            f"the int8 model agrees with fp32 on {row['agreement_top1']}% of {held['images']} held-out images (mean "
            f"rel. L2 {row['mean_rel_l2']:.3g}){tried}, below --min-agreement {opts.min_agreement}%{bound}. It was "
            "written but is marked unverified in the report; "
            f"try --calib-method {' or '.join(m for m in METHODS if m != opts.calib_method)}, more calibration "
            "images, or a larger --max-fallback.")
    return path, None


def _passes(row: dict[str, Any], opts: Int8Options) -> bool:
    return row["agreement_top1"] is not None and gate(opts)(row["agreement_top1"], row["mean_rel_l2"])


def gate(opts: Int8Options) -> Callable[[float, float], bool]:
    """The int8 gate on (top-1 agreement %, mean rel. L2): ``min_agreement``, and ``max_rel_l2`` when given."""
    return lambda agreement, rel_l2: agreement >= opts.min_agreement and (
        opts.max_rel_l2 is None or rel_l2 <= opts.max_rel_l2)


def _finish_metadata(path: Path, model: onnx.ModelProto, opts: Int8Options, images: int,
                     float_layers: tuple[str, ...]) -> None:
    """The fp32 export's metadata, plus what makes this int8 model: its calibration and its float layers."""
    int8_model = onnx.load(path)
    set_metadata(int8_model, {**{p.key: p.value for p in model.metadata_props}, "precision": "int8",
                              "calibration_method": opts.calib_method, "calibration_images": str(images),
                              "float_layers": json.dumps(list(float_layers))})
    onnx.save(int8_model, path)


def _latency(fp32: Path, full: Path, mixed: Path, *, batch: int, input_dtype: str = "float32") -> Int8Latency:
    """What the float layers cost: fp32, fully int8 and the chosen mix in ONNX Runtime, one interleaved run."""
    x = random_input((batch, *input_shape(fp32)[1:]), input_dtype)
    runners = {"fp32": OnnxRuntimeRunner(fp32), "int8": OnnxRuntimeRunner(full), "mixed": OnnxRuntimeRunner(mixed)}
    for runner in runners.values():
        runner.activate()
    try:
        samples = measure_interleaved({k: r.subject([x]) for k, r in runners.items()},
                                      warmup=1, iters=LATENCY_ROUNDS)
    finally:
        for runner in runners.values():
            runner.deactivate()
    medians = {f"{k}_median_ms": round(summarize(v, batch=batch).median_ms, 3) for k, v in samples.items()}
    return Int8Latency("onnxruntime", batch, LATENCY_ROUNDS, **medians)


def _calibrate(fp32_onnx: Path, path: Path, folder: ImageFolder, pre: Preprocess, split: Split, opts: Int8Options,
               timer: StepTimer, skipped: list[tuple[Path, str]], *, ranges: Path) -> Int8Result:
    """Quantize on the calibration images; every one unreadable is refused (exit 2), a broken contract is exit 1."""
    with timer.step("int8_calibrate_s", f"Calibrating int8 on {len(split.calibration)} images ({opts.calib_method})"):
        try:
            result = quantize_qdq(fp32_onnx, path, _calibration_batches(folder, pre, split, skipped),
                                  method=opts.calib_method, ranges=ranges)
        except CalibrationDataError:
            example = f", e.g. {skipped[0][0].name}: {skipped[0][1]}" if skipped else ""
            raise NoReadableImagesError(
                f"--calib {opts.calib}: none of the {len(split.calibration)} calibration images could be read "
                f"({len(skipped)} skipped{example}); replace the unreadable files or choose another --calib "
                "folder.") from None
        except OnnxRuntimeTooOld as e:
            raise MissingDependencyError(str(e)) from None
    if not result:
        raise VerificationError(f"the int8 graph breaks the QDQ contract: {result.problems[0]}")
    return result


def _held_out(fp32_onnx: Path, int8_onnx: Path, pre: Preprocess, split: Split, opts: Int8Options) -> dict[str, Any]:
    """The int8 ONNX beside the fp32 one on the held-out images (``evaluate`` fits batches to a fixed-batch graph);
    fewer readable ones than :func:`holdout_needed` (none included) refuse the export (exit 2)."""
    try:
        held = evaluate([str(fp32_onnx), str(int8_onnx)], opts.calib, indices=split.holdout, preprocess=pre,
                        batch=EVAL_BATCH).as_dict()
    except NoReadableImagesError:
        held = {"images": 0, "skipped": {"count": len(split.holdout)}}
    need = holdout_needed(len(split.holdout))
    if held["images"] < need:
        raise NoReadableImagesError(f"--calib {opts.calib}: only {held['images']} of the {len(split.holdout)} held-out "
                                    f"images could be read ({held['skipped']['count']} skipped), fewer than the "
                                    f"{need} needed to verify the int8 model; replace the unreadable files or add "
                                    "images.")
    return held


__all__ = ["MIN_HOLDOUT", "Int8Options", "Split", "check_int8_options", "holdout_needed", "int8_copy", "split_folder"]
