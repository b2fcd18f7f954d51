"""The sync fault test (tools/synctest.py), bounded for CI: real hub and sync processes, a proxy
that refuses, delays, trickles and cuts connections, and SIGKILLs of both sides mid-drain.
The full run (10,000 results, 20 kills) is `python -m tools.synctest`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hubfixtures import postgres_url  # noqa: F401 - a fixture
from tools.faultproxy import Faults
from tools.synctest import run

FAULTS = Faults(refuse=0.1, delay=0.1, trickle=0.05, cut_after_request=0.15)


def _assert_exactly_once(report: dict, results: int) -> None:
    assert report["hub_records"] == results
    assert report["distinct_uuids"] == results
    assert report["missing"] == 0
    assert report["quarantined"] == 0
    assert report["device_pending"] == 0
    assert report["reviews_back"] == report["reviews_made"] > 0
    assert report["device_integrity"] == "ok"
    assert sum(report["killed"].values()) == report["kills"]


@pytest.mark.slow
def test_every_result_reaches_the_hub_exactly_once_through_faults_and_kills(tmp_path: Path) -> None:
    report = run(120, 4, seed=3, work=tmp_path, database_url=None, faults=FAULTS)
    _assert_exactly_once(report, 120)
    assert sum(report["proxy"]["faults"].get(k, 0) for k in ("refuse", "cut_after_request", "trickle")) > 0


@pytest.mark.slow
def test_the_same_holds_with_the_hub_on_postgresql(tmp_path: Path, postgres_url: str) -> None:  # noqa: F811
    from edge.hub import db
    from tests.hubfixtures import reset

    engine = db.make_engine(postgres_url)
    reset(engine)
    engine.dispose()
    report = run(60, 2, seed=5, work=tmp_path, database_url=postgres_url, faults=FAULTS)
    _assert_exactly_once(report, 60)
    assert report["database"] == "postgresql"
