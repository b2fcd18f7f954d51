"""Device <-> hub: enrolment, idempotent batches, resumable uploads, reviews back, signed model
updates, de-identification, and the security refusals; on SQLite and on PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from edge.config import Settings, load_settings
from edge.hub import devices, releases, reviews
from edge.inference import site_profile
from edge.pipeline import Pipeline
from edge.store import Store
from edge.sync import protocol, signatures
from edge.sync.client import SyncClient
from edge.sync.credential import Credential, HubRefused
from edge.sync.runner import exchange, sync_status
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import Hub, postgres_url, reset  # noqa: F401 - postgres_url is a fixture
from tools import dicomgen


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    hub_settings = load_settings(data_dir=tmp_path / "hub-host")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    running = Hub(hub_settings, url)
    reset(running.engine)
    yield running
    running.client.close()


@pytest.fixture
def device(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"})


def analysed(settings: Settings, store: Store, paths: list[Path]) -> list[str]:
    pipeline = Pipeline(settings, store)
    results = [a.result.id for path in paths for a in pipeline.analyse_file(path) if a.ok]
    pipeline.close()
    return results


def samples(count: int) -> list[Path]:
    return sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:count]


@pytest.mark.security
def test_enrolment_is_one_time(hub: Hub, device: Settings) -> None:
    code = devices.create_enroll_code(hub.engine)
    from edge.sync.credential import enroll

    credential = enroll(device, "http://testserver", code, "clinic-1", hub.client, insecure=True)
    assert Credential.load(device) == credential
    assert (Credential.path(device).stat().st_mode & 0o777) == 0o600
    assert (Credential.key_path(device).stat().st_mode & 0o777) == 0o600
    from edge.errors import EdgeError

    with pytest.raises(EdgeError, match="enrolment refused"):
        enroll(device, "http://testserver", code, "clinic-2", hub.client, insecure=True)  # used already
    with pytest.raises(EdgeError):
        enroll(device, "http://testserver", "not-a-real-code", "clinic-3", hub.client, insecure=True)


def test_enrolment_keeps_what_the_hub_said_of_the_clock(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's time comes with its enrolment answer; the CLI kept it only in the credential,
    so an image stored before the first round while the clock read months behind looked months
    old once NTP put it right (a re-check). It is kept in the store, as a round keeps it."""
    import contextlib

    from click.testing import CliRunner

    from edge.cli import cli
    from edge.sync.client import record_hub_clock

    monkeypatch.setattr(httpx, "Client", lambda **_: contextlib.nullcontext(hub.client))
    code = devices.create_enroll_code(hub.engine)
    args = ["--data-dir", str(device.data_dir), "sync", "enroll", "http://testserver", code, "--insecure"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    with Store(device.data_dir) as store:
        state = store.outbox.sync_state()
        assert abs(state["clock_offset_s"]) <= protocol.MAX_SKEW_S
        assert state["clock_confirmed"]
        record_hub_clock(store, -90 * 86400.0)  # a clock months ahead: kept, not confirmed again
        assert store.outbox.sync_state()["clock_offset_s"] == -90 * 86400.0
        assert store.outbox.sync_state()["clock_confirmed"] == state["clock_confirmed"]


def test_a_device_enrolled_under_protocol_1_keeps_its_id_when_it_enrols_again(
    hub: Hub, device: Settings
) -> None:
    """Upgraded from sync protocol 1 and enrolled again as told, a device got a new id: its
    reviews were pulled by that id and never came, the renditions of its earlier positive
    results waited for ever on RESULT_FIRST (their results filed under the old id), and that
    stopped every round before reviews, models and profiles (an upgrade check). Proving its
    old enrolment (id and secret), it keeps its id."""
    import hashlib
    import json

    from sqlalchemy import func, select, update

    from edge.errors import EdgeError
    from edge.hub import db

    with Store(device.data_dir) as store:
        result_ids = analysed(device, store, samples(4))
        first = hub.enroll(device, "clinic-1")
        exchange(hub.sync_client(device, store, first))
        # As the older version left them: the hub holds the hash of a shared secret and no key;
        # the device holds the secret.
        secret = "an-old-protocol-1-secret-0123456789abcdef"
        with hub.engine.begin() as conn:
            conn.execute(
                update(db.devices)
                .where(db.devices.c.id == first.device_id)
                .values(public_key=None, credential_hash=hashlib.sha256(secret.encode()).hexdigest())
            )
        # Enrolled under another name of the hub (the upgrade asks for https): the same device.
        old = {"hub_url": "http://hub.lan:8000", "device_id": first.device_id, "secret": secret}
        Credential.key_path(device).unlink()
        Credential.path(device).write_text(json.dumps({**old, "secret": "not-the-secret"}))
        from edge.sync.credential import enroll

        code = devices.create_enroll_code(hub.engine)
        with pytest.raises(EdgeError, match=r"not confirmed by its secret: .* move its sync/"):
            enroll(device, "http://testserver", code, "clinic-1", hub.client, insecure=True)
        Credential.path(device).write_text(json.dumps(old))
        reviews.add_review(hub.engine, result_ids[0], "disagree", finding="normal", reviewer="dr-a")
        store.db.execute("DELETE FROM outbox WHERE kind != 'result'")  # files the new code adds
        store.db.conn.commit()
        again = enroll(device, "http://testserver", code, "clinic-1", hub.client, insecure=True)  # unspent
        assert again.device_id == first.device_id
        counts = exchange(hub.sync_client(device, store, again))
        assert counts["reviews"] == 1
        assert store.outbox.pending_counts() == {}
        with hub.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(db.devices)).scalar() == 1
            actions = [row.action for row in conn.execute(select(db.audit.c.action))]
        assert "device.enrolled_again" in actions
        # The old secret enrols nothing once the new key has signed a request, and says so; an
        # id the hub never knew (a rebuilt hub) enrols as a new device.
        with hub.engine.connect() as conn:
            assert conn.execute(select(db.devices.c.credential_hash)).scalar() == ""
        code = devices.create_enroll_code(hub.engine)
        Credential.path(device).write_text(json.dumps(old))
        with pytest.raises(EdgeError, match="already enrolled again with a key"):
            enroll(device, "http://testserver", code, "clinic-1", hub.client, insecure=True)
        Credential.path(device).write_text(json.dumps({**old, "device_id": "never-seen-here"}))
        fresh = enroll(device, "http://testserver", code, "clinic-1", hub.client, insecure=True)
        assert fresh.device_id not in (first.device_id, "never-seen-here")


