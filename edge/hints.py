"""What to do next after each refusal, in a technician's words: one sentence per code.

The TUI shows it under every refusal (worklist detail, result screen, action notices); the CLI may
too. docs/codes.md keeps the long form for field engineers; this table is the short form for the
person at the keyboard, and it names the real commands and unit names (edge-agent, edge-sync).
A test keeps it complete: every `Code` has a next step.
"""

from __future__ import annotations

from edge.errors import Code, others_named

RESEND = "ask the sender to send it again (the transfer was incomplete)"
REACQUIRE = "repeat the acquisition, then send the new image"
OTHER_MODEL = "re-run it with a model that accepts it (r), or read it without the model"
SEE_LOG = "see the log (journalctl -u edge-agent) and tell the field engineer"
REINSTALL = "tell the field engineer: the model must be reinstalled (edge models show NAME checks each file)"

NEXT_STEPS: dict[Code, str] = {
    # Input: the file itself
    Code.INPUT_NOT_FOUND: "check the path, or the study was deleted meanwhile: refresh the worklist",
    Code.INPUT_UNREADABLE: "check the file's permissions, then send it again",
    Code.INPUT_EMPTY: RESEND,
    Code.INPUT_TOO_LARGE: "send a smaller export, or ask to raise [store] max_input_bytes",
    Code.INPUT_NOT_IMAGE: "send a DICOM, PNG or JPEG image or a video (the file name does not count)",
    Code.IMAGE_TRUNCATED: RESEND,
    Code.IMAGE_DECODE_FAILED: "export the image again from the scanner and send it again",
    Code.DICOM_INVALID: "check the sender's DICOM export settings, then send it again",
    Code.DICOM_TRUNCATED: RESEND,
    Code.DICOM_UID_CONFLICT: "check the sender (it reused an id); delete the stored study for the new one",
    Code.INSTANCE_UID_COLLISION: "both images are kept: compare them and tell the sender it reused an id",
    Code.DICOM_NO_PIXELS: "nothing to do: objects without an image are kept but not scored",
    Code.DICOM_UNSUPPORTED: "send it uncompressed (or in another transfer syntax) from the sender",
    Code.DICOM_PIXELS_DAMAGED: "send this image again from the modality or the PACS (its settings are fine)",
    Code.DICOM_MULTIFRAME: "nothing to do: cines are analysed as clips now",
    # Applicability and quality gate
    Code.MODALITY_NOT_ACCEPTED: OTHER_MODEL,
    Code.BODY_PART_NOT_ACCEPTED: OTHER_MODEL,
    Code.VIEW_NOT_ACCEPTED: "send the frontal (PA/AP) view",
    Code.AGE_OUT_OF_RANGE: "read it without the model: it was not validated for this age",
    Code.IMAGE_TOO_SMALL: "send the original image, not a thumbnail or a screenshot",
    Code.UNDEREXPOSED: REACQUIRE,
    Code.OVEREXPOSED: REACQUIRE,
    Code.LOW_CONTRAST: "check the window and the exposure; repeat the acquisition if needed",
    Code.BLURRED: "repeat the acquisition, keeping the patient and the probe still",
    Code.MOSTLY_BLANK: "check the detector or the probe contact, then repeat the acquisition",
    Code.OUT_OF_SCOPE: "check that the image and the model match; read it without the model",
    Code.IMAGE_UPSIDE_DOWN: "look at the film: if upside down, export it the right way up and send it again",
    Code.IMAGE_CROPPED: "send the whole film, edges included (not a zoomed-in part or a close-up photograph)",
    # Ingest boundary
    Code.DECODE_TIMEOUT: "check the sender: the file is quarantined; tell the field engineer if it repeats",
    Code.DECODE_CRASHED: "check the sender: the file is quarantined; tell the field engineer if it repeats",
    Code.DECODER_UNAVAILABLE: "nothing if it passes: it is queued again; if it repeats, see edge doctor",
    Code.CALLER_NOT_ALLOWED: "add the modality's AE title to [dicom] allowed_callers if it is yours",
    Code.CALLER_ADDRESS_NOT_ALLOWED: "add the modality's address to [dicom] allowed_networks if it is yours",
    Code.LISTENER_IDLE_CLOSED: "nothing: an idle link made room; if a modality is cut, raise idle_timeout_s",
    Code.DICOM_TLS_REFUSED: "set the modality up for DICOM TLS with a certificate the clinic's CA signed",
    Code.DROP_FILE_LINKED: "copy the file itself into the drop folder, not a link to it",
    Code.DROP_FILE_NOT_OWNED: "write files as the expected user, or add that user to [watch] owners",
    Code.CALLED_AE_UNKNOWN: "set the sender's destination AE title to this device's [dicom] ae_title",
    Code.LISTENER_BUSY: "nothing if it then arrives; raise [dicom] max_associations if it persists",
    # Video
    Code.VIDEO_UNREADABLE: "check the cable, the URL or the file, then start again",
    Code.VIDEO_NO_SECTOR: "scan (the picture must move); for a live capture, set the device profile's roi",
    Code.VIDEO_FROZEN: "unfreeze the scanner, or check the capture",
    Code.VIDEO_BLACK: "check the probe and the capture card",
    Code.VIDEO_TOO_SHORT: "record a longer clip",
    Code.VIDEO_SOURCE_LOST: "check the source and record again",
    # Models and runtime
    Code.NO_MODEL_FOR_INPUT: "re-run it with a model you choose (r), or install one for this kind of image",
    Code.MODALITY_CONTRADICTED: "check the modality and body part tags on the scanner or PACS, then resend",
    Code.MODEL_UNKNOWN: "choose an installed model (edge models list)",
    Code.MODEL_MANIFEST_INVALID: REINSTALL,
    Code.MODEL_NEEDS_NEWER_SOFTWARE: "update edge on this device (a newer release tool made this model)",
    Code.MODEL_FILE_MISSING: REINSTALL,
    Code.MODEL_CHECKSUM_MISMATCH: REINSTALL,
    Code.MODEL_VARIANT_UNAVAILABLE: 'set [runtime] precision = "auto"',
    Code.MODEL_OUTPUT_INVALID: "tell the field engineer: the model file is wrong",
    Code.MODEL_SIZE_MISMATCH: "nothing: the next sync tries again; if it persists, tell the hub admin",
    Code.BACKEND_UNAVAILABLE: 'set [runtime] backend = "auto", then run edge doctor',
    Code.ENGINE_BUILD_FAILED: "nothing now (ONNX Runtime serves); tell the field engineer",
    Code.ENGINE_UNREADABLE: "run edge models build NAME --force, or tell the field engineer",
    Code.ENGINE_PARITY_FAILED: "run edge models verify NAME and tell the field engineer",
    Code.VARIANT_PARITY_FAILED: "nothing: a variant that matches FP32 here is used (right, perhaps slower)",
    Code.INFERENCE_FAILED: "re-run it (r); if it fails again, " + SEE_LOG,
    # Site calibration and site profiles
    Code.CALIBRATION_TOO_FEW_CASES: "label or have reviewed more cases of the class named, then again",
    Code.PRIOR_TOO_FEW_RESULTS: "wait for more results, or widen --since",
    Code.PROFILE_INVALID: "the shipped calibration is used meanwhile; tell the field engineer",
    Code.PROFILE_SIGNATURE_INVALID: "ask the hub to publish it again, signed (edge hub profile sign)",
    Code.PROFILE_DOWNGRADE: "nothing: the newer profile kept for these weights stays",
    Code.PROFILE_OTHER_SITE: "ask the hub's administrator to publish this site's own profile",
    Code.PROFILE_MODEL_NOT_INSTALLED: "install that model version to use the profile",
    Code.PROFILE_NO_PREVIOUS: "nothing to roll back to (edge sync profile list MODEL)",
    # The job queue
    Code.JOB_ABANDONED: "re-run it (r) once the cause is fixed; " + SEE_LOG,
    Code.JOB_LEASE_LOST: "nothing if it then finished; else re-run it (r)",
    Code.JOB_INTERRUPTED: "nothing: it is queued again and the agent analyses it",
    Code.INSTANCE_SUPERSEDED: "nothing: open the corrected version's result",
    # Store and host
    Code.STORE_WRITE_FAILED: "check the disk (4 Device), then try again",
    Code.DELETE_REFUSED: "wait for the job to end; a study's only result goes with its study (D, then s)",
    Code.NOTE_REFUSED: "write a note of 1 to 2,000 characters",
    Code.DISK_FULL: "free space (edge store backup, then retention), then try again",
    Code.STORE_CORRUPT: "run edge doctor; restore a backup as its sentence says",
    Code.STORE_READ_ONLY: "give the service user write access or remount read-write; edge doctor",
    Code.STORE_UNOPENABLE: "move the data directory to a local disk or fix the file; edge doctor",
    Code.STORE_SCHEMA_NEWER: "upgrade edge on this device (or restore a backup this version made)",
    Code.STORE_IN_USE: "systemctl stop edge-agent edge-sync, then restore",
    Code.BACKUP_INVALID: "choose another backup file",
    Code.ALREADY_RUNNING: "stop the other one first (systemctl stop edge-agent), or use another --data-dir",
    Code.CONFIG_INVALID: "fix the key the sentence names in /etc/edge/edge.toml",
    # Security and privacy
    Code.HUB_URL_INSECURE: "enrol with the hub's https:// address (edge sync enroll https://HUB CODE)",
    Code.HUB_NODES_NEED_POSTGRESQL: "set [hub] database_url to a PostgreSQL URL, or [hub] nodes = 1",
    Code.STORAGE_NOT_ENCRYPTED: "tell the field engineer: the data must be on an encrypted disk",
    Code.BURNED_IN_TEXT_REDACTED: "nothing: text in the picture was blacked out before it was sent",
    Code.PIXELS_WITHHELD: "nothing (the result was sent); if tesseract-ocr is missing, tell the engineer",
    Code.CINE_UNAVAILABLE: "nothing (the result and key frames went); re-analyse the recording for a cine",
}

AGENT_STOPPED = (
    "nothing is received or analysed until it runs: sudo systemctl start edge-agent "
    "(results reach the hub through edge-sync)"
)
SYNC_NOT_CONFIGURED = (
    "enrol this device with the hub: edge sync enroll HUB_URL CODE, then systemctl start edge-sync"
)
SYNC_NOT_RUNNING = "no sync service is running: sudo systemctl start edge-sync (or edge sync run)"


def next_step(code: str | Code | None) -> str | None:
    """The next step for a refusal code (a stored `error_code` is a plain string); None for an
    unknown or absent code (a newer device's code read by an older TUI)."""
    if code is None:
        return None
    try:
        return NEXT_STEPS[Code(code)]
    except ValueError:
        return None


def refusal_next_step(code: str | Code | None, message: str | None) -> str | None:
    """The next step for a refusal and, where the refusals found with it call for another one,
    that too: an image refused as out of scope that was also blank or blurred is a film to
    repeat, which the first code's step alone did not say (found by a TUI audit)."""
    first = next_step(code)
    others = [other for other in others_named(message) if next_step(other) not in (None, first)]
    if not others:
        return first
    extra = f"as it was also {', '.join(others)}: {next_step(others[0])}"
    return f"{first}; {extra}" if first else extra
