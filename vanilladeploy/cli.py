"""The ``vanilladeploy`` command: a thin client over :mod:`vanilladeploy.export`.

Commands parse options, call the library and render; errors become one red line and a documented exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vanilladeploy import __version__
from vanilladeploy.errors import ExitCode, UsageError, VanillaDeployError

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 verification failed (an artifact does not match the reference, or `check` found "
    "problems) · 2 bad input or usage (unreadable, unsafe or inexact checkpoint, bad option) · "
    "3 optional dependency or GPU missing (export --trt: the ONNX was still written and verified, no engine) · "
    "4 internal error (a bug) · 130 interrupted."
)
INTERNAL_ERROR = 4

try:  # typer ≥ 0.17 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as _click_exc  # type: ignore[no-redef]
from typer.core import TyperGroup


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (bad type, out-of-range value, unknown option) as ONE red line and exit 2, like every other
    error of this CLI, instead of click's four-line usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _click_exc.NoArgsIsHelpError as e:
            e.show()
            sys.exit(e.exit_code)
        except _click_exc.ClickException as e:
            ctx = getattr(e, "ctx", None)
            where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            err.print(f"[bold red]error:[/] {escape(e.format_message())}{escape(where)}", soft_wrap=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            err.print("[red]aborted[/]")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="vanilladeploy",
    help="Turn VanillaNet training checkpoints into verified deployable artifacts.\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")

Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and more detail on errors.")]
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Variant name; overrides detection (required to "
                                                "tell vanillanet_13_x1_5_ada_pool from vanillanet_13_x1_5 when the "
                                                "file records no args.model).")]
KeyOpt = Annotated[Optional[str], typer.Option("--key", help="Container entry holding the weights (default: "
                                               "model_ema, else model, else state_dict, else the file itself).")]
SourceArg = Annotated[str, typer.Argument(help="Checkpoint file (.pth/.pt/.safetensors), or a variant name such as "
                                          "vanillanet_6 for an untrained model with seeded random weights.",
                                          show_default=False)]


def _run(verbose: bool, fn: Callable[[], T]) -> T:
    """Call ``fn``; turn our errors into one red line + exit code, anything else into exit 4. A Ctrl-C passes
    through: typer makes it exit 130, which :func:`main` reports."""
    try:
        return fn()
    except VanillaDeployError as e:
        if verbose:
            err.print_exception()
        err.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
        raise typer.Exit(int(e.exit_code)) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:
        if verbose:
            err.print_exception()
        err.print(f"[bold red]internal error:[/] {type(e).__name__}: {escape(str(e))}. Re-run with --verbose for the "
                  "traceback and report it.", soft_wrap=True)
        raise typer.Exit(INTERNAL_ERROR) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"vanilladeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Turn VanillaNet training checkpoints into verified deployable artifacts."""


Precision = Literal["fp32", "fp16", "int8"]


@app.command(epilog=EXIT_CODES_HELP)
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
    precision: Annotated[Precision, typer.Option("--precision", help="fp32: the verified ONNX. fp16: also "
                                                 "<variant>.fp16.onnx (verified ≤ 1e-2 + top-1). int8: also "
                                                 "<variant>.int8.onnx (QDQ, calibrated on --calib images, verified "
                                                 "on held-out ones). With --trt, the engine's precision.")] = "fp32",
    calib: Annotated[Optional[Path], typer.Option("--calib", help="Image folder (ImageFolder tree or flat) to "
                                                  "calibrate int8 on; the images after the calibration ones are "
                                                  "held out to verify it. Required by --precision int8.",
                                                  show_default=False, rich_help_panel="INT8")] = None,
    calib_count: Annotated[Optional[int], typer.Option("--calib-count", min=1, help="Images used to calibrate.",
                                                       show_default="256", rich_help_panel="INT8")] = None,
    calib_method: Annotated[Optional[Literal["minmax", "entropy", "percentile"]], typer.Option(
        "--calib-method", help="How activation ranges are chosen.", show_default="minmax",
        rich_help_panel="INT8")] = None,
    min_agreement: Annotated[Optional[float], typer.Option("--min-agreement", min=0.0, max=100.0, help="Top-1 "
                                                           "agreement (%) with the fp32 ONNX required on the "
                                                           "held-out images.", show_default="99",
                                                           rich_help_panel="INT8")] = None,
    trt: Annotated[bool, typer.Option("--trt", help="Also build a TensorRT engine and verify it (needs TensorRT "
                                      "and an NVIDIA GPU; without them the ONNX is still exported and verified, "
                                      "then exit 3).", rich_help_panel="TensorRT")] = False,
    workspace: Annotated[Optional[str], typer.Option("--workspace", help="Builder workspace: bytes or 512MiB, "
                                                     "4GiB …", show_default="4GiB", rich_help_panel="TensorRT")
                         ] = None,
    batch: Annotated[Optional[str], typer.Option("--batch", help="Batch optimization profile MIN/OPT/MAX, or MAX "
                                                 "(= 1/1/MAX) [default: 1/1/32, or the --static-batch].",
                                                 show_default=False, rich_help_panel="TensorRT")] = None,
    timing_cache: Annotated[Optional[Path], typer.Option("--timing-cache", help="Timing cache file, read if "
                                                         "present and updated after the build (faster rebuilds).",
                                                         rich_help_panel="TensorRT")] = None,
    opt_level: Annotated[Optional[int], typer.Option("--opt-level", min=0, max=5, help="Builder optimization "
                                                     "level.", show_default="3", rich_help_panel="TensorRT")] = None,
    verbose: Verbose = False,
) -> None:
    """Re-parameterize a checkpoint, prove the fused model equal to the trained one, export a verified ONNX.

    Writes <variant>.onnx, <variant>_deploy.pth ({"model": deploy state dict}) and <variant>.report.json (plus
    <variant>.fp16.onnx or <variant>.int8.onnx for --precision fp16/int8); with --trt also
    <variant>.<precision>.engine and its .json sidecar (and a .build.log with --verbose), and the equivalent trtexec
    command in the report. On any failure before publishing nothing is written.
    """
    from vanilladeploy.export import ExportOptions, export_checkpoint

    def run() -> None:
        _check_source_options(source, arch, key)
        _needs("--trt", trt, {"--workspace": workspace, "--batch": batch, "--timing-cache": timing_cache,
                              "--opt-level": opt_level})
        _needs("--precision int8", precision == "int8", {"--calib": calib, "--calib-count": calib_count,
                                                         "--calib-method": calib_method,
                                                         "--min-agreement": min_agreement})
        if precision == "int8" and calib is None:
            raise UsageError("--precision int8 needs --calib DIR, a folder of images to calibrate on (an int8 model "
                             "calibrated on noise is not deployable).")
        _check_opset(opset)
        _check_path_option("--out", out_dir, directory=True)
        _check_path_option("--timing-cache", timing_cache, directory=False)
        _check_path_option("--calib", calib, directory=True, must_exist=True)
        trt_opts = _trt_options(precision, "4GiB" if workspace is None else workspace, batch, timing_cache,
                                3 if opt_level is None else opt_level, static_batch, verbose) if trt else None
        int8 = {} if precision != "int8" else {
            k: v for k, v in {"calib": calib, "calib_count": calib_count, "calib_method": calib_method,
                              "min_agreement": min_agreement}.items() if v is not None}
        opts = ExportOptions(out_dir=out_dir, arch=arch, key=key, img_size=img_size, opset=opset,
                             static_batch=static_batch, simplify=not no_simplify, allow_inexact=allow_inexact,
                             precision=precision, trt=trt_opts, **int8)
        with _Progress() as progress:  # the spinner stops before an error line is printed
            result = export_checkpoint(source, opts, progress=progress)
        _render_export(result.report, result.artifacts)
        if result.error is not None:
            raise result.error

    _run(verbose, run)


