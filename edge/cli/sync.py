"""`edge sync ...`: the device side of the link to the hub (`edge hub ...` is in cli/hub.py)."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from edge import log as edge_log
from edge.cli.base import EXIT_REFUSED, EXIT_USAGE, Context, cli, pass_context, run_service
from edge.errors import EdgeError

# ---------------------------------------------------------------------- sync (device side)


@cli.group()
def sync() -> None:
    """Store-and-forward to the hub: enroll, run, now, status, pseudonym."""


@sync.command("enroll")
@click.argument("url")
@click.argument("code")
@click.option("--name", help="This device's name on the hub (default: the host name).")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a plain http:// hub URL (a lab only: results travel unencrypted). Kept for sync.",
)
@pass_context
def sync_enroll(obj: Context, url: str, code: str, name: str | None, insecure: bool) -> None:
    """Make this device's key pair and register it with the hub, using a one-time CODE from the
    hub's administrator. The private key stays in this device's data folder (owner-only)."""
    import socket

    import httpx

    from edge.sync.credential import enroll

    try:
        with httpx.Client(timeout=30) as http:
            credential = enroll(obj.settings, url, code, name or socket.gethostname(), http, insecure)
    except (EdgeError, httpx.HTTPError) as error:
        click.echo(
            error.one_line() if isinstance(error, EdgeError) else f"HUB_UNREACHABLE: {error}", err=True
        )
        sys.exit(EXIT_REFUSED)
    _record_enrolment_clock(obj, credential.clock_offset)
    click.echo(f"enrolled as device {credential.device_id} with {credential.hub_url}")


def _record_enrolment_clock(obj: Context, offset_s: float) -> None:
    """The hub's time came with its answer: keep what it says of this clock in the store, as a
    sync round does (an image stored before the first round while the clock read months behind
    was taken for months old once NTP put it right)."""
    from edge.store import Store
    from edge.sync.client import record_hub_clock

    try:
        with Store(obj.settings.data_dir) as store:
            record_hub_clock(store, offset_s)
    except EdgeError as error:  # the store refuses (damaged, read-only): enrolment still stands
        click.echo(f"enrolled, but the clock's offset could not be kept: {error.one_line()}", err=True)


@sync.command("run")
@pass_context
def sync_run(obj: Context) -> None:
    """Run the sync agent until stopped (the edge-sync service)."""
    from edge.operations import storage_encryption
    from edge.sync.runner import serve

    if not logging.getLogger().isEnabledFor(logging.INFO):
        edge_log.configure(logging.INFO)

    def refused_or_served() -> int:
        storage_encryption.enforce(obj.settings)  # STORAGE_NOT_ENCRYPTED when it is required
        return serve(obj.settings)

    run_service(refused_or_served)


@sync.command("now")
@click.option("--json", "as_json", is_flag=True, help="Print the sync report as JSON (for scripts).")
@pass_context
def sync_now(obj: Context, as_json: bool) -> None:
    """Sync at once: wake the running agent, or run one round here if none runs."""
    import httpx

    from edge.store import Store
    from edge.sync import request_sync_now
    from edge.sync.client import SyncClient
    from edge.sync.credential import Credential
    from edge.sync.runner import run_round, sync_status

    if request_sync_now(obj.settings):
        click.echo(
            json.dumps({"requested": True})
            if as_json
            else "Asked the running sync service (edge-sync) to sync now; edge sync status shows how it went."
        )
        return
    credential = Credential.load(obj.settings)
    if credential is None:
        problem = Credential.problem(obj.settings)
        # Enrolled, but not usable (an older protocol's enrolment, a key gone): "not configured"
        # contradicted the line just logged (an upgrade check).
        why = (
            f"CONFIG_INVALID: this device's enrolment with {problem[0]} cannot be used: {problem[1]}:"
            " enrol it again with edge sync enroll HUB_URL CODE (a new code from the hub's"
            " administrator)"
            if problem is not None
            else "CONFIG_INVALID: sync is not configured: enrol this device first with "
            "edge sync enroll HUB_URL CODE (the code comes from the hub's administrator)"
        )
        click.echo(why, err=True)
        sys.exit(EXIT_USAGE)
    with Store(obj.settings.data_dir) as store, httpx.Client(timeout=obj.settings.sync.timeout_s) as http:
        try:
            client = SyncClient(obj.settings, store, http, credential)
        except EdgeError as error:
            click.echo(error.one_line(), err=True)
            sys.exit(EXIT_REFUSED)
        waiting = sync_status(obj.settings, store)["pending"]
        if not as_json and waiting["results"] + waiting["files"]:
            # a first sync of a day's work takes minutes on a slow link: say so before it starts
            files = f" and {waiting['files']} file(s)" if waiting["files"] else ""
            click.echo(
                f"Sending {waiting['results']} result(s){files} to {credential.hub_url}; on a slow link "
                "this takes minutes. What went through stays sent if it stops.",
                err=True,
            )
        ok = run_round(client)
        status = sync_status(obj.settings, store)
    click.echo(json.dumps(status, indent=2) if as_json else "\n".join(round_sentences(ok, status)))
    sys.exit(0 if ok else EXIT_REFUSED)


def round_sentences(ok: bool, status: dict[str, Any]) -> list[str]:
    """`edge sync now`'s report in sentences: what happened, what waits, what to do."""
    hub = status.get("hub") or "the hub"
    pending = status.get("pending") or {}
    results, files = int(pending.get("results", 0)), int(pending.get("files", 0))
    lines = [f"Synced with {hub}." if ok else f"The sync with {hub} did not complete."]
    if results or files:
        lines.append(f"Still waiting to be sent: {results} result(s), {files} file(s).")
    else:
        lines.append("Nothing is waiting: the hub has every result.")
    lines.append(f"Last success: {status.get('last_success') or 'never'}.")
    if not ok and status.get("last_error"):
        lines.append(f"Last error ({status.get('last_error_at') or 'just now'}): {status['last_error']}")
        lines.append(
            "It is tried again automatically while edge-sync runs (sudo systemctl start edge-sync); "
            "edge sync status shows the state."
        )
    from edge.sync.runner import refused_updates

    lines += [line[:1].upper() + line[1:] + "." for line in refused_updates(status)]
    return lines


