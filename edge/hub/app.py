"""The hub's HTTP API (FastAPI): a thin layer over `edge.hub.service`; the specialists' review
pages (`edge.hub.web`) are mounted at /review with their own sessions and headers.

Every device request is authenticated (credential + signature + clock + nonce), size-limited
before it is read into memory, and rate-limited per device; every refusal is a JSON body
`{"code": ..., "message": ...}` with its HTTP status.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from pydantic import ValidationError
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from edge.config import Settings
from edge.hub import db, service, worklist
from edge.hub.limits import RateLimiter
from edge.hub.service import Device, HubError
from edge.hub.web import create_web_app
from edge.sync import protocol


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refused (413) before it can exceed `limit`, with or without a Content-Length."""
    declared = request.headers.get("content-length")
    if declared is not None and int(declared) > limit:
        raise HubError(413, "TOO_LARGE", f"the body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HubError(413, "TOO_LARGE", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _mount_review_pages(app: FastAPI, engine: Engine, files: Path) -> None:
    """The specialists' pages (edge.hub.web) at /review; the bare host name leads there."""
    worklist.backfill(engine)  # results stored before the review pages existed
    app.mount("/review", create_web_app(engine, files))

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/review/", status_code=303)


def create_app(settings: Settings, engine: Engine | None = None) -> FastAPI:
    engine = engine or db.make_engine(settings.hub_database_url)
    files = settings.hub_dir / "files"
    files.mkdir(parents=True, exist_ok=True)
    limiter = RateLimiter(settings.hub.rate_per_s, settings.hub.rate_burst)
    app = FastAPI(title="edge hub", version=str(protocol.VERSION), docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.files = files
    _mount_review_pages(app, engine, files)

    @app.exception_handler(HubError)
    async def _refused(request: Request, error: HubError) -> JSONResponse:
        return JSONResponse({"code": error.code, "message": error.message}, status_code=error.status)

    async def device_for(request: Request, limit: int = protocol.MAX_BODY_BYTES) -> tuple[Device, bytes]:
        body = await read_limited(request, limit)
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        device = await run_in_threadpool(
            service.authenticate,
            engine,
            request.headers.get("authorization"),
            headers,
            request.method,
            path,
            body,
        )
        if not limiter.allow(device.id):
            raise HubError(429, "RATE_LIMITED", "too many requests: slow down")
        return device, body

    def parse(model: Any, raw: bytes) -> Any:
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise HubError(400, "BAD_REQUEST", str(exc.errors()[0]["msg"])[:200]) from exc

    @app.get("/v1/health")
    async def health() -> dict[str, Any]:
        return {"ok": True, "protocol": protocol.VERSION, "hub_time": time.time()}

    @app.post("/v1/enroll")
    async def enroll(request: Request) -> protocol.EnrollResponse:
        client = request.client.host if request.client else "unknown"
        if not limiter.allow(f"enroll:{client}"):
            raise HubError(429, "RATE_LIMITED", "too many enrolment attempts")
        body = await read_limited(request, 4096)
        return await run_in_threadpool(service.enroll, engine, parse(protocol.EnrollRequest, body))

    @app.post("/v1/batches")
    async def batches(request: Request) -> protocol.BatchReply:
        device, body = await device_for(request)
        try:
            raw = protocol.inflate(body) if request.headers.get("content-encoding") == "gzip" else body
        except (ValueError, OSError) as exc:
            raise HubError(400, "BAD_BODY", f"the body does not inflate: {exc}") from exc
        return await run_in_threadpool(service.store_batch, engine, device, parse(protocol.Batch, raw))

    @app.post("/v1/uploads")
    async def start_upload(request: Request) -> protocol.UploadState:
        device, body = await device_for(request, 4096)
        return await run_in_threadpool(
            service.start_upload, engine, files, device, parse(protocol.UploadStart, body)
        )

    @app.head("/v1/uploads/{upload_id}")
    async def upload_offset(upload_id: str, request: Request) -> Response:
        device, _ = await device_for(request, 0)
        row = await run_in_threadpool(service.upload_state, engine, device, upload_id)
        return Response(headers={"Upload-Offset": str(row.offset), "Upload-Length": str(row.size)})

    @app.patch("/v1/uploads/{upload_id}")
    async def upload_chunk(upload_id: str, request: Request) -> protocol.UploadState:
        device, chunk = await device_for(request, protocol.CHUNK_BYTES)
        try:
            offset = int(request.headers.get("upload-offset", ""))
        except ValueError as exc:
            raise HubError(400, "BAD_OFFSET", "Upload-Offset must be an integer") from exc
        # fsync and the file's running hash: off the event loop, so other devices are served meanwhile
        return await run_in_threadpool(service.append_chunk, engine, device, upload_id, offset, chunk)

    @app.get("/v1/reviews")
    async def reviews(request: Request, cursor: int = 0) -> protocol.ReviewPage:
        device, _ = await device_for(request, 0)
        return await run_in_threadpool(service.reviews_since, engine, device, cursor)

    @app.get("/v1/models")
    async def models(request: Request) -> list[protocol.ModelRelease]:
        device, _ = await device_for(request, 0)
        return await run_in_threadpool(service.releases_for, engine, device)

    @app.get("/v1/models/{name}/{version}/{file}")
    async def model_file(name: str, version: str, file: str, request: Request) -> FileResponse:
        device, _ = await device_for(request, 0)
        path = await run_in_threadpool(
            service.release_file, files, engine, device, name, version, Path(file).name
        )
        return FileResponse(path)  # serves Range requests: downloads resume

    return app
