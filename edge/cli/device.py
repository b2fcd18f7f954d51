"""`edge run`, `edge doctor`, `edge status`, `edge tui`: the device as a service and its faces."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edge import log as edge_log
from edge.cli.base import EXIT_REFUSED, Context, cli, pass_context, run_service

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- run


@cli.command()
@click.option("--dicom/--no-dicom", default=None, help="Run the DICOM listener (default: [dicom] enabled).")
@click.option("--port", type=click.IntRange(0, 65535), help="DICOM listener port (0: any free port).")
@click.option("--watch/--no-watch", default=None, help="Watch the drop folder (default: [watch] enabled).")
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), help="Drop folder to watch.")
@pass_context
def run(obj: Context, dicom: bool | None, port: int | None, watch: bool | None, inbox: Path | None) -> None:
    """Run the agent: ingest sources and the worker, until SIGTERM or Ctrl-C."""
    from edge.operations.agent import Agent
    from edge.store.database import preflight

    settings = obj.settings
    dicom_update: dict[str, Any] = {} if dicom is None else {"enabled": dicom}
    if port is not None:
        dicom_update["port"] = port
    watch_update: dict[str, Any] = {} if watch is None else {"enabled": watch}
    if inbox is not None:
        watch_update["inbox"] = inbox
    settings = settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(update=dicom_update),
            "watch": settings.watch.model_copy(update=watch_update),
        }
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        edge_log.configure(logging.INFO)  # a service logs what it does

    def serve() -> int:
        preflight(settings.db_path)  # a read-only or damaged store refuses before the agent's lock
        return Agent(settings).run()

    run_service(serve)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_context
def doctor(obj: Context, as_json: bool) -> None:
    """Check this device: packages, backends and GPU, models, engines, database, disk, encryption
    at rest, clock, listener, agent. One pass/warn/fail line each; exit status 0, 1 or 2 for the worst."""
    from edge.operations.doctor import run_checks, worst

    checks = run_checks(obj.settings)
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        colours = {"pass": "green", "warn": "yellow", "fail": "red"}
        console = Console(highlight=False)
        for check in checks:
            console.print(
                f"[{colours[check.level]}]{check.level.upper():4}[/]  {check.name}: {check.message}"
            )
    sys.exit(worst(checks))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The whole health snapshot as JSON.")
@pass_context
def status(obj: Context, as_json: bool) -> None:
    """Health snapshot: agent, queue depth, last result, errors, disk, versions."""
    from edge.ingest.watch import recent_refusals
    from edge.operations.health import (
        dicom_refused_line,
        hospital_links,
        pacs_line,
        snapshot,
        status_line,
        sync_line,
    )

    snap = snapshot(obj.settings)
    if not snap["schema"]["newer"]:  # read what this version's tables hold
        snap |= hospital_links(obj.settings)
    # Files the drop folder refused never reach the store, so its errors above cannot show them.
    refused, newest = recent_refusals(obj.settings)
    snap["drop_folder_refused"] = {"last_7_days": refused, "newest": newest}
    if as_json:
        click.echo(json.dumps(snap, indent=2, default=str))
    else:
        agent = snap["agent"]
        click.echo(
            f"agent: {'running, pid ' + str(agent['pid']) if agent['running'] else agent.get('reason')}"
        )
        for problem in (agent.get("problems") or {}).values() if agent["running"] else ():
            click.echo(f"agent: {problem}")
        click.echo(status_line(snap))
        click.echo(sync_line(snap))
        for line in (pacs_line(snap), dicom_refused_line(snap)):
            if line:
                click.echo(line)
        for error in snap["recent_errors"]:
            click.echo(f"recent: {error['state']} {error['error_code']}: {error['error_message']}")
        if refused:
            click.echo(f"drop folder: {refused} file(s) refused in 7 days (quarantine/), newest:")
            for file in newest:
                reason = file["reason"] if len(file["reason"]) <= 160 else file["reason"][:159] + "…"
                click.echo(f"  {file['when']}  {file['name']}: {reason}")
    if snap["schema"]["newer"]:  # it read what it could; now say why nothing here may write
        click.echo(snap["schema"]["refusal"], err=True)
        sys.exit(EXIT_REFUSED)


@cli.command()
@click.option(
    "--graphics",
    type=click.Choice(["auto", "halfcell", "unicode", "text"]),
    default="auto",
    show_default=True,
    help="How images are drawn: auto picks what the terminal supports (half-cell blocks over SSH; "
    "text, ASCII with the heatmap in reverse video, under NO_COLOR or on the Linux console).",
)
@click.option("--live", "live_source", help="Video source for the live screen (device, file or URL).")
@click.option("--live-model", help="Model for the live screen (default: the site's ultrasound model).")
@pass_context
def tui(obj: Context, graphics: str, live_source: str | None, live_model: str | None) -> None:
    """The technicians' terminal: worklist, result with heatmap, live scan, sync and device state.

    Keyboard only; works over SSH. Press ? inside for the keys."""
    from edge.tui.app import run_tui

    sys.exit(run_tui(obj.settings, graphics=graphics, live_source=live_source, live_model=live_model))