@sync.command("status")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def sync_status_command(obj: Context, as_json: bool) -> None:
    """Offline / syncing / failed / up to date, pending counts, last success, last error."""
    from edge.store import Store
    from edge.sync.runner import refused_updates, sync_status

    with Store(obj.settings.data_dir) as store:
        status = sync_status(obj.settings, store)
    if as_json:
        click.echo(json.dumps(status, indent=2))
        return
    click.echo(
        f"{status['state']}: hub {status['hub'] or '-'}; pending {status['pending']['results']} results, "
        f"{status['pending']['files']} files; last success {status['last_success'] or 'never'}"
    )
    if status["last_error"]:
        click.echo(f"last error ({status['last_error_at']}): {status['last_error']}")
    for line in refused_updates(status):
        click.echo(line)


@sync.command("pseudonym")
@click.argument("patient_id")
@pass_context
def sync_pseudonym(obj: Context, patient_id: str) -> None:
    """The pseudonym the hub knows this patient by (only this device can compute it)."""
    from edge.sync.deid import Deidentifier

    click.echo(Deidentifier.for_device(obj.settings.data_dir / "sync").pseudonym(patient_id))


# ---------------------------------------------------------------------- site profiles


@sync.group("profile")
def sync_profile() -> None:
    """Site profiles the hub sent: list, rollback."""


@sync_profile.command("list")
@click.argument("model")
@pass_context
def sync_profile_list(obj: Context, model: str) -> None:
    """The site profiles kept for MODEL, oldest first; * marks the active one."""
    from edge.sync.profiles import active_id, installed

    active = active_id(obj.settings, model)
    for profile in installed(obj.settings, model):
        mark = "*" if profile.id == active else " "
        click.echo(
            f"{mark} {profile.id}  {profile.source:<7} {profile.model} {profile.model_version}"
            f"  temperature {profile.temperature}  {profile.cases} cases"
        )


@sync_profile.command("rollback")
@click.argument("model")
@pass_context
def sync_profile_rollback(obj: Context, model: str) -> None:
    """Put back what was in force before the active site profile of MODEL (an earlier profile,
    or the shipped calibration; audited); sync does not install the one rolled back from again."""
    from edge.store import Store
    from edge.sync.profiles import rollback

    try:
        with Store(obj.settings.data_dir, busy_timeout_ms=obj.settings.store.busy_timeout_ms) as store:
            previous = rollback(obj.settings, store, model)
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    if previous is None:
        click.echo(f"{model}: no site profile is active now: the shipped calibration serves, as before")
    else:
        click.echo(f"{model}: site profile {previous.id} is active again")
