"""`edge hub ...`: the hub itself (serve, purge, enrolment codes, reviews, releases, site profiles;
accounts and FHIR tokens in cli/hub_accounts.py, devices and codes in cli/hub_devices.py)."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from edge import log as edge_log
from edge.cli.base import EXIT_REFUSED, EXIT_USAGE, Context, cli, pass_context

if TYPE_CHECKING:
    from edge.config import Settings
    from edge.sync.protocol import ProfileRelease


@cli.group()
def hub() -> None:
    """The hub: serve, enroll-code, devices, codes, review, publish, user, fhir-token, purge."""


@hub.command("serve")
@click.option("--bind", help="Address to listen on (default [hub] bind, 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), help="TCP port (default [hub] port, 8720).")
@pass_context
def hub_serve(obj: Context, bind: str | None, port: int | None) -> None:
    """Serve the hub: the devices' API under /v1 and the specialists' review pages under /review.

    It speaks plain HTTP: to reach it from other machines, keep it on 127.0.0.1 behind a TLS
    reverse proxy (README, "Remote review"), or bind a private address only."""
    import socket

    import uvicorn

    from edge.hub.app import create_app

    settings = obj.settings
    host = bind if bind is not None else settings.hub.bind
    port = port if port is not None else settings.hub.port
    try:  # a typo'd address refuses in one line, before the app is built
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        click.echo(
            f"CONFIG_INVALID: cannot listen on {host!r}: {exc}; give an address of this machine", err=True
        )
        sys.exit(EXIT_USAGE)
    if not logging.getLogger().isEnabledFor(logging.INFO):
        edge_log.configure(logging.INFO)  # a service logs what it does (a client gone mid-request too)
    log = logging.getLogger(__name__)
    log.info("hub listening on http://%s:%d/ (review pages under /review/)", host, port)
    if host not in ("127.0.0.1", "::1", "localhost"):
        log.warning(
            "the hub serves plain HTTP on %s: put a TLS reverse proxy in front of it before "
            "specialists or devices reach it over a network you do not control",
            host,
        )
    app = create_app(settings)
    _start_purge_loop(settings, app)
    uvicorn.run(app, host=host, port=port, log_level="info", proxy_headers=True)


def _start_purge_loop(settings: Settings, app: Any) -> None:
    """The retention purge every `[hub] purge_interval_s`, in a daemon thread of the server
    (on the app's own database engine)."""
    import threading

    from edge.hub import retention

    if settings.hub.purge_interval_s <= 0:
        return
    policy = retention.Policy.from_settings(settings.hub)
    engine, files = app.state.device_api.engine, settings.hub_dir / "files"
    threading.Thread(
        target=retention.run_periodically,
        args=(engine, files, policy, settings.hub.purge_interval_s, threading.Event()),
        name="hub-purge",
        daemon=True,
    ).start()


@hub.command("purge")
@click.option("--dry-run", is_flag=True, help="Count what would go; remove nothing.")
@pass_context
def hub_purge(obj: Context, dry_run: bool) -> None:
    """Remove what the retention settings no longer keep: results deleted on their devices
    (after [hub] tombstone_purge_after_days), and by keep_records_days, keep_images_days and
    keep_renditions_days. Audited; safe while the hub serves (and runs it itself)."""
    from edge.hub import db, retention

    settings = obj.settings
    engine = db.make_engine(settings.hub_database_url)
    report = retention.purge(
        engine,
        settings.hub_dir / "files",
        retention.Policy.from_settings(settings.hub),
        dry_run=dry_run,
        actor="cli",
    )
    if report.skipped:
        click.echo(f"nothing done: {report.skipped}; try again when it ends")
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {report.records} result(s) ({report.deleted_on_device} deleted on their devices), "
        f"{report.uploads} upload(s), {report.files} file(s) ({report.file_bytes / 1e6:.1f} MB) "
        f"and {report.renditions} cached rendition(s)"
    )


@hub.command("enroll-code")
@click.option("--programme", default="default", show_default=True)
@pass_context
def hub_enroll_code(obj: Context, programme: str) -> None:
    """Make a one-time enrolment code for a new device (valid [hub] code_ttl_hours)."""
    from edge.hub import db, devices

    engine = db.make_engine(obj.settings.hub_database_url)
    click.echo(devices.create_enroll_code(engine, programme, obj.settings.hub.code_ttl_hours, actor="cli"))


@hub.command("review")
@click.argument("result_uuid")
@click.argument("verdict", type=click.Choice(["agree", "disagree", "uncertain"]))
@click.option("--finding")
@click.option("--note")
@click.option("--reviewer", default="specialist")
@pass_context
def hub_review(
    obj: Context, result_uuid: str, verdict: str, finding: str | None, note: str | None, reviewer: str
) -> None:
    """Record a specialist's review of a synced result (the web page does this for readers)."""
    from edge.hub import db, reviews
    from edge.hub.errors import HubError

    engine = db.make_engine(obj.settings.hub_database_url)
    try:
        click.echo(
            reviews.add_review(engine, result_uuid, verdict, finding=finding, note=note, reviewer=reviewer)
        )
    except HubError as error:
        click.echo(f"{error.code.value}: {error.message}", err=True)
        sys.exit(EXIT_REFUSED)


