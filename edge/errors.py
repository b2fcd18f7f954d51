"""Coded refusals: every failure a technician or a log reader can meet has a stable code.

A code never changes meaning once shipped (the hub, the TUI and field engineers key on it);
the human sentence may be improved freely. `docs/codes.md` lists them all.
"""

from __future__ import annotations

import re
from enum import Enum


class Code(str, Enum):
    """Stable refusal codes, grouped by where they arise."""

    # Input: the file itself
    INPUT_NOT_FOUND = "INPUT_NOT_FOUND"
    INPUT_UNREADABLE = "INPUT_UNREADABLE"
    INPUT_EMPTY = "INPUT_EMPTY"
    INPUT_TOO_LARGE = "INPUT_TOO_LARGE"
    INPUT_NOT_IMAGE = "INPUT_NOT_IMAGE"
    IMAGE_TRUNCATED = "IMAGE_TRUNCATED"
    IMAGE_DECODE_FAILED = "IMAGE_DECODE_FAILED"
    DICOM_INVALID = "DICOM_INVALID"
    DICOM_TRUNCATED = "DICOM_TRUNCATED"
    DICOM_UID_CONFLICT = "DICOM_UID_CONFLICT"
    INSTANCE_UID_COLLISION = "INSTANCE_UID_COLLISION"
    DICOM_NO_PIXELS = "DICOM_NO_PIXELS"
    DICOM_UNSUPPORTED = "DICOM_UNSUPPORTED"
    DICOM_PIXELS_DAMAGED = "DICOM_PIXELS_DAMAGED"
    DICOM_MULTIFRAME = "DICOM_MULTIFRAME"
    # Applicability and quality gate (the image is stored; its job is refused)
    MODALITY_NOT_ACCEPTED = "MODALITY_NOT_ACCEPTED"
    BODY_PART_NOT_ACCEPTED = "BODY_PART_NOT_ACCEPTED"
    VIEW_NOT_ACCEPTED = "VIEW_NOT_ACCEPTED"
    AGE_OUT_OF_RANGE = "AGE_OUT_OF_RANGE"
    IMAGE_TOO_SMALL = "IMAGE_TOO_SMALL"
    UNDEREXPOSED = "UNDEREXPOSED"
    OVEREXPOSED = "OVEREXPOSED"
    LOW_CONTRAST = "LOW_CONTRAST"
    BLURRED = "BLURRED"
    MOSTLY_BLANK = "MOSTLY_BLANK"
    OUT_OF_SCOPE = "OUT_OF_SCOPE"
    IMAGE_UPSIDE_DOWN = "IMAGE_UPSIDE_DOWN"
    IMAGE_CROPPED = "IMAGE_CROPPED"
    # Ingest boundary
    DECODE_TIMEOUT = "DECODE_TIMEOUT"
    DECODE_CRASHED = "DECODE_CRASHED"
    DECODER_UNAVAILABLE = "DECODER_UNAVAILABLE"
    CALLER_NOT_ALLOWED = "CALLER_NOT_ALLOWED"
    CALLED_AE_UNKNOWN = "CALLED_AE_UNKNOWN"
    LISTENER_BUSY = "LISTENER_BUSY"
    CALLER_ADDRESS_NOT_ALLOWED = "CALLER_ADDRESS_NOT_ALLOWED"
    LISTENER_IDLE_CLOSED = "LISTENER_IDLE_CLOSED"
    DICOM_TLS_REFUSED = "DICOM_TLS_REFUSED"
    DROP_FILE_LINKED = "DROP_FILE_LINKED"
    DROP_FILE_NOT_OWNED = "DROP_FILE_NOT_OWNED"
    # Video
    VIDEO_UNREADABLE = "VIDEO_UNREADABLE"
    VIDEO_NO_SECTOR = "VIDEO_NO_SECTOR"
    VIDEO_FROZEN = "VIDEO_FROZEN"
    VIDEO_BLACK = "VIDEO_BLACK"
    VIDEO_TOO_SHORT = "VIDEO_TOO_SHORT"
    VIDEO_SOURCE_LOST = "VIDEO_SOURCE_LOST"
    # Models and runtime
    NO_MODEL_FOR_INPUT = "NO_MODEL_FOR_INPUT"
    MODALITY_CONTRADICTED = "MODALITY_CONTRADICTED"
    MODEL_UNKNOWN = "MODEL_UNKNOWN"
    MODEL_MANIFEST_INVALID = "MODEL_MANIFEST_INVALID"
    MODEL_NEEDS_NEWER_SOFTWARE = "MODEL_NEEDS_NEWER_SOFTWARE"
    MODEL_FILE_MISSING = "MODEL_FILE_MISSING"
    MODEL_CHECKSUM_MISMATCH = "MODEL_CHECKSUM_MISMATCH"
    MODEL_SIZE_MISMATCH = "MODEL_SIZE_MISMATCH"
    MODEL_VARIANT_UNAVAILABLE = "MODEL_VARIANT_UNAVAILABLE"
    MODEL_OUTPUT_INVALID = "MODEL_OUTPUT_INVALID"
    BACKEND_UNAVAILABLE = "BACKEND_UNAVAILABLE"
    ENGINE_BUILD_FAILED = "ENGINE_BUILD_FAILED"
    ENGINE_UNREADABLE = "ENGINE_UNREADABLE"
    ENGINE_PARITY_FAILED = "ENGINE_PARITY_FAILED"
    VARIANT_PARITY_FAILED = "VARIANT_PARITY_FAILED"
    INFERENCE_FAILED = "INFERENCE_FAILED"
    # Site calibration (`edge models calibrate`, `edge models prior`, site profiles)
    CALIBRATION_TOO_FEW_CASES = "CALIBRATION_TOO_FEW_CASES"
    PRIOR_TOO_FEW_RESULTS = "PRIOR_TOO_FEW_RESULTS"
    PROFILE_INVALID = "PROFILE_INVALID"
    # Site profiles from the hub (edge/sync/profiles.py)
    PROFILE_SIGNATURE_INVALID = "PROFILE_SIGNATURE_INVALID"
    PROFILE_DOWNGRADE = "PROFILE_DOWNGRADE"
    PROFILE_OTHER_SITE = "PROFILE_OTHER_SITE"
    PROFILE_MODEL_NOT_INSTALLED = "PROFILE_MODEL_NOT_INSTALLED"
    PROFILE_NO_PREVIOUS = "PROFILE_NO_PREVIOUS"
    # The link to the hub (edge/sync/client.py)
    HUB_URL_INSECURE = "HUB_URL_INSECURE"
    # The hub itself (edge/hub/cluster.py)
    HUB_NODES_NEED_POSTGRESQL = "HUB_NODES_NEED_POSTGRESQL"
    # The job queue
    JOB_ABANDONED = "JOB_ABANDONED"
    JOB_LEASE_LOST = "JOB_LEASE_LOST"
    JOB_INTERRUPTED = "JOB_INTERRUPTED"
    INSTANCE_SUPERSEDED = "INSTANCE_SUPERSEDED"
    # Store and host
    STORE_WRITE_FAILED = "STORE_WRITE_FAILED"
    # A technician's request the store declines (nothing is wrong with the disk)
    DELETE_REFUSED = "DELETE_REFUSED"
    NOTE_REFUSED = "NOTE_REFUSED"
    DISK_FULL = "DISK_FULL"
    STORE_CORRUPT = "STORE_CORRUPT"
    STORE_READ_ONLY = "STORE_READ_ONLY"
    STORE_UNOPENABLE = "STORE_UNOPENABLE"
    STORE_SCHEMA_NEWER = "STORE_SCHEMA_NEWER"
    STORAGE_NOT_ENCRYPTED = "STORAGE_NOT_ENCRYPTED"
    STORE_IN_USE = "STORE_IN_USE"
    BACKUP_INVALID = "BACKUP_INVALID"
    ALREADY_RUNNING = "ALREADY_RUNNING"
    CONFIG_INVALID = "CONFIG_INVALID"
    # Pixels leaving for the hub (edge/sync/outgoing.py): burned-in text
    BURNED_IN_TEXT_REDACTED = "BURNED_IN_TEXT_REDACTED"
    PIXELS_WITHHELD = "PIXELS_WITHHELD"
    CINE_UNAVAILABLE = "CINE_UNAVAILABLE"


