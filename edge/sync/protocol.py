"""The wire protocol between a device and its hub, version 2. Both sides import this module.

A device is known by an ed25519 key pair it makes at enrolment: the private key never leaves
the device, the hub stores only the public key. Every request carries `X-Edge-Device`,
`X-Edge-Protocol`, `X-Edge-Timestamp`, `X-Edge-Nonce` and `X-Edge-Signature`, the device's
signature over `request_to_sign` (method, path with query, sha256 of the body, timestamp, nonce,
device id, protocol version). Nothing on the wire lets a listener sign another request. The hub
refuses another protocol version (`UPGRADE_REQUIRED`, and so every version-1 bearer request), a
bad signature (a tampered request, or another key), a timestamp that is not a plain finite
number (`BAD_TIMESTAMP`: no nan, no inf) or is more than `MAX_SKEW_S` from its clock, and a
nonce it has seen within the window (a replayed request). A device that retries re-signs: a
retry is new on the wire and idempotent in content.

Result batches are gzip-compressed JSON. Each record carries the device-made UUID, the device's
gapless outbox sequence number and the sha256 of its canonical payload; the hub stores each
(device, uuid) once, answers "duplicate" for a re-send with the same hash and quarantines (never
overwrites) a re-send with a different one.

Every refusal is a JSON body `{"code": ..., "message": ...}` (`Refusal`) with its HTTP status;
the code is a `WireCode` (stable, listed in docs/codes.md), the sentence may improve. The device
decides on the code, never on the sentence.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from enum import Enum
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

VERSION = 2
"""Bumped whenever a request's authentication or a body's schema changes incompatibly; a hub
speaks exactly one version and refuses the others with `UPGRADE_REQUIRED`."""
MAX_SKEW_S = 300
MAX_BATCH_RECORDS = 200
MAX_BODY_BYTES = 2 * 1024 * 1024  # compressed, on the wire
MAX_INFLATED_BYTES = 16 * 1024 * 1024  # after gunzip: a zip bomb stops here
CHUNK_BYTES = 256 * 1024  # upload chunk: small enough for a 2G link to finish one


class WireCode(str, Enum):
    """Why the hub refused a request; docs/codes.md ("Wire codes") says what each means."""

    # The request as a whole
    BAD_REQUEST = "BAD_REQUEST"
    BAD_BODY = "BAD_BODY"
    TOO_LARGE = "TOO_LARGE"
    RATE_LIMITED = "RATE_LIMITED"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    # Enrolment and each request's credential
    ENROLL_REFUSED = "ENROLL_REFUSED"
    NO_CREDENTIAL = "NO_CREDENTIAL"
    BAD_CREDENTIAL = "BAD_CREDENTIAL"
    BAD_SIGNATURE = "BAD_SIGNATURE"
    STALE_REQUEST = "STALE_REQUEST"
    REPLAYED = "REPLAYED"
    BAD_TIMESTAMP = "BAD_TIMESTAMP"
    DEVICE_REVOKED = "DEVICE_REVOKED"
    UPGRADE_REQUIRED = "UPGRADE_REQUIRED"
    # Results
    BAD_RECORD = "BAD_RECORD"
    # Uploads
    RESULT_FIRST = "RESULT_FIRST"
    UPLOAD_CONFLICT = "UPLOAD_CONFLICT"
    NO_SUCH_UPLOAD = "NO_SUCH_UPLOAD"
    BAD_OFFSET = "BAD_OFFSET"
    WRONG_OFFSET = "WRONG_OFFSET"
    TOO_LONG = "TOO_LONG"
    CHECKSUM_MISMATCH = "CHECKSUM_MISMATCH"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    # Reviews
    BAD_VERDICT = "BAD_VERDICT"
    NO_SUCH_RESULT = "NO_SUCH_RESULT"
    # Model releases
    BAD_RELEASE = "BAD_RELEASE"
    NO_SUCH_FILE = "NO_SUCH_FILE"
    # Site profiles
    BAD_PROFILE = "BAD_PROFILE"
    TOO_FEW_CASES = "TOO_FEW_CASES"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Refusal(_Wire):
    """The body of every refusal the hub answers (with its HTTP status)."""

    code: WireCode
    message: str


HEX_KEY = r"^[0-9a-f]{64}$"  # a raw ed25519 public key, hex
HEX_SIGNATURE = r"^[0-9a-f]{128}$"


class PreviousEnrolment(_Wire):
    """A device enrolled under sync protocol 1 (a shared secret) enrolling again with a key: its
    id and that secret, so the hub keeps the device (its results, reviews and name) under its id.
    Enrolled afresh, its reviews were pulled by a new id and never came, and its files waited for
    ever on results the hub filed under the old one (an upgrade check)."""

    device_id: str = Field(min_length=1, max_length=36)
    secret: str = Field(min_length=1, max_length=128)


class EnrollRequest(_Wire):
    code: str = Field(min_length=8, max_length=64)
    device_name: str = Field(min_length=1, max_length=64)
    site: str = Field(default="", max_length=64)
    public_key: str = Field(pattern=HEX_KEY)
    previous: PreviousEnrolment | None = None
    proof: str = Field(pattern=HEX_SIGNATURE)
    """The new key's signature over `enrollment_to_sign(this)`: the device holds its private key."""


