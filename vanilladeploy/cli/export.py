"""``vanilladeploy export``: parse, call :func:`vanilladeploy.pipeline.export.export_checkpoint`, render."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import ProgressDisplay, fmt, out, run_command, wrote
from vanilladeploy.cli.options import ArchOpt, DetConfig, KeyOpt, SourceArg, Verbose
from vanilladeploy.pipeline.options import Int8Options
from vanilladeploy.runtimes.trt_plan import DEFAULT_OPT_LEVEL, DEFAULT_WORKSPACE_BYTES

if TYPE_CHECKING:  # the pipeline (torch, onnx) is imported when a command runs, never for --help
    from vanilladeploy.pipeline.checks import RunFailure, RuntimeCheck
    from vanilladeploy.pipeline.report import ExportReport, Int8Section

INT8, TRT, DET = "INT8", "TensorRT", "Detection checkpoints"
Precision = Literal["fp32", "fp16", "int8"]
InputDtype = Literal["float32", "uint8"]


def export(
    source: SourceArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory [default: "
                                                    "./export/<variant>/].", show_default=False)] = None,
    arch: ArchOpt = None,
    key: KeyOpt = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", min=1, help="Input height and width [default: "
                                                    "the checkpoint's args.input_size, else 224].",
                                                    show_default=False)] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset: 17 up to the newest that the installed onnx "
                                       "and onnxruntime both support.")] = 17,
    static_batch: Annotated[Optional[int], typer.Option("--static-batch", min=1, help="Fix the batch dimension "
                                                        "to N [default: dynamic].", show_default=False)] = None,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip onnx-simplifier.")] = False,
    allow_inexact: Annotated[bool, typer.Option("--allow-inexact", help="Merge a checkpoint trained with λ < 1 "
                                                "anyway; the report states the resulting error.")] = False,
    input_dtype: Annotated[InputDtype, typer.Option("--input", help="float32: the graph takes normalized images. "
                                                    "uint8: it takes RGB pixels 0-255 (NCHW, after the recorded "
                                                    "resize and crop) and normalizes them itself, folded exactly "
                                                    "into the stem conv where the stem has no padding — clients "
                                                    "send 4× fewer bytes. Not with --trt.")] = "float32",
    precision: Annotated[Precision, typer.Option("--precision", help="fp32: the verified ONNX. fp16: also "
                                                 "<variant>.fp16.onnx (verified ≤ 1e-2 + top-1). int8: also "
                                                 "<variant>.int8.onnx (QDQ, calibrated on --calib images, verified "
                                                 "on held-out ones). With --trt, the engine's precision.")] = "fp32",
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Image folder (ImageFolder tree or flat) to "
                                                  "calibrate int8 on; the images after the calibration ones are "
                                                  "held out to verify it. Required by --precision int8.",
                                                  show_default=False, rich_help_panel=INT8)] = None,
    calib_count: Annotated[Optional[int], typer.Option("--calib-count", min=1, help="Images used to calibrate "
                                                       "(a detector: 32 by default, 16 more held out).",
                                                       show_default=str(Int8Options.calib_count),
                                                       rich_help_panel=INT8)] = None,
    calib_method: Annotated[Optional[Literal["minmax", "entropy", "percentile"]], typer.Option(
        "--calib-method", help="How activation ranges are chosen.", show_default=Int8Options.calib_method,
        rich_help_panel=INT8)] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", min=0.0, max=100.0, help="Top-1 "
                                                           "agreement (%) with the fp32 ONNX required on the "
                                                           "held-out images.",
                                                           show_default=f"{Int8Options.min_agreement:g}",
                                                           rich_help_panel=INT8)] = None,
    max_rel_l2: Annotated[Optional[float], typer.Option("--max-rel-l2", help="Also require the mean relative L2 "
                                                        "of the logits against fp32 on the held-out images to be at "
                                                        "most this.", show_default="no bound",
                                                        rich_help_panel=INT8)] = None,
    fallback: Annotated[Optional[str], typer.Option("--fallback", help="auto: when int8 misses --min-agreement, keep "
                                                    "the most sensitive Convs in float32, one at a time, until it "
                                                    "passes; none; or Conv names (comma-separated, as the exported "
                                                    "ONNX names them, e.g. stem/conv,cls/conv) kept in float.",
                                                    show_default=Int8Options.fallback, rich_help_panel=INT8)] = None,
    max_fallback: Annotated[Optional[int], typer.Option("--max-fallback", min=1, help="At most this many float "
                                                        "Convs for --fallback auto.", show_default="a quarter of "
                                                        "the Convs", rich_help_panel=INT8)] = None,
    openvino: Annotated[bool, typer.Option("--openvino", help="Also write the OpenVINO IR (<variant>.xml + .bin, "
                                           "fp32 weights) and verify it in OpenVINO (needs the openvino extra).")
                        ] = False,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine and verify it (needs TensorRT "
                                      "and an NVIDIA GPU; without them the ONNX is still exported and verified, "
                                      "then exit 3).", rich_help_panel=TRT)] = False,
    workspace: Annotated[Optional[str], typer.Option("--workspace", help="Builder workspace: bytes or 512MiB, "
                                                     "4GiB …", show_default=f"{DEFAULT_WORKSPACE_BYTES >> 30}GiB",
                                                     rich_help_panel=TRT)] = None,
    trt_profile: Annotated[Optional[str], typer.Option("--trt-profile", help="TensorRT batch optimization profile "
                                                       "MIN/OPT/MAX, or MAX (= 1/1/MAX) [default: 1/1/32, or the "
                                                       "--static-batch; a detector: 1/1/4]. Was --batch.",
                                                 show_default=False, rich_help_panel=TRT)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Timing cache file, read if "
                                                         "present and updated after the build (faster rebuilds).",
                                                         rich_help_panel=TRT)] = None,
    opt_level: Annotated[Optional[int], typer.Option("--opt-level", min=0, max=5, help="Builder optimization "
                                                     "level.", show_default=str(DEFAULT_OPT_LEVEL),
                                                     rich_help_panel=TRT)] = None,
    part: Annotated[Optional[str], typer.Option("--part", help="backbone (features c3…c5), neck (FPN levels) or "
                                                "detector (boxes, scores, labels after NMS) [default: detector where "
                                                "the head is supported (RetinaNet), else neck].",
                                                show_default=False, rich_help_panel=DET)] = None,
    det_config: DetConfig = None,
    trt_shapes: Annotated[Optional[str], typer.Option("--trt-shapes", help="With --trt, a detector's height x width "
                                                      "profile MIN/OPT/MAX [default: 320x320/800x1344/1344x1344].",
                                                      show_default=False, rich_help_panel=DET)] = None,
    verify_sizes: Annotated[Optional[str], typer.Option("--verify-sizes", help="Input sizes HEIGHTxWIDTH,… the "
                                                        "detector is verified at (multiples of the total stride; the "
                                                        "second and later with batch 2) [default: 800x1344,320x480].",
                                                        show_default=False, rich_help_panel=DET)] = None,
    verbose: Verbose = False,
) -> None:
    """Re-parameterize a checkpoint, prove the fused model equal to the trained one, export a verified ONNX.

    A detection checkpoint (mmdetection RetinaNet or Mask R-CNN with a VanillaNet backbone) is exported by --part:
    its fused backbone, the FPN on top, or (RetinaNet) the whole detector with NMS in the graph (docs/detection.md).

    Writes <variant>.onnx, <variant>_deploy.pth ({"model": deploy state dict}) and <variant>.report.json (plus
    <variant>.fp16.onnx or <variant>.int8.onnx for --precision fp16/int8, <variant>.xml/.bin for --openvino); with
    --trt also
    <variant>.<precision>.engine and its .json sidecar (and a .build.log with --verbose), and the equivalent trtexec
    command in the report. On any failure before publishing nothing is written.
    """
    import gc

    from vanilladeploy import api
    from vanilladeploy.pipeline.detection import DetectionExportResult

    gc.freeze()  # the ~190k objects the imports made are never garbage: no collection walks them again

    def run() -> None:
        with ProgressDisplay() as progress:  # api.export checks the options (dependent ones first, then once the
            # checkpoint says what it is)
            result = api.export(
                source, progress=progress, out_dir=out_dir, arch=arch, key=key, img_size=img_size, opset=opset,
                static_batch=static_batch, simplify=not no_simplify, allow_inexact=allow_inexact, precision=precision,
                calib=calib, openvino=openvino, input_dtype=input_dtype, calib_count=calib_count,
                calib_method=calib_method, min_agreement=min_agreement, max_rel_l2=max_rel_l2, fallback=fallback,
                max_fallback=max_fallback, trt=trt, workspace=workspace, trt_profile=trt_profile,
                timing_cache=timing_cache, opt_level=opt_level, verbose=verbose, part=part, det_config=det_config,
                verify_sizes=verify_sizes, trt_shapes=trt_shapes)
        if isinstance(result, DetectionExportResult):
            _render_detector(result.report, result.artifacts)
        else:
            _render(result.typed_report, result.artifacts)
        if result.error is not None:
            raise result.error

    run_command(verbose, run)


def _render_detector(report: dict, artifacts: dict[str, Path]) -> None:
    det, ver = report["detector"], report["verification"]
    b = det["backbone"]
    title = f"{det['kind']} ({b['variant']} backbone) — {report['part']} exported"
    table = Table(title=title, show_header=True, header_style="bold")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    certs = report["reparameterization"]["certificates"]
    table.add_row("backbone fused (float64)", "[green]pass[/]", f"{len(certs)} layers, stored float32 rel. L2 ≤ "
                  f"{max(c['rel_l2'] for c in certs):.1e}")
    sizes = ", ".join(f"{h}x{w}" for h, w in ver["sizes"])
    for key, label in (("torch_backbone", "torch: fused vs training form"),
                       ("onnxruntime", "onnxruntime vs training form"),
                       ("onnxruntime_raw_head", "onnxruntime raw head vs training form")):
        if key in ver:
            table.add_row(label, "[green]pass[/]", f"rel L2 {ver[key]['rel_l2']:.1e} (≤ 1e-05) at {sizes}")
    for i, m in enumerate(ver.get("onnxruntime_detections", [])):
        table.add_row(f"boxes after NMS ({ver['sizes'][i][0]}x{ver['sizes'][i][1]})", "[green]pass[/]",
                      f"{sum(m['detections'])} detections equal to the reference (box Δ ≤ "
                      f"{m['max_box_diff_px']:.1e} px, score Δ ≤ {m['max_score_diff']:.1e})")
    table.add_row("graph contract", "[green]pass[/]", f"{report['onnx']['nodes']} nodes, no BatchNormalization")
    fp16 = ver.get("onnxruntime_fp16")
    if fp16 is not None:
        table.add_row("onnxruntime fp16" + (" boxes vs fp32" if "recall" in fp16 else " vs training form"),
                      "[green]pass[/]", f"recall {fp16['recall']:.4f}, precision {fp16['precision']:.4f}, mean IoU "
                      f"{fp16['mean_iou']:.4f}" if "recall" in fp16 else f"rel L2 {fp16['rel_l2']:.1e} (≤ 1e-02)")
    int8 = report.get("int8")
    if int8 is not None:
        v = int8["verification"]
        detail = (f"recall {v['recall']:.4f}, precision {v['precision']:.4f}, mean IoU {v['mean_iou']:.4f}, mean "
                  f"score Δ {v['mean_score_diff']:.1e}" if "recall" in v else f"mean rel L2 {v['mean_rel_l2']:.3f}")
        table.add_row(f"int8 vs fp32 ({int8['holdout']['images']} held-out images)", "[green]pass[/]",
                      f"{detail}; calibrated on {int8['calibration']['images']} images "
                      f"({int8['calibration']['method']})")
    trt_section = report.get("tensorrt")
    if trt_section is not None:
        built = trt_section.get("built")
        table.add_row("TensorRT compatibility", "[green]pass[/]", f"profile {trt_section['profile']}, shapes "
                      f"{trt_section['shapes']}")
        table.add_row("TensorRT fp32 engine", "[green]built[/]" if built else "[yellow]not built[/]",
                      escape(trt_section.get("missing") or str(built.get("verification", {}).get("passed")) if built
                             else trt_section.get("missing") or ""))
    for precision, check in report.get("openvino", {}).items():
        if isinstance(check, dict) and "skipped" in check:
            table.add_row(f"openvino {precision}", "[yellow]skipped[/]", escape(check["skipped"]))
        elif isinstance(check, dict) and "recall" in check:
            table.add_row(f"openvino {precision} boxes vs onnxruntime", "[green]pass[/]" if check["passed"] else
                          "[yellow]below gate[/]", f"recall {check['recall']:.4f}, precision {check['precision']:.4f}"
                          f", mean IoU {check['mean_iou']:.4f}, mean score Δ {check['mean_score_diff']:.1e}")
        elif isinstance(check, dict):
            table.add_row(f"openvino {precision} vs training form", "[green]pass[/]", f"rel L2 {check['rel_l2']:.1e}")
    out.print(table)
    for path in artifacts.values():
        wrote(path)


def _render(report: ExportReport, artifacts: dict[str, Path]) -> None:
    variant = report.architecture.variant
    table = Table(title=f"{variant} exported", show_header=True, header_style="bold")
    for col in ("check", "result", "detail"):
        table.add_column(col)
    _source_rows(table, report)
    _verification_rows(table, report)
    trt = report.tensorrt
    if trt is not None:
        compat = trt.compatibility
        table.add_row("TensorRT compatibility", "[green]pass[/]", f"{len(compat.warnings)} warnings, profile "
                      f"{compat.profile}")
        if trt.built is not None:
            _verification_row(table, f"TensorRT {trt.precision} engine", trt.built.verification)
        else:
            table.add_row(f"TensorRT {trt.precision} engine", "[yellow]not built[/]", escape(trt.missing or ""))
    out.print(table)
    _render_fallback(report.int8)
    for path in artifacts.values():
        wrote(path)
    onnx_path = next(p for p in artifacts.values() if p.name == f"{variant}.onnx")
    if trt is not None and trt.trtexec is not None:
        out.print("\nReproduce with TensorRT's own tools (TensorRT 10; the report also has the TensorRT 11 line):")
        out.print(f"  {escape(trt.trtexec.tensorrt10)}", soft_wrap=True)
    elif report.input is not None:  # --trt is refused with --input uint8
        out.print(f"\nNext: [bold]vanilladeploy check {escape(str(onnx_path))}[/] (TensorRT compatibility); "
                  "export --trt builds engines from float32-input exports only.", soft_wrap=True)
    else:
        out.print(f"\nNext: [bold]vanilladeploy check {escape(str(onnx_path))}[/] (TensorRT compatibility), then "
                  "export again with --trt on a machine with TensorRT.", soft_wrap=True)


def _source_rows(table: Table, report: ExportReport) -> None:
    lam = report.lambda_
    if report.source.untrained:
        table.add_row("weights", "[yellow]untrained[/]", "seeded random weights and BN statistics (demo)")
    table.add_row("λ", "[green]exact[/]" if lam.exact else "[yellow]inexact[/]", lam.note)
    pre, src = report.preprocessing, report.preprocessing.sources
    table.add_row("preprocessing", "", escape(f"{pre.img_size} px ({src['img_size']}), crop_pct {pre.crop_pct:.4g} "
                                              f"({src['crop_pct']}), mean/std "
                                              f"{'ImageNet' if pre.mean[0] != 0.5 else 'Inception 0.5'} "
                                              f"({src['mean_std']})"))
    if report.input is not None:
        table.add_row("input", report.input.dtype, escape(f"{report.input.layout}; normalization "
                                                          f"{report.input.normalization}; "
                                                          f"{report.input.bytes_per_image:,} bytes per image (float32: "
                                                          f"{report.input.float32_bytes_per_image:,})"))


def _verification_rows(table: Table, report: ExportReport) -> None:
    ver = report.verification
    graphs = " (uint8 pixels) vs fused float model" if ver.pixels is not None else " vs training form"
    for name, check in (("torch", ver.torch), ("onnxruntime", ver.onnxruntime),
                        ("onnxruntime fp16", ver.onnxruntime_fp16), ("openvino", ver.openvino)):
        if check is not None:
            _verification_row(table, name + (" vs training form" if name == "torch" else graphs), check)
    int8 = report.int8
    if int8 is not None:
        v = int8.verification
        table.add_row(f"int8 vs fp32 ({int8.holdout.images} held-out images)",
                      "[green]pass[/]" if v.passed else "[red]FAIL[/]",
                      f"top-1 agreement {v.agreement_top1}% (≥ {v.min_agreement}%), mean rel L2 "
                      f"{fmt(v.mean_rel_l2)}; calibrated on {int8.calibration.images} images "
                      f"({int8.calibration.method})")
    if ver.against_trained_lambda is not None:
        table.add_row("vs trained λ network", "[yellow]inexact[/]",
                      f"rel L2 {_number(ver.against_trained_lambda.result.rel_l2)}")
    onnx_info = report.onnx
    assert onnx_info is not None  # a written report always has its ONNX section
    table.add_row("graph contract", "[green]pass[/]", f"{onnx_info.contract.node_count} nodes, opset "
                  f"{onnx_info.opset}")


def _number(x: float) -> str:
    """A measured error as the report writes it: non-finite ones as ``nan/inf``."""
    return fmt(x) if math.isfinite(x) else "nan/inf"


def _verification_row(table: Table, label: str, check: RuntimeCheck | RunFailure) -> None:
    from vanilladeploy.pipeline.checks import RunFailure

    if isinstance(check, RunFailure):
        table.add_row(label, "[red]FAIL[/]", escape(check.error))
        return
    result = check.result
    detail = f"rel L2 {_number(result.rel_l2)}, max abs {_number(result.max_abs)} (≤ {result.tolerance:.0e})"
    if check.top1 is not None:
        detail += f", top-1 {check.top1.agree}/{check.top1.total}"
    table.add_row(label, "[green]pass[/]" if check.passed else "[red]FAIL[/]", detail)


def _render_fallback(int8: Int8Section | None) -> None:
    """The most sensitive Convs (agreement with only that one in float) and the fallback's steps and cost."""
    if int8 is None:
        return
    if int8.sensitivity:
        out.print("int8 sensitivity, most sensitive first (top-1 agreement % with only that Conv in float):")
        for s in int8.sensitivity[:5]:
            out.print(f"  {escape(s.layer):<16} {s.kind:<9} {s.agreement_top1:7.2f}  rel L2 {s.mean_rel_l2:.2e}")
    for step in int8.fallback.steps[1:]:
        out.print(f"  fallback: {escape(', '.join(step.float_layers))} in float → {step.agreement_top1:.2f}%")
    cost = int8.latency_ms
    if cost is not None:
        out.print(f"  cost (ONNX Runtime, batch {cost.batch}, median ms): fp32 {cost.fp32_median_ms}, int8 "
                  f"{cost.int8_median_ms}, with {len(int8.float_layers)} float Convs {cost.mixed_median_ms}")
