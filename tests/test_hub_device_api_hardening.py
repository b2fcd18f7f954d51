"""The device API against a hostile device (issue 17, item 4): upload identifiers and quotas,
a malformed body of any kind is a coded 4xx (never a 500), and no public API schema."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_settings
from edge.sync import protocol
from edge.sync.credential import Credential
from tests.hubfixtures import Hub, database_url, postgres_url, reset  # noqa: F401 - postgres_url is a fixture
from tests.test_sync import batch_body, signed_headers

RESULT = "01a22600-0000-7000-8000-000000000001"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    settings = load_settings(
        data_dir=tmp_path / "hub-host",
        hub={"upload_result_files": 2, "upload_result_mb": 1.0, "upload_device_files": 3},
    )
    url = database_url(request, tmp_path)
    running = Hub(settings, url)
    reset(running.engine)
    yield running
    running.client.close()


def send(hub: Hub, credential: Credential, method: str, path: str, body: bytes = b"", **headers: str) -> Any:
    signed = signed_headers(credential, method, path, body, **headers)
    return hub.client.request(method, path, content=body, headers=signed)


def with_result(hub: Hub, tmp_path: Path, uuids: tuple[str, ...] = (RESULT,)) -> Credential:
    credential = hub.enroll(load_settings(data_dir=tmp_path / "device"))
    for uuid in uuids:
        reply = send(hub, credential, "POST", "/v1/batches", batch_body(uuid), **{"Content-Encoding": "gzip"})
        assert reply.status_code == 200, reply.text
    return credential


def start_body(record_uuid: str, kind: str = "thumbnail", size: int = 3, result: str = RESULT) -> bytes:
    return json.dumps(
        {
            "record_uuid": record_uuid,
            "kind": kind,
            "result_uuid": result,
            "size": size,
            "sha256": hashlib.sha256(b"abc").hexdigest(),
            "media_type": "image/png",
        }
    ).encode()


@pytest.mark.security
@pytest.mark.parametrize(
    "record_uuid",
    ["/dev/shm/" + "a" * 27, "../../../../../../../../../../tmp/xx", "x" * 36],
)
def test_an_upload_identifier_that_is_not_a_uuid_is_refused(
    hub: Hub, tmp_path: Path, record_uuid: str
) -> None:
    credential = with_result(hub, tmp_path)
    reply = send(hub, credential, "POST", "/v1/uploads", start_body(record_uuid))
    assert (reply.status_code, reply.json()["code"]) == (400, "BAD_REQUEST")


@pytest.mark.security
def test_upload_files_have_names_the_hub_made(hub: Hub, tmp_path: Path) -> None:
    credential = with_result(hub, tmp_path)
    record = "01A22600-0000-7000-8000-0000000000AA"  # a valid UUID, spelt another way
    state = send(hub, credential, "POST", "/v1/uploads", start_body(record)).json()
    path = f"/v1/uploads/{state['upload_id']}"
    assert send(hub, credential, "PATCH", path, b"abc", **{"Upload-Offset": "0"}).json()["complete"]
    files = hub.settings.hub_dir / "files"
    written = [p for p in files.rglob("*") if p.is_file()]
    if hub.engine.dialect.name == "postgresql":  # the bytes are rows under the hub's id (hub/blobs.py)
        from sqlalchemy import select

        from edge.hub import db

        assert written == []
        with hub.engine.connect() as conn:
            ids = conn.execute(select(db.upload_chunks.c.upload_id).distinct()).scalars().all()
        assert ids == [state["upload_id"]]
        return
    assert [p.relative_to(files).parts for p in written] == [(credential.device_id, state["upload_id"])]


@pytest.mark.security
def test_upload_quotas_per_result_and_per_device(hub: Hub, tmp_path: Path) -> None:
    others = ("01a22600-0000-7000-8000-000000000002", "01a22600-0000-7000-8000-000000000003")
    credential = with_result(hub, tmp_path, (RESULT, *others))

    def start(record: str, kind: str, size: int = 3, result: str = RESULT) -> Any:
        return send(hub, credential, "POST", "/v1/uploads", start_body(record, kind, size, result))

    assert start(RESULT, "thumbnail").status_code == 200
    assert start(RESULT, "thumbnail").status_code == 200  # the same file again: a resume, not a new one
    too_big = start(RESULT, "heatmap", size=2 * 1024 * 1024)  # the result's 1 MB
    assert (too_big.status_code, too_big.json()["code"]) == (413, "QUOTA_EXCEEDED")
    assert start(RESULT, "heatmap").status_code == 200
    third = start("01a22600-0000-7000-8000-0000000000ff", "image")  # the result's 2 files
    assert (third.status_code, third.json()["code"]) == (413, "QUOTA_EXCEEDED")
    assert start(others[0], "thumbnail", result=others[0]).status_code == 200
    device_full = start(others[1], "thumbnail", result=others[1])  # the device's 3 files
    assert (device_full.status_code, device_full.json()["code"]) == (413, "QUOTA_EXCEEDED")


def _garbage_bodies() -> dict[str, bytes]:
    good = json.loads(gzip.decompress(batch_body()))
    huge = json.loads(json.dumps(good))
    huge["records"][0]["seq"] = 10**30
    wrong_type = json.loads(json.dumps(good))
    wrong_type["records"] = {"not": "a list"}

    def batch_of(payload_text: str) -> bytes:
        payload = json.loads(payload_text)  # Python reads huge ints and NaN; so does the hub
        fresh = f"01a22600-0000-7000-8000-{len(payload_text):012d}"  # not stored before: not a duplicate
        record = {
            **good["records"][0],
            "uuid": fresh,
            "payload": payload,
            "sha256": protocol.payload_hash(payload),
        }
        return gzip.compress(json.dumps({**good, "records": [record]}).encode())

    return {
        "huge int in the payload": batch_of(
            '{"study": {"age_years": 1%s}, "result": {"probability": 2}}' % ("0" * 400)
        ),
        "NaN in the payload": batch_of('{"study": {"age_years": NaN}, "result": {"probability": Infinity}}'),
        "garbage gzip": b"\x1f\x8b\x08\x00garbage-that-is-not-deflate" * 3,
        "not gzip at all": b"plain text",
        "truncated gzip": batch_body()[:-12],
        "empty": b"",
        "huge int": gzip.compress(json.dumps(huge).encode()),
        "wrong JSON types": gzip.compress(json.dumps(wrong_type).encode()),
        "JSON list": gzip.compress(b"[1, 2, 3]"),
        "not UTF-8": gzip.compress(b"\xff\xfe{}"),
    }


@pytest.mark.security
def test_every_malformed_body_on_every_device_route_is_a_coded_4xx(hub: Hub, tmp_path: Path) -> None:
    credential = with_result(hub, tmp_path)
    start = send(hub, credential, "POST", "/v1/uploads", start_body(RESULT)).json()
    upload = f"/v1/uploads/{start['upload_id']}"
    answers: dict[str, Any] = {}
    for name, body in _garbage_bodies().items():
        answers[f"batch, {name}"] = send(
            hub, credential, "POST", "/v1/batches", body, **{"Content-Encoding": "gzip"}
        )
        plain = gzip.decompress(body) if name in ("huge int", "wrong JSON types") else body
        answers[f"upload start, {name}"] = send(hub, credential, "POST", "/v1/uploads", plain)
        answers[f"enrol, {name}"] = hub.client.post("/v1/enroll", content=plain)
    for value in ("-1", "1e3", "9" * 5000, " 0", "0x0", "1_0"):
        answers[f"offset {value[:8]}"] = send(
            hub, credential, "PATCH", upload, b"abc", **{"Upload-Offset": value}
        )
    for field, value in (("size", -1), ("size", 10**30), ("kind", 7), ("record_uuid", None), ("sha256", [1])):
        body = json.loads(start_body(RESULT))
        body[field] = value
        answers[f"upload start {field}={value!r}"] = send(
            hub, credential, "POST", "/v1/uploads", json.dumps(body).encode()
        )
    for cursor in ("-5", str(10**30), "x"):
        answers[f"cursor {cursor[:8]}"] = send(hub, credential, "GET", f"/v1/reviews?cursor={cursor}")
    answers["content-length"] = send(hub, credential, "POST", "/v1/batches", b"", **{"Content-Length": "abc"})
    failures = {}
    for name, reply in answers.items():
        refusal = protocol.read_refusal(reply.content)
        if not 400 <= reply.status_code < 500 or refusal is None:
            failures[name] = (reply.status_code, reply.text[:120])
    assert failures == {}


@pytest.mark.security
@pytest.mark.parametrize("path", ["/openapi.json", "/docs", "/redoc", "/v1/openapi.json"])
def test_the_api_schema_is_not_public(hub: Hub, path: str) -> None:
    assert hub.client.get(path).status_code == 404


def test_the_default_per_result_quota_holds_one_file_of_each_upload_kind() -> None:
    """A device that sends everything its settings allow for one result (thumbnail, heatmap,
    full image, diagnostic rendition, ...) stays inside the default quota: a new upload kind
    must raise it, or a compliant device is refused (QUOTA_EXCEEDED) on its last file."""
    from typing import get_args

    from edge.config import HubSettings
    from edge.hub.intake import UploadQuotas
    from edge.sync.client import UPLOAD_KINDS

    kinds = set(get_args(protocol.UploadStart.model_fields["kind"].annotation))
    assert kinds == set(UPLOAD_KINDS)
    assert UploadQuotas().result_files == HubSettings().upload_result_files == len(kinds)
