"""The devices' side of trust: one-time enrolment codes, enrolment, and each request's
authentication (bearer credential, HMAC signature, clock, nonce). No HTTP: the device API
(`routes_device`) calls these.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from edge.hub import db
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol
from edge.sync.protocol import WireCode


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------ enrolment


def create_enroll_code(
    engine: Engine, programme: str = "default", ttl_hours: float = 72.0, actor: str = "admin"
) -> str:
    """A one-time code an administrator gives to a device installer (shown once, stored hashed)."""
    code = secrets.token_urlsafe(12)
    expires = datetime.now(timezone.utc) + timedelta(hours=ttl_hours)
    with engine.begin() as conn:
        conn.execute(
            insert(db.enroll_codes).values(
                code_hash=_sha(code), programme=programme, created_at=db.now(), expires_at=expires.isoformat()
            )
        )
    record_audit(engine, actor, "enroll_code.created", programme=programme, ttl_hours=ttl_hours)
    return code


def enroll(engine: Engine, request: protocol.EnrollRequest) -> protocol.EnrollResponse:
    """Exchange a one-time code for the device's own credential (the hub keeps only its hash)."""
    secret = secrets.token_urlsafe(32)
    device_id = str(uuid.uuid4())
    with engine.begin() as conn:
        code = conn.execute(
            select(db.enroll_codes).where(db.enroll_codes.c.code_hash == _sha(request.code))
        ).first()
        if (
            code is None
            or code.used_at is not None
            or code.expires_at < datetime.now(timezone.utc).isoformat()
        ):
            raise HubError(403, WireCode.ENROLL_REFUSED, "the enrolment code is unknown, used or expired")
        conn.execute(
            insert(db.devices).values(
                id=device_id,
                name=request.device_name,
                site=request.site,
                programme=code.programme,
                credential_hash=protocol.signing_key(secret),  # also the HMAC key
                created_at=db.now(),
            )
        )
        conn.execute(
            update(db.enroll_codes)
            .where(db.enroll_codes.c.code_hash == code.code_hash)
            .values(used_at=db.now(), device_id=device_id)
        )
    record_audit(engine, "device", "device.enrolled", device_id, name=request.device_name, site=request.site)
    return protocol.EnrollResponse(device_id=device_id, secret=secret, hub_time=time.time())


# ------------------------------------------------------------------ authentication


def authenticate(
    engine: Engine, authorization: str | None, headers: dict[str, str], method: str, path: str, body: bytes
) -> Device:
    """Bearer credential, then the request signature, its clock and its nonce."""
    if not authorization or not authorization.startswith("Bearer ") or "." not in authorization:
        raise HubError(401, WireCode.NO_CREDENTIAL, "this request carries no device credential")
    device_id, _, secret = authorization[7:].partition(".")
    with engine.connect() as conn:
        row = conn.execute(select(db.devices).where(db.devices.c.id == device_id)).first()
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.credential_hash, protocol.signing_key(secret))
    ):
        raise HubError(401, WireCode.BAD_CREDENTIAL, "unknown or revoked device credential")
    timestamp, nonce, signature = (
        headers.get(h, "") for h in ("x-edge-timestamp", "x-edge-nonce", "x-edge-signature")
    )
    expected = protocol.sign(row.credential_hash, method, path, timestamp, nonce, body)
    if not signature or not hmac.compare_digest(signature, expected):
        raise HubError(
            401, WireCode.BAD_SIGNATURE, "the request signature does not match (tampered or truncated)"
        )
    try:
        skew = abs(time.time() - float(timestamp))
    except ValueError as exc:
        raise HubError(401, WireCode.BAD_SIGNATURE, "no usable timestamp") from exc
    if skew > protocol.MAX_SKEW_S:
        raise HubError(
            401, WireCode.STALE_REQUEST, f"the request is {skew:.0f} s from the hub's clock (replayed?)"
        )
    try:
        with engine.begin() as conn:
            conn.execute(delete(db.nonces).where(db.nonces.c.seen_at < time.time() - 2 * protocol.MAX_SKEW_S))
            conn.execute(insert(db.nonces).values(device_id=device_id, nonce=nonce[:64], seen_at=time.time()))
            conn.execute(update(db.devices).where(db.devices.c.id == device_id).values(last_seen_at=db.now()))
    except IntegrityError as exc:
        raise HubError(409, WireCode.REPLAYED, "this exact request was seen before") from exc
    return Device(row.id, row.name, row.site, row.programme)
