"""docs/cli.md's command reference is the commands' own (vanilladeploy/cli/reference.py): it fails when an option,
its default or its bounds change without the page. Fix: ``python -m vanilladeploy.cli.reference --write``."""

from __future__ import annotations

import typer.main

from vanilladeploy.cli import app
from vanilladeploy.cli.reference import reference, written


def test_docs_cli_md_holds_the_reference_the_commands_give() -> None:
    assert written() == reference(), ("docs/cli.md's reference differs from the commands: run "
                                      "`python -m vanilladeploy.cli.reference --write`")


def test_every_command_and_every_visible_option_is_in_it() -> None:
    text = reference()
    group = typer.main.get_command(app)
    missing = [f"{name} {param.opts[-1]}" for name, command in group.commands.items()
               for param in command.params if not getattr(param, "hidden", False) and param.opts
               and param.opts[-1].startswith("--") and param.opts[-1] not in text]
    assert all(f"## `vanilladeploy {name}`" in text for name in group.commands) and missing == []
    assert "--min-agreement <float range>" in text and "0.0<=x<=100.0" in text  # a default and its bounds
