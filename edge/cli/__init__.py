"""The `edge` command. Every subcommand has --help; refusals print `CODE: sentence`.

Subcommands live in one module per area; importing them registers them on the group.
"""

from edge.cli import analysis, device, hub, models, pacs, site, store, sync  # noqa: F401  (registers the subcommands)
from edge.cli.base import cli


def main() -> None:
    cli(prog_name="edge")


__all__ = ["cli", "main"]
