"""``vanilladeploy optimize``: parse, call :func:`vanilladeploy.optimize.optimize`, render the candidates."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import ProgressDisplay, fmt, ms, out, print_json, run_command, wide, wrote
from vanilladeploy.cli.options import ArchOpt, JsonPrint, KeyOpt, SourceArg, Verbose
from vanilladeploy.machine import describe_cpu
from vanilladeploy.pipeline.options import Int8Options
from vanilladeploy.runtimes import ARTIFACT_RUNTIMES

if TYPE_CHECKING:
    from vanilladeploy.optimize import OptimizeResult


def optimize(
    source: SourceArg,
    calib: Annotated[Path, typer.Option("--calib", help="Image folder (ImageFolder tree or flat): int8 calibrates "
                                        "on the first --calib-count images, every candidate is verified on the "
                                        "held-out ones after them.", show_default=False)],
    out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory [default: "
                                                    "./optimize/<variant>/].", show_default=False)] = None,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Images per inference the candidates are timed "
                                       "at.")] = 1,
    min_agreement: Annotated[float, typer.Option("--min-agreement", min=0.0, max=100.0, help="Top-1 agreement (%) "
                                                 "with fp32 that int8, fp16 and bf16 must reach on the held-out "
                                                 "images.")] = Int8Options.min_agreement,
    runtimes: Annotated[str, typer.Option("--runtimes", help=f"Comma-separated: {', '.join(ARTIFACT_RUNTIMES)} "
                                          "(those missing here are listed as skipped).")]
    = ",".join(ARTIFACT_RUNTIMES),
    calib_count: Annotated[int, typer.Option("--calib-count", min=1, help="Images used to calibrate int8.")]
    = Int8Options.calib_count,
    img_size: Annotated[Optional[int], typer.Option("--img-size", min=1, help="Input height and width [default: "
                                                    "the checkpoint's args.input_size, else 224].",
                                                    show_default=False)] = None,
    arch: ArchOpt = None,
    key: KeyOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed rounds first.")] = 3,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Timed rounds (each times every candidate once).")]
    = 20,
    as_json: JsonPrint = False,
    verbose: Verbose = False,
) -> None:
    """The fastest verified deployment for THIS machine: every runtime × precision it can run, each verified on
    held-out images, the verified ones timed in one interleaved run; writes them all, a Triton repository for the
    winner (OUT/triton) and OUT/optimize.json. Exit 0 when a candidate is verified (fp32 always is), 1 when the fp32
    reference itself fails."""
    from vanilladeploy.optimize import OptimizeOptions
    from vanilladeploy.optimize import optimize as run_optimize
    from vanilladeploy.validate import name_list

    def run() -> None:
        opts = OptimizeOptions(calib=calib, out_dir=out_dir, batch=batch, min_agreement=min_agreement,
                               runtimes=tuple(name_list("--runtimes", runtimes) or ()), calib_count=calib_count,
                               img_size=img_size, arch=arch, key=key, warmup=warmup, iters=iters)
        with ProgressDisplay() as progress:
            result = run_optimize(source, opts, progress=progress)
        if as_json:
            print_json(result.document())
        else:
            _render(result)
        wrote(result.out_dir / "optimize.json", quiet=as_json)

    run_command(verbose, run)


def _render(result: OptimizeResult) -> None:
    candidates, chosen = result.candidates, result.chosen
    reference = next((c for c in candidates if c.name == "onnxruntime fp32" and c.median_ms), None)
    where = escape(describe_cpu(result.machine))
    table = Table(title=f"candidates on {where}, batch {result.config['batch']}, best first", header_style="bold")
    for col in ("runtime", "precision", "verified", "agreement %", "mean rel L2", "median ms", "p90 ms",
                "vs ORT fp32", "reason"):
        table.add_column(col, justify="left" if col in ("runtime", "precision", "verified", "reason") else "right")
    for c in candidates:
        speedup = f"{reference.median_ms / c.median_ms:.2f}×" if reference and c.median_ms else "—"
        mark = "[green]yes[/]" if c.verified else "[red]no[/]" if c.agreement is not None else "[yellow]skipped[/]"
        table.add_row(("[bold]" if c is chosen else "") + c.runtime, c.precision, mark,
                      "—" if c.agreement is None else f"{c.agreement:.2f}", fmt(c.rel_l2), ms(c.median_ms),
                      ms(c.p90_ms), speedup, escape(c.reason or ""))
    wide(180).print(table)
    out.print(f"[green]chosen:[/] {escape(chosen.name)} ({chosen.median_ms:.3g} ms median)")
    repository = escape(shlex.quote(str(result.out_dir / "triton")))
    command = (f"tritonserver --model-repository {repository}" if chosen.runtime == "tensorrt" else
               f"vanilladeploy serve {repository}")  # an engine needs Triton's TensorRT backend on its GPU
    out.print(f"Serve it: [bold]{command}[/]", soft_wrap=True)