@hub.command("publish")
@click.argument("release_json", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--programme", default="default", show_default=True)
@pass_context
def hub_publish(obj: Context, release_json: Path, programme: str) -> None:
    """Publish a signed model release (made by tools/publish_model.py) to the devices."""
    from pydantic import ValidationError

    from edge.hub import db, releases
    from edge.hub.errors import HubError
    from edge.sync import protocol

    try:
        release = protocol.ModelRelease.model_validate_json(release_json.read_text())
        engine = db.make_engine(obj.settings.hub_database_url)
        releases.publish_release(
            engine,
            obj.settings.hub_dir / "files",
            release,
            release_json.parent,
            programme,
            publisher_key=obj.settings.hub.publisher_public_key,
        )
    except ValidationError as error:
        click.echo(f"BAD_RELEASE: {release_json} is not a release: {error.errors()[0]['msg']}", err=True)
        sys.exit(EXIT_REFUSED)
    except HubError as error:
        _refused(error)
    click.echo(f"published {release.name} {release.version} to programme {programme}")


# ---------------------------------------------------------------------- site profiles


@hub.group("profile")
def hub_profile() -> None:
    """Site profiles from the specialists' reviews: list, draft, sign, publish."""


def echo_rows(rows: list[dict[str, Any]], as_json: bool, line: Callable[[dict[str, Any]], str]) -> None:
    """A listing: JSON for scripts, else one line per row."""
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(line(row))


def _refused(error: Exception) -> NoReturn:
    from edge.hub.errors import HubError

    text = f"{error.code.value}: {error.message}" if isinstance(error, HubError) else f"REFUSED: {error}"
    click.echo(text, err=True)
    sys.exit(EXIT_REFUSED)


def _draft(obj: Context, programme: str, site: str, model: str, version: str | None) -> ProfileRelease:
    from edge.hub import db, site_profiles
    from edge.hub.errors import HubError

    engine = db.make_engine(obj.settings.hub_database_url)
    try:
        return site_profiles.draft(engine, obj.settings.models.dir, programme, site, model, version)
    except HubError as error:
        _refused(error)


@hub_profile.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def hub_profile_list(obj: Context, as_json: bool) -> None:
    """Every published site profile: site, model version, temperature, when and by whom."""
    from edge.hub import db, site_profiles

    echo_rows(
        site_profiles.list_profiles(db.make_engine(obj.settings.hub_database_url)),
        as_json,
        lambda row: (
            f"{row['profile_id']}  {row['programme']}/{row['site'] or '-'}"
            f"  temperature {row['temperature']}  published {row['published_at']} by {row['published_by']}"
        ),
    )


@hub_profile.command("draft")
@click.option("--site", required=True, help="The site, as its devices enrolled.")
@click.option("--model", required=True)
@click.option("--programme", default="default", show_default=True)
@click.option("--version", help="The model version (default: the newest reviewed at the site).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_context
def hub_profile_draft(
    obj: Context, site: str, model: str, programme: str, version: str | None, out: Path
) -> None:
    """Write the site's suggested profile, unsigned, to sign where the publisher's key is."""
    release = _draft(obj, programme, site, model, version)
    out.write_text(json.dumps(release.model_dump(), indent=1))
    click.echo(f"wrote {out}: sign it with `edge hub profile sign {out} --key publisher.key`")


@hub_profile.command("sign")
@click.argument("draft", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
def hub_profile_sign(draft: Path, key: Path, out: Path | None) -> None:
    """Sign a drafted profile with the publisher's key (the one model releases are signed with)."""
    from edge.sync import protocol, signatures

    release = protocol.ProfileRelease.model_validate_json(draft.read_text())
    try:
        signed = release.model_copy(
            update={"signature": signatures.sign(release.model_dump(), signatures.load_private_key(key))}
        )
    except ValueError as error:
        _refused(error)
    target = out or draft.with_name(f"{release.id}.json")
    target.write_text(json.dumps(signed.model_dump(), indent=1))
    click.echo(f"signed {release.id} -> {target}: `edge hub profile publish --signed {target}`")


@hub_profile.command("publish")
@click.option("--site", help="The site, as its devices enrolled (with --key).")
@click.option("--model", help="The model (with --key).")
@click.option("--programme", default="default", show_default=True)
@click.option("--version", help="The model version (default: the newest reviewed at the site).")
@click.option(
    "--key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Draft, sign and publish in one go.",
)
@click.option(
    "--signed",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Publish a profile signed elsewhere.",
)
@pass_context
def hub_profile_publish(
    obj: Context,
    site: str | None,
    model: str | None,
    programme: str,
    version: str | None,
    key: Path | None,
    signed: Path | None,
) -> None:
    """Publish a signed site profile to that site's devices: `--signed FILE`, or `--site S
    --model M --key publisher.key` where the key is at hand (it is read, never stored)."""
    from edge.hub import db, site_profiles
    from edge.hub.errors import HubError
    from edge.sync import protocol, signatures

    if (signed is None) == (key is None) or (key is not None and not (site is not None and model)):
        click.echo("give --signed FILE, or --site, --model and --key", err=True)
        sys.exit(EXIT_USAGE)
    if signed is not None:
        release = protocol.ProfileRelease.model_validate_json(signed.read_text())
    else:
        draft = _draft(obj, programme, site or "", model or "", version)
        try:
            private = signatures.load_private_key(Path(str(key)))
        except ValueError as error:
            _refused(error)
            return
        release = draft.model_copy(update={"signature": signatures.sign(draft.model_dump(), private)})
    try:
        note = site_profiles.publish(
            db.make_engine(obj.settings.hub_database_url),
            release,
            actor="cli",
            publisher_key=obj.settings.hub.publisher_public_key,
        )
    except HubError as error:
        _refused(error)
        return
    click.echo(
        f"published {release.id} to site {release.site or '(unnamed)'} ({release.programme})"
        + (f": {note}" if note else "")
    )
