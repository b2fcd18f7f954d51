"""Reading with the review pages, on SQLite and on PostgreSQL: the worklist's order, filters,
paging and next/previous; a verdict posted on the page reaches the device that sent the result.
The data came from real devices through the sync client (tests/hubfixtures.py: `world`)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from edge.hub import accounts, db, worklist
from edge.hub.worklist_index import backfill
from edge.store import Store
from edge.sync.client import SyncClient
from tests.hubfixtures import (  # noqa: F401 - postgres_url and world are fixtures
    World,
    csrf,
    postgres_url,
    reader,
    world_fixture,
)


def test_the_verdict_goes_back_to_the_device(world: World) -> None:
    client = reader(world, "north-reader")
    target = world.north.results[1]
    page = client.get(f"/review/studies/{target}?state=unreviewed").text
    model_finding = re.search(r'id="model-finding">([^<]+)<', page).group(1)  # type: ignore[union-attr]
    token = csrf(client, f"/review/studies/{target}")
    form = {"csrf": token, "verdict": "disagree", "note": "costophrenic angle is clear"}
    sent = client.post(f"/review/studies/{target}/review?state=unreviewed", data=form, follow_redirects=False)
    assert sent.status_code == 303
    assert f"saved={target}" in sent.headers["location"]
    assert target not in sent.headers["location"].split("?")[0]  # on to the next unreviewed one
    again = client.post(
        f"/review/studies/{target}/review?state=unreviewed",
        data={**form, "csrf": csrf(client)},
        follow_redirects=False,
    )
    assert again.status_code == 303  # a double press is one verdict
    with world.hub.engine.connect() as conn:
        rows = conn.execute(select(db.reviews).where(db.reviews.c.result_uuid == target)).all()
    assert len(rows) == 1
    expected = {"normal": "pneumonia", "pneumonia": "normal"}[model_finding]  # the other label
    assert (rows[0].verdict, rows[0].finding, rows[0].reviewer, rows[0].reviewer_role) == (
        "disagree",
        expected,
        "north-reader",
        "specialist",
    )
    with Store(world.north.settings.data_dir) as store:
        SyncClient(world.north.settings, store, world.hub.client, world.north.credential).pull_reviews()
        held = store.db.execute("SELECT * FROM reviews WHERE result_id = ?", [target]).fetchone()
    assert (held["verdict"], held["finding"], held["note"]) == (
        "disagree",
        expected,
        "costophrenic angle is clear",
    )
    invalid = client.post(
        f"/review/studies/{target}/review", data={"csrf": csrf(client), "verdict": "perhaps"}
    )
    assert invalid.status_code == 400
    assert "Choose a verdict" in invalid.text


def test_worklist_order_filters_and_paging(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    admin = accounts.find_user(world.hub.engine, "admin")
    assert admin is not None
    engine = world.hub.engine
    everything = worklist.worklist_page(engine, admin, worklist.Filters())
    rows = everything.rows
    assert everything.total == len(world.north.results) + len(world.south.results)
    keys = [(row.verdict is not None, not row.urgent) for row in rows]
    assert keys == sorted(keys)  # unreviewed before reviewed, urgent first within each
    assert rows[0].urgent
    assert rows[0].result_uuid == world.north.results[0]
    unreviewed = [row.record_id for row in rows if row.verdict is None and not row.urgent]
    assert unreviewed == sorted(unreviewed)  # oldest waiting first
    # next/previous walk exactly this order
    uuids = [row.result_uuid for row in rows]
    for index, row in enumerate(rows):
        previous, following = worklist.neighbours(engine, admin, worklist.Filters(), row.record_id)
        assert previous == (uuids[index - 1] if index else None)
        assert following == (uuids[index + 1] if index + 1 < len(uuids) else None)

    def listed(**query: str) -> list[str]:
        return [
            row.result_uuid
            for row in worklist.worklist_page(engine, admin, worklist.Filters.parse(query)).rows
        ]

    assert set(listed(site="south-clinic")) == set(world.south.results)
    assert set(listed(device=world.north.credential.device_id)) == set(world.north.results)
    assert listed(urgent="1") == [world.north.results[0]]
    assert set(listed(modality=worklist.UNKNOWN)) == set(uuids)  # PNG inputs carry no modality
    assert listed(modality="CT") == []
    findings = {row.finding for row in rows}
    for finding in findings:
        assert set(listed(finding=finding)) == {row.result_uuid for row in rows if row.finding == finding}
    reviewed = {row.result_uuid for row in rows if row.verdict}
    assert set(listed(state="reviewed")) == reviewed
    assert set(listed(state="unreviewed")) == set(uuids) - reviewed
    today = rows[0].received_at[:10]
    assert set(listed(since=today, until=today)) == set(uuids)
    assert listed(until="2000-01-01") == []
    assert listed(since="2999-01-01") == []
    assert (
        worklist.Filters.parse({"since": "not-a-date", "page": "-3", "state": "weird"}) == worklist.Filters()
    )
    monkeypatch.setattr(worklist, "PAGE_SIZE", 2)
    pages = [worklist.worklist_page(engine, admin, worklist.Filters(page=n)) for n in (1, 2, 3, 4)]
    assert [row.result_uuid for page in pages[:3] for row in page.rows] == uuids
    assert pages[0].pages == 3
    assert pages[3].page == 3
    client = reader(world, "admin")
    assert client.get("/review/?page=2&state=all").status_code == 200


def test_records_stored_before_the_worklist_existed_are_indexed_at_start(world: World) -> None:
    from sqlalchemy import func

    engine = world.hub.engine
    with engine.begin() as conn:
        before = conn.execute(select(db.worklist).order_by(db.worklist.c.record_id)).all()
        conn.execute(db.worklist.delete())
    assert backfill(engine, batch=2) == len(before) == len(world.north.results + world.south.results)
    assert backfill(engine) == 0
    with engine.connect() as conn:
        after = conn.execute(select(db.worklist).order_by(db.worklist.c.record_id)).all()
        assert conn.execute(select(func.count()).select_from(db.records)).scalar_one() == len(after)
    assert after == before
