"""What the PACS export tests share: a store with results of DICOM and PNG inputs (the tiny
model, heatmaps on), a C-STORE receiver in this process, and Orthanc started in a temporary
directory."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    ComprehensiveSRStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from edge.config import Settings, load_settings
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import gradient, png_bytes
from tests.tinymodel import make_model_dir
from tools import dicomgen

STUDY_UID = "1.2.826.0.1.3680043.8.498.1111"
# Debian installs it in /usr/sbin, which a non-root user's PATH lacks
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pacs_settings(tmp_path: Path, port: int, **pacs: Any) -> Settings:
    if not (tmp_path / "models" / "tiny").exists():
        make_model_dir(tmp_path / "models")
    return load_settings(
        data_dir=tmp_path / "data",
        site="test-site",
        models={"dir": tmp_path / "models", "default": "tiny"},
        pacs={
            "enabled": True,
            "host": "127.0.0.1",
            "port": port,
            "called_ae": "ORTHANC",
            "calling_ae": "EDGE",
            "timeout_s": 5,
            "interval_s": 0.2,
            "max_backoff_s": 1,
            **pacs,
        },
    )


def chest_dicom(index: int, study_uid: str = STUDY_UID) -> bytes:
    """A CR chest film of the one test study, different pixels (and SOP Instance UID) per index."""
    pixels = np.roll(gradient(64, 48), index * 3, axis=1)
    ds = dicomgen.grey_dicom(
        dicomgen.twelve_bit(pixels), bits_stored=12, window=(2048, 4096), uid_seed=f"pacs-{index}"
    )
    ds.StudyInstanceUID = study_uid
    ds.PatientName = "Pacs^Synthetic"
    ds.PatientID = "SYNTH-PACS-1"
    ds.PatientBirthDate = "20200101"
    ds.IssuerOfPatientID = "SYNTH"
    ds.InstanceNumber = index + 1
    return dicomgen.to_bytes(ds)


def analyse(settings: Settings, tmp_path: Path, *, dicoms: int, pngs: int = 0) -> list[str]:
    """Analyse `dicoms` chest films and `pngs` PNG files; the result ids."""
    ids = []
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        try:
            inputs = [(f"cr-{i}.dcm", chest_dicom(i)) for i in range(dicoms)]
            inputs += [(f"png-{i}.png", png_bytes(np.roll(gradient(), i, axis=0))) for i in range(pngs)]
            for name, data in inputs:
                path = tmp_path / name
                path.write_bytes(data)
                [analysis] = pipeline.analyse_file(path)
                assert analysis.ok, analysis.message
                assert analysis.result is not None
                ids.append(analysis.result.id)
        finally:
            pipeline.close()
    return ids


class Receiver:
    """A C-STORE SCP in this process that records every instance it is sent; `answer` picks the
    status per dataset (default success)."""

    def __init__(self, answer: Callable[[Dataset], int] | None = None) -> None:
        self.received: list[Dataset] = []
        self.answer = answer or (lambda _: 0x0000)
        self.port = free_port()
        self._lock = threading.Lock()
        ae = AE(ae_title="ORTHANC")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage, Verification):
            ae.add_supported_context(sop_class)
        self._server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_C_ECHO, lambda _: 0x0000)],
        )

    def _store(self, event: Any) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        with self._lock:
            self.received.append(dataset)
        return self.answer(dataset)

    def uids(self) -> Counter[str]:
        with self._lock:
            return Counter(str(ds.SOPInstanceUID) for ds in self.received)

    def close(self) -> None:
        self._server.shutdown()


class Orthanc:
    """Orthanc (Debian's `orthanc`) in a temporary directory on free ports; `slow_s` makes it
    take that long per stored instance (a Lua filter), so a test can kill a sender mid-export."""

    def __init__(self, folder: Path, slow_s: float = 0.0) -> None:
        assert ORTHANC is not None
        self.http_port, self.dicom_port = free_port(), free_port()
        folder.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "Name": "edge-test",
            "StorageDirectory": str(folder / "db"),
            "IndexDirectory": str(folder / "db"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
        }
        if slow_s:
            (folder / "slow.lua").write_text(
                "function ReceivedInstanceFilter(dicom, origin, info)\n"
                f"  local t = os.clock() while os.clock() - t < {slow_s} do end\n  return true\nend\n"
            )
            config["LuaScripts"] = [str(folder / "slow.lua")]
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = (folder / "orthanc.log").open("wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}", timeout=10)
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.http.get("/system").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc did not start: {(folder / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.1)

    def store(self, data: bytes) -> None:
        self.http.post("/instances", content=data).raise_for_status()

    def instance_count(self) -> int:
        return int(self.http.get("/statistics").json()["CountInstances"])

    def series_of_study(self, study_uid: str) -> list[dict[str, Any]]:
        found = self.http.post(
            "/tools/find",
            json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
        )
        found.raise_for_status()
        return list(found.json())

    def instance_tags(self, series: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            self.http.get(f"/instances/{instance}/simplified-tags").json() for instance in series["Instances"]
        ]

    def file(self, instance: str) -> bytes:
        return self.http.get(f"/instances/{instance}/file").content

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.http.close()
        self.log.close()


@contextmanager
def orthanc(folder: Path, slow_s: float = 0.0) -> Iterator[Orthanc]:
    server = Orthanc(folder, slow_s)
    try:
        yield server
    finally:
        server.close()
