"""The ``vanilladeploy`` command: a thin client over :mod:`vanilladeploy.export`.

Commands parse options, call the library and render; errors become one red line and a documented exit code.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from vanilladeploy import __version__
from vanilladeploy.errors import ExitCode, VanillaDeployError

EXIT_CODES_HELP = (
    "Exit codes: 0 ok · 1 verification failed (an artifact does not match the reference) · "
    "2 bad input or usage (unreadable, unsafe or inexact checkpoint, bad option) · "
    "3 optional dependency missing · 4 internal error (a bug) · 130 interrupted."
)
INTERNAL_ERROR = 4

app = typer.Typer(
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
    """Call ``fn``; turn our errors into one red line + exit code, anything else into exit 4."""
    try:
        return fn()
    except VanillaDeployError as e:
        if verbose:
            err.print_exception()
        err.print(f"[bold red]error:[/] {e}", soft_wrap=True)
        raise typer.Exit(int(e.exit_code)) from None
    except KeyboardInterrupt:
        err.print("[red]interrupted[/] (an export publishes all its files at once, or none of them).")
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:
        if verbose:
            err.print_exception()
        err.print(f"[bold red]internal error:[/] {type(e).__name__}: {e}. Re-run with --verbose for the traceback "
                  "and report it.", soft_wrap=True)
        raise typer.Exit(INTERNAL_ERROR) from None


def _version(value: bool) -> None:
    if value:
        out.print(f"vanilladeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Turn VanillaNet training checkpoints into verified deployable artifacts."""


@app.command(epilog=EXIT_CODES_HELP)
def export(
    source: SourceArg,
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory [default: "
                                                    "./export/<variant>/].", show_default=False)] = None,
    arch: ArchOpt = None,
    key: KeyOpt = None,
    img_size: Annotated[int, typer.Option("--img-size", min=1, help="Input height and width.")] = 224,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (17 or newer).")] = 17,
    static_batch: Annotated[Optional[int], typer.Option("--static-batch", min=1, help="Fix the batch dimension "
                                                        "to N [default: dynamic].", show_default=False)] = None,
    no_simplify: Annotated[bool, typer.Option("--no-simplify", help="Skip onnx-simplifier.")] = False,
    allow_inexact: Annotated[bool, typer.Option("--allow-inexact", help="Merge a checkpoint trained with λ < 1 "
                                                "anyway; the report states the resulting error.")] = False,
    verbose: Verbose = False,
) -> None:
    """Re-parameterize a checkpoint, prove the fused model equal to the trained one, export a verified ONNX.

    Writes <variant>.onnx, <variant>_deploy.pth ({"model": deploy state dict}) and <variant>.report.json;
    on any failure nothing is written.
    """
    from vanilladeploy.export import ExportOptions, export_checkpoint

    opts = ExportOptions(out_dir=out_dir, arch=arch, key=key, img_size=img_size, opset=opset,
                         static_batch=static_batch, simplify=not no_simplify, allow_inexact=allow_inexact)

    def run() -> None:
        with _Progress() as progress:  # the spinner stops before an error line is printed
            result = export_checkpoint(source, opts, progress=progress)
        _render_export(result.report, result.artifacts)

    _run(verbose, run)


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
            err.print(f"[green]✓[/] {message} [dim]({seconds:.1f} s)[/]")
        elif self.status is not None:
            self.status.update(f"{message} …")


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
    for name in ("torch", "onnxruntime"):
        if name in ver:
            v = ver[name]
            status = "[green]pass[/]" if v["passed"] else "[red]FAIL[/]"
            table.add_row(f"{name} vs training form", status,
                          f"rel L2 {_fmt(v['rel_l2'])}, max abs {_fmt(v['max_abs'])} (≤ {v['tolerance']:.0e})")
    if "against_trained_lambda" in ver:
        v = ver["against_trained_lambda"]
        table.add_row("vs trained λ network", "[yellow]inexact[/]", f"rel L2 {_fmt(v['rel_l2'])}")
    onnx_info = report["onnx"]
    table.add_row("graph contract", "[green]pass[/]", f"{onnx_info['contract']['nodes']} nodes, opset "
                  f"{onnx_info['opset']}")
    out.print(table)
    for path in artifacts.values():
        out.print(f"  wrote {path}")
    onnx_path = next(p for p in artifacts.values() if p.suffix == ".onnx")
    out.print(f"\nNext: [bold]trtexec --onnx={onnx_path} --fp16[/] (TensorRT), or "
              f"[bold]vanilladeploy inspect {onnx_path.parent / (arch['variant'] + '_deploy.pth')}[/]")


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
        ckpt = resolve_source(source, key=key)
        info = describe(ckpt, detect(ckpt, arch=arch), lambda_of(ckpt))
        info["source"]["tensors"] = len(ckpt.state_dict)
        info["source"]["parameters"] = sum(t.numel() for k, t in ckpt.state_dict.items()
                                           if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
        return info

    _run(verbose, lambda: _render_inspect(source, run(), as_json=as_json))


def _render_inspect(source: str, info: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(info, ensure_ascii=False))
        return
    table = Table(title=f"{source}", show_header=False)
    for section in ("source", "architecture", "lambda"):
        for k, v in info[section].items():
            table.add_row(f"{section}.{k}", str(v))
    out.print(table)
    if not info["lambda"]["exact"]:
        out.print("[yellow]λ < 1: export refuses this checkpoint unless --allow-inexact is given.[/]")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:  # a Ctrl-C outside a command's own handling (start-up, shutdown)
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None


if __name__ == "__main__":
    main()
