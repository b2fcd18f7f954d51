"""A real PACS forwarding a mixed study to the device (issue 18): Orthanc (the distribution's
package), started per test in a temporary directory on free ports, sends chest films, a CT, an
MR, a hand film and pixels nobody decodes by C-MOVE and by its REST store. Every instance must be
stored and every chest film analysed; Orthanc used to abort the whole transfer at the first
instance the device would not analyse, losing the chest films with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge.config import Settings
from edge.store import Store
from tests.pacs_study import Instance, expected, mixed_study, outcome
from tests.test_dicom_listener import Listening, free_port
from tests.test_dicom_store_semantics import analyse_queue, listener_settings
from tools import dcmtk

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
MOVESCU = dcmtk.tool("movescu")


def orthanc_or_skip() -> None:
    if not Path(ORTHANC).exists() or not Path(MOVESCU).exists():
        if os.environ.get("CI"):
            pytest.fail("Orthanc or dcmtk is missing: .ci/run must apt-get install orthanc dcmtk")
        pytest.skip("Orthanc is not installed (apt-get install orthanc)")


class Orthanc:
    """One Orthanc process with its own configuration, storage and ports."""

    def __init__(self, folder: Path, device_port: int) -> None:
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "edge-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomAlwaysAllowMove": True,
            "DicomAlwaysAllowFind": True,
            "DicomModalities": {"edge": ["EDGE", "127.0.0.1", device_port]},
            "DicomScuTimeout": 30,
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = (folder / "orthanc.log").open("w")
        self.process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=self.url, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/system").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not start: see {folder / 'orthanc.log'}")
            time.sleep(0.2)

    def upload(self, instances: list[Instance]) -> str:
        """Store the instances in Orthanc over REST; the study's Orthanc id."""
        ids = set()
        for instance in instances:
            answer = self.http.post("/instances", content=instance.path.read_bytes())
            answer.raise_for_status()
            ids.add(answer.json()["ParentStudy"])
        assert len(ids) == 1
        return ids.pop()

    def close(self) -> None:
        self.http.close()
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


@pytest.fixture
def pacs(settings: Settings, tmp_path: Path) -> Iterator[tuple[Listening, Orthanc, list[Instance], str]]:
    orthanc_or_skip()
    configured = listener_settings(settings, allowed_callers=["ORTHANC"])
    instances = mixed_study(tmp_path / "study")
    with Listening(configured) as device:
        orthanc = Orthanc(tmp_path / "orthanc", configured.dicom.port)
        try:
            study = orthanc.upload(instances)
            yield device, orthanc, instances, study
        finally:
            orthanc.close()


def _check_everything_stored_and_the_chest_films_analysed(
    device: Listening, instances: list[Instance]
) -> None:
    assert device.listener.stored == len(instances)
    analyse_queue(device.settings)
    with Store(device.settings.data_dir) as store:
        assert outcome(store) == expected(instances)  # 11 stored, 6 analysed, 4 not, 1 lateral refused
        stored_uids = {row[0] for row in store.db.execute("SELECT sop_instance_uid FROM images")}
    assert stored_uids == {i.sop_instance_uid for i in instances}


def test_orthanc_c_move_of_a_mixed_study(pacs: tuple[Listening, Orthanc, list[Instance], str]) -> None:
    device, orthanc, instances, _ = pacs
    study_uid = orthanc.http.get(f"/studies/{_}").json()["MainDicomTags"]["StudyInstanceUID"]
    command = [
        MOVESCU,
        "-v",
        "-S",
        "-aet",
        "MOVESCU",
        "-aec",
        "ORTHANC",
        "-aem",
        "EDGE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "127.0.0.1",
        str(orthanc.dicom_port),
    ]
    moved = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert moved.returncode == 0, moved.stderr
    # Success, not "Warning" or "Failed": no sub-operation failed (it was Failed: UnableToProcess)
    assert "Received Final Move Response (Success)" in moved.stderr, moved.stderr
    _check_everything_stored_and_the_chest_films_analysed(device, instances)


def test_orthanc_rest_store_of_a_mixed_study(pacs: tuple[Listening, Orthanc, list[Instance], str]) -> None:
    device, orthanc, instances, study = pacs
    answer = orthanc.http.post("/modalities/edge/store", json={"Resources": [study], "Synchronous": True})
    assert answer.status_code == 200, answer.text  # Orthanc answered HTTP 500 at the first 0xC000
    assert answer.json()["InstancesCount"] == len(instances), answer.text
    assert answer.json()["FailedInstancesCount"] == 0, answer.text
    _check_everything_stored_and_the_chest_films_analysed(device, instances)
