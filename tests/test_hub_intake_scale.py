"""The device API's work per request does not grow with a device's history, on SQLite and
PostgreSQL: a new upload reads its device's running totals (kept by triggers through starts,
retention's purge and any other deletion), not every upload it ever made; a device's review pull
is read along (device, seq); the admin page asks for the unused enrolment codes only. And a late
copy of a chunk never takes a finished upload back.

An outside check at 100,000 uploads and reviews of one device measured the quota's sum at 26 ms
per upload start and the pull walking every other device's reviews (docs/install.md, "The device
API at scale").
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, text, update

from edge.hub import blobs, db, devices, intake, quota_triggers, retention, reviews
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.sync import protocol
from edge.sync.protocol import WireCode
from tests.hubfixtures import database_url, postgres_url, reset  # noqa: F401 - postgres_url is a fixture
from tests.test_hub_indexes import _index_names

DEVICE = Device("d1", "clinic-1", "s1", "default")
OTHER = Device("d2", "clinic-2", "s1", "default")
QUOTAS = intake.UploadQuotas(result_bytes=10**6, result_files=5, device_bytes=100, device_files=3)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request, tmp_path)


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    made = db.make_engine(url)
    reset(made)
    yield made
    made.dispose()


def _results(engine: Engine, device: Device, count: int) -> list[str]:
    """`count` stored results of `device` (a file travels after its result)."""
    uuids = [str(uuid.uuid4()) for _ in range(count)]
    with engine.begin() as conn:
        if not conn.execute(select(db.devices.c.id).where(db.devices.c.id == device.id)).first():
            conn.execute(
                insert(db.devices).values(
                    id=device.id, name=device.name, site=device.site, credential_hash="", created_at=db.now()
                )
            )
        for seq, result in enumerate(uuids):
            conn.execute(
                insert(db.records).values(
                    device_id=device.id,
                    uuid=result,
                    seq=seq,
                    kind="result",
                    sha256="0" * 64,
                    payload={},
                    received_at=db.now(),
                )
            )
    return uuids


def _start(
    engine: Engine,
    files: Path,
    device: Device,
    result: str,
    data: bytes,
    quotas: intake.UploadQuotas = QUOTAS,
) -> protocol.UploadState:
    start = protocol.UploadStart(
        record_uuid=result,
        kind="thumbnail",
        result_uuid=result,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        media_type="image/jpeg",
    )
    return intake.start_upload(engine, files, device, start, quotas)


def _totals(engine: Engine, device: Device) -> tuple[int, int]:
    """The device's running totals, checked against a count of its uploads."""
    u, t = db.uploads.c, db.upload_totals.c
    with engine.connect() as conn:
        kept = conn.execute(select(t.files, t.bytes).where(t.device_id == device.id)).first()
        counted = conn.execute(
            select(func.count(), func.coalesce(func.sum(u.size), 0)).where(u.device_id == device.id)
        ).one()
    assert tuple(kept or (0, 0)) == tuple(counted)
    return int(counted[0]), int(counted[1])


def _refused(engine: Engine, files: Path, result: str, size: int) -> None:
    with pytest.raises(HubError) as refused:
        _start(engine, files, DEVICE, result, b"x" * size)
    assert refused.value.code is WireCode.QUOTA_EXCEEDED


def test_the_device_quota_holds_through_starts_purges_and_deletions(engine: Engine, tmp_path: Path) -> None:
    files = tmp_path / "files"
    mine = _results(engine, DEVICE, 5)
    theirs = _results(engine, OTHER, 3)
    for result in theirs:  # another device's uploads are not this one's
        _start(engine, files, OTHER, result, b"o" * 30)
    _start(engine, files, DEVICE, mine[0], b"a" * 40)
    _start(engine, files, DEVICE, mine[0], b"a" * 40)  # the same file again: a resume, counted once
    _start(engine, files, DEVICE, mine[1], b"b" * 40)
    _refused(engine, files, mine[2], 40)  # 120 bytes > 100
    _start(engine, files, DEVICE, mine[2], b"c" * 10)
    assert _totals(engine, DEVICE) == (3, 90)
    assert _totals(engine, OTHER) == (3, 90)
    _refused(engine, files, mine[3], 1)  # a fourth file > 3
    # retention purges the oldest file: its room is the device's again
    with engine.begin() as conn:
        conn.execute(
            update(db.uploads)
            .where(db.uploads.c.result_uuid == mine[0])
            .values(created_at="2020-01-01T00:00:00Z")
        )
    report = retention.purge(engine, files, retention.Policy(images_days=1))
    assert report.uploads == 1
    assert _totals(engine, DEVICE) == (2, 50)
    _start(engine, files, DEVICE, mine[3], b"d" * 40)
    _refused(engine, files, mine[4], 1)  # a fourth file again
    # any other deletion counts too (an administrator's SQL, a result purged with its files)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM uploads WHERE result_uuid IN (:a, :b)"), {"a": mine[1], "b": mine[3]})
    assert _totals(engine, DEVICE) == (1, 10)
    _start(engine, files, DEVICE, mine[4], b"e" * 90)
    assert _totals(engine, DEVICE) == (2, 100)
    assert _totals(engine, OTHER) == (3, 90)


