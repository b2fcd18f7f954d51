"""`edge pacs ...`: results back into the hospital's PACS (structured reports and heatmaps)."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any

import click

from edge import log as edge_log
from edge.cli.base import EXIT_REFUSED, EXIT_USAGE, Context, cli, pass_context, run_service


@cli.group()
def pacs() -> None:
    """Send each result of a DICOM input back into its study in the PACS: run, status, send-now."""


@pacs.command("run")
@pass_context
def pacs_run(obj: Context) -> None:
    """Run the exporter until stopped (the edge-pacs service)."""
    from edge.interop.pacs_export import serve
    from edge.operations import storage_encryption

    if not logging.getLogger().isEnabledFor(logging.INFO):
        edge_log.configure(logging.INFO)

    def refused_or_served() -> int:
        storage_encryption.enforce(obj.settings)  # STORAGE_NOT_ENCRYPTED when it is required
        return serve(obj.settings)

    run_service(refused_or_served)


@pacs.command("send-now")
@click.option("--retry-failed", is_flag=True, help="Queue objects the PACS refused again.")
@click.option(
    "--resend-since",
    type=click.DateTime(["%Y-%m-%d"]),
    help="Send again the objects the PACS took on or after this day (YYYY-MM-DD, UTC): a PACS"
    " restored from a backup that lacks them. The same instances (UIDs): it keeps one copy.",
)
@pass_context
def pacs_send_now(obj: Context, retry_failed: bool, resend_since: datetime | None) -> None:
    """Send what waits at once: wake the running exporter, or run one round here if none runs."""
    from edge.errors import EdgeError
    from edge.interop.pacs_export import PacsExporter, exporter_lock, pacs_status, request_send_now
    from edge.processes import InstanceLock
    from edge.store import Store
    from edge.store.pacs import PacsExports

    settings = obj.settings
    if not settings.pacs.enabled:
        click.echo("CONFIG_INVALID: PACS export is disabled: set [pacs] enabled = true and host", err=True)
        sys.exit(EXIT_USAGE)
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        exports = PacsExports(store.writer)
        if resend_since is not None:
            again, left = exports.resend_sent(resend_since.strftime("%Y-%m-%d"), "cli")
            click.echo(f"{again} object(s) sent since {resend_since:%Y-%m-%d} queued to go again")
            if left:
                click.echo(
                    f"{left} object(s) sent since then cannot go again: retention deleted their"
                    " source image (their reports stay as they were sent)"
                )
        retried = exports.retry_now(failed_too=retry_failed)
        if request_send_now(settings):
            click.echo(f"asked the running exporter to send now ({retried} made due at once)")
            return
        try:
            # No exporter runs: this process is it for one round (the lock keeps a starting
            # service from sending the same objects meanwhile; harmless anyway, by UID).
            with InstanceLock(exporter_lock(settings), "PACS exporter (`edge pacs run`)"):
                ok = PacsExporter(settings, store).run_round()
        except EdgeError as error:  # the lock's ALREADY_RUNNING (it started meanwhile), a full disk
            click.echo(error.one_line(), err=True)
            sys.exit(EXIT_REFUSED)
        click.echo(json.dumps(pacs_status(settings, store), indent=2))
    sys.exit(0 if ok else EXIT_REFUSED)


@pacs.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def pacs_status_command(obj: Context, as_json: bool) -> None:
    """Disabled / up to date / sending / unreachable; what waits, what was skipped and why."""
    from edge.interop.pacs_export import pacs_status
    from edge.store import Store

    with Store(obj.settings.data_dir) as store:
        status = pacs_status(obj.settings, store)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    _print(status)


def _print(status: dict[str, Any]) -> None:
    counts = status["counts"]
    running = status["exporter"]
    click.echo(
        f"{status['state']}: {status['destination'] or 'no destination'}; {counts['pending']} waiting,"
        f" {counts['sent']} sent, {counts['skipped']} skipped, {counts['failed']} failed;"
        f" last success {status['last_success'] or 'never'}"
    )
    click.echo(f"exporter: {'pid ' + str(running.get('pid')) if running else 'not running'}")
    if status["oldest_pending"]:
        click.echo(f"oldest waiting since {status['oldest_pending']}")
    if status["last_error"]:
        click.echo(f"last error ({status['last_error_at']}): {status['last_error']}")
    for reason, count in sorted(status["skipped"].items()):
        click.echo(f"skipped {count}: {reason}")
    for failed in status["failed"]:
        click.echo(f"failed {failed['kind']} of result {failed['result_id']}: {failed['reason']}")
    for waiting in status["retrying"]:
        click.echo(
            f"retrying {waiting['kind']} of result {waiting['result_id']}"
            f" ({waiting['attempts']} attempt(s)): {waiting['error']}"
        )
