"""What an input says about its study: the type decoders produce and the store keeps (below imaging
and the store, so both can use it without importing each other)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyInfo:
    """What an input says about its study. `phi_*` fields never leave the device as-is."""

    study_uid: str | None = None
    phi_patient_id: str | None = None
    phi_patient_name: str | None = None
    phi_accession: str | None = None
    patient_age_years: float | None = None
    patient_sex: str | None = None
    modality: str | None = None
    body_part: str | None = None
    description: str | None = None
    study_date: str | None = None
