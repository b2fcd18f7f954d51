"""Issue 18 end to end, in one flow: Orthanc (the distribution's package, started in a temporary
directory on free ports) holds a mixed study; it forwards the study to the device's DICOM listener
by C-MOVE; the device stores every instance and its worker analyses the chest films; the PACS
exporter sends each result back as a structured report and a heatmap secondary capture, and both
appear in Orthanc in the source image's own study, the reports readable by dcmtk's `dsrdump`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_settings
from edge.interop import sr
from edge.interop.pacs_export import PacsExporter, pacs_status
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.pacs_study import expected, mixed_study, outcome
from tests.test_dicom_listener import Listening, free_port
from tests.test_dicom_store_semantics import analyse_queue
from tests.test_listener_orthanc import MOVESCU, Orthanc, orthanc_or_skip

pytestmark = pytest.mark.slow


def _series_of_study(orthanc: Orthanc, study_uid: str) -> list[dict[str, Any]]:
    found = orthanc.http.post(
        "/tools/find",
        json={"Level": "Series", "Query": {"StudyInstanceUID": study_uid}, "Expand": True},
    )
    found.raise_for_status()
    return list(found.json())


def _tags(orthanc: Orthanc, instance: str) -> dict[str, Any]:
    answer = orthanc.http.get(f"/instances/{instance}/simplified-tags")
    answer.raise_for_status()
    return dict(answer.json())


def test_a_study_moved_from_orthanc_comes_back_with_reports_and_heatmaps_in_the_same_study(
    tmp_path: Path,
) -> None:
    orthanc_or_skip()
    dsrdump = shutil.which("dsrdump")
    assert dsrdump is not None, "dcmtk is installed (movescu) but dsrdump is not"
    instances = mixed_study(tmp_path / "study")
    device_port = free_port()
    orthanc = Orthanc(tmp_path / "orthanc", device_port)
    try:
        settings = load_settings(
            data_dir=tmp_path / "data",
            models={"dir": MODELS},
            dicom={"enabled": True, "port": device_port, "bind": "127.0.0.1", "allowed_callers": ["ORTHANC"]},
            pacs={
                "enabled": True,
                "host": "127.0.0.1",
                "port": orthanc.dicom_port,
                "called_ae": "ORTHANC",
                "calling_ae": "EDGE",
                "timeout_s": 30,
                "interval_s": 0.2,
                "max_backoff_s": 1,
            },
        )
        study = orthanc.upload(instances)  # the study as the modalities sent it to the PACS
        study_uid = orthanc.http.get(f"/studies/{study}").json()["MainDicomTags"]["StudyInstanceUID"]
        source_series = {s["ID"] for s in _series_of_study(orthanc, study_uid)}
        assert orthanc.http.get("/statistics").json()["CountInstances"] == len(instances)

        # 1. The PACS forwards the whole study to the device by C-MOVE.
        with Listening(settings) as device:
            command = [
                *(MOVESCU, "-v", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "EDGE"),
                *("-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"),
                *("127.0.0.1", str(orthanc.dicom_port)),
            ]
            moved = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
            assert moved.returncode == 0, moved.stderr
            assert "Received Final Move Response (Success)" in moved.stderr, moved.stderr
            assert device.listener.stored == len(instances)

        # 2. The worker analyses what was queued: every instance stored, the chest films analysed.
        analyse_queue(settings)
        with Store(settings.data_dir) as store:
            assert outcome(store) == expected(instances)
            assert {r[0] for r in store.db.execute("SELECT sop_instance_uid FROM images")} == {
                i.sop_instance_uid for i in instances
            }
            analysed = {
                row[1]: row[0]
                for row in store.db.execute(
                    "SELECT results.id, images.sop_instance_uid FROM results JOIN images"
                    " ON images.id = results.image_id"
                )
            }
            assert set(analysed) == {i.sop_instance_uid for i in instances if i.analysed}

            # 3. The exporter sends the results back to the PACS.
            assert PacsExporter(settings, store).run_round()
            status = pacs_status(settings, store)
        assert status["counts"] == {"pending": 0, "sent": 2 * len(analysed), "skipped": 0, "failed": 0}, (
            status
        )

        # 4. Orthanc holds, in the one source study, a report and a heatmap per analysed image.
        assert len(orthanc.http.get("/studies").json()) == 1  # no second study, no second patient
        new_series = [s for s in _series_of_study(orthanc, study_uid) if s["ID"] not in source_series]
        by_modality: dict[str, list[dict[str, Any]]] = {}
        for series in new_series:
            modality = series["MainDicomTags"]["Modality"]
            for instance in series["Instances"]:
                by_modality.setdefault(modality, []).append({"id": instance, **_tags(orthanc, instance)})
        assert sorted(by_modality) == ["OT", "SR"], new_series
        for source_uid, result_id in analysed.items():
            report = next(
                t for t in by_modality["SR"] if t["SOPInstanceUID"] == sr.instance_uid(result_id, "sr")
            )
            heatmap = next(
                t for t in by_modality["OT"] if t["SOPInstanceUID"] == sr.instance_uid(result_id, "heatmap")
            )
            for tags in (report, heatmap):
                assert tags["StudyInstanceUID"] == study_uid
                assert tags["PatientID"] == "SYNTH-PACS"
            assert heatmap["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == source_uid
        assert len(by_modality["SR"]) == len(by_modality["OT"]) == len(analysed)

        # 5. Every report, as the PACS now holds it, reads back as a structured report that names
        # its source image.
        source_of = {sr.instance_uid(result_id, "sr"): source for source, result_id in analysed.items()}
        for index, report in enumerate(by_modality["SR"]):
            path = tmp_path / f"sr-{index}.dcm"
            path.write_bytes(orthanc.http.get(f"/instances/{report['id']}/file").content)
            dumped = subprocess.run(
                [dsrdump, "-Ee", "+Pu", str(path)], capture_output=True, text=True, check=False
            )
            assert dumped.returncode == 0, dumped.stderr
            assert "Imaging Measurement Report" in dumped.stdout
            assert f'"Algorithm Name")="{DEFAULT_MODEL}"' in dumped.stdout
            assert "Calibrated probability of" in dumped.stdout
            assert '"Source of Measurement")=(' in dumped.stdout
            assert f'"{source_of[report["SOPInstanceUID"]]}")>' in dumped.stdout, dumped.stdout
    finally:
        orthanc.close()
