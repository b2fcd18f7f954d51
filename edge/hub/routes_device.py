"""The devices' API under /v1: enrolment, result batches, resumable uploads, reviews and signed
model releases. A thin HTTP layer over `devices`, `intake`, `reviews` and `releases`.

Every device request is authenticated (protocol version + key signature + clock + nonce), size-limited
before it is read into memory, and rate-limited per device; every refusal is the JSON body
`protocol.Refusal` (`{"code": ..., "message": ...}`, the code a `protocol.WireCode`) with its
HTTP status: the hub's own refusals (`HubError`), and the framework's (an unknown path, a wrong
method, a malformed query) alike. `app.py` installs the handlers below on the whole hub.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edge.hub import db, devices, intake, releases, rendition_requests, reviews, site_profiles, tombstones
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.hub.limits import RateLimiter
from edge.sync import protocol
from edge.sync.protocol import WireCode

router = APIRouter(prefix="/v1")


@dataclass
class DeviceApi:
    """What the routes share, kept on the hub app's state (`app.state.device_api`)."""

    engine: Engine
    files: Path
    limiter: RateLimiter
    quotas: intake.UploadQuotas = field(default_factory=intake.UploadQuotas)


def _api(request: Request) -> DeviceApi:
    api: DeviceApi = request.app.state.device_api
    return api


# ------------------------------------------------------------------ refusals as JSON


def refusal(status: int, code: WireCode, message: str) -> JSONResponse:
    body = protocol.Refusal(code=code, message=message).model_dump(mode="json")
    return JSONResponse(body, status_code=status)


async def hub_refused(request: Request, error: Exception) -> Response:
    assert isinstance(error, HubError)
    return refusal(error.status, error.code, error.message)


_FRAMEWORK_CODES = {404: WireCode.NOT_FOUND, 405: WireCode.METHOD_NOT_ALLOWED}


async def framework_refused(request: Request, error: Exception) -> Response:
    """An unknown path or a wrong method: the framework's status, in the protocol's body."""
    assert isinstance(error, HTTPException)
    code = _FRAMEWORK_CODES.get(error.status_code, WireCode.BAD_REQUEST)
    return refusal(error.status_code, code, str(error.detail))


async def invalid_request(request: Request, error: Exception) -> Response:
    """A path or query parameter of the wrong type (422, as FastAPI answers it)."""
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()))
    return refusal(422, WireCode.BAD_REQUEST, f"{where}: {first.get('msg', 'invalid')}"[:200])


