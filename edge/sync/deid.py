"""De-identification on the device, before anything leaves it (DICOM PS3.15 basic profile).

- The patient id becomes a keyed pseudonym: HMAC-SHA256 under a device-held key that never
  leaves the device. The hub cannot reverse it; the clinic can, by computing it for its own
  patient ids (`edge sync pseudonym`), or with the device's own records.
- Dates follow a configured policy: `keep`, `shift` (by a fixed, device-secret number of days:
  order and intervals survive, calendar dates do not; PS3.15's modified-dates option) or
  `remove`.
- Free text (descriptions, comments, names of people and places) is dropped, not scrubbed.
- Age and sex are kept (PS3.15's retain-patient-characteristics option): a reader needs them.
- DICOM files sent in full are built anew from an allow-list (`deid_dicom.py`: PS3.15 Annex E
  basic profile with the modified-dates and patient-characteristics options, the profile's table
  from dicom-anonymizer): what a reader needs and nothing else, at every depth; private tags,
  curves and overlays go; UIDs are remapped through the same keyed hash (links between a study's
  images survive; the original UIDs do not). A file whose header says it has burned-in annotation
  (in any spelling) is not sent at all; every other picture that leaves is first read for text
  by `edge/sync/outgoing.py`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import pydicom

from edge.imaging.acquisition import ISO_MOMENT, spacing
from edge.imaging.dicom_redact import burned_in_flag
from edge.store import StoredResult
from edge.store.files import write_atomically
from edge.sync import deid_dicom
from edge.sync.dicom_terms import defined

DatePolicy = Literal["keep", "shift", "remove"]

# What a date may look like on the way out: DICOM DA, or ISO 8601 (a date, or a date-time with
# seconds, optional fraction and zone: the store's own times and a header's acquisition time).
_DATE_FORM = re.compile(r"^(\d{8}|\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})?)?)$")

APPLICABILITY_KEYS = ("state", "distance", "p_value", "threshold", "frame_filled")


_NAME = re.compile(r"[a-z0-9_]{1,40}")


def _code(keyword: str, value: Any) -> str | None:
    """A field of the payload that comes from an input file's DICOM code string: sent as it came
    when it is one of the terms the standard defines for that attribute (`dicom_terms`; in any
    case: sloppy modalities write "cr"), else nothing. A code string's shape is not enough: a
    surname in capitals has it."""
    if not isinstance(value, str) or not value.strip():
        return None
    return value if defined(keyword, value.upper()) else None


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _quality(quality: dict[str, Any] | None) -> dict[str, Any] | None:
    """The quality gate's measures: named numbers, nothing else."""
    if quality is None:
        return None
    return {k: v for k, v in quality.items() if isinstance(k, str) and _NAME.fullmatch(k) and _number(v)}


def _series(series: Any) -> list[Any]:
    """A clip's (time, probability) pairs: numbers only."""
    if not isinstance(series, list):
        return []
    return [p for p in series if isinstance(p, list | tuple) and len(p) == 2 and all(map(_number, p))]


def _applicability(scope: dict[str, Any] | None) -> dict[str, Any] | None:
    """The applicability verdict (edge/inference/scope.py `Scope.as_dict`), named key by key:
    a word and three numbers about the model's feature space (and the width of a frame it was
    read through, a share of a side), nothing about the patient."""
    if not scope:
        return None
    return {key: scope[key] for key in APPLICABILITY_KEYS if key in scope}


