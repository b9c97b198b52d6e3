"""``python -m vanilladeploy``: the same as the ``vanilladeploy`` command."""

from vanilladeploy.cli import main

main()