# ------------------------------------------------------------------ reading a request


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) before it can exceed `limit`, with or without a Content-Length."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise HubError(400, WireCode.BAD_REQUEST, "Content-Length must be a number of bytes")
    if declared is not None and int(declared) > limit:
        raise HubError(413, WireCode.TOO_LARGE, f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HubError(413, WireCode.TOO_LARGE, f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def device_for(request: Request, limit: int = protocol.MAX_BODY_BYTES) -> tuple[Device, bytes]:
    """The authenticated, rate-limited device behind a request, with the request's body."""
    api = _api(request)
    body = await read_limited(request, limit)
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    headers = {k.lower(): v for k, v in request.headers.items()}
    device = await run_in_threadpool(devices.authenticate, api.engine, headers, request.method, path, body)
    if not api.limiter.allow(device.id):
        raise HubError(429, WireCode.RATE_LIMITED, "too many requests: slow down")
    return device, body


def parse(model: Any, raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise HubError(400, WireCode.BAD_REQUEST, str(exc.errors()[0]["msg"])[:200]) from exc


# ------------------------------------------------------------------ the routes


@router.get("/health")
async def health() -> dict[str, Any]:
    return {"ok": True, "protocol": protocol.VERSION, "hub_time": time.time()}


@router.post("/enroll")
async def enroll(request: Request) -> protocol.EnrollResponse:
    client = request.client.host if request.client else "unknown"
    if not _api(request).limiter.allow(f"enroll:{client}"):
        raise HubError(429, WireCode.RATE_LIMITED, "too many enrolment attempts")
    devices.check_version(request.headers.get(protocol.HEADER_PROTOCOL))  # before the body's schema
    body = await read_limited(request, 4096)
    return await run_in_threadpool(devices.enroll, _api(request).engine, parse(protocol.EnrollRequest, body))


def _inflated(request: Request, body: bytes) -> bytes:
    """The body as sent, or inflated when the device gzipped it (a bad stream is a 400)."""
    try:
        return protocol.inflate(body) if request.headers.get("content-encoding") == "gzip" else body
    except (ValueError, OSError) as exc:
        raise HubError(400, WireCode.BAD_BODY, f"the body does not inflate: {exc}") from exc


@router.post("/batches")
async def batches(request: Request) -> protocol.BatchReply:
    device, body = await device_for(request)
    raw = _inflated(request, body)
    return await run_in_threadpool(
        intake.store_batch, _api(request).engine, device, parse(protocol.Batch, raw)
    )


@router.post("/tombstones")
async def deletions(request: Request) -> protocol.TombstoneReply:
    """Results deleted on the device: hidden at once, purged later (edge/hub/tombstones.py)."""
    device, body = await device_for(request)
    raw = _inflated(request, body)
    return await run_in_threadpool(
        tombstones.apply_tombstones, _api(request).engine, device, parse(protocol.TombstoneBatch, raw)
    )


@router.post("/uploads")
async def start_upload(request: Request) -> protocol.UploadState:
    device, body = await device_for(request, 4096)
    api = _api(request)
    return await run_in_threadpool(
        intake.start_upload, api.engine, api.files, device, parse(protocol.UploadStart, body), api.quotas
    )


@router.head("/uploads/{upload_id}")
async def upload_offset(upload_id: str, request: Request) -> Response:
    device, _ = await device_for(request, 0)
    row = await run_in_threadpool(intake.upload_state, _api(request).engine, device, upload_id)
    return Response(headers={"Upload-Offset": str(row.offset), "Upload-Length": str(row.size)})


@router.patch("/uploads/{upload_id}")
async def upload_chunk(upload_id: str, request: Request) -> protocol.UploadState:
    device, chunk = await device_for(request, protocol.CHUNK_BYTES)
    offset_text = request.headers.get("upload-offset", "")
    # digits only: int() would also take "-1", " 1", "1_0" and 4000-digit numbers
    if not offset_text.isascii() or not offset_text.isdigit() or len(offset_text) > 12:
        raise HubError(400, WireCode.BAD_OFFSET, "Upload-Offset must be a byte offset (0 or more)")
    offset = int(offset_text)
    # fsync and the file's running hash: off the event loop, so other devices are served meanwhile
    return await run_in_threadpool(
        intake.append_chunk, _api(request).engine, device, upload_id, offset, chunk
    )


@router.get("/reviews")
async def reviews_since(
    request: Request, cursor: Annotated[int, Query(ge=0, le=db.MAX_INT)] = 0
) -> protocol.ReviewPage:
    device, _ = await device_for(request, 0)
    return await run_in_threadpool(reviews.reviews_since, _api(request).engine, device, cursor)


@router.get("/renditions/requested")
async def renditions_requested(request: Request) -> protocol.RenditionRequests:
    """Results whose diagnostic rendition a specialist asked for (edge/hub/rendition_requests.py)."""
    device, _ = await device_for(request, 0)
    return await run_in_threadpool(rendition_requests.open_requests, _api(request).engine, device)


@router.get("/models")
async def models(request: Request) -> list[protocol.ModelRelease]:
    device, _ = await device_for(request, 0)
    return await run_in_threadpool(releases.releases_for, _api(request).engine, device)


@router.get("/models/{name}/{version}/{file:path}")  # a model's samples/ are in a folder
async def model_file(name: str, version: str, file: str, request: Request) -> FileResponse:
    device, _ = await device_for(request, 0)
    api = _api(request)
    path = await run_in_threadpool(
        releases.release_file,
        api.files,
        api.engine,
        device,
        name,
        version,
        file,  # only names the release lists
    )
    return FileResponse(path)  # serves Range requests: downloads resume


@router.get("/profiles")
async def profiles(request: Request) -> list[protocol.ProfileRelease]:
    """The signed site profiles offered to this device's site (newest per model version)."""
    device, _ = await device_for(request, 0)
    return await run_in_threadpool(site_profiles.profiles_for, _api(request).engine, device)