def _check_source_options(source: str, arch: str | None, key: str | None) -> None:
    """``--arch`` must name a variant; ``--key`` selects an entry of a file, so a variant name cannot take it."""
    from models.vanillanet import VARIANTS, get_variant

    if arch is not None:
        try:
            get_variant(arch)
        except ValueError as e:
            raise UsageError(f"--arch: {e}") from None
    if key is not None and source in VARIANTS and not Path(source).exists():
        raise UsageError(f"--key has no effect for a variant name ({source} is not a file): drop --key.")


def _needs(requirement: str, present: bool, options: dict[str, Any]) -> None:
    """Refuse options given without the one they depend on: they would silently do nothing."""
    given = [name for name, value in options.items() if value is not None]
    if given and not present:
        raise UsageError(f"{given[0]} has no effect without {requirement}: add {requirement}, or drop {given[0]}.")


def _check_opset(opset: int) -> None:
    from exporters.onnx_export import MIN_OPSET, max_supported_opset

    newest = max_supported_opset()
    if not MIN_OPSET <= opset <= newest:
        import onnx
        import onnxruntime

        raise UsageError(f"--opset {opset}: choose {MIN_OPSET} … {newest} (what onnx {onnx.__version__} and "
                         f"onnxruntime {onnxruntime.__version__} installed here both support).")


def _check_path_option(option: str, path: Path | None, *, directory: bool, must_exist: bool = False) -> None:
    """Refuse before any work a path that cannot be what ``option`` needs (an empty string is the working
    directory; a file where a directory is needed, or the reverse; a missing input)."""
    if path is None:
        return
    if str(path) in ("", "."):
        raise UsageError(f"{option} is empty: give a {'directory' if directory else 'file'} path.")
    if must_exist and not path.exists():
        raise UsageError(f"{option} {path}: no such {'directory' if directory else 'file'}.")
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path} is a file, not a directory.")
    if not directory and path.is_dir():
        raise UsageError(f"{option} {path} is a directory: give a file path.")


def _trt_options(precision: str, workspace: str, batch: str | None, timing_cache: Path | None, opt_level: int,
                 static_batch: int | None, verbose: bool) -> Any:
    from exporters.trt_compat import BatchProfile
    from exporters.trt_plan import TrtBuildOptions, parse_size

    profile = _batch_profile(batch) if batch is not None else (
        BatchProfile.fixed(static_batch) if static_batch else BatchProfile())
    try:
        workspace_bytes = parse_size(workspace)
    except ValueError as e:
        raise UsageError(f"--workspace: {e}.") from None
    try:
        return TrtBuildOptions(precision=precision, profile=profile, workspace_bytes=workspace_bytes,
                               timing_cache=timing_cache, opt_level=opt_level, detailed_log=verbose)
    except ValueError as e:
        raise UsageError(f"{e}.") from None


def _batch_profile(batch: str) -> Any:
    from exporters.trt_compat import BatchProfile

    try:
        return BatchProfile.parse(batch)
    except ValueError as e:
        raise UsageError(f"--batch: {e}.") from None


