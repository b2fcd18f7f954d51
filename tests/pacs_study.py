"""A mixed study as a PACS forwards it: chest films the model analyses, and what it must store
without analysing (a CT, an MR, an extremity film, pixels this build cannot decode) or refuse
at its gate (a lateral chest film). Pixel data come from the bundled demo DICOMs (licensed);
every patient attribute is synthetic."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from edge.store import NOT_ANALYSED, Store
from tests.conftest import DEFAULT_MODEL, MODELS
from tools import dicomgen

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class Instance:
    label: str
    path: Path
    sop_instance_uid: str
    analysed: bool  # a chest film the model scores
    refusal: str | None  # the code its job ends with, if it is not analysed


def _variant(source: Path, study_uid: str, **changes: str) -> Dataset:
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID, ds.PatientName = "SYNTH-PACS", "Sample^Synthetic"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    if "SOPClassUID" in changes:
        ds.file_meta.MediaStorageSOPClassUID = changes["SOPClassUID"]
    return ds


def mixed_study(folder: Path) -> list[Instance]:
    """Eleven instances of one study, written to `folder`: 6 frontal chest films (CR and DX, PA
    and AP, one RLE-compressed), a lateral chest film, a CT, an MR, a hand film and a CR whose
    JPEG 2000 pixel data no decoder reads."""
    folder.mkdir(parents=True, exist_ok=True)
    demo = sorted((MODELS / DEFAULT_MODEL / "samples" / "demo").glob("*.dcm"))
    study_uid = generate_uid()
    dx = {"SOPClassUID": dicomgen.DX_STORAGE, "Modality": "DX"}
    plan: list[tuple[str, Dataset, bool, str | None]] = [
        ("chest-cr-pa", _variant(demo[0], study_uid, ViewPosition="PA"), True, None),
        ("chest-cr-rle-ap", _variant(demo[1], study_uid, ViewPosition="AP"), True, None),
        ("chest-cr-pa-2", _variant(demo[2], study_uid, ViewPosition="PA"), True, None),
        ("chest-cr-ap", _variant(demo[3], study_uid, ViewPosition="AP"), True, None),
        ("chest-dx-pa", _variant(demo[0], study_uid, ViewPosition="PA", **dx), True, None),
        ("chest-dx-ap", _variant(demo[2], study_uid, ViewPosition="AP", **dx), True, None),
        ("chest-lateral", _variant(demo[3], study_uid, ViewPosition="LL"), False, "VIEW_NOT_ACCEPTED"),
        (
            "ct",
            _variant(demo[0], study_uid, SOPClassUID=CT_STORAGE, Modality="CT"),
            False,
            "NO_MODEL_FOR_INPUT",
        ),
        (
            "mr",
            _variant(demo[2], study_uid, SOPClassUID=MR_STORAGE, Modality="MR", BodyPartExamined="HEAD"),
            False,
            "NO_MODEL_FOR_INPUT",
        ),
        ("hand", _variant(demo[3], study_uid, BodyPartExamined="HAND"), False, "NO_MODEL_FOR_INPUT"),
        ("undecodable", _undecodable(study_uid), False, "DICOM_PIXELS_DAMAGED"),
    ]
    instances = []
    for label, ds, analysed, refusal in plan:
        path = folder / f"{label}.dcm"
        path.write_bytes(dicomgen.to_bytes(ds))
        instances.append(Instance(label, path, str(ds.SOPInstanceUID), analysed, refusal))
    return instances


def _undecodable(study_uid: str) -> Dataset:
    ds = dicomgen.undecodable_dicom(patient_id="SYNTH-PACS")
    ds.StudyInstanceUID = study_uid
    return ds


def outcome(store: Store) -> dict[str, object]:
    """What the device made of what it received: images, results, and refusal codes by count."""
    rows = store.db.execute("SELECT model_name, state, error_code FROM jobs").fetchall()
    return {
        "images": store.counts()["images"],
        "results": store.counts()["results"],
        "not_analysed": Counter(r["error_code"] for r in rows if r["model_name"] == NOT_ANALYSED),
        "refused_by_gate": Counter(
            r["error_code"] for r in rows if r["model_name"] != NOT_ANALYSED and r["state"] == "refused"
        ),
    }


def expected(instances: list[Instance]) -> dict[str, object]:
    return {
        "images": len(instances),
        "results": sum(i.analysed for i in instances),
        "not_analysed": Counter(
            i.refusal for i in instances if i.refusal and i.refusal != "VIEW_NOT_ACCEPTED"
        ),
        "refused_by_gate": Counter(i.refusal for i in instances if i.refusal == "VIEW_NOT_ACCEPTED"),
    }