class Deidentifier:
    def __init__(self, key: bytes, dates: DatePolicy = "shift") -> None:
        self._key = key
        self.dates = dates
        # One fixed shift per device, 30 to 395 days back, derived from the key: intervals survive.
        self.shift_days = 30 + int.from_bytes(self._mac("date-shift")[:4], "big") % 366

    @classmethod
    def for_device(cls, folder: Path, dates: DatePolicy = "shift") -> Deidentifier:
        """The device's pseudonym key (created once, readable by the owner only)."""
        path = folder / "pseudonym.key"
        if not path.exists():
            write_atomically(path, secrets.token_bytes(32))
        return cls(path.read_bytes(), dates)

    def _mac(self, text: str) -> bytes:
        return hmac.new(self._key, text.encode(), hashlib.sha256).digest()

    def pseudonym(self, patient_id: str | None) -> str | None:
        if not patient_id:
            return None
        return "P-" + self._mac(f"patient:{patient_id.strip()}").hex()[:20]

    def study_key(self, study_uid: str | None) -> str | None:
        return None if not study_uid else "S-" + self._mac(f"study:{study_uid}").hex()[:20]

    def uid(self, original: str) -> str:
        """A UID under 2.25 (UUID-derived OIDs) from the keyed hash: stable, unlinkable."""
        return "2.25." + str(int.from_bytes(self._mac(f"uid:{original}")[:16], "big"))

    def date(self, value: str | None) -> str | None:
        """A DICOM DA (YYYYMMDD) or an ISO date or date-time, under the date policy. Anything else
        (a StudyDate is free text to a careless scanner: "2026-10-15 SURNAME^GIVEN MRN") is
        None under every policy, so no text rides out behind a date."""
        if not value or self.dates == "remove" or not _DATE_FORM.match(value):
            return None
        if self.dates == "keep":
            return value
        text = value.replace("-", "")
        try:
            day = date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        except (ValueError, IndexError):
            return None
        shifted = day - timedelta(days=self.shift_days)
        return shifted.strftime("%Y%m%d") if "-" not in value else shifted.isoformat() + value[10:]

    # ------------------------------------------------------------------ result payloads

    def result_payload(
        self,
        result: StoredResult,
        study: dict[str, Any],
        image: dict[str, Any],
        clip: dict[str, Any] | None,
        site: str,
    ) -> dict[str, Any]:
        """What the hub gets for one result: the answer and its provenance, never identity.
        Every field is named here; those that come from an input file are checked to be a code
        or a number (`_code`, `_quality`, `_series`), so no free text can ride in them. For any
        valid input the payload is what it always was, so a queued result keeps its hash."""
        meta = image.get("meta") or {}
        payload: dict[str, Any] = {
            "result": {
                "model": result.model_name,
                "version": result.model_version,
                "model_sha256": result.model_sha256,
                "variant": result.variant,
                "backend": result.backend,
                "precision": result.precision,
                "finding": result.finding,
                "positive_label": result.finding_label,
                "probability": round(result.probability, 5),
                "probabilities": {k: round(v, 5) for k, v in result.probabilities.items()},
                "threshold": result.threshold,
                "operating_point": result.operating_point,
                "latency_ms": round(result.latency_ms, 2),
                "quality": _quality(result.quality),
                "created": self.date(result.created_at),
            },
            "study": {
                "patient": self.pseudonym(study.get("phi_patient_id")),
                "study": self.study_key(study.get("study_uid")) or self.study_key(study["id"]),
                "age_years": None
                if study.get("patient_age_years") is None
                else round(study["patient_age_years"], 1),
                "sex": study.get("patient_sex") if study.get("patient_sex") in ("M", "F", "O") else None,
                "modality": _code("Modality", study.get("modality")),
                "body_part": _code("BodyPartExamined", study.get("body_part")),
                "view": _code("ViewPosition", meta.get("view_position")),
                "study_date": self.date(study.get("study_date")),
                "urgent": bool(study.get("urgent")),
            },
            "image": {
                "uuid": image["id"],
                "format": image["format"],
                "width": image["width"],
                "height": image["height"],
                "frames": image["frames"],
            },
            "site": site,
        }
        applicability = _applicability(result.applicability)
        if applicability is not None:
            # Only when the model has the check: a result without one sends the payload it always
            # sent, so a result queued before this field existed keeps its hash on a re-send
            # (a different hash under a known uuid is quarantined by the hub).
            payload["result"]["applicability"] = applicability
        if result.profile_id is not None:
            # The site profile that decided (an id: model, version, a time; no patient data).
            # Only when one did, for the same reason as applicability above.
            payload["result"]["profile_id"] = result.profile_id
        # The acquisition time (date-shifted like every date) and the pixel spacings, only when
        # the image's header gave them: an image stored before they were read has none, so a
        # result queued before keeps its payload and its hash (the hub quarantines a re-send
        # under a known uuid with another hash).
        moment = meta.get("acquired")
        shifted = self.date(moment) if isinstance(moment, str) and ISO_MOMENT.match(moment) else None
        if shifted:
            payload["image"]["acquired"] = shifted
            if meta.get("acquired_from") == "file":  # a PNG/JPEG's file time, not a header's
                payload["image"]["acquired_from"] = "file"
        for key in ("pixel_spacing", "imager_pixel_spacing", "ultrasound_region_spacing"):
            found = spacing(meta.get(key))
            if found:
                payload["image"][key] = found
        if clip is not None:
            payload["clip"] = {
                k: clip[k] for k in ("frames_analysed", "frames_excluded", "duration_s", "aggregate")
            }
            # `aggregate` is this code's own sentence (edge/video/clip.py AGGREGATE), not input.
            payload["clip"]["series"] = _series(clip["series"])
        return payload

    # ------------------------------------------------------------------ DICOM files

    def dicom(self, data: bytes) -> bytes | None:
        """The file with the basic profile applied; None when it must not leave the device."""
        ds = pydicom.dcmread(io.BytesIO(data), force=True)  # as ingest read it: meta may be missing
        if burned_in_flag(ds.get("BurnedInAnnotation")):  # "Y", "YES\\NO" too
            return None
        patient_id = str(ds.get("PatientID", "") or "")
        policy = deid_dicom.Policy(uid=self.uid, date=self.date, dates=self.dates)
        sent = deid_dicom.deidentify(ds, policy, self.pseudonym(patient_id))
        if sent is None:
            return None
        buffer = io.BytesIO()
        try:
            sent.save_as(buffer, enforce_file_format=True)
        except (AttributeError, ValueError, TypeError):  # no SOP Instance UID: not a storable object
            return None
        return buffer.getvalue()
