"""The ``vanilladeploy`` command: the typer app, its commands (one module each), and :func:`main`.

Commands parse options, call the library and render; errors become one red line and a documented exit code.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from vanilladeploy import __version__
from vanilladeploy.cli import bench, deploy, doctor, eval, export, inspect, optimize, serving
from vanilladeploy.cli.console import err, out
from vanilladeploy.cli.options import EXIT_CODES_HELP
from vanilladeploy.errors import ExitCode

try:  # typer ≥ 0.17 vendors click
    from typer._click import exceptions as _click_exc
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as _click_exc  # type: ignore[no-redef]

JSON_PATH_COMMANDS = ("bench", "serve-bench", "eval")
"""Commands whose ``--json`` took a PATH before it meant "print JSON" (now ``--json-out PATH``)."""


def legacy_json_args(args: list[str]) -> tuple[list[str], bool]:
    """``--json PATH`` (or ``--json=PATH``) of :data:`JSON_PATH_COMMANDS` as ``--json-out PATH``; True when
    rewritten. A value counts as a path when it does not start with '-' and, for ``bench`` (no arguments), always;
    for the others when it ends in ``.json``."""
    command = next((a for a in args if not a.startswith("-")), None)
    if command not in JSON_PATH_COMMANDS:
        return args, False
    result, changed, i = [], False, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--json="):
            result += ["--json-out", arg.removeprefix("--json=")]
            changed = True
        elif arg == "--json" and i + 1 < len(args) and not args[i + 1].startswith("-") and (
                command == "bench" or args[i + 1].endswith(".json")):
            result += ["--json-out", args[i + 1]]
            changed, i = True, i + 1
        else:
            result.append(arg)
        i += 1
    return result, changed


RENAMED_OPTIONS = {("bench", "--backends"): "--runtimes", ("export", "--batch"): "--trt-profile",
                   ("check", "--batch"): "--trt-profile"}
"""(command, old option) → its new name: "runtime" names what executes a model ("backend" is only Triton's), and
``--batch`` is images per inference everywhere (the TensorRT profile has its own option)."""


def renamed_args(args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with every renamed option of its command spelled the new way (``--old V`` and ``--old=V``), and one
    deprecation line per renamed option used."""
    command = next((a for a in args if not a.startswith("-")), None)
    renames = {old: new for (cmd, old), new in RENAMED_OPTIONS.items() if cmd == command}
    result, lines = [], []
    for arg in args:
        name, eq, value = arg.partition("=")
        if name in renames and arg is not command:
            result.append(renames[name] + eq + value)
            line = f"deprecated: {command} {name} is now {renames[name]}."
            lines += [] if line in lines else [line]
        else:
            result.append(arg)
    return result, lines


class _OneLineUsageErrors(TyperGroup):
    """Usage errors (bad type, out-of-range value, unknown option) as ONE red line and exit 2, like every other
    error of this CLI, instead of click's four-line usage block."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        args, legacy = legacy_json_args(list(sys.argv[1:] if args is None else args))
        if legacy:
            err.print("[yellow]deprecated:[/] --json PATH is now --json-out PATH (--json prints the JSON).")
        args, renamed = renamed_args(args)
        for line in renamed:
            err.print(f"[yellow]deprecated:[/]{escape(line.removeprefix('deprecated:'))}")
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


def _version(value: bool) -> None:
    if value:
        out.print(f"vanilladeploy {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """Turn VanillaNet training checkpoints into verified deployable artifacts."""


COMMANDS = {
    "export": export.export, "inspect": inspect.inspect, "check": inspect.check, "bench": bench.bench,
    "repo": serving.repo, "serve": serving.serve, "serve-bench": serving.serve_bench, "eval": eval.eval_,
    "optimize": optimize.optimize, "deploy": deploy.deploy, "doctor": doctor.doctor,
}
"""Every command, in the order ``--help`` lists them."""
for _name, _command in COMMANDS.items():
    app.command(_name, epilog=EXIT_CODES_HELP)(_command)


def tune_allocator() -> None:
    """Let this process keep and reuse the memory its large tensors free, on Linux with glibc; elsewhere nothing
    changes. Called by the console script only: it is the whole process's allocator, not a library's to change.

    glibc maps every block over 32 MB on its own and unmaps it when freed, so each float64 copy of a weight is
    faulted in afresh, 4 KiB at a time: ``export vanillanet_13`` took 2.8 million page faults and 7–12 s of system
    time in a 14–19 s run (2-core Xeon VM, docs/export.md). With freed blocks kept in the heap (``mallopt``): 0.46
    million faults, about 1.2 s. (Backing torch's tensors with 2 MiB pages as well, ``THP_MEM_ALLOC_ENABLE=1``, was
    measured too and made the export slower: 9.8–10.5 s against 8.1–8.5 s.)"""
    import ctypes

    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**31 - 1)


def main() -> None:
    """The console script. Every Ctrl-C ends here, as typer's exit 130 or (before or after typer runs) as
    ``KeyboardInterrupt``: this is the one place that says so."""
    tune_allocator()
    try:
        app()
    except (KeyboardInterrupt, SystemExit) as e:
        if isinstance(e, SystemExit) and e.code != ExitCode.INTERRUPTED:
            raise
        err.print("[red]interrupted[/] (nothing half-written: an export publishes all its files at once or none; a "
                  "server is stopped).")
        raise SystemExit(int(ExitCode.INTERRUPTED)) from None
