"""The devices' side of trust: one-time enrolment codes, enrolment of a device's public key, each
request's authentication (protocol version, signature, clock, nonce), and revocation of devices
and unused codes. No HTTP: the device API (`routes_device`), the admin page and `edge hub devices
|codes` call these.

The hub holds no device secret: a device is its ed25519 public key, so a copy of the hub's
database (or of one request) lets no one sign a request. Nonces are kept in the database, not in
memory, so several hub processes behind one address refuse the same replay.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Engine, delete, func, insert, or_, select, true, update
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol, signatures
from edge.sync.protocol import WireCode

CODE_ID_CHARS = 12  # a code is listed by this much of its hash: names it, tells nothing of it
NONCE_KEEP_S = 2 * protocol.MAX_SKEW_S  # a timestamp is accepted up to MAX_SKEW_S either side


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def fingerprint(public_key: str | None) -> str:
    """A short name for a device's key, to compare with what the device shows."""
    return hashlib.sha256(bytes.fromhex(public_key)).hexdigest()[:16] if public_key else "-"


# ------------------------------------------------------------------ enrolment


def create_enroll_code(
    engine: Engine, programme: str = "default", ttl_hours: float = 72.0, actor: str = "admin"
) -> str:
    """A one-time code an administrator gives to a device installer (shown once, stored hashed)."""
    code = secrets.token_urlsafe(12)
    while code.startswith("-"):  # a command line would read it as an option (`edge sync enroll`)
        code = secrets.token_urlsafe(12)
    expires = datetime.now(timezone.utc) + timedelta(hours=ttl_hours)
    code_hash = _sha(code)
    with engine.begin() as conn:
        conn.execute(
            insert(db.enroll_codes).values(
                code_hash=code_hash, programme=programme, created_at=db.now(), expires_at=expires.isoformat()
            )
        )
    record_audit(
        engine,
        actor,
        "enroll_code.created",
        programme=programme,
        ttl_hours=ttl_hours,
        code_id=code_hash[:CODE_ID_CHARS],
    )
    return code


def enroll(engine: Engine, request: protocol.EnrollRequest) -> protocol.EnrollResponse:
    """Register the device's public key with a one-time code; the code is spent at once, even by
    two enrolments racing for it (only one update finds it unused). A device enrolled under
    protocol 1 that proves it (`request.previous`: its id and shared secret) keeps its id, so
    its results, reviews and name stay its own."""
    if not signatures.verify_bytes(
        request.public_key, protocol.enrollment_to_sign(request.model_dump()), request.proof
    ):
        raise HubError(401, WireCode.BAD_SIGNATURE, "the enrolment is not signed by the key it registers")
    refused = HubError(
        403, WireCode.ENROLL_REFUSED, "the enrolment code is unknown, used, expired or revoked"
    )
    with engine.begin() as conn:
        code = conn.execute(
            select(db.enroll_codes).where(db.enroll_codes.c.code_hash == _sha(request.code))
        ).first()
        if code is None or code.expires_at < datetime.now(timezone.utc).isoformat():
            raise refused
        earlier = _earlier_enrolment(conn, request.previous)
        device_id = earlier.id if earlier is not None else str(uuid.uuid4())
        spent = conn.execute(
            update(db.enroll_codes)
            .where(
                db.enroll_codes.c.code_hash == code.code_hash,
                db.enroll_codes.c.used_at.is_(None),
                db.enroll_codes.c.revoked_at.is_(None),
            )
            .values(used_at=db.now(), device_id=device_id)
        )
        if spent.rowcount != 1:
            raise refused
        if earlier is not None:
            # Its programme stays (its results are scoped by it); the protocol-1 hash stays
            # until its first signed request, so an answer lost on the way lets it enrol again
            # with another code.
            conn.execute(
                update(db.devices)
                .where(db.devices.c.id == device_id)
                .values(name=request.device_name, site=request.site, public_key=request.public_key)
            )
        else:
            conn.execute(
                insert(db.devices).values(
                    id=device_id,
                    name=request.device_name,
                    site=request.site,
                    programme=code.programme,
                    credential_hash="",
                    public_key=request.public_key,
                    created_at=db.now(),
                )
            )
    record_audit(
        engine,
        "device",
        "device.enrolled_again" if earlier is not None else "device.enrolled",
        device_id,
        name=request.device_name,
        site=request.site,
        key=fingerprint(request.public_key),
        code_id=code.code_hash[:CODE_ID_CHARS],
        code_programme=code.programme,
    )
    return protocol.EnrollResponse(device_id=device_id, hub_time=time.time())


