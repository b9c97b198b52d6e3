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
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporters.int8 import METHODS, CalibrationDataError, Int8Result, OnnxRuntimeTooOld, quantize_qdq
from exporters.onnx_export import set_metadata
from vanilladeploy.atomic import ArtifactWriter
from vanilladeploy.errors import MissingDependencyError, UsageError, VanillaDeployError, VerificationError
from vanilladeploy.evaluate import evaluate
from vanilladeploy.export.options import Int8Options
from vanilladeploy.images import ImageFolder, NoReadableImagesError, Preprocess, iter_batches, scan_folder
from vanilladeploy.steps import StepTimer
from vanilladeploy.validate import check_path

SPLIT_SEED = 0
CALIB_BATCH = 8
MIN_HOLDOUT = 32
"""The fewest held-out images an int8 verdict is given on (fewer refuse the export, exit 2, before any work)."""


def check_int8_options(opts: Int8Options) -> None:
    """Refuse, before any work, options that cannot work — including a folder with too few images to calibrate AND
    hold out."""
    if opts.calib_method not in METHODS:
        raise UsageError(f"--calib-method {opts.calib_method}: choose one of {', '.join(METHODS)}.")
    if opts.calib_count < 1 or opts.holdout_count < 1 or not 0 <= opts.min_agreement <= 100:
        raise UsageError("--calib-count must be ≥ 1 and --min-agreement between 0 and 100.")
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
        more = f"add at least {calib_count + need - n} images"
        fix = (f"pass --calib-count {n - need} or {more}" if n - need >= 1 else
               f"{more} (or {1 + need - n} with --calib-count 1)")
        raise UsageError(f"--calib {folder.root}: {n} images, but --calib-count {calib_count} leaves "
                         f"{max(0, n - calib_count)} held out, fewer than the {need} needed to verify the int8 model; "
                         f"{fix}.")
    order = np.random.default_rng(seed).permutation(n).tolist()
    return Split(tuple(order[:calib_count]), tuple(order[calib_count:calib_count + holdout_count]))


def _calibration_batches(folder: ImageFolder, pre: Preprocess, split: Split,
                         skipped: list[tuple[Path, str]]) -> Iterator[np.ndarray]:
    for x, _, _ in iter_batches(folder, pre, batch=CALIB_BATCH, indices=split.calibration, skipped=skipped):
        yield x


def int8_copy(name: str, fp32_onnx: Path, model: onnx.ModelProto, pre: Preprocess, opts: Int8Options,
              writer: ArtifactWriter, timer: StepTimer, report: dict[str, Any]
              ) -> tuple[Path, VanillaDeployError | None]:
    """Stage ``<name>.int8.onnx`` (calibrated and checked with ``pre``, the export's preprocessing) and fill
    ``report["int8"]``; the error returned (agreement too low) is for after publishing."""
    folder = scan_folder(opts.calib)
    split = split_folder(folder, calib_count=opts.calib_count, holdout_count=opts.holdout_count)
    path, skipped = writer.stage(f"{name}.int8.onnx"), []
    result = _calibrate(fp32_onnx, path, folder, pre, split, opts, timer, skipped)
    int8_model = onnx.load(path)
    set_metadata(int8_model, {**{p.key: p.value for p in model.metadata_props}, "precision": "int8",
                              "calibration_method": opts.calib_method,
                              "calibration_images": str(len(split.calibration) - len(skipped))})
    onnx.save(int8_model, path)
    with timer.step("int8_verify_s", f"Verifying int8 against fp32 on {len(split.holdout)} held-out images"):
        held = _held_out(fp32_onnx, path, pre, split, opts)
    row = held["artifacts"][1]
    passed = row["agreement_top1"] is not None and row["agreement_top1"] >= opts.min_agreement
    report["int8"] = {
        "file": path.name, "verified": passed, "preprocessing": pre.as_dict(),
        "calibration": {"method": opts.calib_method, "folder": str(opts.calib), "images": len(split.calibration)
                        - len(skipped), "skipped": len(skipped), "split_seed": SPLIT_SEED,
                        "files_sha256": split.files_sha256(folder), "quantized_convs": result.quantized_convs},
        "holdout": {"images": held["images"], "skipped": held["skipped"]["count"]},
        "verification": {"against": "fp32 ONNX (ONNX Runtime)", "agreement_top1": row["agreement_top1"],
                         "mean_rel_l2": row["mean_rel_l2"], "worst": row["worst"],
                         "min_agreement": opts.min_agreement, "passed": passed},
    }
    if not passed:
        return path, VerificationError(
            f"the int8 model agrees with fp32 on {row['agreement_top1']}% of {held['images']} held-out images, below "
            f"--min-agreement {opts.min_agreement}%. It was written but is marked unverified in the report; try "
            f"--calib-method {' or '.join(m for m in METHODS if m != opts.calib_method)}, or more calibration "
            "images.")
    return path, None


def _calibrate(fp32_onnx: Path, path: Path, folder: ImageFolder, pre: Preprocess, split: Split, opts: Int8Options,
               timer: StepTimer, skipped: list[tuple[Path, str]]) -> Int8Result:
    """Quantize on the calibration images; every one unreadable is refused (exit 2), a broken contract is exit 1."""
    with timer.step("int8_calibrate_s", f"Calibrating int8 on {len(split.calibration)} images ({opts.calib_method})"):
        try:
            result = quantize_qdq(fp32_onnx, path, _calibration_batches(folder, pre, split, skipped),
                                  method=opts.calib_method)
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
        held = evaluate([str(fp32_onnx), str(int8_onnx)], opts.calib, indices=split.holdout, preprocess=pre).as_dict()
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
