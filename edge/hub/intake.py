"""What devices send: result batches, stored once per (device, uuid) and indexed for the
worklist in the same transaction, and files by resumable (tus-style) uploads. No HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from edge.hub import blobs, db, tombstones, worklist_index
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol
from edge.sync.protocol import WireCode

# ------------------------------------------------------------------ results


def store_batch(engine: Engine, device: Device, batch: protocol.Batch) -> protocol.BatchReply:
    """Store each (device, uuid) once. Same content again: a duplicate. Different content under
    a known uuid: quarantined, never overwriting what is stored."""
    for record in batch.records:
        if record.seq > db.MAX_INT:  # the column's range (32 bits on PostgreSQL): no 500
            raise HubError(400, WireCode.BAD_RECORD, f"record {record.uuid}: seq is out of range")
        problem = _unstorable(record.payload)
        if problem is not None:
            raise HubError(400, WireCode.BAD_RECORD, f"record {record.uuid}: {problem}")
        if protocol.payload_hash(record.payload) != record.sha256:
            raise HubError(
                400, WireCode.BAD_RECORD, f"record {record.uuid}: sha256 does not match its payload"
            )
    return db.despite_races(lambda: _store_batch_once(engine, device, batch))


def _unstorable(payload: dict[str, Any]) -> str | None:
    """Why a payload cannot be stored and read back as numbers, or None: NaN and Infinity are no
    JSON (PostgreSQL refuses them) and an integer past 64 bits is no age or probability (the
    readers' float() overflows). Both were 500s before."""
    try:
        json.dumps(payload, allow_nan=False)
    except ValueError:
        return "NaN or Infinity in its payload"
    pending: list[Any] = [payload]
    while pending:
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, int) and abs(value) >= 2**63:
            return "an integer in its payload is out of range"
    return None


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
            # A tombstone that came first (out of order) wins: stored hidden, never listed.
            if not tombstones.hide_if_tombstoned(conn, device.id, record.uuid, record_id, received):
                worklist_index.index_record(conn, record_id, device.id, record.uuid, record.payload, received)
            known[record.uuid] = record.sha256
            stored.append(record.uuid)
    if quarantined:
        record_audit(engine, "device", "records.quarantined", device.id, uuids=quarantined)
    return protocol.BatchReply(
        stored=stored, duplicates=duplicates, quarantined=quarantined, hub_time=time.time()
    )


# ------------------------------------------------------------------ uploads (tus-style offsets)


@dataclass(frozen=True)
class UploadQuotas:
    """What one device may keep on the hub (`[hub] upload_*`): a device is trusted with its own
    results, not with the hub's disk."""

    result_bytes: int = 520 * 1024 * 1024
    result_files: int = 5  # one of each upload kind (edge.sync.protocol.UploadStart.kind)
    device_bytes: int = 50 * 1024**3
    device_files: int = 500_000

    @classmethod
    def from_settings(cls, hub: Any) -> UploadQuotas:
        return cls(
            result_bytes=int(hub.upload_result_mb * 1024 * 1024),
            result_files=hub.upload_result_files,
            device_bytes=int(hub.upload_device_gb * 1024**3),
            device_files=hub.upload_device_files,
        )


