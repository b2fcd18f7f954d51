"""Retention on the hub (issue 21 part 4): uploaded files, cached renditions and results are
purged by policy, a dry run only counts, the CLI runs it, and two purgers at once remove each
thing once (SQLite: one writer at a time; PostgreSQL: an advisory lock)."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from edge.cli import cli
from edge.hub import db, retention
from edge.hub.identities import Device
from tests.hubfixtures import postgres_url, reset, upload_bytes_kept  # noqa: F401 - postgres_url is a fixture
from tools.hub_disk import enrol_device, fill

PAYLOAD = {
    "result": {"finding": "normal", "probability": 0.12, "threshold": 0.5, "model": "cxr-pneumonia"},
    "study": {"modality": "CR"},
    "image": {},
}
UPLOADS = {"thumbnail": (b"\xff\xd8thumbnail" * 50, "image/jpeg"), "heatmap": (b"heat" * 300, "image/png")}
NOW = datetime.now(timezone.utc)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    url = (
        f"sqlite:///{tmp_path / 'hub.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    made = db.make_engine(url)
    reset(made)
    return made


def count(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def upload_paths(engine: Engine) -> list[Path]:
    with engine.connect() as conn:
        return [Path(p) for p in conn.execute(select(db.uploads.c.path)).scalars()]


def cached_rendition(files: Path, engine: Engine) -> Path:
    """A rendition in the cache's layout (`render.Renditions`: <sha[:2]>/<sha>-<what>)."""
    with engine.connect() as conn:
        sha = conn.execute(select(db.uploads.c.sha256).limit(1)).scalar_one()
    path = files / "renditions" / sha[:2] / f"{sha}-w1024.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"jpeg")
    return path


def stocked(engine: Engine, files: Path, results: int) -> Device:
    device = enrol_device(engine)
    fill(engine, files, device, PAYLOAD, UPLOADS, results)
    return device


def test_files_then_results_go_by_policy(engine: Engine, tmp_path: Path) -> None:
    files = tmp_path / "files"
    stocked(engine, files, 3)
    rendition = cached_rendition(files, engine)
    paths = upload_paths(engine)
    assert len(paths) == 6
    assert all(upload_bytes_kept(engine))
    policy = retention.Policy(images_days=30, records_days=365, renditions_days=0)

    early = retention.purge(engine, files, policy, now=NOW + timedelta(days=29))
    assert (early.records, early.uploads, early.files) == (0, 0, 0)

    images = retention.purge(engine, files, policy, now=NOW + timedelta(days=31))
    assert (images.records, images.uploads, images.files, images.renditions) == (0, 6, 6, 1)
    assert images.file_bytes == 3 * sum(len(data) for data, _ in UPLOADS.values())
    assert not any(p.exists() for p in paths)
    assert count(engine, db.upload_chunks) == 0
    assert not rendition.exists()
    assert count(engine, db.records) == 3
    assert count(engine, db.worklist) == 3

    records = retention.purge(engine, files, policy, now=NOW + timedelta(days=366))
    assert records.records == 3
    assert count(engine, db.records) == 0
    assert count(engine, db.worklist) == 0
    with engine.connect() as conn:
        actions = list(conn.execute(select(db.audit.c.action).order_by(db.audit.c.id)).scalars())
    assert actions.count("hub.purged") == 2
    assert actions.count("results.purged") == 1


def test_forever_is_the_default_for_files_and_results(engine: Engine, tmp_path: Path) -> None:
    files = tmp_path / "files"
    stocked(engine, files, 2)
    report = retention.purge(engine, files, retention.Policy(), now=NOW + timedelta(days=3650))
    assert (report.records, report.uploads) == (0, 0)
    assert count(engine, db.uploads) == 4


def test_a_dry_run_counts_what_the_real_run_removes(engine: Engine, tmp_path: Path) -> None:
    files = tmp_path / "files"
    stocked(engine, files, 4)
    policy = retention.Policy(records_days=10, renditions_days=0)
    later = NOW + timedelta(days=11)
    dry = retention.purge(engine, files, policy, now=later, dry_run=True)
    assert (dry.records, dry.uploads, dry.files) == (4, 8, 8)
    assert count(engine, db.records) == 4
    assert all(upload_bytes_kept(engine))
    with engine.connect() as conn:  # nothing done, nothing audited
        actions = set(conn.execute(select(db.audit.c.action)).scalars())
    assert not actions & {"hub.purged", "results.purged"}
    real = retention.purge(engine, files, policy, now=later)
    assert real.summary() == {**dry.summary(), "dry_run": False}
    assert count(engine, db.records) == 0
    assert count(engine, db.uploads) == 0