def test_a_file_whose_result_the_hub_lost_sends_the_result_again_and_the_round_goes_on(
    hub: Hub, device: Settings
) -> None:
    """The hub answered RESULT_FIRST for a file whose result it had acknowledged (restored from
    an older backup; a device enrolled afresh): the round stopped there, before reviews, models
    and profiles, every round for good. The result goes again, then its file."""
    from sqlalchemy import delete

    from edge.hub import db

    with Store(device.data_dir) as store:
        analysed(device, store, samples(1))
        client = hub.sync_client(device, store, hub.enroll(device))
        assert client.push_results() == 1
        with hub.engine.begin() as conn:  # the hub loses it (an older backup restored)
            conn.execute(delete(db.worklist))
            conn.execute(delete(db.records))
        counts = exchange(client)  # the files are refused: the round still pulls reviews
        assert counts["files"] == 0
        assert "reviews" in counts
        assert store.outbox.pending_counts().get("result") == 1
        counts = exchange(client)
        assert counts["results"] == 1
        assert counts["files"] == 2
        assert store.outbox.pending_counts() == {}


def test_an_upgraded_device_is_told_to_enrol_again_and_an_old_hub_to_be_upgraded_first(
    tmp_path: Path,
) -> None:
    """After an upgrade, before enrolling again, `edge sync now` said "not configured: enrol this
    device first" just after logging that it was enrolled; enrolling with a hub still on sync
    protocol 1 said "400 BAD_REQUEST: Extra inputs are not permitted" (an upgrade check)."""
    import json

    from click.testing import CliRunner

    from edge.cli import cli
    from edge.errors import EdgeError
    from edge.sync.credential import enroll

    device = load_settings(data_dir=tmp_path / "d", models={"dir": MODELS})
    Credential.path(device).parent.mkdir(parents=True)
    old = {"hub_url": "http://testserver", "device_id": "dev-1", "secret": "s3cret-s3cret"}
    Credential.path(device).write_text(json.dumps(old))
    said = CliRunner().invoke(cli, ["--data-dir", str(device.data_dir), "sync", "now"])
    assert said.exit_code != 0
    assert "enrolment with http://testserver cannot be used" in said.output
    assert "sync protocol 1" in said.output
    assert "not configured" not in said.output

    def old_hub(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/health":
            return httpx.Response(200, json={"ok": True, "protocol": 1, "hub_time": time.time()})
        refusal = {"error": {"code": "BAD_REQUEST", "message": "Extra inputs are not permitted"}}
        return httpx.Response(400, json=refusal)

    with (
        httpx.Client(transport=httpx.MockTransport(old_hub)) as http,
        pytest.raises(EdgeError, match="speaks sync protocol 1, this device 2: upgrade the hub first"),
    ):
        enroll(device, "http://testserver", "a-code-1234", "dev", http, insecure=True)


def test_results_arrive_once_then_files_then_reviews_come_back(hub: Hub, device: Settings) -> None:
    with Store(device.data_dir) as store:
        result_ids = analysed(device, store, samples(4))
        client = hub.sync_client(device, store, hub.enroll(device))
        counts = exchange(client)
        assert counts["results"] == 4
        assert counts["files"] == 8  # a thumbnail and a heatmap each
        assert store.outbox.pending_counts() == {}
        from sqlalchemy import func, select

        from edge.hub import db

        with hub.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(db.records)).scalar() == 4
            assert (
                conn.execute(
                    select(func.count()).select_from(db.uploads).where(db.uploads.c.complete)
                ).scalar()
                == 8
            )
        # A lost acknowledgement: the device sends again; the hub stores nothing twice.
        store.db.execute("UPDATE outbox SET acked_at = NULL WHERE kind = 'result'")
        store.db.conn.commit()
        assert client.push_results() == 4
        with hub.engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(db.records)).scalar() == 4
        reviews.add_review(
            hub.engine,
            result_ids[0],
            "disagree",
            finding="normal",
            note="lines are artefact",
            reviewer="dr-a",
        )
        assert client.pull_reviews() == 1
        assert client.pull_reviews() == 0
        review = store.db.execute("SELECT * FROM reviews").fetchone()
        assert (review["result_id"], review["verdict"], review["note"]) == (
            result_ids[0],
            "disagree",
            "lines are artefact",
        )
        assert sync_status(device, store)["state"] == "up to date"


@pytest.mark.security
def test_the_same_uuid_with_other_content_is_quarantined(hub: Hub, device: Settings) -> None:
    with Store(device.data_dir) as store:
        analysed(device, store, samples(1))
        client = hub.sync_client(device, store, hub.enroll(device))
        client.push_results()
        store.db.execute("UPDATE results SET probability = 0.123456")
        store.db.execute("UPDATE outbox SET acked_at = NULL")
        store.db.conn.commit()
        client.push_results()
        from sqlalchemy import select

        from edge.hub import db

        with hub.engine.connect() as conn:
            stored = conn.execute(select(db.records.c.payload)).scalar()
            assert conn.execute(select(db.quarantine.c.uuid)).scalar() is not None
        assert stored["result"]["probability"] != 0.12346  # never overwritten
        assert store.db.execute("SELECT last_error FROM outbox").fetchone()[0] == "quarantined by the hub"


