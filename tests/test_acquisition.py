"""The acquisition time and pixel spacing travel to the hub (issue 20, via 21): read from the
DICOM header at ingest, date-shifted like every date, shown on the worklist and used by the
ruler; an image stored before they were read sends the payload it always sent (its queued
result keeps its hash)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from edge.hub import presenters
from edge.hub.worklist import WorklistRow
from edge.imaging import acquisition
from edge.imaging.dicom import technical_meta
from edge.sync import protocol
from edge.sync.deid import Deidentifier
from tests.test_deid_markers import _result
from tools import dicomgen

_ROW = {
    "record_id": 1,
    "device_id": "d",
    "result_uuid": "u",
    "received_at": "2026-12-01T08:00:00.000Z",
    "urgent": False,
    "modality": None,
    "body_part": None,
    "view": None,
    "age_years": None,
    "sex": None,
    "finding": None,
    "model": None,
    "model_version": None,
    "probability": None,
    "threshold": None,
    "patient": None,
    "study_date": None,
    "scope": None,
    "device_name": "n",
    "site": "s",
    "verdict": None,
    "reviewer": None,
    "reviews": 0,
}


def _dicom(**extra: object) -> Dataset:
    stored = np.arange(64, dtype=np.uint16).reshape(8, 8)
    return dicomgen.grey_dicom(stored, bits_stored=12, extra=dict(extra))


def test_the_header_says_when_and_at_what_scale() -> None:
    meta = technical_meta(_dicom(AcquisitionDateTime="20261129101112.5", PixelSpacing=[0.139, 0.14]))
    assert meta["acquired"] == "2026-11-29T10:11:12"
    assert meta["pixel_spacing"] == [0.139, 0.14]
    assert meta["imager_pixel_spacing"] is None
    content = technical_meta(
        _dicom(ContentDate="20261128", ContentTime="0905", ImagerPixelSpacing=[0.2, 0.2])
    )
    assert content["acquired"] == "2026-11-28T09:05:00"
    assert content["imager_pixel_spacing"] == [0.2, 0.2]
    region = Dataset()
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX, region.PhysicalDeltaY = 0.02, 0.025
    ultrasound = technical_meta(_dicom(SequenceOfUltrasoundRegions=Sequence([region])))
    assert ultrasound["ultrasound_region_spacing"] == [0.25, 0.2]
    nonsense = technical_meta(_dicom(AcquisitionDateTime="20261340", PixelSpacing=[0, 1]))
    assert (nonsense["acquired"], nonsense["pixel_spacing"]) == (None, None)
    assert acquisition.moment("Jeanne Moreau") is None


def test_the_payload_carries_them_shifted_and_an_older_image_keeps_its_hash() -> None:
    deid = Deidentifier(b"k" * 32)
    image = {"id": "i1", "format": "dicom", "width": 8, "height": 8, "frames": 1}
    study = {"id": "s1", "study_uid": "1.2.3", "modality": "CR", "study_date": "20261129"}
    before = {"view_position": "PA"}  # what an image stored by the previous version holds
    old = deid.result_payload(_result({}), study, {**image, "meta": before}, None, "site-1")
    assert "acquired" not in old["image"]
    assert "pixel_spacing" not in old["image"]
    assert protocol.payload_hash(old) == protocol.payload_hash(
        Deidentifier(b"k" * 32).result_payload(
            _result({}), study, {**image, "meta": dict(before)}, None, "site-1"
        )
    )
    after = {**before, "acquired": "2026-11-29T10:11:12", "pixel_spacing": [0.139, 0.14]}
    new = deid.result_payload(_result({}), study, {**image, "meta": after}, None, "site-1")
    shifted_day = new["study"]["study_date"]
    assert new["image"]["acquired"] == f"{shifted_day[:4]}-{shifted_day[4:6]}-{shifted_day[6:]}T10:11:12"
    assert new["image"]["pixel_spacing"] == [0.139, 0.14]
    hostile = {**before, "acquired": "Jeanne Moreau", "pixel_spacing": ["Moreau", 1]}
    refused = deid.result_payload(_result({}), study, {**image, "meta": hostile}, None, "site-1")
    assert refused == old  # neither free text nor a half-number rides along
    removed = Deidentifier(b"k" * 32, "remove").result_payload(
        _result({}), study, {**image, "meta": after}, None, "site-1"
    )
    assert "acquired" not in removed["image"]


def test_the_worklist_shows_the_acquisition_time_and_the_ruler_the_region_calibration() -> None:
    from types import SimpleNamespace

    row = WorklistRow(
        **_ROW,
        analysed="2026-11-30T07:15:02Z",
        acquired="2026-11-29T10:11:12",
    )
    when, source = presenters.acquired(row)
    assert when == "2026-11-29 10:11"
    assert "acquisition time" in source
    study = SimpleNamespace(
        part=lambda name: {"ultrasound_region_spacing": [0.25, 0.2]} if name == "image" else {}
    )
    assert presenters.pixel_spacing(study) == {  # type: ignore[arg-type]
        "row": 0.25,
        "column": 0.2,
        "source": "SequenceOfUltrasoundRegions",
    }


def test_a_png_carries_its_files_time_said_so(tmp_path: Path) -> None:
    import os
    import shutil

    from edge.config import load_settings
    from edge.pipeline import Pipeline
    from edge.store import Store
    from tests.conftest import DEFAULT_MODEL, MODELS

    sample = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[0]
    dropped = shutil.copy(sample, tmp_path / "xray.png")
    moment = datetime(2026, 11, 29, 10, 11, 12).timestamp()
    os.utime(dropped, (moment, moment))
    settings = load_settings(data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"dates": "keep"})
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        (analysis,) = pipeline.analyse_file(Path(dropped))
        pipeline.close()
        assert analysis.result is not None
        image = store.image(analysis.result.image_id) or {}
        meta = json.loads(image["meta"])
        assert (meta["acquired"], meta["acquired_from"]) == ("2026-11-29T10:11:12", "file")
        study = dict(store.db.execute("SELECT * FROM studies WHERE id = ?", [image["study_id"]]).fetchone())
        payload = Deidentifier(b"k" * 32, "keep").result_payload(
            analysis.result, study, {**image, "meta": meta}, None, "site-1"
        )
    assert (payload["image"]["acquired"], payload["image"]["acquired_from"]) == (
        "2026-11-29T10:11:12",
        "file",
    )
    row = WorklistRow(**{**_ROW, "acquired": "2026-11-29T10:11:12", "acquired_from": "file"})
    assert "file's time" in presenters.acquired(row)[1]