def test_an_older_hub_has_its_uploads_counted_once_when_it_starts(url: str, tmp_path: Path) -> None:
    engine = db.make_engine(url)
    reset(engine)
    mine, theirs = _results(engine, DEVICE, 3), _results(engine, OTHER, 1)
    trigger_on = " ON uploads" if engine.dialect.name == "postgresql" else ""
    with engine.begin() as conn:  # a hub from before the totals: no triggers, no table
        for name in quota_triggers.NAMES:
            conn.execute(text(f"DROP TRIGGER {name}{trigger_on}"))
        conn.execute(text("DROP TABLE upload_totals"))
    assert quota_triggers.installed(engine) == set()
    row = {
        "kind": "thumbnail",
        "sha256": "0" * 64,
        "media_type": "image/jpeg",
        "path": "-",
        "created_at": "-",
    }
    with engine.begin() as conn:  # what it stored
        for device, result, size in ((DEVICE, mine[0], 30), (DEVICE, mine[1], 50), (OTHER, theirs[0], 7)):
            conn.execute(
                insert(db.uploads).values(
                    **row,
                    id=str(uuid.uuid4()),
                    device_id=device.id,
                    record_uuid=result,
                    result_uuid=result,
                    size=size,
                )
            )
    engine.dispose()
    engine = db.make_engine(url)  # the newer hub starts on it: every device's uploads are counted
    try:
        assert quota_triggers.installed(engine) == set(quota_triggers.NAMES)
        assert _totals(engine, DEVICE) == (2, 80)
        assert _totals(engine, OTHER) == (1, 7)
        assert not quota_triggers.install(engine)  # later starts count nothing again
        _refused(engine, tmp_path, mine[2], 21)  # 80 + 21 > 100
        _start(engine, tmp_path, DEVICE, mine[2], b"x" * 20)
        assert _totals(engine, DEVICE) == (3, 100)
    finally:
        engine.dispose()


def _plan(engine: Engine, query: Any) -> str:
    compiled = query.compile(engine, compile_kwargs={"literal_binds": True})
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    with engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.execute(text(explain + str(compiled))))


def _assert_along_device_and_seq(plan: str) -> None:
    """The device's seqs come from an index on (device, seq) alone. On SQLite `seq` is the
    rowid, which ends every index, so the device's own index serves as well."""
    if "SEARCH" in plan:  # SQLite
        assert re.search(
            r"USING COVERING INDEX ix_reviews_device_\w+ \(device_id=\? AND (seq|rowid)>\?\)", plan
        ), plan
    else:
        assert "Index Only Scan using ix_reviews_device_seq" in plan, plan


def _analyze(engine: Engine) -> None:
    """Statistics, and on PostgreSQL the visibility map autovacuum keeps (index-only scans)."""
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE reviews" if engine.dialect.name == "postgresql" else "ANALYZE")
        )