class _Progress:
    """A spinner while a step runs (on a terminal), then a ✓ line with its duration."""

    def __init__(self) -> None:
        self.status = err.status("") if err.is_terminal else None

    def __enter__(self) -> _Progress:
        if self.status is not None:
            self.status.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.stop()

    def __call__(self, message: str, seconds: float | None) -> None:
        if seconds is not None:
            err.print(f"[green]✓[/] {escape(message)} [dim]({seconds:.1f} s)[/]")
        elif self.status is not None:
            self.status.update(f"{escape(message)} …")


def _fmt(x: Any) -> str:
    return f"{x:.2e}" if isinstance(x, float) else str(x)


def _render_export(report: dict[str, Any], artifacts: dict[str, Path]) -> None:
    arch, ver, lam = report["architecture"], report["verification"], report["lambda"]
    table = Table(title=f"{arch['variant']} exported", show_header=True, header_style="bold")
    table.add_column("check")
    table.add_column("result")
    table.add_column("detail")
    if report["source"]["untrained"]:
        table.add_row("weights", "[yellow]untrained[/]", "seeded random weights and BN statistics (demo)")
    table.add_row("λ", "[green]exact[/]" if lam["exact"] else "[yellow]inexact[/]", lam["note"])
    pre = report.get("preprocessing")
    if pre:
        src = pre["sources"]
        table.add_row("preprocessing", "", escape(f"{pre['img_size']} px ({src['img_size']}), crop_pct "
                                                  f"{pre['crop_pct']:.4g} ({src['crop_pct']}), mean/std "
                                                  f"{'ImageNet' if pre['mean'][0] != 0.5 else 'Inception 0.5'} "
                                                  f"({src['mean_std']})"))
    for name in ("torch", "onnxruntime", "onnxruntime_fp16"):
        if name in ver:
            _verification_row(table, f"{name.replace('_', ' ')} vs training form", ver[name])
    if "int8" in report:
        v = report["int8"]["verification"]
        table.add_row(f"int8 vs fp32 ({report['int8']['holdout']['images']} held-out images)",
                      "[green]pass[/]" if v["passed"] else "[red]FAIL[/]",
                      f"top-1 agreement {v['agreement_top1']}% (≥ {v['min_agreement']}%), mean rel L2 "
                      f"{_fmt(v['mean_rel_l2'])}; calibrated on {report['int8']['calibration']['images']} images "
                      f"({report['int8']['calibration']['method']})")
    if "against_trained_lambda" in ver:
        v = ver["against_trained_lambda"]
        table.add_row("vs trained λ network", "[yellow]inexact[/]", f"rel L2 {_fmt(v['rel_l2'])}")
    onnx_info = report["onnx"]
    table.add_row("graph contract", "[green]pass[/]", f"{onnx_info['contract']['nodes']} nodes, opset "
                  f"{onnx_info['opset']}")
    trt = report.get("tensorrt")
    if trt:
        compat = trt["compatibility"]
        table.add_row("TensorRT compatibility", "[green]pass[/]", f"{len(compat['warnings'])} warnings, profile "
                      f"{compat['profile']}")
        if trt.get("status") == "built":
            _verification_row(table, f"TensorRT {trt['precision']} engine", trt["verification"])
        else:
            table.add_row(f"TensorRT {trt['precision']} engine", "[yellow]not built[/]", escape(trt.get("reason", "")))
    out.print(table)
    for path in artifacts.values():
        out.print(f"  wrote {escape(str(path))}", soft_wrap=True)
    onnx_path = next(p for p in artifacts.values() if p.name == f"{arch['variant']}.onnx")
    if trt:
        out.print("\nReproduce with TensorRT's own tools (TensorRT 10; the report also has the TensorRT 11 line):")
        out.print(f"  {escape(trt['trtexec']['tensorrt10'])}", soft_wrap=True)
    else:
        out.print(f"\nNext: [bold]vanilladeploy check {escape(str(onnx_path))}[/] (TensorRT compatibility), then "
                  "export again with --trt on a machine with TensorRT.", soft_wrap=True)


def _verification_row(table: Table, label: str, v: dict[str, Any]) -> None:
    if "error" in v:
        table.add_row(label, "[red]FAIL[/]", escape(v["error"]))
        return
    detail = f"rel L2 {_fmt(v['rel_l2'])}, max abs {_fmt(v['max_abs'])} (≤ {v['tolerance']:.0e})"
    if "top1" in v:
        detail += f", top-1 {v['top1']['agree']}/{v['top1']['total']}"
    table.add_row(label, "[green]pass[/]" if v["passed"] else "[red]FAIL[/]", detail)


