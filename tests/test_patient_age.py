"""The patient's age when PatientAge is absent (issue 14): derived from PatientBirthDate and the
study's date, impossible results ignored, the source named in the refusal; the birth date never
kept or sent, only the age."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.imaging.dicom import age_between, patient_age
from edge.inference.registry import Registry
from edge.pipeline import Pipeline
from edge.store import Store
from edge.sync.deid import Deidentifier
from tests.conftest import DEFAULT_MODEL, MODELS
from tools import dicomgen


def _header(**attributes: Any) -> Any:
    ds = dicomgen.base_dataset(patient_age=None)
    del ds.StudyDate
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")
@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"PatientAge": "005Y"}, (5.0, "PatientAge")),
        ({"PatientAge": "018M"}, (1.5, "PatientAge")),
        ({"PatientAge": "003W"}, (0.057, "PatientAge")),
        ({"PatientAge": "010D"}, (0.027, "PatientAge")),
        # Absent: birth date and the study's date, at PatientAge's own resolution.
        ({"PatientBirthDate": "19400101", "StudyDate": "20260315"}, (86.0, "PatientBirthDate+StudyDate")),
        ({"PatientBirthDate": "19400601", "StudyDate": "20260315"}, (85.0, "PatientBirthDate+StudyDate")),
        ({"PatientBirthDate": "20250101", "StudyDate": "20260315"}, (1.167, "PatientBirthDate+StudyDate")),
        ({"PatientBirthDate": "20260301", "StudyDate": "20260315"}, (0.038, "PatientBirthDate+StudyDate")),
        # The study's date, else the acquisition, content or series date.
        (
            {"PatientBirthDate": "19400101", "AcquisitionDate": "20260315", "SeriesDate": "20200101"},
            (86.0, "PatientBirthDate+AcquisitionDate"),
        ),
        ({"PatientBirthDate": "19400101", "SeriesDate": "20260315"}, (86.0, "PatientBirthDate+SeriesDate")),
        # An unreadable PatientAge is absent; a stated one wins over the dates.
        (
            {"PatientAge": "86 years", "PatientBirthDate": "19400101", "StudyDate": "20260315"},
            (86.0, "PatientBirthDate+StudyDate"),
        ),
        (
            {"PatientAge": "004Y", "PatientBirthDate": "19400101", "StudyDate": "20260315"},
            (4.0, "PatientAge"),
        ),
    ],
)
def test_the_age_and_where_it_came_from(attributes: dict[str, str], expected: tuple[float, str]) -> None:
    assert patient_age(_header(**attributes)) == expected


@pytest.mark.parametrize(
    "attributes",
    [
        {"PatientBirthDate": "20270101", "StudyDate": "20260315"},  # born after the study
        {"PatientBirthDate": "18500101", "StudyDate": "20260315"},  # 176 years old
        {"PatientBirthDate": "19401399", "StudyDate": "20260315"},  # month 13
        {"PatientBirthDate": "unknown", "StudyDate": "20260315"},
        {"PatientBirthDate": "19400101"},  # no date to count to
        {"StudyDate": "20260315"},
        {},
    ],
)
@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom warns of the bad ones
def test_impossible_or_unreadable_dates_give_no_age(attributes: dict[str, str]) -> None:
    assert patient_age(_header(**attributes)) == (None, None)


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_an_unreadable_study_date_falls_back_to_the_next_date() -> None:
    ds = _header(PatientBirthDate="19400101", AcquisitionDate="20260315")
    ds.add_new(0x00080020, "DA", "2026-3")  # StudyDate, malformed as some senders write it
    assert patient_age(ds) == (86.0, "PatientBirthDate+AcquisitionDate")


def test_age_between_counts_completed_units() -> None:
    assert age_between(date(2020, 2, 29), date(2022, 2, 28)) == 1.917  # not yet two: months
    assert age_between(date(2020, 2, 29), date(2022, 3, 1)) == 2.0
    assert age_between(date(1896, 1, 1), date(2026, 1, 1)) == 130.0
    assert age_between(date(1895, 1, 1), date(2026, 1, 1)) is None  # 131


# ---------------------------------------------------------------------- through `edge infer`


def _chest_film(path: Path, **attributes: str) -> Path:
    """A real paediatric-model sample's pixels as a frontal chest CR, with the given patient."""
    sample = next(p for p, _ in Registry(MODELS).get(DEFAULT_MODEL).samples if p.suffix == ".png")
    ds = dicomgen.grey_dicom(
        dicomgen.twelve_bit(decode_bytes(sample.read_bytes()).pixels),
        bits_stored=12,
        window=(2048, 4096),
        patient_age=None,
        extra={"ViewPosition": "PA", **attributes},
    )
    path.write_bytes(dicomgen.to_bytes(ds))
    return path


@pytest.mark.parametrize("forced", [None, DEFAULT_MODEL])
def test_an_adult_film_without_patient_age_is_refused_for_age(
    settings: Settings, store: Store, tmp_path: Path, forced: str | None
) -> None:
    adult = _chest_film(tmp_path / "adult.dcm", PatientBirthDate="19400101", StudyDate="20260315")
    pipeline = Pipeline(settings, store)
    try:
        [analysis] = pipeline.analyse_file(adult, model=forced)
    finally:
        pipeline.close()
    assert (analysis.ok, analysis.code) == (False, "AGE_OUT_OF_RANGE")
    assert analysis.message is not None
    assert analysis.message.endswith("the patient is 86 (from birth date and study date)"), analysis.message
    study = store.db.execute("SELECT patient_age_years FROM studies").fetchone()
    meta = json.loads(store.db.execute("SELECT meta FROM images").fetchone()["meta"])
    assert (study["patient_age_years"], meta["age_source"]) == (86.0, "PatientBirthDate+StudyDate")


def test_a_stated_patient_age_wins_and_the_sentence_names_no_dates(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    stated = _chest_film(tmp_path / "stated.dcm", PatientAge="045Y", PatientBirthDate="20220101")
    pipeline = Pipeline(settings, store)
    try:
        [analysis] = pipeline.analyse_file(stated)
    finally:
        pipeline.close()
    assert analysis.code == "AGE_OUT_OF_RANGE"
    assert analysis.message is not None
    assert analysis.message.endswith("the patient is 45"), analysis.message


def test_a_child_by_birth_date_is_analysed_and_only_the_age_travels(
    settings: Settings, store: Store, tmp_path: Path
) -> None:
    child = _chest_film(tmp_path / "child.dcm", PatientBirthDate="20220210", StudyDate="20260315")
    pipeline = Pipeline(settings, store)
    try:
        [analysis] = pipeline.analyse_file(child)
    finally:
        pipeline.close()
    assert analysis.ok, analysis.message
    assert analysis.result is not None
    image = dict(store.db.execute("SELECT * FROM images").fetchone())
    study = dict(store.db.execute("SELECT * FROM studies").fetchone())
    assert "20220210" not in json.dumps(image) + json.dumps(study)  # no birth date in any row
    image["meta"] = json.loads(image["meta"])
    deid = Deidentifier(b"k" * 32, "keep")
    payload = deid.result_payload(analysis.result, study, image, None, "site")
    assert payload["study"]["age_years"] == 4.0
    assert "20220210" not in json.dumps(payload)
    sent = deid.dicom(child.read_bytes())
    assert sent is not None
    assert b"20220210" not in sent  # a full image goes without it too
