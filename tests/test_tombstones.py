"""Deletions reach the hub (issue 20): a study or one result deleted on the device is queued as
a tombstone in the deletion's own transaction, sent exactly once, hidden by the hub at once
(worklist, study page, FHIR, verdicts) with an audit row, and purged after the grace period;
a tombstone that arrives before its result still wins. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from edge.config import Settings, load_settings
from edge.device import Device
from edge.hub import accounts, db, fhir_tokens, retention, reviews, routes_review
from edge.hub.errors import HubError
from edge.hub.review_http import Refused
from edge.store import Store
from edge.sync import protocol
from edge.sync.runner import exchange, sync_status
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import (  # noqa: F401 - postgres_url is a fixture
    REVIEW_PASSWORD,
    Hub,
    login,
    postgres_url,
    reset,
    upload_bytes_kept,
)

HTML = {"accept": "text/html"}


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    url = (
        f"sqlite:///{tmp_path / 'hub.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    running = Hub(load_settings(data_dir=tmp_path / "hub-host"), url)
    reset(running.engine)
    yield running
    running.client.close()


@pytest.fixture
def device(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"})


def samples(count: int) -> list[Path]:
    return sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:count]


def analyse(settings: Settings, paths: list[Path]) -> list[tuple[str, str]]:
    """(study id, result id) per analysed file, by the real pipeline."""
    with Device(settings) as device:
        out = []
        for path in paths:
            for analysis in device.analyse_file(path):
                assert analysis.ok
                assert analysis.result is not None
                assert analysis.study_id is not None
                out.append((analysis.study_id, str(analysis.result.id)))
        return out


def count(hub: Hub, table: object, *where: object) -> int:
    with hub.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]


def hidden(hub: Hub, result_uuid: str) -> bool:
    with hub.engine.connect() as conn:
        row = conn.execute(select(db.records.c.deleted_at).where(db.records.c.uuid == result_uuid)).one()
    return row.deleted_at is not None


def test_a_study_deleted_on_the_device_is_hidden_on_the_hub_and_purged_after_the_grace(
    hub: Hub, device: Settings
) -> None:
    (study, gone), (_, kept) = analyse(device, samples(2))
    credential = hub.enroll(device)
    accounts.create_user(hub.engine, "admin", REVIEW_PASSWORD, "administrator", ["*"])
    token = fhir_tokens.create_token(hub.engine, "his", ["*"])[1]
    fhir = TestClient(hub.app, base_url="http://testserver", headers={"Authorization": f"Bearer {token}"})
    page = TestClient(hub.app, base_url="http://testserver")
    assert login(page, "admin") == 303
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, credential)
        assert exchange(client)["results"] == 2
        reviews.add_review(hub.engine, gone, "disagree", finding="normal", note="free text", reviewer="dr-a")
        assert page.get(f"/review/studies/{gone}", headers=HTML).status_code == 200
        assert fhir.get(f"/fhir/DiagnosticReport/{gone}").status_code == 200

        removed = store.technician.delete_study(study, "tui:ana")
        assert removed["tombstones"] == 1
        assert store.outbox.pending_counts() == {"tombstone": 1}
        assert sync_status(device, store)["state"] == "syncing"  # a deletion still to go
        counts = exchange(client)
        assert counts["deletions"] == 1
        assert store.outbox.pending_counts() == {}
        assert sync_status(device, store)["state"] == "up to date"

        # Hidden at once: no worklist row, the page says so (410), FHIR no longer has it.
        assert hidden(hub, gone)
        assert not hidden(hub, kept)
        assert count(hub, db.worklist, db.worklist.c.result_uuid == gone) == 0
        answer = page.get(f"/review/studies/{gone}", headers=HTML)
        assert answer.status_code == 410
        assert "deleted on the device" in answer.text
        assert page.get(f"/review/studies/{kept}", headers=HTML).status_code == 200
        assert fhir.get(f"/fhir/DiagnosticReport/{gone}").status_code == 404
        listed = fhir.get("/fhir/DiagnosticReport?_count=100").text
        assert gone not in listed
        assert kept in listed
        with pytest.raises(HubError) as refused:
            reviews.add_review(hub.engine, gone, "agree", reviewer="dr-b")
        assert refused.value.status == 410
        # The verdict already written is kept in the audit (not its free-text note).
        with hub.engine.connect() as conn:
            audit = conn.execute(
                select(db.audit.c.detail).where(db.audit.c.action == "result.deleted_on_device")
            ).scalar_one()
        assert audit["result"] == gone
        assert audit["result_on_hub"] is True
        assert [(r["verdict"], r["finding"], r["reviewer"]) for r in audit["reviews"]] == [
            ("disagree", "normal", "dr-a")
        ]
        assert "free text" not in str(audit)

        # Exactly once: a lost acknowledgement sends it again; the hub answers "duplicate".
        store.db.execute("UPDATE outbox SET acked_at = NULL WHERE kind = 'tombstone'")
        store.db.conn.commit()
        assert exchange(client)["deletions"] == 1
    assert count(hub, db.tombstones) == 1
    assert count(hub, db.audit, db.audit.c.action == "result.deleted_on_device") == 1

    # Purged after the grace period (7 days by default), not before.
    files = hub.settings.hub_dir / "files"
    uploads = count(hub, db.uploads, db.uploads.c.result_uuid == gone)
    assert uploads == 2  # its thumbnail and heatmap
    with hub.engine.connect() as conn:
        paths = [
            Path(p)
            for p in conn.execute(select(db.uploads.c.path).where(db.uploads.c.result_uuid == gone)).scalars()
        ]
        ids = list(conn.execute(select(db.uploads.c.id).where(db.uploads.c.result_uuid == gone)).scalars())
    assert all(upload_bytes_kept(hub.engine, db.uploads.c.result_uuid == gone))
    policy = retention.Policy.from_settings(hub.settings.hub)
    now = datetime.now(timezone.utc)
    assert retention.purge(hub.engine, files, policy, now=now + timedelta(days=6)).records == 0
    report = retention.purge(hub.engine, files, policy, now=now + timedelta(days=8))
    assert (report.records, report.deleted_on_device, report.uploads, report.files) == (1, 1, 2, 2)
    assert not any(path.exists() for path in paths)
    assert count(hub, db.upload_chunks, db.upload_chunks.c.upload_id.in_(ids)) == 0
    assert count(hub, db.records, db.records.c.uuid == gone) == 0
    assert count(hub, db.reviews, db.reviews.c.result_uuid == gone) == 0
    assert count(hub, db.records, db.records.c.uuid == kept) == 1
    # thumbnail, heatmap and the diagnostic rendition the hub asked for when its page was opened
    assert count(hub, db.uploads, db.uploads.c.result_uuid == kept) == 3
    assert count(hub, db.tombstones) == 1  # kept: a late copy of the result is still hidden
    assert count(hub, db.audit, db.audit.c.action == "results.purged") == 1
    assert page.get(f"/review/studies/{gone}", headers=HTML).status_code == 404


def test_one_result_deleted_alone_is_hidden_and_its_study_keeps_the_other(hub: Hub, device: Settings) -> None:
    ((_, first),) = analyse(device, samples(1))
    with Device(device) as edge:
        image_id = edge.store.result(first).image_id  # type: ignore[union-attr]
        edge.rerun(image_id, "us-lung", agent_running=False)  # the wrong model: a result to remove
        second_job = edge.store.db.execute(
            "SELECT j.id, r.id FROM jobs j JOIN results r ON r.job_id = j.id WHERE r.id != ?", [first]
        ).fetchone()
    credential = hub.enroll(device)
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, credential)
        assert exchange(client)["results"] == 2
        assert store.technician.delete_result(second_job[0], "tui:ana")["tombstones"] == 1
        assert exchange(client)["deletions"] == 1
    assert hidden(hub, second_job[1])
    assert not hidden(hub, first)
    assert count(hub, db.worklist) == 1


def test_a_tombstone_before_its_result_still_wins(hub: Hub, device: Settings) -> None:
    ((_, result),) = analyse(device, samples(1))
    credential = hub.enroll(device)
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, credential)
        early = protocol.TombstoneBatch(
            batch_id=str(uuid.uuid4()),
            tombstones=[
                protocol.Tombstone(result_uuid=result, seq=99, deleted_at="2026-01-01T00:00:00.000Z")
            ],
        )
        assert client.send_tombstones(early).applied == [result]
        assert count(hub, db.records) == 0  # the result is not on the hub yet: the tombstone waits
        assert client.push_results() == 1  # then the result arrives (out of order)
    assert hidden(hub, result)
    assert count(hub, db.worklist) == 0
    with hub.engine.connect() as conn:
        details = list(
            conn.execute(
                select(db.audit.c.detail).where(db.audit.c.action == "result.deleted_on_device")
            ).scalars()
        )
    assert [d.get("result_on_hub") for d in details] == [False, None]
    assert details[1]["arrived_after_tombstone"] is True
    # A verdict sent from a page opened before the deletion: the page's 410, not a 500.
    with pytest.raises(Refused) as gone:
        routes_review._add_review(hub.engine, result, "agree", reviewer="dr-b")
    assert gone.value.status == 410


_DELETE_THEN_DIE = """
import os, sys
from pathlib import Path
from edge.store import Store
with Store(Path(sys.argv[1])) as store:
    store.technician.delete_study(sys.argv[2], "tui:ana")
    os.kill(os.getpid(), 9)  # no clean exit, no sync: what the deletion committed must be enough
"""


def test_a_kill_between_the_deletion_and_the_sync_loses_nothing(hub: Hub, device: Settings) -> None:
    ((study, result),) = analyse(device, samples(1))
    credential = hub.enroll(device)
    with Store(device.data_dir) as store:
        assert exchange(hub.sync_client(device, store, credential))["results"] == 1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run(
        [sys.executable, "-c", _DELETE_THEN_DIE, str(device.data_dir), study],
        check=False,
        env=env,
        timeout=120,
    )
    assert killed.returncode == -9
    with Store(device.data_dir) as store:
        assert store.result(result) is None
        assert store.outbox.pending_counts() == {"tombstone": 1}
        assert exchange(hub.sync_client(device, store, credential))["deletions"] == 1
    assert hidden(hub, result)


def test_a_result_never_queued_for_the_hub_leaves_no_tombstone(device: Settings) -> None:
    ((study, result),) = analyse(device, samples(1))
    with Store(device.data_dir) as store:
        store.db.execute("DELETE FROM outbox WHERE ref_id = ?", [result])  # e.g. made before sync existed
        store.db.conn.commit()
        assert store.technician.delete_study(study, "tui:ana")["tombstones"] == 0
        assert store.outbox.pending_counts() == {}