def test_an_upload_cut_midway_resumes_from_the_hubs_offset(hub: Hub, device: Settings) -> None:
    with Store(device.data_dir) as store:
        [result_id] = analysed(device, store, samples(1))
        client = hub.sync_client(device, store, hub.enroll(device))
        client.push_results()
        data = bytes(range(256)) * 3000  # 768 KB: three chunks
        start = protocol.UploadStart(
            record_uuid=result_id,
            kind="image",
            result_uuid=result_id,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type="application/dicom",
        )
        state = protocol.UploadState.model_validate_json(
            client._send("POST", "/v1/uploads", start.model_dump_json().encode()).content
        )
        client._send(
            "PATCH", f"/v1/uploads/{state.upload_id}", data[: protocol.CHUNK_BYTES], {"Upload-Offset": "0"}
        )
        client._upload("image", result_id, result_id, data, "application/dicom")  # the link came back
        from sqlalchemy import select

        from edge.hub import db

        with hub.engine.connect() as conn:
            row = conn.execute(select(db.uploads).where(db.uploads.c.kind == "image")).one()
        assert row.complete
        from edge.hub import blobs  # a file on SQLite; chunk rows on PostgreSQL, copied out here

        local = blobs.for_engine(hub.engine, hub.settings.hub_dir / blobs.CACHE_FOLDER).local(row)
        assert local is not None
        assert local.read_bytes() == data


PHI = {
    "PatientName": "Zxqwerty^Marguerite",
    "PatientID": "MRN-88771234",
    "PatientBirthDate": "19610203",
    "PatientAddress": "17 Rue Obscure Kinshasa",
    "OtherPatientIDs": "NHIF-55512121",
    "ReferringPhysicianName": "Doctor^Hortensius",
    "InstitutionName": "Saint Qwerty Clinic",
    "InstitutionAddress": "Plot 9 Obscure Road",
    "StationName": "XRAYROOM7QW",
    "OperatorsName": "Radtech^Brunhilde",
    "AccessionNumber": "ACC77665544",
    "StudyDescription": "Chest for Marguerite follow-up",
    "PatientComments": "lives with sister Philomena",
    "DeviceSerialNumber": "SN-QW-991",
    "StudyID": "STUDYQW42",
}


@pytest.mark.security
def test_nothing_identifying_leaves_the_device(hub: Hub, tmp_path: Path) -> None:
    device = load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "full"})
    png = samples(1)[0]
    from edge.imaging.decode import decode_bytes

    pixels = decode_bytes(png.read_bytes()).pixels
    ds = dicomgen.grey_dicom(
        dicomgen.twelve_bit(pixels),
        bits_stored=12,
        window=(2048, 4096),
        patient_id=PHI["PatientID"],
        patient_name=PHI["PatientName"],
        extra={k: v for k, v in PHI.items() if k not in ("PatientID", "PatientName")},
    )
    ds.StudyDate = "20261015"
    block = ds.private_block(0x0011, "ACME PRIVATE", create=True)
    block.add_new(0x01, "LO", "private Marguerite note")
    path = tmp_path / "phi.dcm"
    path.write_bytes(dicomgen.to_bytes(ds))
    sent: list[bytes] = []

    class Recording(httpx.BaseTransport):
        def __init__(self, inner: httpx.BaseTransport) -> None:
            self.inner = inner

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            body = request.read()
            sent.append(
                request.url.raw_path
                + b"\n"
                + b"\n".join(k + b": " + v for k, v in request.headers.raw)
                + b"\n"
                + body
            )
            if request.headers.get("content-encoding") == "gzip":
                sent.append(gzip.decompress(body))
            return self.inner.handle_request(request)

    with Store(device.data_dir) as store:
        analysed(device, store, [path])
        credential = hub.enroll(device)
        recording = httpx.Client(transport=Recording(hub.client._transport), base_url="http://testserver")
        client = SyncClient(device, store, recording, credential)
        counts = exchange(client)
        assert counts["results"] == 1
        assert counts["files"] == 3
    everything = b"\n".join(sent)
    for keyword, value in PHI.items():
        for fragment in {value, *value.replace("^", " ").split()}:
            if len(fragment) >= 5:
                assert fragment.encode() not in everything, f"{keyword} ({fragment}) left the device"
    assert b"Marguerite" not in everything
    assert b"ACME PRIVATE" not in everything
    assert b"20261015" not in everything  # dates shifted
    pseudonym = client.deid.pseudonym(PHI["PatientID"])
    assert pseudonym is not None
    assert pseudonym.encode() in everything


def signed_headers(
    credential: Credential, method: str, path: str, body: bytes, **override: str
) -> dict[str, str]:
    timestamp = override.pop("timestamp", f"{time.time():.3f}")
    nonce = override.pop("nonce", "n-" + hashlib.sha256(body + timestamp.encode()).hexdigest()[:20])
    return {**credential.headers(method, path, body, timestamp, nonce), **override}


def batch_body(uuid: str = "01a22600-0000-7000-8000-000000000001") -> bytes:
    payload = {"result": {"finding": "normal"}}
    record = {
        "uuid": uuid,
        "seq": 1,
        "kind": "result",
        "sha256": protocol.payload_hash(payload),
        "payload": payload,
    }
    return protocol.compress(
        {"protocol": 1, "batch_id": "01a22600-0000-7000-8000-00000000000b", "records": [record]}
    )


