"""What the hub keeps, and for how long: `purge` removes, by policy (`[hub]` settings), results
deleted on their devices after a grace period (`tombstone_purge_after_days`), results older than
`keep_records_days`, uploaded files older than `keep_images_days` and cached renditions older
than `keep_renditions_days` (0: for ever). `edge hub serve` runs it every `purge_interval_s`,
`edge hub purge` once (`--dry-run`: counts only). No HTTP.

Rows go first, in batches of one transaction each with their audit row; files after the
commit, so a crash in between leaves a file without a row (removed by no one, but never
shown), never a row without its file. Several hub processes may run it at once: on PostgreSQL
one holds a session advisory lock (`pg_try_advisory_lock`) and the others skip the round; on
SQLite each batch takes the write lock (BEGIN IMMEDIATE), so a second purger finds the rows
already gone, and removing a file twice is no error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, or_, select

from edge.hub import db
from edge.hub.blobs import CACHE_FOLDER
from edge.hub.cluster import one_node_at_a_time

log = logging.getLogger(__name__)

BATCH = 200


@dataclass(frozen=True)
class Policy:
    """Days to keep each thing; 0 keeps it for ever (a tombstoned result: purged at once)."""

    tombstone_days: float = 7.0
    images_days: float = 0.0
    records_days: float = 0.0
    renditions_days: float = 30.0

    @classmethod
    def from_settings(cls, hub: Any) -> Policy:
        return cls(
            tombstone_days=hub.tombstone_purge_after_days,
            images_days=hub.keep_images_days,
            records_days=hub.keep_records_days,
            renditions_days=hub.keep_renditions_days,
        )


@dataclass
class PurgeReport:
    dry_run: bool
    skipped: str | None = None  # why nothing was done (another hub process is purging)
    records: int = 0  # results removed (rows, reviews, worklist row, their files)
    deleted_on_device: int = 0  # of which tombstoned
    uploads: int = 0  # upload rows removed (with a record, or by age)
    files: int = 0  # upload files removed
    file_bytes: int = 0
    renditions: int = 0  # cached renditions removed
    uuids: list[str] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "uuids"}


def _cutoff(now: datetime, days: float) -> str:
    return (now - timedelta(days=days)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def purge(
    engine: Engine,
    files: Path,
    policy: Policy,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    actor: str = "hub",
) -> PurgeReport:
    """One purge by `policy` (see the module docstring); what it removed, or would remove."""
    now = now or datetime.now(timezone.utc)
    report = PurgeReport(dry_run=dry_run)
    # PostgreSQL: an advisory lock for the whole purge; SQLite has one writer at a time anyway.
    with one_node_at_a_time(engine, "purge") as held:
        if not held:
            report.skipped = "another hub process is purging"
            return report
        _purge_records(engine, files, policy, now, report)
        if policy.images_days > 0:
            _purge_old_uploads(engine, files, _cutoff(now, policy.images_days), report)
        if policy.renditions_days > 0:
            _purge_renditions(files / "renditions", now.timestamp() - policy.renditions_days * 86400, report)
        if not dry_run and (report.records or report.uploads or report.renditions):
            with engine.begin() as conn:
                conn.execute(
                    insert(db.audit).values(
                        at=db.now(), actor=actor, action="hub.purged", device_id=None, detail=report.summary()
                    )
                )
    return report


def _purge_records(engine: Engine, files: Path, policy: Policy, now: datetime, report: PurgeReport) -> None:
    rec = db.records
    due = [rec.c.deleted_at <= _cutoff(now, policy.tombstone_days)]
    if policy.records_days > 0:
        due.append(rec.c.received_at <= _cutoff(now, policy.records_days))
    last = 0
    while True:
        gone: list[Any] = []  # the upload rows whose bytes go
        with engine.begin() as conn:
            rows = conn.execute(
                select(rec.c.id, rec.c.device_id, rec.c.uuid, rec.c.payload, rec.c.deleted_at)
                .where(or_(*due), rec.c.id > last)
                .order_by(rec.c.id)
                .limit(BATCH)
            ).all()
            if not rows:
                return
            last = rows[-1].id
            for row in rows:
                uploads = _record_uploads(conn, row)
                gone += uploads
                report.uploads += len(uploads)
                report.records += 1
                report.deleted_on_device += row.deleted_at is not None
                report.uuids.append(row.uuid)
                if report.dry_run:
                    continue
                if uploads:
                    _delete_uploads(conn, [u.id for u in uploads])
                conn.execute(
                    delete(db.reviews).where(
                        db.reviews.c.device_id == row.device_id, db.reviews.c.result_uuid == row.uuid
                    )
                )
                conn.execute(delete(db.worklist).where(db.worklist.c.record_id == row.id))
                conn.execute(delete(rec).where(rec.c.id == row.id))
            if not report.dry_run:
                conn.execute(
                    insert(db.audit).values(
                        at=db.now(),
                        actor="hub",
                        action="results.purged",
                        device_id=None,
                        detail={"results": [[row.device_id, row.uuid] for row in rows]},
                    )
                )
        _remove_files(engine, files, gone, report)


def _record_uploads(conn: Connection, row: Any) -> list[Any]:
    """The uploads that go with a result: its own files, and its image unless another result of
    the device still shown (not deleted) reads the same image."""
    u = db.uploads
    own = list(conn.execute(select(u).where(u.c.device_id == row.device_id, u.c.result_uuid == row.uuid)))
    image = row.payload.get("image") if isinstance(row.payload, dict) else None
    image_uuid = str(image.get("uuid") or "") if isinstance(image, dict) else ""
    if not image_uuid:
        return own
    shared = conn.execute(
        select(func.count())
        .select_from(db.records)
        .where(
            db.records.c.device_id == row.device_id,
            db.records.c.id != row.id,
            db.records.c.deleted_at.is_(None),
            db.records.c.payload["image"]["uuid"].as_string() == image_uuid,
        )
    ).scalar_one()
    if shared:
        return [upload for upload in own if upload.kind != "image"]
    seen = {upload.id for upload in own}
    images = conn.execute(
        select(u).where(u.c.device_id == row.device_id, u.c.kind == "image", u.c.record_uuid == image_uuid)
    )
    return own + [upload for upload in images if upload.id not in seen]


def _purge_old_uploads(engine: Engine, files: Path, cutoff: str, report: PurgeReport) -> None:
    u = db.uploads
    last = ""
    while True:
        with engine.begin() as conn:
            rows = conn.execute(
                select(u).where(u.c.created_at <= cutoff, u.c.id > last).order_by(u.c.id).limit(BATCH)
            ).all()
            if not rows:
                return
            last = rows[-1].id
            report.uploads += len(rows)
            if not report.dry_run:
                _delete_uploads(conn, [row.id for row in rows])
        _remove_files(engine, files, rows, report)


def _delete_uploads(conn: Connection, ids: list[str]) -> None:
    """Upload rows and, on PostgreSQL, their chunk rows (the bytes themselves: edge/hub/blobs.py)."""
    conn.execute(delete(db.upload_chunks).where(db.upload_chunks.c.upload_id.in_(ids)))
    conn.execute(delete(db.uploads).where(db.uploads.c.id.in_(ids)))


def sweep_node_copies(engine: Engine, files: Path, dry_run: bool = False) -> int:
    """This node's copies of upload bytes (`<files>/blob-cache`, PostgreSQL) whose upload row is
    gone: every node runs it, since the purge itself runs on one node at a time and the others'
    copies would otherwise outlive the policy. The number of copies removed."""
    folder = files / CACHE_FOLDER
    if not folder.is_dir():
        return 0
    copies = [path for path in folder.glob("*/*") if path.is_file() and not path.name.endswith(".tmp")]
    removed = 0
    for start in range(0, len(copies), BATCH):
        batch = copies[start : start + BATCH]
        with engine.connect() as conn:
            known = set(
                conn.execute(
                    select(db.uploads.c.sha256).where(db.uploads.c.sha256.in_([p.name for p in batch]))
                ).scalars()
            )
        for path in batch:
            if path.name not in known:
                removed += 1
                if not dry_run:
                    path.unlink(missing_ok=True)
    return removed


def _remove_files(engine: Engine, files: Path, uploads: Sequence[Any], report: PurgeReport) -> None:
    """The uploads' bytes (a file, or on PostgreSQL chunk rows already deleted with the upload
    row, and this node's copy), and the renditions made from them unless another upload has the
    same bytes. `files`/`file_bytes` count the uploads whose bytes were stored."""
    chunked = engine.dialect.name == "postgresql"
    for upload in uploads:
        path, sha256 = Path(upload.path), upload.sha256
        stored = path.is_file()
        if stored or (chunked and upload.offset):
            report.files += 1
            report.file_bytes += int(upload.offset or 0) if not stored else path.stat().st_size
        if not report.dry_run:
            path.unlink(missing_ok=True)
            (files / CACHE_FOLDER / sha256[:2] / sha256).unlink(missing_ok=True)
        with engine.connect() as conn:
            still = conn.execute(
                select(func.count()).select_from(db.uploads).where(db.uploads.c.sha256 == sha256)
            ).scalar_one()
        if still and not report.dry_run:
            continue
        for cached in (files / "renditions" / sha256[:2]).glob(f"{sha256}*"):
            report.renditions += 1
            if not report.dry_run:
                cached.unlink(missing_ok=True)


def _purge_renditions(folder: Path, before: float, report: PurgeReport) -> None:
    """Renditions made before `before` (epoch seconds): made again when a page asks."""
    if not folder.is_dir():
        return
    for path in folder.glob("*/*"):
        try:
            if path.is_file() and path.stat().st_mtime < before:
                report.renditions += 1
                if not report.dry_run:
                    path.unlink(missing_ok=True)
        except OSError:
            continue


def run_periodically(engine: Engine, files: Path, policy: Policy, interval_s: float, stop: Any) -> None:
    """The hub server's purge loop (a daemon thread of `edge hub serve`): one purge now and one
    every `interval_s` until `stop` (a threading.Event) is set; a failure is logged, not fatal."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            report = purge(engine, files, policy)
            sweep_node_copies(engine, files)
            if report.records or report.uploads or report.renditions:
                log.info("purge: %s", report.summary())
        except Exception:  # the next round tries again; the server keeps serving
            log.exception("purge failed")
        stop.wait(max(1.0, interval_s - (time.monotonic() - started)))
