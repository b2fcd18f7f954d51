"""The shapes that cross the store's boundary (plain dataclasses, no SQL)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from edge.study import StudyInfo

NOT_ANALYSED = "(none)"
"""The model name of the job that records why a stored image is not analysed by any model (the
DICOM listener keeps every well-formed instance, as a PACS does: a CT, an extremity film)."""


@dataclass(frozen=True)
class NewImage:
    """An input that decoded cleanly and is ready to be stored (bytes exactly as received)."""

    data: bytes
    sha256: str
    format: str  # dicom | png | jpeg
    width: int
    height: int
    study: StudyInfo
    source: str
    frames: int = 1
    sop_instance_uid: str | None = None
    original_name: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def extension(self) -> str:
        return {"dicom": ".dcm", "png": ".png", "jpeg": ".jpg"}[self.format]


@dataclass(frozen=True)
class IngestOutcome:
    image_id: str
    study_id: str
    job_ids: tuple[str, ...]
    duplicate: bool
    """True when the same bytes (or SOP Instance UID) were already stored."""
    collides_with: str | None = None
    """The image holding this SOP Instance UID when this is another object under it (another
    patient or study, other pixels, or content that cannot be compared): this one was stored
    alongside as a new image without the UID, and audited `image.uid_collision` (issue 17)."""


@dataclass(frozen=True)
class Job:
    id: str
    image_id: str
    model_name: str
    state: str
    attempts: int
    worker: str | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            image_id=row["image_id"],
            model_name=row["model_name"],
            state=row["state"],
            attempts=row["attempts"],
            worker=row["worker"],
        )


@dataclass(frozen=True)
class ResultRecord:
    """One model's answer for one image, with everything needed to trust or reproduce it."""

    model_name: str
    model_version: str
    model_sha256: str
    variant: str
    backend: str
    precision: str
    finding: str
    finding_label: str
    probability: float
    probabilities: dict[str, float]
    threshold: float
    operating_point: str
    latency_ms: float
    total_ms: float
    heatmap_path: str | None = None
    quality: dict[str, float] | None = None
    applicability: dict[str, Any] | None = None
    """The applicability check (edge/inference/scope.py `Scope.as_dict`): state ("in scope" or
    "borderline"; an out-of-scope input gets no result), distance, p_value, threshold. None for
    a model released without the check."""
    profile_id: str | None = None
    """The site profile (edge/inference/site_profile.py) whose temperature and threshold made
    this result; None: the model's shipped calibration."""

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["probabilities"] = json.dumps(self.probabilities, sort_keys=True)
        for name in ("quality", "applicability"):
            value = row[name]
            row[name] = json.dumps(value, sort_keys=True) if value is not None else None
        return row


@dataclass(frozen=True, kw_only=True)
class StoredResult(ResultRecord):
    """A result as read back: the record it was stored from, where it sits, who has seen it.
    What every reader gets (`Store.result`, `result_for_job`, `Analysis.result`), so a result's
    fields are named once, here and in `ResultRecord`."""

    id: str
    job_id: str
    image_id: str
    created_at: str
    seen_at: str | None = None
    seen_by: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> StoredResult:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in row.items() if key in known}
        values["probabilities"] = json.loads(row["probabilities"])
        for name in ("quality", "applicability"):
            values[name] = json.loads(row[name]) if row.get(name) else None
        return cls(**values)


_FLAGS = ("urgent", "superseded", "at_hub")  # SQLite gives 0/1


@dataclass(frozen=True)
class WorklistItem:
    """One row of the technician's worklist: a job with its image, study, result summary and the
    latest specialist verdict (`phi_*` fields never leave the device)."""

    job_id: str
    state: str  # queued | running | done | failed | refused
    error_code: str | None
    error_message: str | None
    model_name: str
    queued_at: str
    updated_at: str
    image_id: str
    phi_original_name: str | None
    format: str
    width: int
    height: int
    frames: int
    purged_at: str | None
    superseded: bool
    """A corrected version of this image came later (`images.superseded_by`, migration m014):
    this row's result is for the old version."""
    study_id: str
    urgent: bool
    modality: str | None
    body_part: str | None
    description: str | None
    source: str | None
    phi_patient_name: str | None
    phi_patient_id: str | None
    phi_accession: str | None
    patient_age_years: float | None
    patient_sex: str | None
    study_date: str | None
    received_at: str
    result_id: str | None
    finding: str | None
    finding_label: str | None
    probability: float | None
    threshold: float | None
    operating_point: str | None
    seen_at: str | None
    seen_by: str | None
    applicability_state: str | None
    """The result's applicability word ("in scope", "borderline"); None without a check."""
    applicability_p: float | None
    review_verdict: str | None
    notes: int
    review_finding: str | None = None
    """The latest review's finding in the specialist's words (None: none given, or no review)."""
    review_received_at: str | None = None
    """When the newest review reached this device (the sync stores it)."""
    at_hub: bool = False
    """The hub acknowledged the result: a specialist can read it (False: not sent yet)."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> WorklistItem:
        flags: dict[str, Any] = {key: bool(row[key]) for key in _FLAGS if key in row}
        return cls(**{**row, **flags})

    @property
    def new_reply(self) -> bool:
        """A specialist's review came back after the result was last marked seen (or it never was)."""
        if not self.review_received_at:
            return False
        return self.seen_at is None or self.review_received_at > self.seen_at

    @property
    def borderline(self) -> bool:
        """The applicability check found the image near the edge of the model's training data."""
        return self.applicability_state == "borderline"

    @property
    def positive(self) -> bool:
        """The stored decision: the result records its finding and the label it was judged for."""
        return self.finding is not None and self.finding == self.finding_label