@pytest.mark.security
def test_security_refusals(hub: Hub, tmp_path: Path) -> None:
    one = load_settings(data_dir=tmp_path / "one")
    two = load_settings(data_dir=tmp_path / "two")
    first, second = hub.enroll(one, "one"), hub.enroll(two, "two")
    post = hub.client.post
    body = batch_body()
    gz = {"Content-Encoding": "gzip"}

    assert post("/v1/batches", content=body, headers=gz).status_code == 401  # no credential
    forged = signed_headers(second, "POST", "/v1/batches", body)  # another device's key
    forged["X-Edge-Device"] = first.device_id
    assert post("/v1/batches", content=body, headers={**forged, **gz}).status_code == 401
    good = signed_headers(first, "POST", "/v1/batches", body)
    tampered = body[:-4] + b"\x00\x00\x00\x00"
    response = post("/v1/batches", content=tampered, headers={**good, **gz})
    assert response.status_code == 401
    assert response.json()["code"] == "BAD_SIGNATURE"
    assert post("/v1/batches", content=body, headers={**good, **gz}).status_code == 200
    replay = post("/v1/batches", content=body, headers={**good, **gz})
    assert replay.status_code == 409
    assert replay.json()["code"] == "REPLAYED"
    stale = signed_headers(first, "POST", "/v1/batches", body, timestamp=f"{time.time() - 3600:.3f}")
    assert post("/v1/batches", content=body, headers={**stale, **gz}).json()["code"] == "STALE_REQUEST"
    huge = b"\x00" * (protocol.MAX_BODY_BYTES + 1)
    assert (
        post(
            "/v1/batches", content=huge, headers={**signed_headers(first, "POST", "/v1/batches", huge), **gz}
        ).status_code
        == 413
    )
    bomb = gzip.compress(b"{" + b" " * (protocol.MAX_INFLATED_BYTES + 10) + b"}")
    bomb_reply = post(
        "/v1/batches", content=bomb, headers={**signed_headers(first, "POST", "/v1/batches", bomb), **gz}
    )
    assert bomb_reply.status_code == 400
    # Another device's data does not exist for you.
    reviews.add_review(hub.engine, "01a22600-0000-7000-8000-000000000001", "agree")
    other = hub.client.get(
        "/v1/reviews?cursor=0", headers=signed_headers(second, "GET", "/v1/reviews?cursor=0", b"")
    )
    assert other.json()["reviews"] == []
    mine = hub.client.get(
        "/v1/reviews?cursor=0", headers=signed_headers(first, "GET", "/v1/reviews?cursor=0", b"")
    )
    assert len(mine.json()["reviews"]) == 1
    start = protocol.UploadStart(
        record_uuid="01a22600-0000-7000-8000-000000000001",
        kind="thumbnail",
        result_uuid="01a22600-0000-7000-8000-000000000001",
        size=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        media_type="image/png",
    ).model_dump_json()
    upload = post(
        "/v1/uploads", content=start, headers=signed_headers(first, "POST", "/v1/uploads", start.encode())
    )
    upload_id = upload.json()["upload_id"]
    path = f"/v1/uploads/{upload_id}"
    theft = hub.client.patch(
        path, content=b"abc", headers=signed_headers(second, "PATCH", path, b"abc", **{"Upload-Offset": "0"})
    )
    assert theft.status_code == 404


def test_every_refusal_is_a_wire_code_in_json(hub: Hub, device: Settings) -> None:
    """The hub's own refusals and the framework's (unknown path, wrong method, malformed query)
    all answer `protocol.Refusal`; the client reads the code from it, never from the text."""
    answers = {
        "no credential": hub.client.post("/v1/batches", content=batch_body()),
        "unknown path": hub.client.get("/v1/nothing-here"),
        "wrong method": hub.client.put("/v1/batches", content=b"{}"),
        "malformed query": hub.client.get("/v1/reviews?cursor=not-a-number"),
    }
    codes = {name: protocol.read_refusal(r.content) for name, r in answers.items()}
    assert {name: (answers[name].status_code, c.code if c else None) for name, c in codes.items()} == {
        "no credential": (401, protocol.WireCode.NO_CREDENTIAL),
        "unknown path": (404, protocol.WireCode.NOT_FOUND),
        "wrong method": (405, protocol.WireCode.METHOD_NOT_ALLOWED),
        "malformed query": (422, protocol.WireCode.BAD_REQUEST),
    }
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        client.credential.device_id = "01a22600-0000-7000-8000-00000000dead"
        with pytest.raises(HubRefused) as refused:
            client.pull_reviews()
    assert (refused.value.status, refused.value.code) == (401, protocol.WireCode.BAD_CREDENTIAL)


@pytest.mark.security
def test_rate_limit(tmp_path: Path) -> None:
    hub = Hub(
        load_settings(data_dir=tmp_path / "h", hub={"rate_per_s": 1.0, "rate_burst": 5}),
        f"sqlite:///{tmp_path / 'hub.db'}",
    )
    device = load_settings(data_dir=tmp_path / "d")
    credential = hub.enroll(device)
    codes = []
    for index in range(12):
        headers = signed_headers(
            credential, "GET", "/v1/reviews?cursor=0", b"", nonce=f"rate-limit-nonce-{index:04d}"
        )
        codes.append(hub.client.get("/v1/reviews?cursor=0", headers=headers).status_code)
    assert 429 in codes
    assert codes[0] == 200


def edited_copy(source: Path, target: Path, old: str, new: str) -> Path:
    """A copy of a model folder whose manifest has `old` replaced by `new` (once)."""
    shutil.copytree(source, target)
    manifest = target / "model.toml"
    manifest.write_text(manifest.read_text().replace(old, new, 1))
    return target


