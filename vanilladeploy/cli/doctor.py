"""``vanilladeploy doctor``: what this machine can do (:func:`vanilladeploy.doctor.diagnose`), rendered."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from vanilladeploy.cli.console import print_json, run_command, wide
from vanilladeploy.cli.options import JsonPrint, Verbose


def doctor(as_json: JsonPrint = False, verbose: Verbose = False) -> None:
    """What this machine can do: versions of every part, and per command 'ready' or why not and the install
    line. Exit 0 even when optional parts are missing."""
    def run() -> None:
        from vanilladeploy.doctor import diagnose

        info = diagnose().as_dict()
        if as_json:
            print_json(info)
        else:
            _render(info)

    run_command(verbose, run)


def _render(info: dict[str, Any]) -> None:
    parts = Table(title="components", header_style="bold")
    for col in ("component", "version", "status", "detail"):
        parts.add_column(col)
    for c in info["components"]:
        parts.add_row(c["name"], c.get("version") or "—", "[green]ok[/]" if c["ok"] else "[yellow]missing[/]",
                      escape(c.get("detail") or ""))
    wide().print(parts)
    caps = Table(title="commands", header_style="bold")
    for col in ("command", "status", "why not / fix"):
        caps.add_column(col)
    for c in info["capabilities"]:
        why = "" if c["ready"] else f"{c.get('reason') or ''}" + (f" → {c['fix']}" if c.get("fix") else "")
        caps.add_row(c["command"], "[green]ready[/]" if c["ready"] else "[yellow]not ready[/]", escape(why))
    wide().print(caps)
