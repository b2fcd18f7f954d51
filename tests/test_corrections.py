"""A corrected instance (issue 14): the same SOP Instance UID with other content the analysis
reads is a new version, analysed anew, with an audit row naming what changed (never the values);
the old result stays, superseded. Identical bytes stay a duplicate; another patient or study
under the UID is a collision, kept alongside; through the DICOM listener, only header
corrections (other pixels under a stored UID are a collision there)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from edge.config import Settings
from edge.errors import Code
from edge.imaging.dicom_changes import changed_fields
from edge.pipeline import Pipeline
from edge.results import Analysis
from edge.store import Corrections, NewImage, Store
from edge.study import StudyInfo
from tests.conftest import DEFAULT_MODEL
from tests.test_dicom_listener import Listening, dcmtk_or_skip, send
from tests.test_dicom_store_semantics import listener_settings
from tests.test_patient_age import _chest_film
from tools import dicomgen


def _variant(original: Path, target: Path, **attributes: Any) -> Path:
    """`original` with some attributes changed (None deletes one); `pixels` flips the image."""
    ds = pydicom.dcmread(original)
    flip = attributes.pop("pixels", False)
    for keyword, value in attributes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    if flip:
        ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    target.write_bytes(dicomgen.to_bytes(ds))
    return target


def _infer(settings: Settings, store: Store, path: Path, model: str | None = None) -> Analysis:
    pipeline = Pipeline(settings, store)
    try:
        [analysis] = pipeline.analyse_file(path, model)
    finally:
        pipeline.close()
    return analysis


def _corrected_rows(store: Store) -> list[dict[str, Any]]:
    return [json.loads(row["detail"]) for row in store.audit_rows("image.corrected")]


def test_a_corrected_header_is_a_new_analysis_and_the_old_result_stays_superseded(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    before = _infer(settings, store, first)
    assert before.ok, before.message
    # The same instance (UID), its body part and age corrected at the modality; analysed with
    # the model named (`edge infer --model`), as no model would take an abdomen by itself.
    fixed = _variant(first, tmp_path / "fixed.dcm", BodyPartExamined="ABDOMEN", PatientAge="045Y")
    after = _infer(settings, store, fixed, DEFAULT_MODEL)
    assert not after.duplicate
    assert after.image_id != before.image_id
    assert after.code == "BODY_PART_NOT_ACCEPTED"  # the new analysis, never the old result
    assert _corrected_rows(store) == [
        {"changed": ["BodyPartExamined", "PatientAge"], "jobs": 1, "supersedes": before.image_id}
    ]
    audit = json.dumps([dict(r) for r in store.audit_rows("image.corrected")])
    assert "ABDOMEN" not in audit  # names only, never values
    assert "045Y" not in audit
    old = store.image(before.image_id)
    assert old is not None
    assert (old["superseded_by"], old["sop_instance_uid"]) == (after.image_id, None)
    assert before.result is not None
    assert store.result(before.result.id) is not None  # kept, not deleted
    uid = pydicom.dcmread(first).SOPInstanceUID
    new = store.image(after.image_id)
    assert new is not None
    assert (new["sop_instance_uid"], new["superseded_by"]) == (uid, None)
    study = store.db.execute("SELECT body_part, patient_age_years FROM studies").fetchone()
    assert tuple(study) == ("ABDOMEN", 45.0)  # the study says what the correction says
    # The technician's worklist reads the old version's result as superseded, the new one not.
    rows = {item.image_id: item for item in store.technician.worklist()}
    assert (rows[before.image_id].superseded, rows[after.image_id].superseded) == (True, False)


def test_a_corrected_age_turns_a_refusal_into_a_result(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientBirthDate="19400101", StudyDate="20260315")
    assert _infer(settings, store, first).code == "AGE_OUT_OF_RANGE"
    fixed = _variant(first, tmp_path / "fixed.dcm", PatientBirthDate="20220101")
    after = _infer(settings, store, fixed)
    assert after.ok, after.message
    assert _corrected_rows(store)[0]["changed"] == ["PatientBirthDate"]


def test_corrected_pixels_give_a_new_result(settings: Settings, store: Store, tmp_path: Path) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    before = _infer(settings, store, first)
    after = _infer(settings, store, _variant(first, tmp_path / "flipped.dcm", pixels=True))
    assert before.ok
    assert after.ok
    assert not after.duplicate
    assert before.result is not None
    assert after.result is not None
    assert after.result.id != before.result.id
    assert _corrected_rows(store)[0]["changed"] == ["pixels"]
    assert store.counts()["results"] == 2


def test_identical_bytes_stay_a_duplicate(settings: Settings, store: Store, tmp_path: Path) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    before = _infer(settings, store, first)
    again = _infer(settings, store, first)
    assert again.duplicate
    assert again.result == before.result
    assert store.counts()["images"] == 1
    assert _corrected_rows(store) == []


def test_what_no_analysis_reads_is_no_correction(settings: Settings, store: Store, tmp_path: Path) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    before = _infer(settings, store, first)
    ds = pydicom.dcmread(first)
    ds.InstitutionName = "Another Clinic"
    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (tmp_path / "rle.dcm").write_bytes(dicomgen.to_bytes(ds))
    again = _infer(settings, store, tmp_path / "rle.dcm")
    assert again.duplicate
    assert again.result == before.result
    assert store.counts()["images"] == 1


@pytest.mark.parametrize(
    "identity", [{"PatientID": "SOMEONE-ELSE"}, {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1"}]
)
def test_another_patient_or_study_under_the_uid_is_kept_alongside(
    settings: Settings, store: Store, tmp_path: Path, identity: dict[str, str]
) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    before = _infer(settings, store, first)
    other = _infer(settings, store, _variant(first, tmp_path / "other.dcm", **identity))
    assert other.code is None
    assert not other.duplicate
    assert other.image_id != before.image_id
    assert store.counts()["images"] == 2
    [collision] = [json.loads(row["detail"]) for row in store.audit_rows("image.uid_collision")]
    assert collision["code"] == "INSTANCE_UID_COLLISION"
    assert collision["collides_with"] == before.image_id
    assert collision["changed"] == list(identity)
    holder = store.db.execute("SELECT id FROM images WHERE sop_instance_uid IS NOT NULL").fetchone()
    assert holder["id"] == before.image_id  # the stored object keeps its UID


def _image(data: bytes, uid: str = "1.2.3.4", patient: str = "P1") -> NewImage:
    import hashlib

    return NewImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="dicom",
        width=8,
        height=8,
        study=StudyInfo(study_uid="1.2.3", phi_patient_id=patient, body_part="CHEST"),
        source="cli",
        sop_instance_uid=uid,
        meta={"transfer_syntax": "1.2.840.10008.1.2.1"},
    )


def test_a_queued_job_of_a_replaced_version_ends_superseded(store: Store) -> None:
    header_fix = Corrections(lambda old, new: ["BodyPartExamined"], pixels=False)
    first = store.ingest(_image(b"v1"), ["m"], actor="watch")
    second = store.ingest(_image(b"v2"), ["m"], actor="watch", corrections=header_fix)
    assert (second.duplicate, second.collides_with) == (False, None)
    old_job = store.job(first.job_ids[0])
    assert old_job is not None
    assert (old_job["state"], old_job["error_code"]) == ("refused", Code.INSTANCE_SUPERSEDED.value)
    new_job = store.job(second.job_ids[0])
    assert new_job is not None
    assert new_job["state"] == "queued"
    # The first version's bytes again: that version, superseded, and no new job for it.
    again = store.ingest(_image(b"v1"), ["m", "other"], actor="watch", corrections=header_fix)
    assert (again.duplicate, again.image_id, again.job_ids) == (True, first.image_id, first.job_ids)
    assert store.counts()["jobs"] == 2


@pytest.mark.security
def test_what_cannot_be_compared_or_has_other_pixels_from_a_pacs_is_kept_alongside(store: Store) -> None:
    """Issue 17: nothing sent under a stored UID is dropped; the stored one keeps the UID."""
    cannot_tell = Corrections(lambda old, new: None, pixels=True)
    first = store.ingest(_image(b"v1"), ["m"], actor="watch")
    reused = store.ingest(_image(b"v2"), ["m"], actor="watch", corrections=cannot_tell)
    assert (reused.duplicate, reused.collides_with) == (False, first.image_id)
    pixels_from_a_pacs = Corrections(lambda old, new: ["pixels"], pixels=False)
    third = store.ingest(_image(b"v3"), ["m"], actor="dicom", corrections=pixels_from_a_pacs)
    assert third.collides_with == first.image_id
    assert store.counts()["images"] == 3
    assert store.counts()["jobs"] == 3  # each object is analysed
    again = store.ingest(_image(b"v3"), ["m"], actor="dicom", corrections=pixels_from_a_pacs)
    assert (again.duplicate, again.image_id) == (True, third.image_id)  # idempotent
    uids = store.db.execute("SELECT id FROM images WHERE sop_instance_uid = '1.2.3.4'").fetchall()
    assert [row["id"] for row in uids] == [first.image_id]


def test_changed_fields_names_only_what_the_analysis_reads(tmp_path: Path) -> None:
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y", PatientBirthDate="20220101")
    data = first.read_bytes()
    changed = _variant(
        first,
        tmp_path / "b.dcm",
        PatientBirthDate="20211231",
        ViewPosition="AP",
        WindowCenter=2000,
        InstitutionName="X",
        pixels=True,
    )
    assert changed_fields(data, changed.read_bytes()) == [
        "ViewPosition",
        "PatientBirthDate",
        "WindowCenter",
        "pixels",
    ]
    assert changed_fields(data, data) == []
    assert changed_fields(data, b"not dicom at all") is None


def test_a_raw_data_set_copy_of_a_stored_instance_is_the_same_instance(tmp_path: Path) -> None:
    """Old export tools write the data set alone (no preamble, no file meta): its transfer syntax
    was taken as none, the pixels as not comparable, and the copy stored and analysed again as
    a UID collision (an outside-style check, through the drop folder)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    ds = pydicom.dcmread(first)
    raw = DicomBytesIO()
    raw.is_little_endian, raw.is_implicit_VR = True, True
    write_dataset(raw, ds)
    assert raw.getvalue()[128:132] != b"DICM"
    assert changed_fields(first.read_bytes(), raw.getvalue()) == []
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    flipped = DicomBytesIO()
    flipped.is_little_endian, flipped.is_implicit_VR = True, True
    write_dataset(flipped, ds)
    assert changed_fields(first.read_bytes(), flipped.getvalue()) == ["pixels"]