def _earlier_enrolment(conn: Any, previous: protocol.PreviousEnrolment | None) -> Any:
    """The device row a protocol-1 device enrolling again proves is its own, or None (none
    claimed, one this hub never knew, or one revoked: enrolled as a new device, as before)."""
    if previous is None:
        return None
    row = conn.execute(select(db.devices).where(db.devices.c.id == previous.device_id)).first()
    if row is None or row.revoked_at is not None:
        return None
    if not row.credential_hash and row.public_key:
        raise HubError(
            403,
            WireCode.ENROLL_REFUSED,
            f"device {previous.device_id} already enrolled again with a key, so its old secret no"
            " longer counts: put back the sync/credential.json and sync/device.key that enrolment"
            " wrote (a backup of the data folder from after it), or move sync/credential.json away"
            " to enrol it as a new device",
        )
    if not hmac.compare_digest(row.credential_hash or "", _sha(previous.secret)):
        raise HubError(
            403,
            WireCode.ENROLL_REFUSED,
            f"this device's earlier enrolment (device {previous.device_id}) is not confirmed by its"
            " secret: to enrol it as a new device, move its sync/credential.json away first",
        )
    return row


def check_version(version: str | None) -> None:
    """Refuse any other protocol version than this hub's with the sentence that says what to
    upgrade (426). A version-1 device sends none, only its bearer credential."""
    if version != str(protocol.VERSION):
        raise HubError(426, WireCode.UPGRADE_REQUIRED, protocol.upgrade_message((version or "")[:8] or None))


# ------------------------------------------------------------------ authentication


def authenticate(engine: Engine, headers: dict[str, str], method: str, path: str, body: bytes) -> Device:
    """The device behind a signed request (`headers` with lower-case names): its version, its
    key's signature, its clock, then its nonce; the cheap refusals first."""
    version = headers.get(protocol.HEADER_PROTOCOL.lower())
    if version is None and not {"authorization", protocol.HEADER_DEVICE.lower()} & headers.keys():
        raise HubError(401, WireCode.NO_CREDENTIAL, "this request carries no device credential")
    check_version(version)
    device_id, timestamp, nonce, signature = (
        headers.get(name.lower(), "")
        for name in (
            protocol.HEADER_DEVICE,
            protocol.HEADER_TIMESTAMP,
            protocol.HEADER_NONCE,
            protocol.HEADER_SIGNATURE,
        )
    )
    if not (device_id and signature):
        raise HubError(401, WireCode.NO_CREDENTIAL, "this request carries no device signature")
    sent_at = protocol.parse_timestamp(timestamp)
    if sent_at is None:
        raise HubError(400, WireCode.BAD_TIMESTAMP, "the timestamp must be seconds since the epoch")
    if not protocol.NONCE.fullmatch(nonce):
        raise HubError(400, WireCode.BAD_REQUEST, "the nonce must be 16 to 64 URL-safe characters")
    with engine.connect() as conn:
        row = conn.execute(select(db.devices).where(db.devices.c.id == device_id)).first()
    if row is None or not row.public_key:
        raise HubError(401, WireCode.BAD_CREDENTIAL, "unknown device (or one enrolled under protocol 1)")
    message = protocol.request_to_sign(method, path, body, timestamp, nonce, device_id)
    if not signatures.verify_bytes(row.public_key, message, signature):
        raise HubError(
            401, WireCode.BAD_SIGNATURE, "the request signature does not match (tampered, or another key)"
        )
    if row.revoked_at is not None:  # said only to the key's holder: it signed this request
        raise HubError(
            403, WireCode.DEVICE_REVOKED, f"this device was revoked on the hub at {row.revoked_at}"
        )
    skew = abs(time.time() - sent_at)
    if skew > protocol.MAX_SKEW_S:
        raise HubError(
            401, WireCode.STALE_REQUEST, f"the request is {skew:.0f} s from the hub's clock (replayed?)"
        )
    now = time.time()
    try:
        with engine.begin() as conn:
            conn.execute(delete(db.nonces).where(db.nonces.c.seen_at < now - NONCE_KEEP_S))
            conn.execute(insert(db.nonces).values(device_id=row.id, nonce=nonce, seen_at=now))
            # The protocol-1 hash kept for a device that enrolled again (`_earlier_enrolment`)
            # goes with its first signed request: its answer arrived, and the old secret must
            # not enrol anything again.
            conn.execute(
                update(db.devices)
                .where(db.devices.c.id == row.id)
                .values(last_seen_at=db.now(), credential_hash="")
            )
    except IntegrityError as exc:
        raise HubError(409, WireCode.REPLAYED, "this exact request was seen before") from exc
    return Device(row.id, row.name, row.site, row.programme)


# ------------------------------------------------------------------ listing and revocation


DEVICES_PAGE = 100
"""Devices a page of the admin page lists: a programme's thousands were one page, each row with
its own form."""


