"""What the hub does, without HTTP: enrolment, authentication, idempotent batches, resumable
uploads, reviews by cursor, signed model releases, audit. The FastAPI app is a thin layer on it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from edge.hub import db, worklist
from edge.inference.registry import sha256_file
from edge.sync import protocol


class HubError(Exception):
    """A refusal with its HTTP status and a sentence (the API returns both)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status, self.code, self.message = status, code, message


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    site: str
    programme: str


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_audit(
    engine: Engine, actor: str, action: str, device_id: str | None = None, **detail: Any
) -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(db.audit).values(
                at=db.now(), actor=actor, action=action, device_id=device_id, detail=detail
            )
        )


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
            raise HubError(403, "ENROLL_REFUSED", "the enrolment code is unknown, used or expired")
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
        raise HubError(401, "NO_CREDENTIAL", "this request carries no device credential")
    device_id, _, secret = authorization[7:].partition(".")
    with engine.connect() as conn:
        row = conn.execute(select(db.devices).where(db.devices.c.id == device_id)).first()
    if (
        row is None
        or row.revoked_at is not None
        or not hmac.compare_digest(row.credential_hash, protocol.signing_key(secret))
    ):
        raise HubError(401, "BAD_CREDENTIAL", "unknown or revoked device credential")
    timestamp, nonce, signature = (
        headers.get(h, "") for h in ("x-edge-timestamp", "x-edge-nonce", "x-edge-signature")
    )
    expected = protocol.sign(row.credential_hash, method, path, timestamp, nonce, body)
    if not signature or not hmac.compare_digest(signature, expected):
        raise HubError(401, "BAD_SIGNATURE", "the request signature does not match (tampered or truncated)")
    try:
        skew = abs(time.time() - float(timestamp))
    except ValueError as exc:
        raise HubError(401, "BAD_SIGNATURE", "no usable timestamp") from exc
    if skew > protocol.MAX_SKEW_S:
        raise HubError(401, "STALE_REQUEST", f"the request is {skew:.0f} s from the hub's clock (replayed?)")
    try:
        with engine.begin() as conn:
            conn.execute(delete(db.nonces).where(db.nonces.c.seen_at < time.time() - 2 * protocol.MAX_SKEW_S))
            conn.execute(insert(db.nonces).values(device_id=device_id, nonce=nonce[:64], seen_at=time.time()))
            conn.execute(update(db.devices).where(db.devices.c.id == device_id).values(last_seen_at=db.now()))
    except IntegrityError as exc:
        raise HubError(409, "REPLAYED", "this exact request was seen before") from exc
    return Device(row.id, row.name, row.site, row.programme)


# ------------------------------------------------------------------ results


def store_batch(engine: Engine, device: Device, batch: protocol.Batch) -> protocol.BatchReply:
    """Store each (device, uuid) once. Same content again: a duplicate. Different content under
    a known uuid: quarantined, never overwriting what is stored."""
    for record in batch.records:
        if protocol.payload_hash(record.payload) != record.sha256:
            raise HubError(400, "BAD_RECORD", f"record {record.uuid}: sha256 does not match its payload")
    for attempt in range(3):
        try:
            return _store_batch_once(engine, device, batch)
        except IntegrityError:  # a concurrent copy of the same batch won the race: look again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _store_batch_once(engine: Engine, device: Device, batch: protocol.Batch) -> protocol.BatchReply:
    stored, duplicates, quarantined = [], [], []
    uuids = [r.uuid for r in batch.records]
    with engine.begin() as conn:
        known = {
            row.uuid: row.sha256
            for row in conn.execute(
                select(db.records.c.uuid, db.records.c.sha256).where(
                    db.records.c.device_id == device.id, db.records.c.uuid.in_(uuids)
                )
            )
        }
        received = db.now()
        for record in batch.records:
            if record.uuid in known:
                if known[record.uuid] == record.sha256:
                    duplicates.append(record.uuid)
                else:
                    conn.execute(
                        insert(db.quarantine).values(
                            device_id=device.id,
                            uuid=record.uuid,
                            sha256=record.sha256,
                            payload=record.payload,
                            received_at=received,
                            reason="the same uuid arrived with different content",
                        )
                    )
                    quarantined.append(record.uuid)
                continue
            inserted = conn.execute(
                insert(db.records).values(
                    device_id=device.id,
                    uuid=record.uuid,
                    seq=record.seq,
                    kind=record.kind,
                    sha256=record.sha256,
                    payload=record.payload,
                    received_at=received,
                )
            )
            record_id = inserted.inserted_primary_key[0]  # type: ignore[index]
            worklist.index_record(conn, record_id, device.id, record.uuid, record.payload, received)
            known[record.uuid] = record.sha256
            stored.append(record.uuid)
    if quarantined:
        record_audit(engine, "device", "records.quarantined", device.id, uuids=quarantined)
    return protocol.BatchReply(
        stored=stored, duplicates=duplicates, quarantined=quarantined, hub_time=time.time()
    )


