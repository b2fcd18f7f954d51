"""A file whose preparation kills the sync service does not stop the files queued after it.

A large film in the service's memory cap was one (`edge.sync.preparing`): MemoryMax killed the
service, systemd restarted it, and it began with the same film again, for ever. Here the death
is real (SIGKILL, in a child process, in the middle of preparing the first file), as are the
store, the record of what was being prepared, and the hub the rest goes to.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Settings, load_settings
from edge.pipeline import Pipeline
from edge.store import Store
from edge.sync import preparing
from edge.sync.credential import Credential
from edge.sync.preparing import MAX_DEATHS, PreparationRecord
from edge.sync.runner import exchange
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.hubfixtures import Hub, sqlite_hub  # noqa: F401 - sqlite_hub: the hub fixture

# A sync process that dies (SIGKILL: what the OOM killer sends) while it prepares one file (an
# image and a kind, on its command line), and prepares every other file as the product does;
# its hub cannot be reached.
_DIES_ON_ONE_FILE = """
import os, signal, sys
import httpx
from edge.config import load_settings
from edge.store import Store
from edge.sync.client import SyncClient
from edge.sync.credential import Credential
from edge.sync.outgoing import PixelGuard

settings = load_settings(data_dir=sys.argv[1], models={"dir": sys.argv[2]}, sync={"images": "thumbnails"})
poison = tuple(sys.argv[3:5])
real = PixelGuard.prepare

def prepare(self, kind, image, *args, **kwargs):
    if (image.get("id"), kind) == poison:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, kind, image, *args, **kwargs)

PixelGuard.prepare = prepare
with Store(settings.data_dir) as store:
    unreachable = httpx.Client(base_url="http://127.0.0.1:9")
    SyncClient(settings, store, unreachable, Credential.load(settings)).push_files()
"""


def _device(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"})


def test_a_file_that_kills_the_sync_is_withheld_and_the_rest_go(hub: Hub, tmp_path: Path) -> None:
    device = _device(tmp_path)
    paths = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:3]
    with Store(device.data_dir) as store:
        pipeline = Pipeline(device, store)
        assert all(a.ok for path in paths for a in pipeline.analyse_file(path))
        pipeline.close()
        client = hub.sync_client(device, store, hub.enroll(device))
        assert client.push_results() == 3
        assert client.queue_uploads() == 6  # a thumbnail and a heatmap each
        first = store.outbox.pending_outbox(["thumbnail", "heatmap"], 1)[0]
        poison = json.loads(first["payload"])["image_id"]

    def sync_process() -> subprocess.CompletedProcess[bytes]:
        command = [
            sys.executable,
            "-c",
            _DIES_ON_ONE_FILE,
            str(device.data_dir),
            str(MODELS),
            poison,
            first["kind"],
        ]
        return subprocess.run(command, capture_output=True, timeout=120, check=False)

    for death in range(1, MAX_DEATHS + 1):  # systemd starts it again after each
        child = sync_process()
        assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
        record = json.loads((device.data_dir / "sync" / "preparing.json").read_text())
        assert (record["row"], record["starts"]) == (first["id"], death)
    child = sync_process()  # past that file now: it stops at the hub it cannot reach
    assert child.returncode == 1, child.stderr.decode()[-2000:]
    assert "PIXELS_WITHHELD" in child.stderr.decode()

    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, Credential.load(device))
        counts = exchange(client)
        assert counts["files"] == 5  # every other file, the same image's heatmap too (its own tries)
        assert store.outbox.pending_counts() == {}
        note = store.db.execute("SELECT last_error FROM outbox WHERE id = ?", [first["id"]]).fetchone()[0]
        assert note.startswith("withheld (PIXELS_WITHHELD): the sync service stopped 3 times")
        audits = [json.loads(row["detail"]) for row in store.audit_rows("pixels.withheld")]
        assert audits == [
            {"code": "PIXELS_WITHHELD", "kind": first["kind"], "reason": "preparation_killed", "deaths": 3}
        ]
    assert not (device.data_dir / "sync" / "preparing.json").exists()


def test_only_deaths_in_this_boot_and_in_the_middle_of_the_work_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = PreparationRecord(tmp_path / "sync" / "preparing.json")
    monkeypatch.setattr(preparing, "boot_id", lambda: "boot-a")
    assert record.begin("row-1") == 0
    assert PreparationRecord(record.path).begin("row-1") == 1  # a new process: the first died
    assert PreparationRecord(record.path).begin("row-1") == 2
    monkeypatch.setattr(preparing, "boot_id", lambda: "boot-b")  # a power cut: not the file's doing
    assert PreparationRecord(record.path).begin("row-1") == 0
    record.end()  # finished (sent, withheld or failed): forgotten
    assert PreparationRecord(record.path).begin("row-1") == 0
    assert PreparationRecord(record.path).begin("row-2") == 0  # another file starts afresh
    record.path.write_text("{torn")
    assert PreparationRecord(record.path).begin("row-2") == 0
    record.end()
    record.end()  # nothing to clear: fine