def _matching(search: str) -> Any:
    """Devices whose name, site, programme or id holds `search` (any case), or all."""
    c = db.devices.c
    needle = search.strip().lower()
    if not needle:
        return true()
    return or_(
        *(
            func.lower(func.coalesce(column, "")).contains(needle, autoescape=True)
            for column in (c.name, c.site, c.programme, c.id)
        )
    )


def count_devices(engine: Engine, search: str = "") -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(select(func.count()).select_from(db.devices).where(_matching(search))).scalar() or 0
        )


def list_devices(
    engine: Engine, search: str = "", offset: int = 0, limit: int | None = None
) -> list[dict[str, Any]]:
    """The devices (those `search` names, a page of them), each with its state (active, revoked,
    or needing re-enrolment) and key fingerprint, by programme, site and name."""
    c = db.devices.c
    query = select(db.devices).where(_matching(search)).order_by(c.programme, c.site, c.name, c.id)
    if limit is not None:
        query = query.offset(max(0, offset)).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": row.id,
            "name": row.name,
            "site": row.site,
            "programme": row.programme,
            "created_at": row.created_at,
            "last_seen_at": row.last_seen_at,
            "revoked_at": row.revoked_at,
            "state": "revoked" if row.revoked_at else "active" if row.public_key else "re-enrol",
            "key": fingerprint(row.public_key),
        }
        for row in rows
    ]


def list_codes(engine: Engine, unused_only: bool = False) -> list[dict[str, Any]]:
    """Every enrolment code by its id (never the code): programme, dates, state, the device it
    made. `unused_only`: the codes that can still enrol (the admin page's), chosen in SQL, not
    from every code ever made."""
    now = datetime.now(timezone.utc).isoformat()
    c = db.enroll_codes.c
    query = select(db.enroll_codes).order_by(c.created_at.desc())
    if unused_only:  # times in one format (isoformat, UTC), compared as text as `enroll` does
        query = query.where(c.used_at.is_(None), c.revoked_at.is_(None), c.expires_at >= now)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": row.code_hash[:CODE_ID_CHARS],
            "programme": row.programme,
            "created_at": row.created_at,
            "expires_at": row.expires_at,
            "state": (
                "used"
                if row.used_at
                else "revoked"
                if row.revoked_at
                else "expired"
                if row.expires_at < now
                else "unused"
            ),
            "device_id": row.device_id,
        }
        for row in rows
    ]


def revoke_device(engine: Engine, id_or_name: str, actor: str) -> Device:
    """Revoke an active device by its id (or its name, when one active device has it): its next
    request is refused (`DEVICE_REVOKED`); its results stay. Audited."""
    active = db.devices.c.revoked_at.is_(None)
    with engine.begin() as conn:
        # The id first: a device chooses its own name, and could choose another's id as one.
        rows = conn.execute(select(db.devices).where(active, db.devices.c.id == id_or_name)).all()
        if not rows:
            rows = conn.execute(select(db.devices).where(active, db.devices.c.name == id_or_name)).all()
        if len(rows) != 1:
            what = "no active device" if not rows else f"{len(rows)} active devices are called"
            raise HubError(404, WireCode.NOT_FOUND, f"{what} {id_or_name!r}: give the device's id")
        [row] = rows
        conn.execute(update(db.devices).where(db.devices.c.id == row.id).values(revoked_at=db.now()))
    record_audit(engine, actor, "device.revoked", row.id, name=row.name, site=row.site)
    return Device(row.id, row.name, row.site, row.programme)


def revoke_code(engine: Engine, code_or_id: str, actor: str) -> str:
    """Revoke an unused enrolment code, given as the code itself or its listed id; returns the
    id. A used code made a device: revoke the device instead. Audited (by id)."""
    matches = [db.enroll_codes.c.code_hash == _sha(code_or_id)]
    if len(code_or_id) == CODE_ID_CHARS:
        matches.append(db.enroll_codes.c.code_hash.startswith(code_or_id.lower(), autoescape=True))
    with engine.begin() as conn:
        rows = conn.execute(select(db.enroll_codes).where(or_(*matches))).all()
        if len(rows) != 1:
            raise HubError(404, WireCode.NOT_FOUND, "no such enrolment code")
        [row] = rows
        code_id = row.code_hash[:CODE_ID_CHARS]
        if row.used_at is not None:
            raise HubError(
                409, WireCode.ENROLL_REFUSED, f"code {code_id} enrolled device {row.device_id}: revoke it"
            )
        conn.execute(
            update(db.enroll_codes)
            .where(db.enroll_codes.c.code_hash == row.code_hash)
            .values(revoked_at=row.revoked_at or db.now())
        )
    record_audit(engine, actor, "enroll_code.revoked", code_id=code_id, programme=row.programme)
    return code_id
