"""Several hub nodes on one PostgreSQL (issue 21): a fleet through nginx with a node killed
mid-run loses and doubles nothing; an upload started on one node finishes on another and is
readable on a third; SQLite is refused for several nodes. The big run is
`python -m tools.fleet_sim --devices 1000 --results 20 --scale 1,3` (docs/install.md)."""

from __future__ import annotations

import hashlib
import random
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edge.config import load_settings
from edge.errors import Code, EdgeError
from edge.hub import blobs, db
from edge.hub.app import create_app
from edge.hub.errors import HubError
from edge.sync import protocol
from edge.sync.protocol import WireCode
from tests.hubfixtures import Hub, postgres_url, reset  # noqa: F401 - a fixture
from tools.fleet_sim import SimDevice, Tally, run_fleet
from tools.hub_cluster import HubCluster, nginx_available


def test_several_nodes_on_sqlite_are_refused_with_a_code(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "hub", hub={"nodes": 2})
    with pytest.raises(EdgeError) as refused:
        create_app(settings)
    assert refused.value.code is Code.HUB_NODES_NEED_POSTGRESQL
    create_app(load_settings(data_dir=tmp_path / "one"))  # one node on SQLite: the default, served


@pytest.mark.slow
def test_an_upload_started_on_one_node_finishes_on_another_and_is_read_on_a_third(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    nodes = [
        Hub(load_settings(data_dir=tmp_path / f"node{i}", hub={"nodes": 3}), postgres_url) for i in range(3)
    ]
    reset(nodes[0].engine)
    credential = nodes[0].enroll(load_settings(data_dir=tmp_path / "device"), "device")
    on = [SimDevice(0, credential, node.client, Tally()) for node in nodes]
    on[0].send_results(1, 1, False, random.Random(1))
    result_uuid = on[0].uuids[0]
    data = random.Random(2).randbytes(protocol.CHUNK_BYTES + 1000)  # two chunks
    start = protocol.UploadStart(
        record_uuid=uuid.UUID(result_uuid),
        kind="image",
        result_uuid=uuid.UUID(result_uuid),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        media_type="application/octet-stream",
    )
    state = protocol.UploadState.model_validate_json(
        on[0].request("POST", "/v1/uploads", start.model_dump_json().encode()).content
    )
    first = on[0].request(
        "PATCH", f"/v1/uploads/{state.upload_id}", data[: protocol.CHUNK_BYTES], {"Upload-Offset": "0"}
    )
    assert protocol.UploadState.model_validate_json(first.content).offset == protocol.CHUNK_BYTES
    # node 0 is gone; the device asks node 1 where the upload stands and finishes it there
    head = on[1].request("HEAD", f"/v1/uploads/{state.upload_id}")
    assert head.headers["Upload-Offset"] == str(protocol.CHUNK_BYTES)
    last = on[1].request(
        "PATCH",
        f"/v1/uploads/{state.upload_id}",
        data[protocol.CHUNK_BYTES :],
        {"Upload-Offset": str(protocol.CHUNK_BYTES)},
    )
    assert protocol.UploadState.model_validate_json(last.content).complete
    # no node's disk holds the bytes: PostgreSQL does
    assert not any(p.is_file() for i in range(3) for p in (tmp_path / f"node{i}").rglob(state.upload_id))
    with nodes[2].engine.connect() as conn:
        row = conn.execute(select(db.uploads).where(db.uploads.c.id == state.upload_id)).one()
    readable = blobs.readable(nodes[2].engine, tmp_path / "node2" / "cache", {"image": row})
    assert Path(readable["image"].path).read_bytes() == data  # copied once into node 2's cache
    # a late copy of the first PATCH, reaching a node after the upload moved on, erases nothing
    with pytest.raises(HubError) as late:
        blobs.for_engine(nodes[1].engine).write(row, 0, data[: protocol.CHUNK_BYTES])
    assert late.value.code is WireCode.WRONG_OFFSET
    assert blobs.for_engine(nodes[1].engine).digest(row) == row.sha256
    for node in nodes:
        node.engine.dispose()


@pytest.mark.slow
def test_a_fleet_through_nginx_loses_and_doubles_nothing_when_a_node_is_killed(
    tmp_path: Path,
    postgres_url: str,  # noqa: F811
) -> None:
    if not nginx_available():
        pytest.skip("nginx is not installed (CI installs it: apt-get install nginx)")
    started = time.monotonic()
    engine = db.make_engine(postgres_url)
    reset(engine)
    devices, results = 50, 3
    killed = threading.Event()
    with HubCluster(2, postgres_url, folder=tmp_path / "cluster") as cluster:

        def kill_midway(sent: int) -> None:
            if sent >= devices * results // 3 and not killed.is_set():
                killed.set()
                cluster.kill_node(0)  # SIGKILL, not restarted: node 1 serves the rest

        report = run_fleet(
            cluster.url,
            engine,
            devices,
            results,
            workers=8,
            images=True,
            cluster=cluster,
            kill_at=kill_midway,
        )
    assert report["kills"] == 1
    assert report["results_sent"] == devices * results
    assert (report["on_hub"], report["lost"], report["duplicated"]) == (devices * results, 0, 0)
    assert report["quarantined"] == 0
    assert report["unexpected"] == 0
    # two lean pictures per result: the thumbnail and the evidence grid
    assert report["uploads_complete"] == report["uploads_sent"] == 2 * devices * results
    assert report["reviews_pulled"] == report["reviews_made"] > 0
    assert report["devices_missing_reviews"] == 0
    with engine.connect() as conn:  # each upload's bytes are whole in PostgreSQL
        assert conn.execute(select(func.count(func.distinct(db.upload_chunks.c.upload_id)))).scalar_one() == (
            2 * devices * results
        )
    engine.dispose()
    assert time.monotonic() - started < 90
