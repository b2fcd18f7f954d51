"""The wire protocol between a device and its hub, version 1. Both sides import this module.

Requests carry `Authorization: Bearer <device id>.<secret>` and a signature over
`METHOD\\nPATH\\nTIMESTAMP\\nNONCE\\nsha256(body)` (HMAC-SHA256 keyed with the secret), in
`X-Edge-Timestamp`, `X-Edge-Nonce`, `X-Edge-Signature`. The hub refuses a bad signature (a
tampered request), a timestamp more than `MAX_SKEW_S` from its clock and a nonce it has seen
(a replayed request). A device that retries re-signs: a retry is new on the wire and
idempotent in content.

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
import hmac
import json
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

VERSION = 1
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


class EnrollRequest(_Wire):
    code: str = Field(min_length=8, max_length=64)
    device_name: str = Field(min_length=1, max_length=64)
    site: str = Field(default="", max_length=64)


class EnrollResponse(_Wire):
    device_id: str
    secret: str
    hub_time: float


class Record(_Wire):
    uuid: str = Field(min_length=36, max_length=36)
    seq: int = Field(ge=1)
    kind: Literal["result"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    payload: dict[str, Any]


class Batch(_Wire):
    protocol: Literal[1] = 1
    batch_id: str = Field(min_length=36, max_length=36)
    records: list[Record] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)


class BatchReply(_Wire):
    stored: list[str]
    duplicates: list[str]
    quarantined: list[str]
    hub_time: float


class UploadStart(_Wire):
    record_uuid: str = Field(min_length=36, max_length=36)
    """The outbox row the file belongs to (its result, or the image itself)."""
    kind: Literal["thumbnail", "heatmap", "image"]
    result_uuid: str = Field(min_length=36, max_length=36)
    size: int = Field(ge=1, le=512 * 1024 * 1024)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    media_type: str = Field(max_length=64)


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


def string_to_sign(method: str, path: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    return f"{method.upper()}\n{path}\n{timestamp}\n{nonce}\n{hashlib.sha256(body).hexdigest()}".encode()


def signing_key(secret: str) -> str:
    """The HMAC key both sides derive from a device's secret; the hub stores only this."""
    return hashlib.sha256(secret.encode()).hexdigest()


def sign(secret: str, method: str, path: str, timestamp: str, nonce: str, body: bytes) -> str:
    return hmac.new(
        secret.encode(), string_to_sign(method, path, timestamp, nonce, body), hashlib.sha256
    ).hexdigest()


def compress(data: Any) -> bytes:
    return gzip.compress(canonical(data), compresslevel=6)


def inflate(body: bytes, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """gunzip with a ceiling (a small body must not expand without end)."""
    import zlib

    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = decompressor.decompress(body, limit + 1)
    if len(out) > limit or decompressor.unconsumed_tail:
        raise ValueError(f"inflates to more than {limit} bytes")
    return out


def release_to_sign(release: dict[str, Any]) -> bytes:
    """What a model release or a site profile is signed over: all of it but its signature."""
    return canonical({k: v for k, v in release.items() if k != "signature"})