def publish(hub: Hub, folder: Path, key: Any, out: Path) -> None:
    from tools.publish_model import sign_release

    release = sign_release(folder, key, out)
    releases.publish_release(hub.engine, hub.settings.hub_dir / "files", release, out)


@pytest.mark.security
def test_signed_model_update_installs_and_bad_ones_do_not(hub: Hub, tmp_path: Path) -> None:
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key

    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    key = load_key(tmp_path / "publisher.key")
    newer = edited_copy(
        models / "tiny", tmp_path / "newer" / "tiny", 'version = "0.0.1"', 'version = "0.0.2"'
    )
    publish(hub, newer, key, tmp_path / "release")
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        from edge.inference.registry import Registry, set_aside_path
        from edge.sync.releases import KEEP_PREVIOUS, prune_previous, pull_models

        # Versions set aside by earlier updates; only the newest KEEP_PREVIOUS stay (a small
        # disk, years of updates), and what a deleted one was is recorded first.
        previous = models / ".previous"
        edited_copy(models / "tiny", previous / "tiny-100", 'version = "0.0.1"', 'version = "0.0.0"')
        manifest = previous / "tiny-100" / "model.toml"  # its shipped temperature: 3.0
        manifest.write_text(
            manifest.read_text().replace('positive = "finding"', 'positive = "finding"\ntemperature = 3.0')
        )
        for name in ("tiny-200", "tiny-300", "tiny-extra-50"):  # the last: another model's name
            (previous / name).mkdir()
        assert pull_models(client) == 1
        assert Registry(models).get("tiny").manifest.version == "0.0.2"
        assert pull_models(client) == 0  # same version: nothing
        assert KEEP_PREVIOUS == 2
        [installed_from] = [p.name for p in previous.iterdir() if int(p.name.split("-")[-1]) > 1000]
        assert sorted(p.name for p in previous.iterdir()) == sorted(
            [installed_from, "tiny-300", "tiny-extra-50"]
        )
        assert site_profile.recorded_temperatures(device.data_dir, "tiny")["0.0.0"] == 3.0
        # The folder just set aside is kept whatever a clock gone backwards named it.
        (previous / "tiny-5").mkdir()
        prune_previous(device, "tiny", keep_also=previous / "tiny-5")
        assert sorted(p.name for p in previous.iterdir()) == sorted(
            [installed_from, "tiny-5", "tiny-extra-50"]
        )
        # Two updates in one second, or a clock set back: a free name, after every one there.
        newest = int(installed_from.split("-")[-1])
        assert set_aside_path(models, "tiny", 5.7) == previous / f"tiny-{newest + 1}"
        assert set_aside_path(models, "tiny", newest + 100.2) == previous / f"tiny-{newest + 100}"
        assert set_aside_path(models, "other", 5.7) == previous / "other-5"
        # A release signed by someone else is ignored.
        rogue = keygen(tmp_path / "rogue.key")
        assert rogue != public
        newest = edited_copy(newer, tmp_path / "newest" / "tiny", '"0.0.2"', '"0.0.3"')
        publish(hub, newest, load_key(tmp_path / "rogue.key"), tmp_path / "forged")
        assert pull_models(client) == 0
        assert Registry(models).get("tiny").manifest.version == "0.0.2"
        # A hub that knows the publisher's public key refuses it at publish, and keeps nothing.
        from edge.hub.errors import HubError
        from tools.publish_model import sign_release

        forged = sign_release(newest, load_key(tmp_path / "rogue.key"), tmp_path / "forged-again")
        with pytest.raises(HubError, match="not the publisher's") as refused:
            releases.publish_release(
                hub.engine, tmp_path / "unused", forged, tmp_path / "forged-again", publisher_key=public
            )
        assert refused.value.code == protocol.WireCode.BAD_RELEASE
        assert not (tmp_path / "unused").exists()  # refused before a file was copied
        right = sign_release(newest, key, tmp_path / "signed-right")
        releases.publish_release(
            hub.engine, tmp_path / "files-right", right, tmp_path / "signed-right", publisher_key=public
        )


