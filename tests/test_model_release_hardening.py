"""Model updates over the air (issue 17, item 4): releases in the shipped layout (samples/ and
plots/ folders) publish and install; names that could leave the release's folder are refused by
the hub and by the device; a download streams to disk, stops at the first byte past its signed
size and resumes with a Range after a cut."""

from __future__ import annotations

import hashlib
import shutil
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.cli.base import EXIT_REFUSED
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.hub import db
from edge.store import Store
from edge.sync import protocol, signatures
from edge.sync import releases as model_sync
from edge.sync.client import SyncClient
from edge.sync.credential import Credential, HubUnavailable
from tests.hubfixtures import Hub

PIECE = 64 * 1024


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    running = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    yield running
    running.client.close()


def publish_cli(hub: Hub, release_json: Path) -> Any:
    return CliRunner().invoke(
        cli,
        ["--data-dir", str(hub.settings.data_dir), "hub", "publish", str(release_json)],
        env={"EDGE_HUB__DATABASE_URL": hub.settings.hub.database_url or ""},
    )


def test_a_release_in_the_shipped_layout_publishes_and_installs(hub: Hub, tmp_path: Path) -> None:
    from edge.inference.registry import Registry
    from tests.test_sync import edited_copy
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key, sign_release

    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    newer = edited_copy(
        models / "tiny", tmp_path / "newer" / "tiny", 'version = "0.0.1"', 'version = "0.0.2"'
    )
    (newer / "plots").mkdir()
    (newer / "plots" / "roc.png").write_bytes(b"not really a plot")
    (newer / "notes" / "2026").mkdir(parents=True)
    (newer / "notes" / "2026" / "card.md").write_text("trained on ...")
    sign_release(newer, load_key(tmp_path / "publisher.key"), tmp_path / "release")
    published = publish_cli(hub, tmp_path / "release" / "release.json")
    assert published.exit_code == 0, published.output
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        assert model_sync.pull_models(client) == 1
    assert Registry(models).get("tiny").manifest.version == "0.0.2"
    assert (models / "tiny" / "plots" / "roc.png").read_bytes() == b"not really a plot"
    assert (models / "tiny" / "notes" / "2026" / "card.md").read_text() == "trained on ..."


def signed_release(key: Any, files: dict[str, bytes], version: str = "0.0.2") -> protocol.ModelRelease:
    unsigned = {
        "name": "tiny",
        "version": version,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "sizes": {name: len(data) for name, data in files.items()},
        "manifest": "",
        "signature": "",
    }
    return protocol.ModelRelease(**{**unsigned, "signature": signatures.sign(unsigned, key)})


@pytest.mark.security
@pytest.mark.parametrize(
    "name", ["../evil.txt", "/tmp/evil.txt", "samples//a.png", "./a.png", "a/./b", "a\\b"]
)
def test_the_hub_refuses_to_publish_a_name_outside_the_release(hub: Hub, tmp_path: Path, name: str) -> None:
    from tools.publish_model import keygen, load_key

    keygen(tmp_path / "publisher.key")
    release = signed_release(load_key(tmp_path / "publisher.key"), {name: b"x"})
    folder = tmp_path / "out" / "release"
    folder.mkdir(parents=True)
    (folder / "release.json").write_text(release.model_dump_json())
    published = publish_cli(hub, folder / "release.json")
    assert published.exit_code == EXIT_REFUSED, published.output
    assert "BAD_RELEASE" in published.output
    assert "Traceback" not in published.output


