"""The `edge` command. Every subcommand has --help; refusals print `CODE: sentence`.

Subcommands live in one module per area; importing them registers them on the group.
"""

import os

from edge.cli import analysis, device, hub, hub_accounts, hub_devices, models, pacs, site, store, sync  # noqa: F401  (registers the subcommands)
from edge.cli.base import cli

PRIVATE_UMASK = 0o077
"""Every file the program creates is its user's alone: edge.db holds patient names and hub.db
password hashes. systemd's `UMask=0077` covers the services; this covers a shell, cron or
`sudo -u edge` run, where the inherited umask (often 022) made them world-readable (issue 17)."""


def main() -> None:
    os.umask(PRIVATE_UMASK)
    cli(prog_name="edge")


__all__ = ["cli", "main"]
