"""The `edge` group and what every subcommand shares (settings loaded lazily, exit codes)."""

from __future__ import annotations

import json
import logging
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import click

from edge import __version__, systemd
from edge import log as edge_log
from edge.config import Settings, load_settings
from edge.errors import NEEDS_A_PERSON, EdgeError

EXIT_REFUSED = 1
EXIT_USAGE = 2
# EX_CONFIG (sysexits.h): a service refused for a reason a restart cannot mend
# (edge.errors.NEEDS_A_PERSON); the systemd units name it in RestartPreventExitStatus=.
EXIT_NEEDS_A_PERSON = 78
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a command ended by Ctrl-C


def refuse(error: EdgeError, as_json: bool = False) -> NoReturn:
    """A command's refusal: `CODE: sentence` on stderr, exit 1; under --json also the object
    `edge infer --json` gives a refused input (status, code, reason) on stdout, so a script
    reading stdout gets JSON either way."""
    if as_json:
        click.echo(json.dumps({"status": "refused", "code": error.code.value, "reason": error.message}))
    click.echo(error.one_line(), err=True)
    sys.exit(EXIT_REFUSED)


def run_service(serve: Callable[[], int]) -> NoReturn:
    """Run a service's loop (`edge run`, `edge sync run`, `edge pacs run`) and exit with its
    status; a refusal is one coded line in the journal and in `systemctl status` (STATUS=), and
    exits EXIT_NEEDS_A_PERSON when a restart cannot mend it."""
    try:
        status = serve()
    except EdgeError as error:
        logging.getLogger("edge.service").error("%s", error.one_line())
        systemd.notify(f"STATUS={error.one_line()[:200]}")
        sys.exit(EXIT_NEEDS_A_PERSON if error.code in NEEDS_A_PERSON else EXIT_REFUSED)
    sys.exit(status)


class Context:
    """Settings are loaded on first use, so `--help` works even with a broken config."""

    def __init__(self, config_file: Path | None, data_dir: Path | None) -> None:
        self.config_file = config_file
        self.data_dir = data_dir
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {"data_dir": self.data_dir} if self.data_dir else {}
            try:
                self._settings = load_settings(self.config_file, **overrides)
            except EdgeError as error:
                click.echo(error.one_line(), err=True)
                sys.exit(EXIT_USAGE)
        return self._settings

    def store_refusal(self, exc: sqlite3.DatabaseError) -> EdgeError | None:
        """The coded refusal for an SQLite error that surfaced in a command (a database damaged
        beyond what opening it showed), or None: not about the file, or no store was opened."""
        if self._settings is None:
            return None
        from edge.store.database import refusal

        return refusal(exc, self._settings.db_path)


pass_context = click.make_pass_decorator(Context)


class EdgeGroup(click.Group):
    """Every subcommand's refusals end the same way: `CODE: sentence` on stderr and exit status
    1, never a traceback (a damaged, read-only or newer database refuses in any command)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeError as error:
            click.echo(error.one_line(), err=True)
            sys.exit(EXIT_REFUSED)
        except KeyboardInterrupt:
            # click's own line is "Aborted!" with status 1, which reads as a failure of the
            # command; what was stored before the key stays stored (each write is one transaction).
            click.echo("interrupted (Ctrl-C): what was done before it is kept", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except sqlite3.DatabaseError as exc:
            coded = ctx.obj.store_refusal(exc) if isinstance(ctx.obj, Context) else None
            if coded is None:
                raise
            click.echo(coded.one_line(), err=True)
            sys.exit(EXIT_REFUSED)


@click.group(cls=EdgeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (default: $EDGE_CONFIG, else /etc/edge/edge.toml if present).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database and images live (default: $STATE_DIRECTORY or per-user).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, data_dir: Path | None, verbose: int) -> None:
    """Edge inference for clinics: X-ray and ultrasound models on the device, offline first."""
    edge_log.configure([logging.ERROR, logging.INFO, logging.DEBUG][min(verbose, 2)])
    ctx.obj = Context(config_file, data_dir)