@pytest.mark.security
def test_the_device_refuses_a_signed_release_whose_names_leave_its_folder(hub: Hub, tmp_path: Path) -> None:
    """A hub that skipped its checks (an older hub, or one broken into) offers a signed release
    naming ../../evil.txt; the device writes nothing outside its staging folder."""
    from tools.publish_model import keygen, load_key

    public = keygen(tmp_path / "publisher.key")
    release = signed_release(load_key(tmp_path / "publisher.key"), {"../../evil.txt": b"owned"})
    stored = hub.settings.hub_dir / "files" / "releases" / "tiny" / "0.0.2"
    (stored / "../../evil.txt").parent.mkdir(parents=True, exist_ok=True)
    (stored / "../../evil.txt").write_bytes(b"owned")
    with hub.engine.begin() as conn:
        conn.execute(
            db.releases.insert().values(
                name="tiny",
                version="0.0.2",
                programme="default",
                release=release.model_dump(),
                created_at=db.now(),
            )
        )
    device = load_settings(
        data_dir=tmp_path / "dev", models={"dir": tmp_path / "models"}, sync={"public_key": public}
    )
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        assert model_sync.pull_models(client) == 0
        refused = store.outbox.sync_state()["models_refused"]
    assert refused["tiny 0.0.2"].startswith("MODEL_MANIFEST_INVALID")
    assert not list(device.data_dir.rglob("evil.txt"))


# ------------------------------------------------------------------ streaming, on a scripted hub


class ScriptedHub:
    """An httpx transport serving one release file: `body` from the Range's offset, optionally
    cut after `cut_at` bytes; counts the bytes it was asked to produce."""

    def __init__(self, body_size: int, fill: bytes = b"m", cut_at: int | None = None) -> None:
        self.body_size, self.fill, self.cut_at = body_size, fill, cut_at
        self.produced = 0
        self.ranges: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.ranges.append(request.headers.get("range"))
        start = int(request.headers["range"][6:-1]) if "range" in request.headers else 0

        def pieces() -> Iterator[bytes]:
            sent = start
            while sent < self.body_size:
                if self.cut_at is not None and sent >= self.cut_at:
                    self.cut_at = None
                    raise httpx.ReadError("the link dropped")
                piece = self.fill * min(PIECE, self.body_size - sent)
                self.produced += len(piece)
                sent += len(piece)
                yield piece

        return httpx.Response(206 if start else 200, content=pieces())


def scripted_client(tmp_path: Path, transport: ScriptedHub) -> tuple[Settings, httpx.Client, Credential]:
    settings = load_settings(data_dir=tmp_path / "dev")
    http = httpx.Client(transport=httpx.MockTransport(transport))
    return settings, http, Credential("https://hub", "device", key=signatures.new_device_key())


@pytest.mark.security
def test_a_download_stops_at_the_first_byte_past_its_signed_size(tmp_path: Path) -> None:
    """The attack: a 400 MB file for a release took the device to 937 MB, buffered whole."""
    from tools.publish_model import keygen, load_key

    keygen(tmp_path / "publisher.key")
    signed = 1024 * 1024
    release = signed_release(load_key(tmp_path / "publisher.key"), {"model.onnx": b"m" * signed})
    hub = ScriptedHub(body_size=64 * 1024 * 1024)  # the hub sends 64 MB instead
    settings, http, credential = scripted_client(tmp_path, hub)
    target = tmp_path / "staging" / "model.onnx"
    target.parent.mkdir()
    with Store(settings.data_dir) as store:
        client = SyncClient(settings, store, http, credential)
        tracemalloc.start()
        try:
            with pytest.raises(EdgeError) as refused:
                model_sync._download(client, release, "model.onnx", target)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert refused.value.code is Code.MODEL_SIZE_MISMATCH
    assert hub.produced <= signed + 2 * PIECE  # a piece past it, then no more
    assert peak < 8 * 1024 * 1024
    assert list(target.parent.iterdir()) == []  # no partial file left to resume from


def test_a_cut_download_resumes_with_a_range_and_is_verified(tmp_path: Path) -> None:
    from tools.publish_model import keygen, load_key

    keygen(tmp_path / "publisher.key")
    size = 5 * PIECE
    release = signed_release(load_key(tmp_path / "publisher.key"), {"samples/a.png": b"s" * size})
    hub = ScriptedHub(body_size=size, fill=b"s", cut_at=2 * PIECE)
    settings, http, credential = scripted_client(tmp_path, hub)
    target = tmp_path / "staging" / "samples" / "a.png"
    target.parent.mkdir(parents=True)
    with Store(settings.data_dir) as store:
        client = SyncClient(settings, store, http, credential)
        with pytest.raises(HubUnavailable):
            model_sync._download(client, release, "samples/a.png", target)
        assert (target.parent / "a.png.part").stat().st_size == 2 * PIECE
        model_sync._download(client, release, "samples/a.png", target)
    assert hub.ranges == [None, f"bytes={2 * PIECE}-"]
    assert target.read_bytes() == b"s" * size
    shutil.rmtree(target.parent)