@app.command(epilog=EXIT_CODES_HELP)
def inspect(
    source: SourceArg,
    arch: ArchOpt = None,
    key: KeyOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    verbose: Verbose = False,
) -> None:
    """Show what a checkpoint is (container, form, variant, act_num, classes, λ) without exporting anything."""
    from vanilladeploy.checkpoint import lambda_of
    from vanilladeploy.export import describe, detect, resolve_source

    def run() -> dict[str, Any]:
        _check_source_options(source, arch, key)
        ckpt = resolve_source(source, key=key)
        info = describe(ckpt, detect(ckpt, arch=arch), lambda_of(ckpt))
        info["source"]["tensors"] = len(ckpt.state_dict)
        info["source"]["parameters"] = sum(t.numel() for k, t in ckpt.state_dict.items()
                                           if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        return info

    _run(verbose, lambda: _render_inspect(source, run(), as_json=as_json))


def _print_json(info: dict[str, Any]) -> None:
    typer.echo(json.dumps(info, indent=2, ensure_ascii=False))  # plain, not rich: never wrapped


def _render_inspect(source: str, info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    table = Table(title=f"{source}", show_header=False)
    for section in ("source", "architecture", "lambda"):
        for k, v in info[section].items():
            table.add_row(f"{section}.{k}", str(v))
    out.print(table)
    if not info["lambda"]["exact"]:
        out.print("[yellow]λ < 1: export refuses this checkpoint unless --allow-inexact is given.[/]")


@app.command(epilog=EXIT_CODES_HELP)
def check(
    onnx_path: Annotated[Path, typer.Argument(help="The ONNX model to check.", show_default=False)],
    batch: Annotated[Optional[str], typer.Option("--batch", help="Batch optimization profile MIN/OPT/MAX or MAX "
                                                 "(= 1/1/MAX) [default: 1/1/32].", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a list.")] = False,
    verbose: Verbose = False,
) -> None:
    """Check an ONNX model against what TensorRT's ONNX parser accepts (ops, types, attributes, opset, input
    shapes vs the batch profile) — no TensorRT or GPU needed. Exit 0 when compatible, 1 when not."""
    from vanilladeploy.compat import check_onnx_file

    def run() -> None:
        if batch is not None:
            _batch_profile(batch)
        result = check_onnx_file(onnx_path, batch=batch)
        _render_check(onnx_path, result.as_dict(), as_json=as_json)
        if not result:
            raise typer.Exit(int(ExitCode.VERIFICATION_FAILED))

    _run(verbose, run)


def _render_check(path: Path, info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        _print_json(info)
        return
    for line in info["errors"]:
        out.print(f"[red]error[/]   {escape(line)}", soft_wrap=True)
    for line in info["warnings"]:
        out.print(f"[yellow]warning[/] {escape(line)}", soft_wrap=True)
    verdict = "[green]TensorRT-compatible[/]" if info["passed"] else "[red]not TensorRT-compatible[/]"
    out.print(f"{escape(str(path))}: {verdict} ({info['nodes']} nodes, opset {info['opset']}, batch profile "
              f"{info['profile']}, {len(info['errors'])} errors, {len(info['warnings'])} warnings)", soft_wrap=True)


@app.command(epilog=EXIT_CODES_HELP)
def bench(
    batch: Annotated[int, typer.Option("--batch", min=1, help="Batch size.")] = 1,
    models: Annotated[Optional[str], typer.Option("--models", help="Comma-separated: vanillanet_5 … "
                                                  "vanillanet_13_x1_5_ada_pool (':train' for the training form), "
                                                  "resnet18 … resnet152, swin_t/s/b; 'paper' = the official latency "
                                                  "table's models; 'all'.", show_default="paper")] = None,
    backends: Annotated[Optional[str], typer.Option("--backends", help="Comma-separated: torch, torch-cudagraph, "
                                                    "onnxruntime, tensorrt. Unavailable ones are listed as skipped.",
                                                    show_default="all")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="cpu or cuda.",
                                                  show_default="cuda if available")] = None,
    precision: Annotated[str, typer.Option("--precision", help="fp32, fp16 (CUDA only), int8 (onnxruntime and "
                                           "tensorrt: a QDQ graph calibrated on seeded random inputs, for timing), "
                                           "or several timed in the same rounds: fp32,int8.")] = "fp32",
    img_size: Annotated[int, typer.Option("--img-size", min=1, help="Input height and width.")] = 224,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed rounds first.")] = 3,
    iters: Annotated[Optional[int], typer.Option("--iters", min=1, help="Timed rounds (each times every model "
                                                 "once).", show_default="20 on cpu, 200 on cuda")] = None,
    budget: Annotated[Optional[float], typer.Option("--budget-s", help="Stop timing after this many seconds "
                                                    "(at least 3 rounds).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="CPU threads, pinned to as many "
                                                   "cores.", show_default="all")] = None,
    channels_last: Annotated[bool, typer.Option("--channels-last", help="torch backends: NHWC memory "
                                                "format.")] = False,
    include_copies: Annotated[bool, typer.Option("--include-copies", help="Time host→device input and "
                                                 "device→host output copies too.")] = False,
    train_form: Annotated[bool, typer.Option("--train-form", help="Also time each VanillaNet's training form "
                                             "(λ = 1), to show what re-parameterization buys.")] = False,
    json_path: Annotated[Path, typer.Option("--json", help="Results JSON.")] = Path("bench/results.json"),
    csv_path: Annotated[Path, typer.Option("--csv", help="Results CSV.")] = Path("bench/results.csv"),
    plot_path: Annotated[Path, typer.Option("--plot", help="PNG: top-1 vs latency, depth vs latency.")]
    = Path("bench/latency.png"),
    cache_dir: Annotated[Optional[Path], typer.Option("--cache-dir", help="Where exported ONNX files and the "
                                                      "engines' timing cache are kept (peaks are measured anew "
                                                      "in every run).",
                                                      show_default="~/.cache/vanilladeploy")] = None,
    verbose: Verbose = False,
) -> None:
    """Batch latency of deployed VanillaNets against ResNet and Swin on the same backends, in one run.

    Models are timed in interleaved rounds; the table gives median/p90/p99, throughput, the physical floor
    max(FLOPs/peak, weight bytes/bandwidth) from measured peaks, efficiency = floor/median, and the published A100
    numbers beside ours.
    """
    from vanilladeploy.bench import BenchOptions, run_bench

    opts = BenchOptions(models=models, backends=[b.strip() for b in backends.split(",") if b.strip()]
                        if backends else None, device=device, precision=precision, batch=batch, img_size=img_size,
                        warmup=warmup, iters=iters, budget_s=budget, threads=threads, channels_last=channels_last,
                        include_copies=include_copies, train_form=train_form)
    if cache_dir is not None:
        opts.cache_dir = cache_dir

    def run() -> None:
        import importlib.util

        from vanilladeploy.errors import MissingDependencyError

        _check_bench_options(models, backends, budget, {"--json": json_path, "--csv": csv_path,
                                                        "--plot": plot_path}, cache_dir)
        if importlib.util.find_spec("matplotlib") is None:  # say so before minutes of timing, not after
            raise MissingDependencyError("the plot needs matplotlib: pip install 'vanilladeploy[bench]'")
        with _BenchProgress() as progress:
            result = run_bench(opts, progress=progress)
        _render_bench(result.records, result.machine, result.peaks, result.peaks_unavailable)
        _write_bench(result, json_path, csv_path, plot_path)

    _run(verbose, run)


def _check_bench_options(models: str | None, backends: str | None, budget: float | None,
                         outputs: dict[str, Path], cache_dir: Path | None) -> None:
    """What ``bench`` would otherwise find out only after minutes of timing, or silently reinterpret."""
    from benchmarks.backends import BACKENDS

    for option, value in (("--models", models), ("--backends", backends)):
        if value is not None and not [v for v in value.split(",") if v.strip()]:
            raise UsageError(f"{option} is empty: give a comma-separated list, or drop {option} for the default.")
    unknown = [b.strip() for b in (backends or "").split(",") if b.strip() and b.strip() not in BACKENDS]
    if unknown:
        raise UsageError(f"--backends: unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}.")
    if budget is not None and not budget > 0:
        raise UsageError(f"--budget-s {budget}: give a positive number of seconds.")
    for option, path in outputs.items():
        _check_path_option(option, path, directory=False)
    _check_path_option("--cache-dir", cache_dir, directory=True)


class _BenchProgress:
    """A rich progress bar over the preparation and timing phases (on stderr)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True, disable=not err.is_terminal)
        self.task = None

    def __enter__(self) -> _BenchProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, phase: str, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bar.add_task(escape(phase), total=total)
        self.bar.update(self.task, description=escape(phase), completed=done, total=total)
        if not err.is_terminal and phase.startswith(("Prepared", "Measuring")):
            err.print(escape(phase))


def _ms(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}" if x < 10 else f"{x:.1f}"


def _render_bench(records: list[dict[str, Any]], machine: dict[str, Any], peaks: dict[str, Any],
                  unavailable: dict[str, dict[str, Any]]) -> None:
    where = machine.get("gpu") or machine["cpu"]
    out.print(f"[bold]{escape(where)}[/]", soft_wrap=True)
    for precision, peak in peaks.items():
        unit = "GOP/s" if precision == "int8" else "GFLOP/s"
        t = peak.theoretical_peak
        theory = f"; {t.label}: {t.note} = {t.flops / 1e9:.0f} {unit}" if t and t.flops else ""
        out.print(f"  {precision} peak measured in the same rounds: {peak.peak_flops / 1e9:.0f} {unit} "
                  f"({escape(peak.winner)}, min time), bandwidth {peak.bandwidth_bytes_s / 1e9:.0f} GB/s"
                  f"{escape(theory)}", soft_wrap=True)
    for precision, info in unavailable.items():
        out.print(f"  [yellow]{precision}: no peak measured[/] — {escape(str(info.get('reason', '')))}; its records "
                  "have no floor", soft_wrap=True)
    for backend, precision in dict.fromkeys((r["backend"], r["precision"]) for r in records):
        rows = [r for r in records if r["backend"] == backend and r["precision"] == precision]
        ok = [r for r in rows if r["status"] == "ok"]
        if not ok:
            out.print(f"[yellow]{backend} {precision}: skipped[/] — {escape(rows[0]['reason'] or '')}",
                      soft_wrap=True)
            continue
        _bench_table(backend, ok)
        for r in rows:
            if r["status"] != "ok":
                out.print(f"  [yellow]skipped[/] {r['model']}: {escape(r['reason'] or '')}", soft_wrap=True)
        if any(r["floor_exceeded"] for r in ok):
            out.print(f"  [yellow]![/] efficiency above 1: {FLOOR_NOTE}", soft_wrap=True)
        if ok[0].get("calibration"):
            out.print(f"  int8 calibration: {escape(ok[0]['calibration'])}", soft_wrap=True)


FLOOR_NOTE = "floor exceeded: peak under-measured (the model beat every peak kernel timed beside it)"


def _efficiency(r: dict[str, Any]) -> str:
    """floor / median; flagged with ``!`` (and :data:`FLOOR_NOTE` under the table) where the model beat its floor."""
    if r["efficiency"] is None:
        return "—"
    return f"{r['efficiency']:.2f}" + (" [yellow]![/]" if r["floor_exceeded"] else "")


def _bench_table(backend: str, ok: list[dict[str, Any]]) -> None:
    first = ok[0]
    speedup = any("speedup_vs_fp32" in r for r in ok)
    table = Table(title=f"{backend} · {first['device']} · {first['precision']} · batch {first['batch']} · "
                  f"{first['img_size']}px · copies {'included' if first['copies_included'] else 'excluded'}",
                  header_style="bold")
    columns = ["model", "top-1", "GFLOPs", "depth", "median ms", "p90", "p99", "img/s", "floor ms", "eff."]
    columns += ["vs fp32"] if speedup else []
    for col in columns + ["paper A100 ms (PyTorch / TRT32 / TRT16)"]:
        table.add_column(col, justify="left" if col == "model" else "right", no_wrap=True)
    for r in ok:
        s, p = r["stats"], r["published"]
        paper = " / ".join("—" if p[k] is None else str(p[k])
                           for k in ("pytorch_a100_ms", "trt_fp32_a100_ms", "trt_fp16_a100_ms"))
        eff = _efficiency(r)
        cells = [r["model"], "—" if p["top1"] is None else str(p["top1"]), f"{r['gflops']:.1f}", str(r["depth"]),
                 _ms(s["median_ms"]), _ms(s["p90_ms"]), _ms(s["p99_ms"]), f"{s['throughput_img_s']:.1f}",
                 _ms(r["floor_ms"]), eff]
        cells += [f"{r['speedup_vs_fp32']:.2f}×" if "speedup_vs_fp32" in r else "—"] if speedup else []
        table.add_row(*cells, paper)
    (out if out.is_terminal else Console(highlight=False, width=170)).print(table)


def _write_bench(result: Any, json_path: Path, csv_path: Path, plot_path: Path) -> None:
    from benchmarks.report import write_csv, write_json, write_plot
    from vanilladeploy.errors import MissingDependencyError

    written = [write_json(json_path, result.document()), write_csv(csv_path, result.records)]
    where = result.machine.get("gpu") or result.machine["cpu"]
    try:
        first = result.records[0]
        precisions = "/".join(dict.fromkeys(r["precision"] for r in result.records))
        written.append(write_plot(plot_path, result.records, title=f"{where} · {precisions} · batch "
                                  f"{first['batch']} · {first['img_size']}px"))
    except ImportError:
        raise MissingDependencyError("the plot needs matplotlib: pip install 'vanilladeploy[bench]' (JSON and "
                                     "CSV were written)") from None
    finally:
        for path in written:
            out.print(f"  wrote {escape(str(path))}", soft_wrap=True)


@app.command(epilog=EXIT_CODES_HELP)
def repo(
    source: Annotated[Path, typer.Argument(help="An export directory (with its report), a .onnx, or a TensorRT "
                                           ".engine with its .engine.json sidecar.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The Triton model repository (other models in it are "
                                      "left alone).", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="Model name.", show_default="the variant")] = None,
    backend: Annotated[Optional[Literal["onnxruntime", "tensorrt", "python"]], typer.Option(
        "--backend", help="Triton backend; python = ONNX Runtime inside Triton's Python backend.",
        show_default="onnxruntime for ONNX, tensorrt for an engine")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=0, help="max_batch_size (0: no batching).")] = 32,
    instances: Annotated[int, typer.Option("--instances", min=1, help="Model instances.")] = 1,
    kind: Annotated[Optional[Literal["cpu", "gpu"]], typer.Option("--kind", help="Where instances run.",
                                                                  show_default="gpu for tensorrt, cpu otherwise")
                    ] = None,
    max_queue_delay_us: Annotated[int, typer.Option("--max-queue-delay-us", min=0, help="Dynamic batching: how "
                                                    "long a request may wait for others.")] = 500,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Class names for the output (one per line), or "
                                                  "'imagenet'.", show_default=False)] = None,
    verbose: Verbose = False,
) -> None:
    """Write a Triton Inference Server model repository: REPO/<name>/config.pbtxt and REPO/<name>/1/<model>."""
    from exporters.triton_repo import RepoOptions
    from vanilladeploy.repo import write_repository

    def run() -> None:
        _check_path_option("--out", out, directory=True)
        _check_labels(labels)
        opts = RepoOptions(name=name, backend=backend, max_batch=max_batch, instances=instances, kind=kind,
                           max_queue_delay_us=max_queue_delay_us, labels=labels)
        result = write_repository(source, out, opts)
        _render_repo(result)

    _run(verbose, run)


def _check_labels(labels: str | None) -> None:
    if labels is None or labels == "imagenet":
        return
    _check_path_option("--labels", Path(labels), directory=False, must_exist=True)


def _render_repo(result: Any) -> None:
    out.print(escape(result.config_text), soft_wrap=True)
    for path in result.files:
        out.print(f"  wrote {escape(str(path))}", soft_wrap=True)
    out.print(f"\nServe it: [bold]tritonserver --model-repository {escape(str(result.repository))}[/] (a Triton "
              f"with the {escape(result.backend)} backend), or here: [bold]vanilladeploy serve …[/]", soft_wrap=True)


@app.command(epilog=EXIT_CODES_HELP)
def serve(
    source: Annotated[Path, typer.Argument(help="An export directory or a .onnx file.", show_default=False)],
    http_port: Annotated[int, typer.Option("--http-port", min=1, max=65535, help="HTTP/REST (KServe v2).")] = 8000,
    grpc_port: Annotated[int, typer.Option("--grpc-port", min=1, max=65535, help="gRPC (KServe v2).")] = 8001,
    metrics_port: Annotated[int, typer.Option("--metrics-port", min=1, max=65535, help="Prometheus metrics.")]
    = 8002,
    max_batch: Annotated[int, typer.Option("--max-batch", min=0, help="Largest batch Triton forms (0: no "
                                           "batching, for an ONNX exported with a fixed batch).")] = 32,
    instances: Annotated[int, typer.Option("--instances", min=1, help="Model instances.")] = 1,
    max_queue_delay_us: Annotated[int, typer.Option("--max-queue-delay-us", min=0, help="Dynamic batching: how "
                                                    "long a request may wait for others.")] = 500,
    labels: Annotated[Optional[str], typer.Option("--labels", help="Class names (one per line), or 'imagenet'.",
                                                  show_default=False)] = None,
    verbose: Verbose = False,
) -> None:
    """Serve the model on a real Triton Inference Server (loopback) until Ctrl-C or SIGTERM.

    Needs the serve extra (pip install 'vanilladeploy[serve]': the nvidia-pytriton wheel carries the tritonserver
    binary). The model runs in ONNX Runtime inside Triton's Python backend (on the GPU where one and
    onnxruntime's CUDA provider exist, else the CPU). Exit 0 on SIGTERM, 130 on Ctrl-C.
    """
    from exporters.triton_repo import RepoOptions
    from vanilladeploy.serve import TritonPorts, check_ports_free, find_tritonserver, serve_forever

    def run() -> None:
        ports = TritonPorts(http=http_port, grpc=grpc_port, metrics=metrics_port)
        if len({http_port, grpc_port, metrics_port}) < 3:
            raise UsageError(f"--http-port, --grpc-port and --metrics-port must differ (got {http_port}, "
                             f"{grpc_port}, {metrics_port}).")
        _check_labels(labels)
        opts = RepoOptions(backend="python", max_batch=max_batch, instances=instances, kind=None,
                           max_queue_delay_us=max_queue_delay_us, labels=labels)
        find_tritonserver()
        check_ports_free(ports)
        err.print("Starting Triton Inference Server (loopback) …")
        serve_forever(source, ports, opts, on_ready=_render_serving)

    _run(verbose, run)


def _render_serving(info: Any) -> None:
    out.print(f"[green]serving[/] model [bold]{escape(info.model)}[/] on Triton Inference Server "
              f"{escape(info.server_version)} (python backend, ONNX Runtime on the {escape(info.kind.upper())})",
              soft_wrap=True)
    out.print(f"  HTTP    {escape(info.http_url)}\n  gRPC    {escape(info.grpc_url)}\n  metrics "
              f"{escape(info.metrics_url)}", soft_wrap=True)
    out.print(f"Try: [bold]{escape(info.example_command)}[/]", soft_wrap=True)
    out.print("Ctrl-C or SIGTERM stops the server.")


@app.command("serve-bench", epilog=EXIT_CODES_HELP)
def serve_bench(
    source: Annotated[Path, typer.Argument(help="An export directory or a .onnx file.", show_default=False)],
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated client concurrencies.")]
    = "1,4,16",
    requests: Annotated[Optional[int], typer.Option("--requests", min=1, help="Requests per concurrency level "
                                                    "and backend.", show_default="per level")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per request.")] = 1,
    protocol: Annotated[Literal["http", "grpc", "both"], typer.Option("--protocol", help="Triton protocol(s).")]
    = "both",
    json_path: Annotated[Path, typer.Option("--json", help="Results JSON.")] = Path("bench/serve.json"),
    verbose: Verbose = False,
) -> None:
    """Load-test a real Triton server (started here, on loopback) at several client concurrencies, beside
    in-process ONNX Runtime on the same model: throughput, p50/p99 latency, errors."""
    from vanilladeploy.serve_bench import run_serve_bench

    def run() -> None:
        levels = _int_list("--concurrency", concurrency)
        _check_path_option("--json", json_path, directory=False)
        with _Progress() as progress:
            result = run_serve_bench(source, concurrency=levels, requests=requests, batch=batch,
                                     protocol=protocol, progress=lambda m: progress(m, None))
        _render_load(result.records)
        _write_load(result, json_path)

    _run(verbose, run)


def _int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{option} {text!r}: give comma-separated positive integers such as 1,4,16.") from None
    if not values or min(values) < 1:
        raise UsageError(f"{option} {text!r}: give comma-separated positive integers such as 1,4,16.")
    return values


def _render_load(records: list[dict[str, Any]]) -> None:
    table = Table(title="load: requests through Triton vs in-process ONNX Runtime", header_style="bold")
    for col in ("model", "backend", "concurrency", "batch", "requests", "errors", "img/s", "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("model", "backend") else "right", no_wrap=True)
    for r in records:
        s = r["stats"] or {}
        table.add_row(r["model"], r["backend"], str(r["concurrency"]), str(r["batch"]), str(r["requests"]),
                      str(r["errors"]), f"{r['throughput_img_s']:.1f}", _ms(s.get("median_ms")),
                      _ms(s.get("p99_ms")))
    (out if out.is_terminal else Console(highlight=False, width=160)).print(table)


def _write_load(result: Any, json_path: Path) -> None:
    from exporters.files import write_atomically

    text = json.dumps(result.document(), indent=2) + "\n"
    write_atomically(json_path, lambda tmp: tmp.write_text(text))
    out.print(f"  wrote {escape(str(json_path))}", soft_wrap=True)


@app.command("eval", epilog=EXIT_CODES_HELP)
def eval_(
    artifacts: Annotated[list[str], typer.Argument(help="Checkpoints (training form, λ as trained), deploy .pth, "
                                                   ".onnx (fp32/fp16/int8) or .engine files; the first is the "
                                                   "reference for agreement.", show_default=False)],
    data: Annotated[Path, typer.Option("--data", help="Image folder: an ImageFolder tree (class/xxx.jpg, labels) "
                                       "or a flat folder (no labels).", show_default=False)],
    limit: Annotated[Optional[int], typer.Option("--limit", min=1, help="At most N images.",
                                                 show_default="all")] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference batch.")] = 32,
    arch: ArchOpt = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Also write the results as JSON.",
                                                      show_default=False)] = None,
    verbose: Verbose = False,
) -> None:
    """Accuracy (top-1/top-5 with labels) and agreement with the first artifact, on real images preprocessed as
    the official evaluation does (resize, center crop, normalize; values from the checkpoint's args)."""
    from vanilladeploy.evaluate import evaluate

    def run() -> None:
        _check_path_option("--data", data, directory=True, must_exist=True)
        _check_path_option("--json", json_path, directory=False)
        if arch is not None:
            _check_source_options("", arch, None)
        with _CountProgress("Evaluating") as progress:
            result = evaluate(artifacts, data, limit=limit, batch=batch, arch=arch, progress=progress)
        _render_eval(result.as_dict())
        if json_path is not None:
            from exporters.files import write_atomically

            text = json.dumps(result.as_dict(), indent=2, ensure_ascii=False) + "\n"
            write_atomically(json_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
            out.print(f"  wrote {escape(str(json_path))}", soft_wrap=True)

    _run(verbose, run)


class _CountProgress:
    """A progress bar over a known count (images), on stderr, only on a terminal."""

    def __init__(self, description: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=err, transient=True, disable=not err.is_terminal)
        self.task = self.bar.add_task(description, total=None)

    def __enter__(self) -> _CountProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def __call__(self, done: int, total: int) -> None:
        self.bar.update(self.task, completed=done, total=total)


def _pct(x: Any) -> str:
    return "—" if x is None else f"{x:.2f}"


def _relative(path: str, root: str) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name


def _render_eval(info: dict[str, Any]) -> None:
    table = Table(title=f"{info['images']} images from {escape(str(info['data']))}"
                  f"{'' if info.get('labelled') else ' (no labels)'}", header_style="bold")
    for col in ("artifact", "kind", "top-1 %", "top-5 %", "top-1 agree %", "mean rel L2", "worst image", "img/s"):
        table.add_column(col, justify="left" if col in ("artifact", "kind", "worst image") else "right")
    for r in info["artifacts"]:
        worst = r.get("worst") or {}
        table.add_row(escape(r["name"]), r["kind"], _pct(r.get("top1")), _pct(r.get("top5")),
                      _pct(r.get("agreement_top1")), _fmt(r.get("mean_rel_l2")),
                      escape(f"{_relative(worst['path'], info['data'])} ({worst['rel_l2']:.2e})")
                      if worst.get("path") else "—",
                      "—" if r.get("images_per_s") is None else f"{r['images_per_s']:.1f}")
    (out if out.is_terminal else Console(highlight=False, width=160)).print(table)
    skipped = info.get("skipped") or {}
    if skipped.get("count"):
        out.print(f"[yellow]skipped {skipped['count']} unreadable file(s)[/], e.g. "
                  f"{escape(str(skipped['examples'][0]))}", soft_wrap=True)
    pre = info.get("preprocessing") or {}
    out.print(f"preprocessing: {escape(json.dumps(pre, ensure_ascii=False))}", soft_wrap=True)


@app.command(epilog=EXIT_CODES_HELP)
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    verbose: Verbose = False,
) -> None:
    """What this machine can do: versions of every part, and per command 'ready' or why not and the install
    line. Exit 0 even when optional parts are missing."""
    def run() -> None:
        from vanilladeploy.doctor import diagnose

        info = diagnose().as_dict()
        if as_json:
            _print_json(info)
            return
        _render_doctor(info)

    _run(verbose, run)


def _render_doctor(info: dict[str, Any]) -> None:
    parts = Table(title="components", header_style="bold")
    for col in ("component", "version", "status", "detail"):
        parts.add_column(col)
    for c in info["components"]:
        parts.add_row(c["name"], c.get("version") or "—", "[green]ok[/]" if c["ok"] else "[yellow]missing[/]",
                      escape(c.get("detail") or ""))
    wide = out if out.is_terminal else Console(highlight=False, width=160)
    wide.print(parts)
    caps = Table(title="commands", header_style="bold")
    for col in ("command", "status", "why not / fix"):
        caps.add_column(col)
    for c in info["capabilities"]:
        why = "" if c["ready"] else f"{c.get('reason') or ''}" + (f" → {c['fix']}" if c.get("fix") else "")
        caps.add_row(c["command"], "[green]ready[/]" if c["ready"] else "[yellow]not ready[/]", escape(why))
    wide.print(caps)


def main() -> None:
    """The console script. Every Ctrl-C ends here, as typer's exit 130 or (before or after typer runs) as
    ``KeyboardInterrupt``: this is the one place that says so."""
    try:
        app()
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != ExitCode.INTERRUPTED:
            raise
        err.print("[red]interrupted[/] (nothing half-written: an export publishes all its files at once or none; a "
                  "server is stopped).")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None


if __name__ == "__main__":
    main()