# ---------------------------------------------------------------------- the DICOM listener


def test_the_listener_takes_a_header_correction_and_keeps_new_pixels_under_an_old_uid_apart(
    settings: Settings, tmp_path: Path
) -> None:
    """A PACS re-sending an instance with corrected attributes keeps its UID (archives update
    headers in place); changed pixels get a new UID in DICOM, so under an old one they are
    another object: kept alongside (Success), the stored version untouched."""
    dcmtk_or_skip()
    first = _chest_film(tmp_path / "first.dcm", PatientAge="004Y")
    fixed = _variant(first, tmp_path / "fixed.dcm", ViewPosition="AP")
    repainted = _variant(fixed, tmp_path / "repainted.dcm", pixels=True)
    with Listening(listener_settings(settings)) as running:
        assert "Received Store Response (Success)" in send(running, first).stderr
        assert "Received Store Response (Success)" in send(running, fixed).stderr
        answer = send(running, repainted).stderr
        assert "Received Store Response (Success)" in answer, answer
    with Store(running.settings.data_dir) as store:
        assert store.counts()["images"] == 3
        assert _corrected_rows(store)[0]["changed"] == ["ViewPosition"]
        [collision] = [json.loads(r["detail"]) for r in store.audit_rows("image.uid_collision")]
        assert collision["changed"] == ["pixels"]
