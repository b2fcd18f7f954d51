"""What differs between two objects that carry one SOP Instance UID (issue 14): the names of the
attributes the analysis reads, and "pixels"; never their values (they can identify a patient).

Ingest asks this when an instance it holds arrives again with other bytes: an honest correction
(a fixed body part, age or pixels) is analysed again as a new version, a copy that differs only
in what no analysis reads (another transfer syntax, a PACS's own tags) stays a duplicate, and
another patient or study under the UID is a collision, kept alongside (edge.store.Store.ingest).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from edge.imaging.dicom import infer_missing_transfer_syntax, stored_pixels

IDENTITY = ("PatientID", "StudyInstanceUID")
"""Another value here is another object reusing the UID, never a correction."""

READ_BY_ANALYSIS = (
    "SOPClassUID",
    # the gate: modality, body part, view, age (stated or from the dates), sex
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientAge",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "AcquisitionDate",
    "ContentDate",
    "SeriesDate",
    # the display pixels the model sees (edge.imaging.dicom.display_pixels)
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "BitsStored",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PresentationLUTShape",
    # a cine's timing (the video path)
    "FrameTime",
    "CineRate",
)


def changed_fields(stored: bytes, received: bytes) -> list[str] | None:
    """The names of what differs, identity first, "pixels" last; [] when nothing an analysis
    reads differs; None when the two cannot be compared (either unreadable as DICOM, or not
    one instance: no SOP Instance UID, or two)."""
    try:
        old, new = _read(stored), _read(received)
    except Exception:  # noqa: BLE001 - anything unreadable is "cannot tell"
        return None
    uid = _value(old, "SOPInstanceUID")
    if uid is None or uid != _value(new, "SOPInstanceUID"):
        return None
    changed = [k for k in IDENTITY + READ_BY_ANALYSIS if _value(old, k) != _value(new, k)]
    pixels = _pixels_differ((old, stored), (new, received))
    if pixels is None:
        return None
    return changed + (["pixels"] if pixels else [])


def _read(data: bytes) -> Dataset:
    """As ingest reads it: a file without its meta (an old export tool's raw data set) is
    encoded as pydicom read it, not in no syntax (such a copy was taken for another object)."""
    ds = pydicom.dcmread(io.BytesIO(data), force=True)
    infer_missing_transfer_syntax(ds)
    return ds


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed element compares as its raw bytes
        element = ds.get_item(keyword)
        return getattr(element, "value", None)
    if isinstance(value, str):
        value = value.strip()
    return None if value in (None, "") else value


def _pixels_differ(old: tuple[Dataset, bytes], new: tuple[Dataset, bytes]) -> bool | None:
    """Whether the stored pixel values differ: the encoded bytes in one transfer syntax, the
    arrays decoded as ingest decodes them across two (a PACS may transcode what it forwards);
    None when either cannot be decoded for the comparison."""
    (old_ds, old_bytes), (new_ds, new_bytes) = old, new
    old_data, new_data = old_ds.get("PixelData"), new_ds.get("PixelData")
    if old_data is None or new_data is None:
        return (old_data is None) != (new_data is None)
    syntax = [getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None) for ds in (old_ds, new_ds)]
    if syntax[0] == syntax[1]:
        return bool(old_data != new_data)
    try:
        return not np.array_equal(stored_pixels(old_ds, old_bytes), stored_pixels(new_ds, new_bytes))
    except Exception:  # noqa: BLE001 - an encoding this build cannot decode
        return None
