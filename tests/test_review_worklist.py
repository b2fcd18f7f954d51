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
    keys = [(not row.urgent, not row.positive, -(row.probability or 0.0), -row.record_id) for row in rows]
    assert keys == sorted(keys)  # flagged urgent, then positive, then by probability, then newest
    assert rows[0].result_uuid == world.north.results[0]  # the one the clinic flagged
    assert any(row.verdict for row in rows)  # a reviewed row keeps its place among the others
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


def test_a_verdict_marks_its_row_and_moves_nothing(world: World) -> None:
    """The trial's wrong-patient verdict: the list re-sorted after each verdict, so the reader's
    next `j` opened a different study than the row below. Now the order is the same before and
    after a verdict, and "after the verdict" is the next unreviewed row below."""
    engine = world.hub.engine
    client = reader(world, "both-reader")
    user = accounts.find_user(engine, "both-reader")
    assert user is not None
    before = worklist.worklist_page(engine, user, worklist.Filters())
    order = [row.result_uuid for row in before.rows]
    unreviewed = [row.result_uuid for row in before.rows if row.verdict is None]
    target = unreviewed[0]
    below = unreviewed[1]
    context = before.filters.query()
    assert f"upto={before.filters.upto}" in context  # the list is pinned when it loads
    sent = client.post(
        f"/review/studies/{target}/review?{context}",
        data={"csrf": csrf(client), "verdict": "uncertain"},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert sent.headers["location"].split("?")[0].endswith(f"/studies/{below}")
    assert f"upto={before.filters.upto}" in sent.headers["location"]
    after = worklist.worklist_page(engine, user, worklist.Filters.parse({"upto": str(before.filters.upto)}))
    assert [row.result_uuid for row in after.rows] == order  # nothing moved
    marked = next(row for row in after.rows if row.result_uuid == target)
    assert (marked.verdict, marked.superseded) == ("uncertain", 0)
    page = client.get(f"/review/?{context}").text
    assert page.index(target) < page.index(below)
    # A second reader's verdict supersedes the first; only the latest counts.
    second = reader(world, "admin")
    second.post(
        f"/review/studies/{target}/review",
        data={"csrf": csrf(second), "verdict": "agree"},
        follow_redirects=False,
    )
    latest = next(
        row
        for row in worklist.worklist_page(engine, user, worklist.Filters()).rows
        if row.result_uuid == target
    )
    assert (latest.verdict, latest.superseded) == ("agree", 1)
    assert "1 earlier superseded" in client.get("/review/").text
    study = client.get(f"/review/studies/{target}").text
    assert study.count('class="superseded"') == 1
    assert study.index('class="current"') < study.index('class="superseded"')


def test_the_worklist_shows_what_a_reader_triages_by(world: World) -> None:
    client = reader(world, "north-reader")
    page = client.get("/review/").text
    assert "age ?" not in page
    assert "sex ?" not in page
    assert "age and sex not recorded" in page  # PNG inputs: said, not "-"
    assert "X-ray · chest" in page  # PNG inputs: what the model reads, said to be that
    assert "(from the model)" in page
    assert 'loading="lazy"' in page  # the synced thumbnails
    assert re.search(r"<code[^>]*>S-[0-9a-f]{8}</code>", page)  # the short study key
    assert "time of the analysis" in page  # the device's time, not the hub's receive time
    first = world.north.results[0]
    thumbnail = client.get(f"/review/studies/{first}/thumbnail")
    assert thumbnail.headers["content-type"] == "image/jpeg"
    assert len(thumbnail.content) < 4000
    assert reader(world, "south-reader").get(f"/review/studies/{first}/thumbnail").status_code == 404


def test_results_arriving_while_reading_wait_for_a_reload(world: World) -> None:
    engine = world.hub.engine
    user = accounts.find_user(engine, "admin")
    assert user is not None
    pinned = worklist.worklist_page(engine, user, worklist.Filters())
    earlier = worklist.Filters.parse({"upto": str(pinned.filters.upto - 1)})
    older = worklist.worklist_page(engine, user, earlier)
    assert older.total == pinned.total - 1
    assert older.newer == 1  # said on the page, with a link that reloads the list
    assert pinned.filters.upto not in [row.record_id for row in older.rows]
    assert worklist.Filters.parse({"upto": "9" * 40}).upto == 2**62  # never an SQL overflow
    assert worklist.Filters.parse({"upto": "x"}).upto == 0


@pytest.mark.security  # a new picture route: the same locks as the study's image and layer
def test_thumbnails_need_a_session_and_the_programme(world: World) -> None:
    from tests.hubfixtures import browser

    north = world.north.results[0]
    anonymous = browser(world).get(f"/review/studies/{north}/thumbnail", follow_redirects=False)
    assert anonymous.status_code == 401
    assert reader(world, "south-reader").get(f"/review/studies/{north}/thumbnail").status_code == 404
    allowed = reader(world, "north-reader").get(f"/review/studies/{north}/thumbnail")
    assert allowed.status_code == 200
    assert allowed.headers["cache-control"] == "no-store"
