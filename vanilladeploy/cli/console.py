"""The CLI's consoles, its one error boundary, its one progress display, and the small renderers every command
shares."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from vanilladeploy.errors import ExitCode, VanillaDeployError
from vanilladeploy.steps import Step

err = Console(stderr=True, highlight=False)
out = Console(highlight=False)
T = TypeVar("T")


def wide(width: int = 160) -> Console:
    """``out`` on a terminal; a wide console when piped, so tables are not folded."""
    return out if out.is_terminal else Console(highlight=False, width=width)


def run_command(verbose: bool, fn: Callable[[], T]) -> T:
    """Call ``fn``; turn our errors into one red line + exit code, anything else into exit 4. A Ctrl-C passes
    through: typer makes it exit 130, which :func:`vanilladeploy.cli.main` reports."""
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
        raise typer.Exit(int(ExitCode.INTERNAL)) from None


class ProgressDisplay:
    """Shows :class:`~vanilladeploy.steps.Step` events on stderr: a spinner or a bar while work runs (on a terminal
    only), a ✓ line with its duration when a timed step ends, and — when not on a terminal — one line when a counted
    phase completes."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal)
        self.task = self.bar.add_task("", total=None)

    def __enter__(self) -> ProgressDisplay:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()  # before any error line is printed

    def __call__(self, step: Step) -> None:
        if step.seconds is not None:
            err.print(f"[green]✓[/] {escape(step.message)} [dim]({step.seconds:.1f} s)[/]")
            return
        self.bar.update(self.task, description=escape(step.message), completed=step.done or 0, total=step.total)
        if not err.is_terminal and step.ended:
            err.print(escape(step.message))


def print_json(info: Any) -> None:
    """JSON on stdout, plain (never wrapped by rich)."""
    typer.echo(json.dumps(info, indent=2, ensure_ascii=False))


def write_json(path: Path, info: Any, *, quiet: bool = False) -> None:
    """Write ``info`` to ``path`` atomically and say so."""
    from vanilladeploy.atomic import write_atomically

    text = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    wrote(path, quiet=quiet)


def wrote(path: Path, *, quiet: bool = False) -> None:
    """Say that ``path`` was written: on stdout, or on stderr when stdout carries JSON (``quiet``)."""
    (err if quiet else out).print(f"  wrote {escape(str(path))}", soft_wrap=True)


def fmt(x: Any) -> str:
    return "—" if x is None else f"{x:.2e}" if isinstance(x, float) else str(x)


def ms(x: Any) -> str:
    return "—" if x is None else f"{x:.3g}" if x < 10 else f"{x:.1f}"


def pct(x: Any) -> str:
    return "—" if x is None else f"{x:.2f}"