# Refusals a restart of the service cannot mend (a person must act: repair, restore, reinstall,
# edit the configuration, encrypt the disk). A service refusing with one exits with
# EXIT_NEEDS_A_PERSON, which its systemd unit does not restart (RestartPreventExitStatus=):
# twenty restarts in two minutes would only bury the one coded line in the journal.
NEEDS_A_PERSON = frozenset(
    {
        Code.STORE_CORRUPT,
        Code.STORE_SCHEMA_NEWER,
        Code.STORE_UNOPENABLE,
        Code.STORE_READ_ONLY,
        Code.STORAGE_NOT_ENCRYPTED,
        Code.CONFIG_INVALID,
    }
)

# Failures of the device, not of the job: the job goes back to the queue for a later attempt
# (`Pipeline`). A stop (JOB_INTERRUPTED: a cine's decoder closed under it) or a decoder process
# that could not start is not the job's fault either.
DEVICE_FAILURES = frozenset(
    {
        Code.DISK_FULL,
        Code.STORE_WRITE_FAILED,
        Code.STORE_READ_ONLY,
        Code.JOB_INTERRUPTED,
        Code.DECODER_UNAVAILABLE,
    }
)

# A model that cannot be opened here (its files damaged or missing, its manifest unreadable, no
# backend): the device's state, not the input's. What waits for it is kept, not refused.
MODEL_UNAVAILABLE = frozenset(
    {
        Code.MODEL_CHECKSUM_MISMATCH,
        Code.MODEL_FILE_MISSING,
        Code.MODEL_MANIFEST_INVALID,
        Code.BACKEND_UNAVAILABLE,
    }
)


class EdgeError(Exception):
    """A refusal with a stable code and one human sentence (no patient data in it)."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message

    def __reduce__(self) -> tuple[type[EdgeError], tuple[Code, str]]:
        # Refusals cross process boundaries (the guarded decoder): pickle by code and message.
        return (type(self), (self.code, self.message))

    def one_line(self) -> str:
        """The form shown in the CLI, the TUI and the log: `CODE: sentence`."""
        return f"{self.code.value}: {self.message}"


# One refusal that stands for several (the gate's first, the out-of-scope refusal of an image
# that also failed the quality gate) names the others at the end of its sentence; what reads
# them back (the technician's next steps) reads this form.
_ALSO = re.compile(r"\(also: ([A-Z0-9_]+(?:, [A-Z0-9_]+)*)\)\s*$")


def with_others(error: EdgeError, others: list[EdgeError]) -> EdgeError:
    """`error`, its sentence naming the codes of `others` found with it: "... (also: A, B)"."""
    if not others:
        return error
    return EdgeError(error.code, f"{error.message} (also: {', '.join(o.code.value for o in others)})")


def others_named(message: str | None) -> list[str]:
    """The codes a refusal's sentence names as found with it (`with_others`)."""
    found = _ALSO.search(message or "")
    return found[1].split(", ") if found else []
