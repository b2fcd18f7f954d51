"""Device identity by key pair (sync protocol 2): what a listener, a replayer, a forger, an old
device and a revoked one get from the hub. Regression tests of the findings against protocol 1:
the secret travelled as a bearer credential on every request, a `nan` timestamp passed the clock
check (a replay after 640 s succeeded), http:// hubs were accepted, and nothing could be revoked.
"""

from __future__ import annotations

import base64
import gzip
import re
import time
import types
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from fastapi.testclient import TestClient
from sqlalchemy import select

from edge.cli import cli
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.hub import accounts, db, devices
from edge.hub.app import create_app
from edge.store import Store
from edge.sync import protocol, signatures
from edge.sync.client import SyncClient
from edge.sync.credential import Credential, HubRefused, check_hub_url, enroll
from edge.sync.protocol import WireCode
from edge.sync.runner import exchange, run_round, sync_status
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import REVIEW_PASSWORD, Hub, login, postgres_url, reset  # noqa: F401 - a fixture

pytestmark = pytest.mark.security
REVIEWS = "/v1/reviews?cursor=0"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    running = Hub(load_settings(data_dir=tmp_path / "hub-host"), url)
    reset(running.engine)
    yield running
    running.client.close()


@pytest.fixture
def device(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"})


class Recording(httpx.BaseTransport):
    """Every request a device sends, as a listener on the link sees it (headers and body)."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self.inner.handle_request(request)

    def wire(self) -> bytes:
        parts = []
        for request in self.requests:
            parts.append(request.method.encode() + b" " + request.url.raw_path)
            parts.extend(name + b": " + value for name, value in request.headers.raw)
            parts.append(request.content)
            if request.headers.get("content-encoding") == "gzip":
                parts.append(gzip.decompress(request.content))
        return b"\n".join(parts)


def recording_client(hub: Hub) -> tuple[httpx.Client, Recording]:
    recording = Recording(hub.client._transport)
    return httpx.Client(transport=recording, base_url="http://testserver"), recording


def send(hub: Hub, request: httpx.Request) -> httpx.Response:
    """Send a captured request again, byte for byte."""
    return hub.client.request(
        request.method, request.url.raw_path.decode(), content=request.content, headers=request.headers
    )


def code_of(response: httpx.Response) -> tuple[int, WireCode | None]:
    refusal = protocol.read_refusal(response.content)
    return response.status_code, refusal.code if refusal else None


def clock_at(monkeypatch: pytest.MonkeyPatch, seconds_from_now: float) -> None:
    """The hub's clock (only the hub's) moved on."""
    later = time.time() + seconds_from_now
    monkeypatch.setattr(devices, "time", types.SimpleNamespace(time=lambda: later))


# ------------------------------------------------------------------ replay, clock, tampering, keys


def test_a_captured_request_replayed_is_refused_now_and_after_the_window(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    http, recording = recording_client(hub)
    credential = hub.enroll(device)
    with Store(device.data_dir) as store:
        assert SyncClient(device, store, http, credential).pull_reviews() == 0
    [captured] = [r for r in recording.requests if r.url.path == "/v1/reviews"]
    assert code_of(send(hub, captured)) == (409, WireCode.REPLAYED)
    # Protocol 1 forgot the nonce after 600 s; the timestamp now refuses it for good.
    for later in (protocol.MAX_SKEW_S + 1, 640, 3600):
        clock_at(monkeypatch, later)
        assert code_of(send(hub, captured)) == (401, WireCode.STALE_REQUEST)


def test_a_replay_is_refused_by_another_hub_process_on_the_same_database(hub: Hub, device: Settings) -> None:
    """Nonces live in the database: a second hub process behind the same address refuses too."""
    credential = hub.enroll(device)
    other = Hub(hub.settings, str(hub.engine.url))
    headers = credential.headers("GET", REVIEWS, b"")
    assert hub.client.get(REVIEWS, headers=headers).status_code == 200
    assert code_of(other.client.get(REVIEWS, headers=headers)) == (409, WireCode.REPLAYED)
    other.client.close()


@pytest.mark.parametrize(
    "timestamp",
    ["nan", "NaN", "inf", "-inf", "Infinity", "1e9", "+1700000000", "1_700_000_000", "-1", "0x10"],
)
def test_a_timestamp_that_is_not_plain_seconds_is_refused_even_when_signed(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch, timestamp: str
) -> None:
    credential = hub.enroll(device)
    headers = credential.headers("GET", REVIEWS, b"", timestamp=timestamp)  # a valid signature
    assert code_of(hub.client.get(REVIEWS, headers=headers)) == (400, WireCode.BAD_TIMESTAMP)
    clock_at(monkeypatch, 640)  # the finding: a nan-stamped request replayed after 640 s
    assert code_of(hub.client.get(REVIEWS, headers=headers)) == (400, WireCode.BAD_TIMESTAMP)


@pytest.mark.parametrize("timestamp", ["0", "1.0", "99999999999", f"{time.time() + 3600:.3f}"])
def test_a_timestamp_out_of_the_window_is_stale(hub: Hub, device: Settings, timestamp: str) -> None:
    credential = hub.enroll(device)
    headers = credential.headers("GET", REVIEWS, b"", timestamp=timestamp)
    assert code_of(hub.client.get(REVIEWS, headers=headers)) == (401, WireCode.STALE_REQUEST)


def test_a_tampered_body_path_or_header_is_refused(hub: Hub, device: Settings) -> None:
    credential = hub.enroll(device)
    body = b'{"not": "read before the signature"}'
    signed = credential.headers("POST", "/v1/batches", body)
    tampered = hub.client.post("/v1/batches", content=body[:-2] + b"!}", headers=signed)
    assert code_of(tampered) == (401, WireCode.BAD_SIGNATURE)
    elsewhere = credential.headers("GET", REVIEWS, b"")
    assert code_of(hub.client.get("/v1/reviews?cursor=5", headers=elsewhere)) == (401, WireCode.BAD_SIGNATURE)
    nonce = {**credential.headers("GET", REVIEWS, b""), protocol.HEADER_NONCE: "another-nonce-0123456789"}
    assert code_of(hub.client.get(REVIEWS, headers=nonce)) == (401, WireCode.BAD_SIGNATURE)


def test_a_request_signed_with_another_key_is_refused(hub: Hub, device: Settings, tmp_path: Path) -> None:
    victim = hub.enroll(device)
    attacker = hub.enroll(load_settings(data_dir=tmp_path / "attacker"), "attacker")
    assert attacker.key is not None
    forged = Credential(victim.hub_url, victim.device_id, key=attacker.key)  # claims the victim's id
    assert code_of(hub.client.get(REVIEWS, headers=forged.headers("GET", REVIEWS, b""))) == (
        401,
        WireCode.BAD_SIGNATURE,
    )
    made_up = Credential(victim.hub_url, victim.device_id, key=signatures.new_device_key())
    assert code_of(hub.client.get(REVIEWS, headers=made_up.headers("GET", REVIEWS, b"")))[0] == 401


def test_an_enrolment_must_be_signed_by_the_key_it_registers(hub: Hub) -> None:
    code = devices.create_enroll_code(hub.engine)
    key, other = signatures.new_device_key(), signatures.new_device_key()
    request = {"code": code, "device_name": "x", "site": "", "public_key": signatures.public_hex(key)}
    request["proof"] = other.sign(protocol.enrollment_to_sign(request)).hex()
    headers = {protocol.HEADER_PROTOCOL: str(protocol.VERSION)}
    refused = hub.client.post("/v1/enroll", json=request, headers=headers)
    assert code_of(refused) == (401, WireCode.BAD_SIGNATURE)
    request["proof"] = key.sign(protocol.enrollment_to_sign(request)).hex()
    assert hub.client.post("/v1/enroll", json=request, headers=headers).status_code == 200  # not spent


# ------------------------------------------------------------------ nothing on the wire signs


def test_nothing_a_device_sends_lets_a_listener_sign_a_request(hub: Hub, device: Settings) -> None:
    http, recording = recording_client(hub)
    with Store(device.data_dir) as store:
        pipeline_results(device, store)
        credential = enroll(
            device, "http://testserver", devices.create_enroll_code(hub.engine), "c", http, True
        )
        counts = exchange(SyncClient(device, store, http, credential))
    assert counts["results"] == 2
    assert counts["files"] == 4
    assert credential.key is not None
    raw = credential.key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    pem = signatures.private_pem(credential.key)
    wire = recording.wire()
    for secret in (
        raw,
        raw.hex().encode(),
        raw.hex().upper().encode(),
        base64.b64encode(raw),
        base64.urlsafe_b64encode(raw).rstrip(b"="),
        pem,
        b"".join(pem.splitlines()[1:-1]),  # the PEM's base64 body on one line
    ):
        assert secret not in wire
    assert all("authorization" not in r.headers for r in recording.requests)
    assert Credential.key_path(device).read_bytes() == pem  # the key stays here, owner-only
    assert Credential.key_path(device).stat().st_mode & 0o777 == 0o600
    assert b"PRIVATE" not in Credential.path(device).read_bytes()
    with hub.engine.connect() as conn:
        row = conn.execute(select(db.devices).where(db.devices.c.id == credential.device_id)).one()
    assert (row.credential_hash, row.public_key) == ("", signatures.public_hex(credential.key))


def pipeline_results(settings: Settings, store: Store) -> None:
    from edge.pipeline import Pipeline

    pipeline = Pipeline(settings, store)
    for path in sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:2]:
        pipeline.analyse_file(path)
    pipeline.close()


# ------------------------------------------------------------------ plain http


def test_plain_http_is_refused_without_insecure(device: Settings, tmp_path: Path) -> None:
    def never(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"nothing may be sent to {request.url}")

    http = httpx.Client(transport=httpx.MockTransport(never))
    with pytest.raises(EdgeError) as refused:
        enroll(device, "http://hub.example.org", "a-code-of-sorts", "c", http)
    assert refused.value.code is Code.HUB_URL_INSECURE
    assert not Credential.key_path(device).exists()
    for url in ("ftp://hub.example.org", "https://", "not a url"):
        with pytest.raises(EdgeError):
            check_hub_url(url, insecure=True)
    for url in ("https://hub.example.org", "http://127.0.0.1:8720", "http://[::1]:8720", "http://localhost"):
        check_hub_url(url, insecure=False)  # TLS, or a link that never leaves this machine
    check_hub_url("http://hub.example.org", insecure=True)
    # A credential edited to plain http afterwards: sync refuses too.
    credential = Credential("http://hub.example.org", "d", key=signatures.new_device_key())
    with Store(device.data_dir) as store, pytest.raises(EdgeError, match="HUB_URL_INSECURE"):
        SyncClient(device, store, http, credential)
    run = CliRunner().invoke(
        cli, ["--data-dir", str(device.data_dir), "sync", "enroll", "http://hub.example.org", "CODE"]
    )
    assert run.exit_code != 0
    assert "HUB_URL_INSECURE" in run.output


# ------------------------------------------------------------------ old devices


def test_an_old_protocol_device_is_told_to_upgrade(hub: Hub, device: Settings) -> None:
    old_bearer = {"Authorization": "Bearer 01a22600-0000-7000-8000-000000000001.s3cret"}
    for headers in (old_bearer, {protocol.HEADER_PROTOCOL: "1"}, {protocol.HEADER_PROTOCOL: "99"}):
        answer = hub.client.get(REVIEWS, headers=headers)
        assert code_of(answer) == (426, WireCode.UPGRADE_REQUIRED)
        assert "upgrade the device software" in answer.json()["message"]
    version_1_enrolment = {"code": "a-code-of-sorts", "device_name": "old", "site": ""}
    answer = hub.client.post("/v1/enroll", json=version_1_enrolment)
    assert code_of(answer) == (426, WireCode.UPGRADE_REQUIRED)
    # The device shows it (`edge sync status`, the TUI): a device sending version 1 headers.
    credential = hub.enroll(device)

    def as_version_1(request: httpx.Request) -> httpx.Response:
        request.headers[protocol.HEADER_PROTOCOL] = "1"
        return hub.client._transport.handle_request(request)

    old = httpx.Client(transport=httpx.MockTransport(as_version_1), base_url="http://testserver")
    with Store(device.data_dir) as store:
        assert not run_round(SyncClient(device, store, old, credential))
        status = sync_status(device, store)
    assert status["state"] == "upgrade required"
    assert "UPGRADE_REQUIRED" in status["last_error"]
    assert f"speaking sync protocol {protocol.VERSION}" in status["last_error"]


def test_a_protocol_1_credential_on_the_device_asks_for_enrolment(device: Settings) -> None:
    path = Credential.path(device)
    path.parent.mkdir(parents=True)
    path.write_text('{"hub_url": "https://hub.example.org", "device_id": "d", "secret": "s3cret"}')
    assert Credential.load(device) is None  # `edge sync run` says: run `edge sync enroll`


# ------------------------------------------------------------------ revocation


def hub_cli(hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("EDGE_HUB__DATABASE_URL", str(hub.engine.url))
    run = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "cli"), "hub", *args])
    return run.exit_code, run.output


def test_revocation_from_the_command_line_blocks_the_next_request(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credential = hub.enroll(device, "ward-3")
    with Store(device.data_dir) as store:
        client = SyncClient(device, store, hub.client, credential)
        assert client.pull_reviews() == 0
        status, listed = hub_cli(hub, monkeypatch, tmp_path, "devices", "list")
        assert status == 0
        assert credential.device_id in listed
        assert "active" in listed
        assert hub_cli(hub, monkeypatch, tmp_path, "devices", "revoke", credential.device_id)[0] == 0
        with pytest.raises(HubRefused) as refused:
            client.pull_reviews()
        assert (refused.value.status, refused.value.code) == (403, WireCode.DEVICE_REVOKED)
        assert "revoked: re-enrol" in str(refused.value)
        assert not run_round(client)
        status = sync_status(device, store)
        assert status["state"] == "revoked"
        assert "revoked: re-enrol" in status["last_error"]
    status, listed = hub_cli(hub, monkeypatch, tmp_path, "devices", "list", "--json")
    assert '"state": "revoked"' in listed
    again = hub_cli(hub, monkeypatch, tmp_path, "devices", "revoke", credential.device_id)
    assert again[0] != 0
    assert "NOT_FOUND" in again[1]
    assert audit_actions(hub)[-1] == ("cli", "device.revoked", credential.device_id)
    # Re-enrolled with a new code: a new key and a new id, and it syncs again.
    fresh = hub.enroll(device, "ward-3")
    assert fresh.device_id != credential.device_id
    with Store(device.data_dir) as store:
        assert SyncClient(device, store, hub.client, fresh).pull_reviews() == 0


def test_a_revoked_code_cannot_enrol(
    hub: Hub, device: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    code = devices.create_enroll_code(hub.engine)
    status, listed = hub_cli(hub, monkeypatch, tmp_path, "codes", "list")
    assert status == 0
    assert "unused" in listed
    assert code not in listed
    assert hub_cli(hub, monkeypatch, tmp_path, "codes", "revoke", code)[0] == 0
    with pytest.raises(EdgeError, match="ENROLL_REFUSED"):
        enroll(device, "http://testserver", code, "late", hub.client, insecure=True)
    assert "revoked" in hub_cli(hub, monkeypatch, tmp_path, "codes", "list", "--json")[1]
    # A used code made a device: it is the device that is revoked.
    used = devices.create_enroll_code(hub.engine)
    enroll(device, "http://testserver", used, "on-time", hub.client, insecure=True)
    refused = hub_cli(hub, monkeypatch, tmp_path, "codes", "revoke", used)
    assert refused[0] != 0
    assert "revoke it" in refused[1]
    assert code not in str(audit_rows(hub))  # the audit names codes by id only


def test_revocation_from_the_admin_page(hub: Hub, device: Settings) -> None:
    accounts.create_user(hub.engine, "chief", REVIEW_PASSWORD, "administrator", ("*",))
    admin = TestClient(hub.app, base_url="http://testserver")
    assert login(admin, "chief") == 303
    credential = hub.enroll(device, "ward-9")
    code = devices.create_enroll_code(hub.engine)
    [code_id] = [row["id"] for row in devices.list_codes(hub.engine) if row["state"] == "unused"]
    page = admin.get("/review/admin").text
    assert f"/admin/devices/{credential.device_id}/revoke" in page
    assert f"/admin/enroll-codes/{code_id}/revoke" in page
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    # Without the form's token: refused, nothing revoked.
    assert admin.post(f"/review/admin/devices/{credential.device_id}/revoke").status_code == 403
    assert hub.client.get(REVIEWS, headers=credential.headers("GET", REVIEWS, b"")).status_code == 200
    revoked = admin.post(f"/review/admin/devices/{credential.device_id}/revoke", data={"csrf": token})
    assert revoked.status_code == 200
    assert "revoked" in revoked.text
    assert code_of(hub.client.get(REVIEWS, headers=credential.headers("GET", REVIEWS, b""))) == (
        403,
        WireCode.DEVICE_REVOKED,
    )
    assert admin.post(f"/review/admin/enroll-codes/{code_id}/revoke", data={"csrf": token}).status_code == 200
    with pytest.raises(EdgeError, match="ENROLL_REFUSED"):
        enroll(device, "http://testserver", code, "late", hub.client, insecure=True)
    assert [a for actor, a, _ in audit_actions(hub) if actor == "chief" and a.endswith(".revoked")] == [
        "device.revoked",
        "enroll_code.revoked",
    ]
    admin.close()


def test_the_admin_page_lists_devices_a_page_at_a_time_and_finds_one(hub: Hub) -> None:
    """A programme's thousands of devices were one page, a form each: a page holds 100, with
    their count, the pages either side, and a search by name, site, programme or id."""
    from sqlalchemy import insert

    rows = [
        {
            "id": f"dev-{i:04d}",
            "name": f"clinic-{i:04d}",
            "site": "Ward_7" if i == 123 else f"site-{i % 5}",
            "programme": "tb",
            "credential_hash": "",
            "created_at": "2026-12-01T00:00:00+00:00",
            "public_key": "ab" * 32,
        }
        for i in range(250)
    ]
    with hub.engine.begin() as conn:
        conn.execute(insert(db.devices), rows)
    accounts.create_user(hub.engine, "chief", REVIEW_PASSWORD, "administrator", ("*",))
    admin = TestClient(hub.app, base_url="http://testserver")
    assert login(admin, "chief") == 303
    page = admin.get("/review/admin").text
    assert "250 device(s), page 1 of 3" in page
    assert 'rel="next" href="/review/admin?devices_q=&amp;devices_page=2#devices"' in page
    listed = [re.findall(r"<tr><td>(clinic-\d+)</td>", page)]
    for number in (2, 3):
        listed.append(
            re.findall(r"<tr><td>(clinic-\d+)</td>", admin.get(f"/review/admin?devices_page={number}").text)
        )
    assert [len(names) for names in listed] == [100, 100, 50]
    assert len({name for names in listed for name in names}) == 250  # each once, none left out
    last = admin.get("/review/admin", params={"devices_page": "99"}).text
    assert "page 3 of 3" in last
    assert 'rel="next"' not in last
    found = admin.get("/review/admin", params={"devices_q": "ward_7"}).text  # any case; "_" is no wildcard
    assert "1 device(s) matching" in found
    assert "clinic-0123" in found
    assert "clinic-0124" not in found
    assert "No device matches." in admin.get("/review/admin", params={"devices_q": "nowhere%"}).text
    assert admin.get("/review/admin", params={"devices_page": "x"}).status_code == 200
    admin.close()


def audit_rows(hub: Hub) -> list[dict[str, object]]:
    with hub.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(db.audit).order_by(db.audit.c.id))]


def audit_actions(hub: Hub) -> list[tuple[str, str, str | None]]:
    return [(str(r["actor"]), str(r["action"]), r["device_id"]) for r in audit_rows(hub)]  # type: ignore[misc]


def test_the_hub_app_still_builds_on_a_protocol_1_database(tmp_path: Path) -> None:
    """A hub upgraded in place: the new columns are added; its old devices must re-enrol."""
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE devices (id VARCHAR(36) PRIMARY KEY, name VARCHAR(64) NOT NULL, site VARCHAR(64)"
            " NOT NULL, programme VARCHAR(64) NOT NULL, credential_hash VARCHAR(64) NOT NULL, created_at"
            " VARCHAR(32) NOT NULL, last_seen_at VARCHAR(32), revoked_at VARCHAR(32))"
        )
        conn.execute("INSERT INTO devices VALUES ('old-1', 'old', '', 'default', 'abc', '2026', NULL, NULL)")
    engine = db.make_engine(f"sqlite:///{path}")
    create_app(load_settings(data_dir=tmp_path / "h"), engine)
    assert [d["state"] for d in devices.list_devices(engine)] == ["re-enrol"]


def test_the_tui_shows_a_revoked_device_as_such(tmp_path: Path) -> None:
    """What the technician sees after an administrator revoked the box: the sync panel's state
    and the sentence saying what to do, from the real sync state the round recorded."""
    import asyncio

    from textual.widgets import Static

    from edge.operations.health import snapshot
    from tests.tui_fixtures import build_app, fixed_health, settle, tui_settings

    hub = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    settings = tui_settings(tmp_path / "data")
    credential = hub.enroll(settings, "ward-5")
    devices.revoke_device(hub.engine, credential.device_id, actor="test")
    with Store(settings.data_dir) as store:
        assert not run_round(SyncClient(settings, store, hub.client, credential))
    app = build_app(settings, health=fixed_health(snapshot))

    async def run() -> tuple[str, str]:
        async with app.run_test(size=(120, 30)) as pilot:
            await settle(pilot)
            await pilot.press("3")
            await settle(pilot)
            texts = [str(app.screen.query_one(s, Static).render()) for s in ("#sync-state", "#sync-error")]
            return texts[0], texts[1]

    state, error = asyncio.run(run())
    assert "REVOKED" in state
    assert "enrol it again" in state
    assert "revoked: re-enrol" in " ".join(error.split())
    hub.client.close()
