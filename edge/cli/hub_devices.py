"""`edge hub devices ...` and `edge hub codes ...`: the enrolled devices and the enrolment codes,
listed with their state and revoked (audited, effective at the device's next request). The codes
are made by `edge hub enroll-code` (cli/hub.py) or on the admin page."""

from __future__ import annotations

import click

from edge.cli.base import Context, pass_context
from edge.cli.hub import _refused as _refuse
from edge.cli.hub import echo_rows, hub


@hub.group("devices")
def hub_devices() -> None:
    """Enrolled devices: list, revoke."""


@hub_devices.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def hub_devices_list(obj: Context, as_json: bool) -> None:
    """Every device: id, name, programme/site, state, key fingerprint and last request."""
    from edge.hub import db, devices

    echo_rows(
        devices.list_devices(db.make_engine(obj.settings.hub_database_url)),
        as_json,
        lambda row: (
            f"{row['id']}  {row['name']:<20} {row['programme']}/{row['site'] or '-'}"
            f"  {row['state']:<8} key {row['key']}  last seen {row['last_seen_at'] or 'never'}"
        ),
    )


@hub_devices.command("revoke")
@click.argument("device")
@pass_context
def hub_devices_revoke(obj: Context, device: str) -> None:
    """Revoke DEVICE (its id, or its name if only one active device has it): its next request is
    refused and it shows "revoked: re-enrol"; what it sent stays on the hub."""
    from edge.hub import db, devices
    from edge.hub.errors import HubError

    try:
        revoked = devices.revoke_device(db.make_engine(obj.settings.hub_database_url), device, actor="cli")
    except HubError as error:
        _refuse(error)
    click.echo(f"revoked device {revoked.id} ({revoked.name}, {revoked.programme}/{revoked.site or '-'})")


@hub.group("codes")
def hub_codes() -> None:
    """Enrolment codes: list, revoke (make one with `edge hub enroll-code`)."""


@hub_codes.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def hub_codes_list(obj: Context, as_json: bool) -> None:
    """Every enrolment code by its id (the code itself is never stored): state and device."""
    from edge.hub import db, devices

    echo_rows(
        devices.list_codes(db.make_engine(obj.settings.hub_database_url)),
        as_json,
        lambda row: (
            f"{row['id']}  {row['programme']:<12} {row['state']:<8} expires {row['expires_at']}"
            + (f"  device {row['device_id']}" if row["device_id"] else "")
        ),
    )


@hub_codes.command("revoke")
@click.argument("code")
@pass_context
def hub_codes_revoke(obj: Context, code: str) -> None:
    """Revoke an unused enrolment CODE (the code, or its id from `edge hub codes list`)."""
    from edge.hub import db, devices
    from edge.hub.errors import HubError

    try:
        code_id = devices.revoke_code(db.make_engine(obj.settings.hub_database_url), code, actor="cli")
    except HubError as error:
        _refuse(error)
    click.echo(f"revoked enrolment code {code_id}")
