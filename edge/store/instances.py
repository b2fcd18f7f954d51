"""What a SOP Instance UID that is stored already means when it arrives again (issues 14 and
17): one rule, `verdict`, for every source; `Store.ingest` acts on it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.store.records import NewImage


@dataclass(frozen=True)
class Corrections:
    """How `Store.ingest` tells a corrected instance from a duplicate or a collision when a SOP
    Instance UID it holds arrives with other bytes (issue 14).

    `changed(stored, received)` names what differs (`edge.imaging.dicom_changes`: attribute names
    and "pixels", never values; [] when nothing an analysis reads differs; None when it cannot
    tell). `pixels`: whether changed pixels make a new version (`edge infer`, the drop folder:
    someone chose to send this file again) or a collision (the DICOM listener: DICOM gives an
    instance whose pixels change a new UID, so there it is another object reusing the UID)."""

    changed: Callable[[bytes, bytes], Sequence[str] | None]
    pixels: bool


_IDENTITY = frozenset({"PatientID", "StudyInstanceUID"})


def verdict(
    data_dir: Path, existing: dict[str, Any], image: NewImage, corrections: Corrections | None
) -> tuple[str, list[str]]:
    """`duplicate`, `version` or `collision`, with what changed (names only), for an image
    whose bytes or SOP Instance UID are stored.

    Same bytes: a duplicate. Another patient or study under the UID: a collision, whoever
    sends it. Otherwise the stored file is compared (`corrections.changed`): nothing an
    analysis reads changed (another transfer syntax decoding to the same pixels, a PACS's
    own tags) is a duplicate; changed attributes are a version; changed pixels a version
    where `corrections.pixels` allows it (someone chose to send this file again) and a
    collision elsewhere (the DICOM listener: DICOM gives changed pixels a new UID). What
    cannot be compared (no `corrections`, a purged file, an encoding this build cannot
    decode) is a collision: kept, never taken as a duplicate (issue 17: other pixels in
    another transfer syntax were answered Success and dropped)."""
    if existing["sha256"] == image.sha256:
        return "duplicate", []
    study = image.study
    identity = [
        name
        for name, old, new in (
            ("StudyInstanceUID", existing["study_uid"], study.study_uid),
            ("PatientID", existing["phi_patient_id"], study.phi_patient_id),
        )
        if _differ(old, new)
    ]
    if identity:
        return "collision", identity
    changes = None if corrections is None else _changes(data_dir, existing, image, corrections)
    if changes is None:
        return "collision", ["unknown"]
    if _IDENTITY & set(changes):
        return "collision", changes
    if not changes:
        return "duplicate", []  # nothing an analysis reads changed: its result stands
    if "pixels" in changes and corrections is not None and not corrections.pixels:
        return "collision", changes
    return "version", changes


def _changes(
    data_dir: Path, existing: dict[str, Any], image: NewImage, corrections: Corrections
) -> list[str] | None:
    if existing["purged_at"]:
        return None
    try:
        stored = (data_dir / existing["path"]).read_bytes()
    except OSError:
        return None
    changes = corrections.changed(stored, image.data)
    return None if changes is None else list(changes)


def _differ(stored: str | None, received: str | None) -> bool:
    """Both known and not the same (an attribute one side lacks says nothing)."""
    return bool(stored and received and stored != received)