def test_a_device_pulls_its_reviews_along_its_index_and_an_older_hub_gets_it(url: str) -> None:
    engine = db.make_engine(url)
    reset(engine)
    review = {"verdict": "agree", "reviewer_role": "specialist", "reviewed_at": "2026-12-05T06:00:00Z"}
    # the device's many reviews, then others': PostgreSQL expects the device's spread among
    # them and walked the primary key from the cursor past every other device's
    others = [f"other-{n % 50}" for n in range(3000)]
    with engine.begin() as conn:
        conn.execute(
            insert(db.reviews),
            [
                {**review, "id": str(uuid.uuid4()), "device_id": device, "result_uuid": str(uuid.uuid4())}
                for device in [DEVICE.id] * 3000 + others
            ],
        )
        latest = conn.execute(
            select(func.max(db.reviews.c.seq)).where(db.reviews.c.device_id == DEVICE.id)
        ).scalar()
    _analyze(engine)
    query = reviews.pull_query(DEVICE.id, latest - 10, 200)
    try:
        _assert_along_device_and_seq(_plan(engine, query))
        with engine.begin() as conn:  # a hub made before the index
            conn.execute(text("DROP INDEX ix_reviews_device_seq"))
        assert "ix_reviews_device_seq" not in _index_names(engine)
    finally:
        engine.dispose()
    engine = db.make_engine(url)  # it starts again: the index is made
    try:
        _assert_along_device_and_seq(_plan(engine, query))
        assert len(reviews.reviews_since(engine, DEVICE, latest - 10).reviews) == 10
    finally:
        engine.dispose()


def test_the_admin_page_lists_only_codes_that_can_still_enrol(engine: Engine) -> None:
    codes = {state: devices.create_enroll_code(engine) for state in ("unused", "used", "revoked", "expired")}
    devices.revoke_code(engine, codes["revoked"], "admin")
    hashes = {state: hashlib.sha256(code.encode()).hexdigest() for state, code in codes.items()}
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    c = db.enroll_codes.c
    with engine.begin() as conn:
        conn.execute(update(db.enroll_codes).where(c.code_hash == hashes["used"]).values(used_at=db.now()))
        conn.execute(update(db.enroll_codes).where(c.code_hash == hashes["expired"]).values(expires_at=past))
    listed = {code["id"]: code["state"] for code in devices.list_codes(engine)}
    assert sorted(listed.values()) == ["expired", "revoked", "unused", "used"]
    unused = devices.list_codes(engine, unused_only=True)
    assert [(code["id"], code["state"]) for code in unused] == [(hashes["unused"][:12], "unused")]


def test_a_late_copy_of_a_chunk_never_takes_a_finished_upload_back(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The copy of chunk 0 was written, and its answer lost; before its offset moved, the
    original and the last chunk finished the upload. The copy may be answered with the upload's
    state or WRONG_OFFSET; the upload stays complete, with every byte."""
    [result] = _results(engine, DEVICE, 1)
    data = os.urandom(2000)
    state = _start(engine, tmp_path, DEVICE, result, data, intake.UploadQuotas())
    store = blobs.for_engine(engine)
    written = type(store).write
    finished: list[Any] = []

    def finish() -> None:  # the device's own requests: chunk 0, then chunk 1
        for offset in (0, 1000):
            try:
                finished.append(
                    intake.append_chunk(engine, DEVICE, state.upload_id, offset, data[offset : offset + 1000])
                )
            except HubError as refused:  # its copy moved the offset first: WRONG_OFFSET
                finished.append(refused.code)

    others = threading.Thread(target=finish)

    def late_write(self: Any, row: Any, offset: int, chunk: bytes) -> None:
        written(self, row, offset, chunk)
        if not others.is_alive() and not finished:
            others.start()
            others.join(timeout=1.0)  # SQLite: it waits for this request's write lock

    monkeypatch.setattr(type(store), "write", late_write)
    try:
        copy: Any = intake.append_chunk(engine, DEVICE, state.upload_id, 0, data[:1000])
    except HubError as refused:
        copy = refused.code
    others.join()
    assert copy in (
        WireCode.WRONG_OFFSET,
        protocol.UploadState(upload_id=state.upload_id, offset=2000, complete=True),
    ) or (
        copy == protocol.UploadState(upload_id=state.upload_id, offset=1000, complete=False)
        and finished[0] is WireCode.WRONG_OFFSET
    ), (copy, finished)
    row = intake.upload_state(engine, DEVICE, state.upload_id)
    assert (row.offset, row.complete) == (2000, True)
    assert store.digest(row) == hashlib.sha256(data).hexdigest()
    # a copy arriving later still is answered with the finished upload, and moves nothing
    again = intake.append_chunk(engine, DEVICE, state.upload_id, 1000, data[1000:])
    assert (again.offset, again.complete) == (2000, True)
    assert intake.upload_state(engine, DEVICE, state.upload_id).complete