def test_a_release_this_device_cannot_install_is_refused_once_and_the_rest_still_install(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A correctly signed release whose manifest this software refuses (here: a key it does not
    know, as from a newer release tool) is refused from the manifest alone, without downloading
    its files, and recorded; the other releases in the same pull still install, and sync status
    names the refusal. Once the device's software reads that key (it was updated), the release
    is tried again and installs."""
    from edge.inference import registry
    from edge.inference.registry import Registry
    from edge.sync import releases as model_sync
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key

    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    key = load_key(tmp_path / "publisher.key")
    future = edited_copy(
        models / "tiny",
        tmp_path / "future" / "tiny",
        'version = "0.0.1"',
        'version = "0.0.2"\nfuture_key = 1',
    )
    other = edited_copy(models / "tiny", tmp_path / "other" / "tiny2", 'name = "tiny"', 'name = "tiny2"')
    import tools.publish_model as publisher

    real_reader = publisher.read_manifest
    # The publisher runs newer software than this device: its reader knows `future_key`.
    lenient = lambda path: types.SimpleNamespace(name=path.parent.name, version="0.0.2")  # noqa: E731
    monkeypatch.setattr(publisher, "read_manifest", lenient)
    publish(hub, future, key, tmp_path / "release-future")
    monkeypatch.setattr(publisher, "read_manifest", real_reader)
    publish(hub, other, key, tmp_path / "release-other")
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    downloads: list[str] = []
    real_download = model_sync._download
    monkeypatch.setattr(
        model_sync, "_download", lambda c, r, f, t: (downloads.append(r.name), real_download(c, r, f, t))
    )
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        assert model_sync.pull_models(client) == 1  # tiny2 installs although tiny 0.0.2 was refused
        assert Registry(models).get("tiny").manifest.version == "0.0.1"  # the old one still serves
        assert "tiny2" in Registry(models).names()
        assert downloads == ["tiny2"] * len(downloads)  # nothing of tiny 0.0.2 was fetched
        refused = sync_status(device, store)["models_refused"]
        assert list(refused) == ["tiny 0.0.2"]
        assert refused["tiny 0.0.2"].startswith("MODEL_NEEDS_NEWER_SOFTWARE")
        assert "future_key" in refused["tiny 0.0.2"]
        downloads.clear()
        assert model_sync.pull_models(client) == 0
        assert downloads == []
        # Refusals recorded by older software carry no fingerprint: each is tried once more.
        store.outbox.set_sync_state(models_refused_schema=None)
        assert model_sync.pull_models(client) == 0
        assert downloads == []  # refused again from its manifest alone
        assert store.outbox.sync_state()["models_refused_schema"] == registry.manifest_schema_id()
        assert list(sync_status(device, store)["models_refused"]) == ["tiny 0.0.2"]

        # The device's edge is updated: its manifest reader now knows `future_key`.
        class NewerManifest(registry.Manifest):
            future_key: int = 0

        monkeypatch.setattr(registry, "Manifest", NewerManifest)
        assert model_sync.pull_models(client) == 1
        assert Registry(models).get("tiny").manifest.version == "0.0.2"
        assert sync_status(device, store)["models_refused"] == {}


def test_a_release_that_keeps_its_weights_fetches_only_what_changed(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new version with the same ONNX files (its operating points chosen again) costs a slow
    link nothing but what differs: files the installed version holds with the signed size and
    sha256 are copied; one that differs on the device (here: damaged) is downloaded."""
    from edge.inference.registry import Registry
    from edge.sync import releases as model_sync
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key

    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    newer = edited_copy(models / "tiny", tmp_path / "newer" / "tiny", "threshold = 0.5", "threshold = 0.6")
    newer_manifest = (newer / "model.toml").read_text()
    (newer / "model.toml").write_text(newer_manifest.replace('version = "0.0.1"', 'version = "0.0.2"', 1))
    (newer / "samples" / "mid.png").write_bytes((newer / "samples" / "bright.png").read_bytes())
    publish(hub, newer, load_key(tmp_path / "publisher.key"), tmp_path / "release")
    installed_int8 = models / "tiny" / "tiny-int8.onnx"
    installed_int8.write_bytes(installed_int8.read_bytes()[:-1] + b"\x00")  # damaged on the device
    fetched: list[str] = []
    real_download = model_sync._download
    monkeypatch.setattr(
        model_sync, "_download", lambda c, r, f, t: (fetched.append(f), real_download(c, r, f, t))
    )
    real_copy = shutil.copyfile

    def copy_that_goes_wrong(source: Path, target: Path) -> Any:  # e.g. a bad sector on the way
        real_copy(source, target)
        if Path(source).name == "tiny-fp32.onnx":
            Path(target).write_bytes(b"\x00" + Path(target).read_bytes()[1:])

    monkeypatch.setattr(model_sync.shutil, "copyfile", copy_that_goes_wrong)
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        assert model_sync.pull_models(client) == 1
    entry = Registry(models).get("tiny")
    assert entry.manifest.version == "0.0.2"
    assert entry.manifest.operating_points["balanced"].threshold == 0.6
    # Copied: the unchanged and intact; fetched: the changed, the damaged, and the badly copied.
    assert sorted(fetched) == ["samples/mid.png", "tiny-fp32.onnx", "tiny-int8.onnx"]
    assert "samples/bright.png" not in fetched
    # The outgoing version's weights are recorded: a site profile fitted for 0.0.1 serves 0.0.2.

    assert site_profile.recorded_weights(device.data_dir, "tiny") == {"0.0.1": site_profile.weights_id(entry)}
    for variant in ("fp32", "int8"):
        entry.variant_file(variant)  # every file verified against the signed manifest
    assert (models / "tiny" / "samples" / "mid.png").read_bytes() == (
        newer / "samples" / "mid.png"
    ).read_bytes()


def test_a_model_that_fails_its_self_test_is_rolled_back(tmp_path: Path) -> None:
    from edge.errors import EdgeError
    from edge.inference.registry import Registry
    from edge.sync.releases import install
    from tests.tinymodel import make_model_dir

    models = tmp_path / "models"
    make_model_dir(models)
    broken = tmp_path / "staged" / "tiny"
    shutil.copytree(models / "tiny", broken)
    (broken / "tiny-fp32.onnx").write_bytes(b"not a model")
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models})
    with pytest.raises(EdgeError):
        install(device, broken, "tiny")
    assert Registry(models).get("tiny").variant_file("fp32").read_bytes()[:4] != b"not "


def test_status_says_offline_when_the_hub_is_gone(tmp_path: Path) -> None:
    device = load_settings(data_dir=tmp_path / "d", models={"dir": MODELS})
    Credential("http://127.0.0.1:9", "dev", key=signatures.new_device_key()).save(
        device, True
    )  # port 9: nothing listens
    from edge.sync.runner import run_round

    with Store(device.data_dir) as store, httpx.Client() as http:
        analysed(device, store, samples(1))
        assert run_round(SyncClient(device, store, http, Credential.load(device))) is False  # type: ignore[arg-type]
        status = sync_status(device, store)
    assert status["state"] == "offline"
    assert status["pending"]["results"] == 1
    assert "cannot be reached" in status["last_error"]
    from click.testing import CliRunner

    from edge.cli import cli

    said = CliRunner().invoke(cli, ["--data-dir", str(device.data_dir), "status"]).stdout
    assert "sync: offline (http://127.0.0.1:9), 1 result(s) waiting, last success never: the hub" in said