# ------------------------------------------------------------------ uploads (tus-style offsets)


def start_upload(
    engine: Engine, files: Path, device: Device, start: protocol.UploadStart
) -> protocol.UploadState:
    with engine.connect() as conn:
        owned = conn.execute(
            select(db.records.c.id).where(
                db.records.c.device_id == device.id, db.records.c.uuid == start.result_uuid
            )
        ).first()
    if owned is None:
        raise HubError(409, "RESULT_FIRST", "results travel first: this file's result is not on the hub yet")
    upload_id = str(uuid.uuid4())
    path = files / device.id / f"{start.record_uuid}.{start.kind}"
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(db.uploads).values(
                    id=upload_id,
                    device_id=device.id,
                    record_uuid=start.record_uuid,
                    result_uuid=start.result_uuid,
                    kind=start.kind,
                    size=start.size,
                    sha256=start.sha256,
                    media_type=start.media_type,
                    offset=0,
                    path=str(path),
                    complete=False,
                    created_at=db.now(),
                )
            )
    except IntegrityError:
        pass  # resumed: the same file was started before
    with engine.connect() as conn:
        row = conn.execute(
            select(db.uploads).where(
                db.uploads.c.device_id == device.id,
                db.uploads.c.record_uuid == start.record_uuid,
                db.uploads.c.kind == start.kind,
            )
        ).one()
    if row.sha256 != start.sha256 or row.size != start.size:
        raise HubError(409, "UPLOAD_CONFLICT", "a different file was started under this record and kind")
    return protocol.UploadState(upload_id=row.id, offset=row.offset, complete=row.complete)


def upload_state(engine: Engine, device: Device, upload_id: str) -> Any:
    with engine.connect() as conn:
        row = conn.execute(select(db.uploads).where(db.uploads.c.id == upload_id)).first()
    if row is None or row.device_id != device.id:  # another device's upload does not exist for you
        raise HubError(404, "NO_SUCH_UPLOAD", "no such upload")
    return row