def start_upload(
    engine: Engine,
    files: Path,
    device: Device,
    start: protocol.UploadStart,
    quotas: UploadQuotas = UploadQuotas(),  # frozen: one default shared safely
) -> protocol.UploadState:
    record_uuid, result_uuid = str(start.record_uuid), str(start.result_uuid)
    with engine.connect() as conn:
        owned = conn.execute(
            select(db.records.c.id).where(
                db.records.c.device_id == device.id, db.records.c.uuid == result_uuid
            )
        ).first()
    if owned is None:
        raise HubError(
            409, WireCode.RESULT_FIRST, "results travel first: this file's result is not on the hub yet"
        )
    upload_id = str(uuid.uuid4())
    # Only names the hub made: the device's identifiers never reach the file system.
    path = files / device.id / upload_id
    try:
        with engine.begin() as conn:
            if _existing(conn, device, record_uuid, start.kind) is None:
                _check_quotas(conn, device, result_uuid, start.size, quotas)
                conn.execute(
                    insert(db.uploads).values(
                        id=upload_id,
                        device_id=device.id,
                        record_uuid=record_uuid,
                        result_uuid=result_uuid,
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
        pass  # resumed: a concurrent copy of this request started the same file
    with engine.connect() as conn:
        row = _existing(conn, device, record_uuid, start.kind)
    assert row is not None
    if row.sha256 != start.sha256 or row.size != start.size:
        raise HubError(
            409, WireCode.UPLOAD_CONFLICT, "a different file was started under this record and kind"
        )
    return protocol.UploadState(upload_id=row.id, offset=row.offset, complete=row.complete)


def _existing(conn: Connection, device: Device, record_uuid: str, kind: str) -> Any:
    return conn.execute(
        select(db.uploads).where(
            db.uploads.c.device_id == device.id,
            db.uploads.c.record_uuid == record_uuid,
            db.uploads.c.kind == kind,
        )
    ).first()


def _check_quotas(
    conn: Connection, device: Device, result_uuid: str, size: int, quotas: UploadQuotas
) -> None:
    """Refuse a new upload past the device's or the result's quota. The device's row is locked
    first (PostgreSQL; SQLite's transactions take the write lock at BEGIN), so two concurrent
    starts cannot both fit under the same remaining quota. The device's files and bytes are its
    running totals (`db.upload_totals`, kept by triggers: `quota_triggers`), one row however many
    uploads it has; a result's few uploads are counted."""
    conn.execute(select(db.devices.c.id).where(db.devices.c.id == device.id).with_for_update())
    u, t = db.uploads.c, db.upload_totals.c
    result = conn.execute(
        select(func.count(), func.coalesce(func.sum(u.size), 0)).where(
            u.device_id == device.id, u.result_uuid == result_uuid
        )
    ).one()
    totals = conn.execute(select(t.files, t.bytes).where(t.device_id == device.id)).first()
    for scope, (count, total), max_bytes, max_files in (
        ("this result", result, quotas.result_bytes, quotas.result_files),
        ("this device", totals or (0, 0), quotas.device_bytes, quotas.device_files),
    ):
        if count + 1 > max_files or total + size > max_bytes:
            raise HubError(
                413,
                WireCode.QUOTA_EXCEEDED,
                f"the upload quota of {scope} is spent ({max_files} files, {max_bytes} bytes)",
            )


def upload_state(engine: Engine, device: Device, upload_id: str) -> Any:
    with engine.connect() as conn:
        return _upload_row(conn, device, upload_id)


def _upload_row(conn: Connection, device: Device, upload_id: str) -> Any:
    row = conn.execute(select(db.uploads).where(db.uploads.c.id == upload_id)).first()
    if row is None or row.device_id != device.id:  # another device's upload does not exist for you
        raise HubError(404, WireCode.NO_SUCH_UPLOAD, "no such upload")
    return row


def append_chunk(
    engine: Engine, device: Device, upload_id: str, offset: int, chunk: bytes
) -> protocol.UploadState:
    """Write a chunk at the upload's offset and move the offset past it, only forward: a late
    copy of a chunk (a device's retry after a lost answer) never takes an upload back, nor erases
    bytes written after it; it is answered with the upload's state or WRONG_OFFSET (the device
    asks where the upload stands and resumes there)."""
    store = blobs.for_engine(engine)  # files (SQLite) or chunk rows any node reads (PostgreSQL)
    if isinstance(store, blobs.FileBlobs):
        # A file is no transaction: it is written while this one holds SQLite's only write lock
        # (BEGIN IMMEDIATE), so checking the offset, writing the bytes and moving the offset are
        # one step for every other request.
        with engine.begin() as conn:
            row = _upload_row(conn, device, upload_id)
            if row.complete:
                return _completed(row)
            _check_chunk(row, offset, chunk)
            store.write(row, offset, chunk)
            answer = _advance(conn, row, offset, len(chunk), _intact(store, row, offset + len(chunk)))
    else:
        # PostgreSQL: the chunk rows are written in their own transaction under the upload row's
        # lock, after checking the offset there (`blobs.PostgresBlobs.write`: a copy arriving
        # after the offset moved is refused and erases nothing); then the offset moves only from
        # where this chunk started. No connection is held while the bytes are written or hashed.
        with engine.connect() as conn:
            row = _upload_row(conn, device, upload_id)
        if row.complete:
            return _completed(row)
        _check_chunk(row, offset, chunk)
        store.write(row, offset, chunk)
        intact = _intact(store, row, offset + len(chunk))
        with engine.begin() as conn:
            answer = _advance(conn, row, offset, len(chunk), intact)
    if isinstance(answer, HubError):
        raise answer  # after the commit: an offset set back to 0 stays so
    return answer


def _check_chunk(row: Any, offset: int, chunk: bytes) -> None:
    if offset != row.offset:
        raise HubError(409, WireCode.WRONG_OFFSET, f"the upload is at byte {row.offset}, not {offset}")
    if offset + len(chunk) > row.size:
        raise HubError(400, WireCode.TOO_LONG, "more bytes than announced")


def _completed(row: Any) -> protocol.UploadState:
    return protocol.UploadState(upload_id=row.id, offset=row.size, complete=True)


def _intact(store: blobs.UploadBlobs, row: Any, end: int) -> bool:
    """False when the chunk ending at `end` was the last and the assembled file does not match
    its sha256: its bytes are discarded (the device starts again)."""
    if end < row.size or store.digest(row) == row.sha256:
        return True
    store.discard(row)
    return False


def _advance(
    conn: Connection, row: Any, offset: int, length: int, intact: bool
) -> protocol.UploadState | HubError:
    """Move the upload's offset from `offset`, where the chunk just written starts, past it (or
    back to 0 when the file is not `intact`): UPDATE ... WHERE offset = `offset`, so copies of
    one chunk move it once, and a copy that lost the race moves nothing. The answer, or the
    refusal to raise once the transaction is committed."""
    u = db.uploads.c
    at_start = (u.id == row.id) & (u.offset == offset) & u.complete.is_(False)
    if not intact:
        conn.execute(update(db.uploads).where(at_start).values(offset=0))
        return HubError(
            422, WireCode.CHECKSUM_MISMATCH, "the assembled file does not match its sha256: start again"
        )
    new_offset = offset + length
    complete = new_offset == row.size
    moved = conn.execute(update(db.uploads).where(at_start).values(offset=new_offset, complete=complete))
    if moved.rowcount == 1:
        return protocol.UploadState(upload_id=row.id, offset=new_offset, complete=complete)
    now = conn.execute(select(u.offset, u.complete).where(u.id == row.id)).one()
    if now.complete:
        return _completed(row)
    if now.offset == new_offset:  # the same chunk's other copy moved it first
        return protocol.UploadState(upload_id=row.id, offset=new_offset, complete=False)
    return HubError(409, WireCode.WRONG_OFFSET, f"the upload is at byte {now.offset}, not {offset}")