class EnrollResponse(_Wire):
    device_id: str
    hub_time: float
    protocol: int = VERSION


class Record(_Wire):
    uuid: str = Field(min_length=36, max_length=36)
    seq: int = Field(ge=1)
    kind: Literal["result"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    payload: dict[str, Any]


class Batch(_Wire):
    protocol: Literal[1] = 1  # the batch body's own format: unchanged since sync protocol 1
    batch_id: str = Field(min_length=36, max_length=36)
    records: list[Record] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)


class BatchReply(_Wire):
    stored: list[str]
    duplicates: list[str]
    quarantined: list[str]
    hub_time: float


class UploadStart(_Wire):
    # UUIDs, not any 36 characters: the hub once built a file path from this (issue 17).
    record_uuid: UUID
    """The outbox row the file belongs to (its result, or the image itself)."""
    kind: Literal["thumbnail", "heatmap", "image", "rendition", "cine"]
    """A "rendition" is the 1024-px greyscale JPEG the specialist reads from, its windowing in a
    JPEG comment (edge.imaging.rendition_meta; issue 20). A "cine" is a clip result's motion:
    one greyscale JPEG of at most 32 frames (<= 320 px) stacked top to bottom, its facts (frame
    count and size, per-frame times and probabilities) in the same kind of JPEG comment
    (edge.video.filmstrip; at most `MAX_CINE_BYTES`). A "heatmap" is the CAM evidence grid
    (media type `edge.imaging.evidence.MEDIA_TYPE`,
    under 250 bytes) from devices since issue 21, a blended PNG from older ones; the hub reads
    the media type. A thumbnail is a greyscale JPEG (a PNG from older devices)."""
    result_uuid: UUID
    size: int = Field(ge=1, le=512 * 1024 * 1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str = Field(max_length=64)

    @model_validator(mode="after")
    def _size_of_its_kind(self) -> UploadStart:
        # A cine is made small on purpose (edge.video.filmstrip: ~250 KB at most): one claiming
        # more is not one, and must not take a result's quota.
        if self.kind == "cine" and self.size > MAX_CINE_BYTES:
            raise ValueError(f"a cine is at most {MAX_CINE_BYTES} bytes")
        return self


# The device keeps a cine under 250 KB (edge.video.filmstrip.CINE_MAX_BYTES); the hub accepts
# up to four times that, so a later device may trade a little more for it without a new hub.
MAX_CINE_BYTES = 1_000_000


class UploadState(_Wire):
    upload_id: str
    offset: int
    complete: bool


class Review(_Wire):
    id: str
    result_uuid: str
    verdict: Literal["agree", "disagree", "uncertain"]
    finding: str | None = None
    note: str | None = None
    reviewer_role: str | None = None
    reviewed_at: str


class ReviewPage(_Wire):
    reviews: list[Review]
    cursor: int
    hub_time: float


class RenditionRequests(_Wire):
    """Results of this device whose diagnostic rendition a specialist asked for and the hub has
    not received (oldest first, at most `MAX_RENDITION_REQUESTS`)."""

    results: list[UUID]


MAX_RENDITION_REQUESTS = 200


class ModelRelease(_Wire):
    name: str
    version: str
    files: dict[str, str]  # file name -> sha256
    sizes: dict[str, int]
    manifest: str  # the model.toml text
    signature: str  # hex ed25519 signature over canonical(release without signature)


class ProfileRelease(_Wire):
    """A site profile (edge/inference/site_profile.py) for one site's devices, signed like a
    model release: same key, same scheme (edge/sync/signatures.py). The programme and site are
    signed too, so a hub cannot hand one site's profile to another unnoticed."""

    id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    model: str = Field(min_length=1, max_length=64)
    model_version: str = Field(min_length=1, max_length=32)
    programme: str = Field(max_length=64)
    site: str = Field(max_length=64)
    created_at: str
    profile: str  # the profile's TOML text, written on the device as <id>.toml
    signature: str  # hex ed25519 signature over canonical(this without signature)


def read_refusal(body: bytes) -> Refusal | None:
    """The hub's refusal in a response body, or None when the body is not one (a proxy's error
    page, or a code this software does not know yet)."""
    try:
        return Refusal.model_validate_json(body)
    except ValidationError:
        return None


def canonical(data: Any) -> bytes:
    """The one byte form hashes and signatures are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def payload_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(payload)).hexdigest()


# ------------------------------------------------------------------ request signatures

HEADER_DEVICE = "X-Edge-Device"
HEADER_PROTOCOL = "X-Edge-Protocol"
HEADER_TIMESTAMP = "X-Edge-Timestamp"
HEADER_NONCE = "X-Edge-Nonce"
HEADER_SIGNATURE = "X-Edge-Signature"
# Seconds since the epoch as digits with an optional fraction: float() would also take "nan",
# "inf", "1e9" and surrounding blanks, and a nan compares false with every bound.
_TIMESTAMP = re.compile(r"[0-9]{1,11}(\.[0-9]{1,6})?")
NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def request_to_sign(
    method: str, path: str, body: bytes, timestamp: str, nonce: str, device_id: str, version: int = VERSION
) -> bytes:
    """What a device signs for one request; `path` includes the query string. The leading tag
    keeps a request signature from ever being read as another document's."""
    fields = [
        f"edge-request-v{version}",
        method.upper(),
        path,
        hashlib.sha256(body).hexdigest(),
        timestamp,
        nonce,
        device_id,
        str(version),
    ]
    return "\n".join(fields).encode()


def enrollment_to_sign(request: dict[str, Any]) -> bytes:
    """What a new key signs at enrolment (the request without its proof and without fields left
    out), tagged like a request."""
    signed = {k: v for k, v in request.items() if k != "proof" and v is not None}
    return b"edge-enroll-v%d\n" % VERSION + canonical(signed)


def parse_timestamp(text: str) -> float | None:
    """The signed timestamp as a finite number, or None when it is anything else."""
    if not _TIMESTAMP.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def upgrade_message(received: str | None) -> str:
    """The one sentence a device on another protocol version is refused with."""
    what = f"protocol {received}" if received else "protocol 1 (a bearer credential)"
    return (
        f"this hub speaks sync protocol {VERSION} and the device sent {what}: upgrade the device "
        f"software to a version speaking sync protocol {VERSION} (a newer device: upgrade the hub), "
        "then enrol it again"
    )


def compress(data: Any) -> bytes:
    return gzip.compress(canonical(data), compresslevel=6)


def inflate(body: bytes, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """gunzip with a ceiling (a small body must not expand without end)."""
    import zlib

    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as exc:  # not gzip, or a damaged stream: the caller's ValueError, not a 500
        raise ValueError(f"not a gzip stream ({exc})") from exc
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"inflates to more than {limit} bytes")
    if not decompressor.eof:
        raise ValueError("the gzip stream is truncated")
    return out


def release_to_sign(release: dict[str, Any]) -> bytes:
    """What a model release or a site profile is signed over: all of it but its signature."""
    return canonical({k: v for k, v in release.items() if k != "signature"})


# ------------------------------------------------------------------ deletions (tombstones)


class Tombstone(_Wire):
    """A result deleted on the device: its uuid and the device's outbox sequence, nothing else
    (no patient data). Idempotent by (device, result uuid): a re-send is a duplicate."""

    result_uuid: UUID
    seq: int = Field(ge=1)
    deleted_at: str = Field(max_length=32)  # the device's clock, for the audit only


class TombstoneBatch(_Wire):
    batch_id: str = Field(min_length=36, max_length=36)
    tombstones: list[Tombstone] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)


class TombstoneReply(_Wire):
    applied: list[str]
    """Result uuids hidden now, or held until their result arrives (then stored hidden)."""
    duplicates: list[str]
    hub_time: float