def append_chunk(
    engine: Engine, device: Device, upload_id: str, offset: int, chunk: bytes
) -> protocol.UploadState:
    row = upload_state(engine, device, upload_id)
    if row.complete:
        return protocol.UploadState(upload_id=upload_id, offset=row.size, complete=True)
    if offset != row.offset:
        raise HubError(409, "WRONG_OFFSET", f"the upload is at byte {row.offset}, not {offset}")
    if offset + len(chunk) > row.size:
        raise HubError(400, "TOO_LONG", "more bytes than announced")
    path = Path(row.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("r+b" if path.exists() else "wb") as handle:
        handle.truncate(offset)  # a chunk written but never acknowledged is overwritten
        handle.seek(offset)
        handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    new_offset = offset + len(chunk)
    complete = new_offset == row.size
    if complete and sha256_file(path) != row.sha256:
        path.unlink(missing_ok=True)
        with engine.begin() as conn:
            conn.execute(update(db.uploads).where(db.uploads.c.id == upload_id).values(offset=0))
        raise HubError(422, "CHECKSUM_MISMATCH", "the assembled file does not match its sha256: start again")
    with engine.begin() as conn:
        conn.execute(
            update(db.uploads)
            .where(db.uploads.c.id == upload_id)
            .values(offset=new_offset, complete=complete)
        )
    return protocol.UploadState(upload_id=upload_id, offset=new_offset, complete=complete)


# ------------------------------------------------------------------ reviews

VERDICTS = ("agree", "disagree", "uncertain")  # what protocol.Review accepts


def add_review(
    engine: Engine,
    result_uuid: str,
    verdict: str,
    *,
    finding: str | None = None,
    note: str | None = None,
    reviewer: str = "",
    reviewer_role: str = "specialist",
    device_id: str | None = None,
) -> str:
    """A specialist's review of a synced result; it reaches the device on its next pull."""
    if verdict not in VERDICTS:
        raise HubError(400, "BAD_VERDICT", f"the verdict is one of {', '.join(VERDICTS)}")
    where = [db.records.c.uuid == result_uuid]
    if device_id is not None:  # the web page knows which device's result the reader opened
        where.append(db.records.c.device_id == device_id)
    with engine.connect() as conn:
        record = conn.execute(select(db.records.c.device_id).where(*where)).first()
    if record is None:
        raise HubError(404, "NO_SUCH_RESULT", "no synced result with that id")
    review_id = str(uuid.uuid4())
    with engine.begin() as conn:
        conn.execute(
            insert(db.reviews).values(
                id=review_id,
                device_id=record.device_id,
                result_uuid=result_uuid,
                verdict=verdict,
                finding=finding,
                note=note,
                reviewer=reviewer,
                reviewer_role=reviewer_role,
                reviewed_at=db.now(),
            )
        )
    record_audit(
        engine,
        reviewer or "specialist",
        "review.added",
        record.device_id,
        result=result_uuid,
        review=review_id,
        verdict=verdict,
        finding=finding,
    )
    return review_id


def reviews_since(engine: Engine, device: Device, cursor: int, limit: int = 200) -> protocol.ReviewPage:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.reviews)
            .where(db.reviews.c.device_id == device.id, db.reviews.c.seq > cursor)
            .order_by(db.reviews.c.seq)
            .limit(limit)
        ).all()
    reviews = [
        protocol.Review(
            id=r.id,
            result_uuid=r.result_uuid,
            verdict=r.verdict,
            finding=r.finding,
            note=r.note,
            reviewer_role=r.reviewer_role,
            reviewed_at=r.reviewed_at,
        )
        for r in rows
    ]
    return protocol.ReviewPage(reviews=reviews, cursor=rows[-1].seq if rows else cursor, hub_time=time.time())


# ------------------------------------------------------------------ model releases


def publish_release(
    engine: Engine, files: Path, release: protocol.ModelRelease, folder: Path, programme: str = "default"
) -> None:
    """Store a release signed by the publisher (the hub never holds the signing key)."""
    target = files / "releases" / release.name / release.version
    target.mkdir(parents=True, exist_ok=True)
    for name, digest in release.files.items():
        data = (folder / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise HubError(400, "BAD_RELEASE", f"{name} does not match the release's sha256")
        (target / name).write_bytes(data)
    with engine.begin() as conn:
        conn.execute(
            delete(db.releases).where(
                db.releases.c.name == release.name, db.releases.c.version == release.version
            )
        )
        conn.execute(
            insert(db.releases).values(
                name=release.name,
                version=release.version,
                programme=programme,
                release=release.model_dump(),
                created_at=db.now(),
            )
        )
    record_audit(engine, "admin", "release.published", name=release.name, version=release.version)


def releases_for(engine: Engine, device: Device) -> list[protocol.ModelRelease]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.releases.c.release).where(db.releases.c.programme == device.programme)
        ).all()
    return [protocol.ModelRelease(**row.release) for row in rows]


def release_file(files: Path, engine: Engine, device: Device, name: str, version: str, file: str) -> Path:
    for release in releases_for(engine, device):
        if release.name == name and release.version == version and file in release.files:
            return files / "releases" / name / version / file
    raise HubError(404, "NO_SUCH_FILE", "no such release file for this device")