def test_a_release_file_gone_from_the_hubs_disk_is_no_such_file(hub: Hub, tmp_path: Path) -> None:
    from tests.test_sync import signed_headers
    from tools.publish_model import keygen, load_key

    keygen(tmp_path / "publisher.key")
    release = signed_release(load_key(tmp_path / "publisher.key"), {"samples/a.png": b"a"})
    folder = tmp_path / "out"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "a.png").write_bytes(b"a")
    (folder / "release.json").write_text(release.model_dump_json())
    assert publish_cli(hub, folder / "release.json").exit_code == 0
    credential = hub.enroll(load_settings(data_dir=tmp_path / "dev"))
    path = "/v1/models/tiny/0.0.2/samples/a.png"
    assert hub.client.get(path, headers=signed_headers(credential, "GET", path, b"")).content == b"a"
    (hub.settings.hub_dir / "files" / "releases" / "tiny" / "0.0.2" / "samples" / "a.png").unlink()
    gone = hub.client.get(
        path, headers=signed_headers(credential, "GET", path, b"", nonce="second-request-nonce")
    )
    assert (gone.status_code, gone.json()["code"]) == (404, "NO_SUCH_FILE")


def test_a_release_larger_than_the_room_left_is_not_downloaded(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release larger than the free space filled the data disk (the agent then stopped taking
    studies), its partial files stayed, and the sync round died on ENOSPC with no code. Now it
    is DISK_FULL, said in the sync state, nothing downloaded, and tried again next round."""
    from edge.sync.runner import run_round, sync_status
    from tests.test_sync import edited_copy
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key, sign_release

    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    newer = edited_copy(
        models / "tiny", tmp_path / "newer" / "tiny", 'version = "0.0.1"', 'version = "0.0.2"'
    )
    sign_release(newer, load_key(tmp_path / "publisher.key"), tmp_path / "release")
    assert publish_cli(hub, tmp_path / "release" / "release.json").exit_code == 0
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    real = shutil.disk_usage
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        monkeypatch.setattr(
            model_sync.shutil, "disk_usage", lambda _: real(tmp_path)._replace(free=300 << 20)
        )
        assert not run_round(client)
        status = sync_status(device, store)
        assert status["state"] == "failed"
        assert status["last_error"].startswith("DISK_FULL")
        assert not list((device.data_dir / "sync" / "incoming").rglob("*.part"))
        monkeypatch.undo()  # room again
        assert run_round(client)
    from edge.inference.registry import Registry

    assert Registry(models).get("tiny").manifest.version == "0.0.2"


def test_an_update_a_kill_interrupted_is_undone_at_the_next_start(tmp_path: Path) -> None:
    """Killed after the installed version was set aside (and before or after the new one moved
    in, unverified), the model was gone, every film refused, until a later round. The marker the
    install leaves puts the set-aside version back at the next start of sync or the agent."""
    import json

    from edge.inference.registry import Registry
    from tests.tinymodel import make_model_dir

    models = tmp_path / "models"
    make_model_dir(models)
    for new_one_in in (False, True):
        backup = models / ".previous" / "tiny-100"
        backup.parent.mkdir(exist_ok=True)
        (models / ".installing-tiny").write_text(json.dumps({"backup": str(backup)}))
        (models / "tiny").rename(backup)  # ... the kill comes here
        if new_one_in:
            (models / "tiny").mkdir()  # the new version, not yet self-tested
            (models / "tiny" / "model.toml").write_text("not yet verified")
        assert model_sync.recover_installs(models) == ["tiny"]
        assert Registry(models).get("tiny").manifest.version == "0.0.1"
        assert not (models / ".installing-tiny").exists()
    assert model_sync.recover_installs(models) == []  # nothing interrupted: nothing done