def test_a_captive_portal_in_place_of_the_hub_is_offline_not_a_crash(tmp_path: Path) -> None:
    """A captive portal or a proxy's login page answers 200 with HTML: the sync agent crashed
    with a traceback (pydantic's), systemd restarted it every 5 s, and the status said
    "syncing". Now the round ends offline, saying why; enrolment says it too."""
    import http.server
    import threading

    from edge.errors import EdgeError
    from edge.sync.credential import enroll
    from edge.sync.runner import run_round

    class Portal(http.server.BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Log in to the clinic Wi-Fi</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = _page

        def log_message(self, *_: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Portal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    device = load_settings(data_dir=tmp_path / "d", models={"dir": MODELS})
    try:
        with httpx.Client() as http, pytest.raises(EdgeError, match="captive portal"):
            enroll(device, url, "a-code-1234", "dev", http, insecure=True)
        Credential(url, "dev", insecure=True, key=signatures.new_device_key()).save(device, True)
        with Store(device.data_dir) as store, httpx.Client() as http:
            analysed(device, store, samples(1))
            assert run_round(SyncClient(device, store, http, Credential.load(device))) is False  # type: ignore[arg-type]
            status = sync_status(device, store)
    finally:
        server.shutdown()
    assert status["state"] == "offline"
    assert "captive portal" in status["last_error"]
    assert status["pending"]["results"] == 1


def test_an_enrolled_device_whose_key_is_gone_says_so(hub: Hub, device: Settings) -> None:
    """A missing device key read as "no hub enrolled" (doctor passed it, the TUI said NOT
    CONFIGURED): nothing was sent, and nothing said to enrol again."""
    from edge.operations.doctor import run_checks

    with Store(device.data_dir) as store:
        hub.sync_client(device, store, hub.enroll(device))
        Credential.key_path(device).unlink()
        status = sync_status(device, store)
    assert status["state"] == "failed"
    assert str(status["hub"]).startswith("http")
    assert "key" in status["last_error"]
    assert "enrol this device again" in status["last_error"]
    [check] = [c for c in run_checks(device) if c.name == "hub"]
    assert check.level == "fail"
    assert "enrol this device again" in check.message


def test_a_refusal_from_another_server_says_what_to_check() -> None:
    """A wrong hub URL (another web server, a proxy) answers 404 {"detail":"Not Found"}: the
    status showed that raw, with nothing to do."""
    response = httpx.Response(404, json={"detail": "Not Found"})
    refused = HubRefused.from_response(response)
    assert refused.code is None
    assert "the hub URL answered HTTP 404 (application/json), not the edge hub's protocol" in str(refused)
    assert "check the hub URL" in str(refused)


def test_the_sync_state_is_right_after_the_clock_jumps(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A box without a clock battery: the hub out of reach while the clock read 2040, then NTP
    put it right and a round went through. The status said "offline" (and `edge doctor` "hub
    unreachable") until 2040, the stamps compared; each round now says how it ended."""
    from edge.sync import runner
    from edge.sync.client import HubUnavailable

    with Store(device.data_dir) as store:
        analysed(device, store, samples(1))
        client = hub.sync_client(device, store, hub.enroll(device))

        def unreachable(_: SyncClient) -> dict[str, int]:
            raise HubUnavailable("ConnectError")

        with monkeypatch.context() as patch:
            patch.setattr(runner, "utc_now", lambda: "2040-06-01T00:00:00.000Z")
            patch.setattr(runner, "exchange", unreachable)
            assert runner.run_round(client) is False
        assert sync_status(device, store)["state"] == "offline"
        assert runner.run_round(client) is True
        assert "clock_confirmed" in store.outbox.sync_state()  # a reply of the hub's confirmed it
        status = sync_status(device, store)
        assert status["state"] == "up to date"
        assert "cannot be reached" in status["last_error"]  # kept, as what happened last
        assert "failing" not in runner._status_line(store)


def test_a_refusal_is_not_retried_blindly(hub: Hub, device: Settings) -> None:
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        client.credential.key = signatures.new_device_key()  # not the key the hub has
        with pytest.raises(HubRefused):
            client.pull_reviews()


def test_a_result_gone_from_the_device_does_not_wedge_the_queue(hub: Hub, device: Settings) -> None:
    """A study deleted on the device while its result and files wait to be sent: the rest still
    go, the vanished ones are closed with a note, nothing is retried forever."""
    with Store(device.data_dir) as store:
        result_ids = analysed(device, store, samples(3))
        client = hub.sync_client(device, store, hub.enroll(device))
        assert client.push_results() == 3
        client.queue_uploads()
        # Remove one result behind the store's back (an older version deleted without withdrawing).
        gone = result_ids[1]
        store.db.execute("UPDATE outbox SET acked_at = NULL WHERE kind = 'result'")
        store.db.execute("DELETE FROM results WHERE id = ?", [gone])
        store.db.conn.commit()
        counts = exchange(client)
        assert counts["results"] == 2
        assert store.outbox.pending_counts() == {}
        notes = [
            row[0]
            for row in store.db.execute(
                "SELECT last_error FROM outbox WHERE kind IN ('result', 'heatmap')"
                " AND (ref_id = ? OR payload LIKE ?)",
                [gone, f'%"{gone}"%'],
            )
        ]
        assert len(notes) == 2  # the result and its heatmap; the image itself is still there
        assert all(note and note.startswith("withdrawn") for note in notes)


def test_doctor_says_what_the_link_is_doing(hub: Hub, device: Settings) -> None:
    from edge.operations.doctor import run_checks

    def lines() -> dict[str, tuple[str, str]]:
        return {c.name: (c.level, c.message) for c in run_checks(device) if c.name in ("hub", "sync agent")}

    assert lines()["hub"][0] == "pass"
    assert "no hub enrolled" in lines()["hub"][1]
    with Store(device.data_dir) as store:
        analysed(device, store, samples(1))
        client = hub.sync_client(device, store, hub.enroll(device))
        exchange(client)
        found = lines()
        assert found["hub"][0] == "pass"
        assert "up to date" in found["hub"][1]
        assert found["sync agent"][0] == "warn"  # enrolled, but no `edge sync run` here
        store.outbox.set_sync_state(
            last_error="the hub cannot be reached: ConnectError",
            last_error_at="2999-01-01T00:00:00.000Z",
            last_error_kind="unavailable",
        )
        assert lines()["hub"][0] == "warn"
        store.outbox.set_sync_state(last_error="the hub refused: 401", last_error_kind="refused")
        assert lines()["hub"] == ("fail", lines()["hub"][1])
        assert "401" in lines()["hub"][1]


def test_the_applicability_travels_to_the_hub_and_its_review_page(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from sqlalchemy import select

    from edge.hub import accounts, db
    from edge.inference.pool import ServedModel
    from edge.inference.scope import Scope
    from tests.hubfixtures import login

    # Read through a thin frame (`framing.read_through_frame`): the review page says so too.
    borderline = Scope(distance=31.4, p_value=0.0312, threshold=40.2, state="borderline", frame_filled=0.012)
    original = ServedModel.predict
    monkeypatch.setattr(
        ServedModel,
        "predict",
        lambda self, images, op=None: [replace(p, scope=borderline) for p in original(self, images, op)],
    )
    # Every model borderline: routing would not guess, so this device names its model.
    device.models.default = DEFAULT_MODEL
    with Store(device.data_dir) as store:
        [result_id] = analysed(device, store, samples(1))
        assert exchange(hub.sync_client(device, store, hub.enroll(device)))["results"] == 1
    with hub.engine.connect() as conn:
        payload = conn.execute(select(db.records.c.payload)).scalar_one()
        assert payload["result"]["applicability"] == borderline.as_dict()  # numbers and a word only
        assert conn.execute(select(db.worklist.c.scope)).scalar_one() == "borderline"
    accounts.create_user(hub.engine, "reader", "correct horse battery staple", "specialist", ("*",))
    assert login(hub.client, "reader", "correct horse battery staple") == 303
    page = hub.client.get(f"/review/studies/{result_id}").text
    assert '<span class="badge scope borderline">borderline</span> p = 0.03' in page
    assert "near the edge of what the model was trained on" in page
    assert "flat frame along its edges (1% of a side) filled from the film&#39;s own edge" in page
    assert 'class="badge borderline"' in hub.client.get("/review/").text


def test_a_payload_without_applicability_from_an_older_device_is_accepted(hub: Hub, tmp_path: Path) -> None:
    from sqlalchemy import select

    from edge.hub import accounts, db
    from tests.hubfixtures import login

    older = load_settings(data_dir=tmp_path / "older")
    credential = hub.enroll(older, "older")
    body = batch_body()  # what a device before the applicability check sends
    reply = hub.client.post(
        "/v1/batches",
        content=body,
        headers={
            **signed_headers(credential, "POST", "/v1/batches", body),
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        },
    )
    assert reply.status_code == 200, reply.text
    assert protocol.BatchReply.model_validate_json(reply.content).stored == [
        "01a22600-0000-7000-8000-000000000001"
    ]
    with hub.engine.connect() as conn:
        assert conn.execute(select(db.worklist.c.scope)).scalar_one() == ""  # none sent
    accounts.create_user(hub.engine, "reader", "correct horse battery staple", "specialist", ("*",))
    assert login(hub.client, "reader", "correct horse battery staple") == 303
    page = hub.client.get("/review/studies/01a22600-0000-7000-8000-000000000001").text
    assert "applicability not reported" in page
    assert "badge borderline" not in hub.client.get("/review/").text


def test_a_hub_made_before_the_scope_column_gets_it_filled_from_the_payloads(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import inspect, select

    from edge.hub import db, worklist_index

    with Store(device.data_dir) as store:
        analysed(device, store, samples(2))
        client = hub.sync_client(device, store, hub.enroll(device))
        assert exchange(client)["results"] == 2
    # The shipped model has the check: both records carry a verdict. The first is made to say
    # borderline; the second loses its verdict, as an older device's (or a model's without the
    # check) would have none.
    with hub.engine.begin() as conn:
        first, second = conn.execute(select(db.records).order_by(db.records.c.id)).all()
        assert second.payload["result"]["applicability"]["state"] == "in scope"
        payload = dict(first.payload)
        payload["result"] = {**payload["result"], "applicability": {"state": "borderline", "p_value": 0.03}}
        conn.execute(db.records.update().where(db.records.c.id == first.id).values(payload=payload))
        older = dict(second.payload)
        older["result"] = {k: v for k, v in older["result"].items() if k != "applicability"}
        conn.execute(db.records.update().where(db.records.c.id == second.id).values(payload=older))
        conn.exec_driver_sql("ALTER TABLE worklist DROP COLUMN scope")  # the hub before this change
    assert "scope" not in {c["name"] for c in inspect(hub.engine).get_columns("worklist")}
    assert db.add_new_columns(hub.engine) == ["worklist.scope"]
    assert db.add_new_columns(hub.engine) == []  # once
    worklist_index.backfill(hub.engine, batch=1)
    with hub.engine.connect() as conn:
        scopes = conn.execute(select(db.worklist.c.scope).order_by(db.worklist.c.record_id)).scalars().all()
    assert scopes == ["borderline", ""]