def test_two_purgers_at_once_remove_each_result_once(engine: Engine, tmp_path: Path) -> None:
    files = tmp_path / "files"
    stocked(engine, files, 450)  # more than two batches
    policy = retention.Policy(records_days=1, renditions_days=0)
    reports: list[retention.PurgeReport] = []
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def purger() -> None:
        try:
            start.wait()
            reports.append(retention.purge(engine, files, policy, now=NOW + timedelta(days=2)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=purger) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert failures == []
    purged = [uuid for report in reports for uuid in report.uuids]
    assert len(purged) == len(set(purged)) == 450
    assert sum(report.files for report in reports) == 900
    assert count(engine, db.records) == 0
    assert count(engine, db.uploads) == 0
    if engine.dialect.name == "postgresql":  # one held the advisory lock, or they ran one after the other
        assert all(r.skipped or r.records for r in reports)


def test_the_cli_purges_with_a_dry_run_first(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = db.make_engine(f"sqlite:///{data / 'hub' / 'hub.db'}")
    stocked(engine, data / "hub" / "files", 2)
    engine.dispose()
    runner = CliRunner()
    env = {"EDGE_HUB__KEEP_RECORDS_DAYS": "0.000001"}
    import time

    time.sleep(0.2)  # older than the 0.09 s policy
    dry = runner.invoke(
        cli, ["--data-dir", str(data), "hub", "purge", "--dry-run"], env=env, catch_exceptions=False
    )
    assert dry.exit_code == 0, dry.output
    assert "would remove 2 result(s)" in dry.output
    assert "4 file(s)" in dry.output
    done = runner.invoke(cli, ["--data-dir", str(data), "hub", "purge"], env=env, catch_exceptions=False)
    assert done.exit_code == 0
    assert "removed 2 result(s)" in done.output
    again = runner.invoke(cli, ["--data-dir", str(data), "hub", "purge"], env=env, catch_exceptions=False)
    assert "removed 0 result(s)" in again.output


def test_the_servers_loop_purges_at_once_then_waits(engine: Engine, tmp_path: Path) -> None:
    import time

    files = tmp_path / "files"
    stocked(engine, files, 2)
    time.sleep(0.05)
    stop = threading.Event()
    policy = retention.Policy(records_days=1e-7, renditions_days=0)  # older than about 9 ms
    loop = threading.Thread(target=retention.run_periodically, args=(engine, files, policy, 3600, stop))
    loop.start()
    deadline = time.monotonic() + 30
    while count(engine, db.records) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    loop.join(timeout=30)
    assert not loop.is_alive()
    assert count(engine, db.records) == 0


def test_purged_uploads_take_their_chunk_rows_and_every_nodes_copies(engine: Engine, tmp_path: Path) -> None:
    """On PostgreSQL the bytes are chunk rows and each node keeps copies (edge/hub/blobs.py):
    a purge removes the rows with their upload, and each node sweeps copies no upload names."""
    from sqlalchemy import insert

    from edge.hub.blobs import CACHE_FOLDER

    files, other_node = tmp_path / "files", tmp_path / "node-2"
    stocked(engine, files, 1)
    with engine.begin() as conn:
        rows = conn.execute(select(db.uploads.c.id, db.uploads.c.sha256)).all()
        for row in rows if engine.dialect.name != "postgresql" else []:  # PostgreSQL has its own
            conn.execute(insert(db.upload_chunks).values(upload_id=row.id, offset=0, data=b"bytes"))
    copies = []
    for node in (files, other_node):
        for row in rows:
            copy = node / CACHE_FOLDER / row.sha256[:2] / row.sha256
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(b"bytes")
            copies.append(copy)
    assert retention.sweep_node_copies(engine, other_node) == 0  # still named by their uploads

    policy = retention.Policy(images_days=30, records_days=0, renditions_days=0)
    report = retention.purge(engine, files, policy, now=NOW + timedelta(days=31))
    assert report.uploads == 2
    assert count(engine, db.upload_chunks) == 0
    assert not any(copy.exists() for copy in copies[:2])  # the purging node's own copies
    assert all(copy.exists() for copy in copies[2:])
    assert retention.sweep_node_copies(engine, other_node, dry_run=True) == 2
    assert retention.sweep_node_copies(engine, other_node) == 2
    assert not any(copy.exists() for copy in copies)
