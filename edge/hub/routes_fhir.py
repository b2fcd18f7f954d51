"""The read-only FHIR R4 endpoint for health information systems (DHIS2, OpenMRS, a national
data warehouse): its own sub-application, which `edge.hub.app` mounts at /fhir (for servers,
with a bearer token) and at /review/fhir (where a logged-in reader's browser sends its session).

- `GET /metadata`: the CapabilityStatement (no credential needed: it holds no data).
- `GET /DiagnosticReport?...`: a searchset Bundle (`fhir_search` says which parameters).
- `GET /{DiagnosticReport,Observation,Device,Patient,Organization}/{id}`: one resource.
- Every answer is `application/fhir+json`; every refusal an OperationOutcome with its status:
  400 a bad parameter, 401 no or a revoked credential, 404 not found (or outside the
  credential's programmes and sites: a result there does not exist for this client), 405 any
  method but GET, 406 a format other than JSON.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fhir.resources.R4B.resource import Resource
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from edge.hub import fhir, fhir_search, fhir_server, fhir_tokens, sessions
from edge.hub.db import now
from edge.hub.fhir_search import FhirError, Search
from edge.hub.fhir_tokens import Access
from edge.hub.review_http import SESSION_COOKIE

router = APIRouter()
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.fhir_engine
    return engine


def base_url(request: Request) -> str:
    """This endpoint's address as the client sees it (behind a proxy: its forwarded scheme)."""
    return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


def fhir_response(resource: Resource, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = resource.model_dump_json(exclude_none=True)
    return Response(
        body, status_code=status, media_type=fhir_server.MEDIA_TYPE, headers={**HEADERS, **(headers or {})}
    )


def outcome(status: int, issue: str, message: str) -> Response:
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="edge hub FHIR"'
    return fhir_response(fhir_server.operation_outcome(issue, message), status, headers)


async def current_access(request: Request) -> Access:
    """A bearer token (a server), else a review-page session (a reader in a browser)."""
    engine = _engine(request)
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(401, "login", "send `Authorization: Bearer <token>`")
        access = await run_in_threadpool(fhir_tokens.access_for_token, engine, token.strip())
        if access is None:
            raise FhirError(401, "login", "unknown or revoked token")
        return access
    session = await run_in_threadpool(sessions.session_for, engine, request.cookies.get(SESSION_COOKIE))
    if session is None:
        raise FhirError(401, "login", "a bearer token (or a review-page session) is needed")
    return Access.for_user(session.user)


AccessDep = Annotated[Access, Depends(current_access)]


def _accepts_json(request: Request) -> None:
    accept = request.headers.get("accept", "")
    if accept and "json" not in accept and "*/*" not in accept:
        raise FhirError(406, "not-supported", "this server answers in JSON only (application/fhir+json)")
    requested = request.query_params.get("_format")
    if requested is not None and requested not in ("json", "application/json", "application/fhir+json"):
        raise FhirError(406, "not-supported", "this server answers in JSON only (_format=json)")


def _not_found(kind: str, resource_id: str) -> FhirError:
    return FhirError(404, "not-found", f"no {kind} {resource_id} (or not for this credential)")


def _checked_id(kind: str, resource_id: str) -> str:
    if not fhir_search.FHIR_ID.match(resource_id):
        raise FhirError(400, "invalid", f"not a FHIR id: {resource_id!r}")
    return resource_id


# ------------------------------------------------------------------ routes


@router.get("/metadata")
def metadata(request: Request) -> Response:
    _accepts_json(request)
    return fhir_response(fhir_server.capability_statement(base_url(request), now()))


@router.get("/DiagnosticReport")
def search_reports(request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    search = Search.parse(list(request.query_params.multi_items()))
    found = fhir_search.search_reports(_engine(request), access, search)
    base = base_url(request)
    next_url = None
    if found.next_after is not None:  # the same search, after this page's last result
        next_url = f"{base}/DiagnosticReport?{urlencode([*search.echo, ('page', str(found.next_after))])}"
    return fhir_response(fhir_server.searchset(base, found.sources, found.total, str(request.url), next_url))


@router.get("/DiagnosticReport/{resource_id}")
def read_report(resource_id: str, request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    source = fhir_search.find_report(_engine(request), access, _checked_id("DiagnosticReport", resource_id))
    if source is None:
        raise _not_found("DiagnosticReport", resource_id)
    return fhir_response(fhir.report_resources(source)[0])


@router.get("/Observation/{resource_id}")
def read_observation(resource_id: str, request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    engine = _engine(request)
    _checked_id("Observation", resource_id)
    if resource_id.startswith("review-"):
        source = fhir_search.report_of_review(engine, access, resource_id.removeprefix("review-"))
    else:
        source = fhir_search.find_report(engine, access, resource_id.rsplit("-", 1)[0])
    for observation in fhir.observations(source) if source else []:
        if observation.id == resource_id:
            return fhir_response(observation)
    raise _not_found("Observation", resource_id)


@router.get("/Patient/{resource_id}")
def read_patient(resource_id: str, request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    source = fhir_search.report_with(_engine(request), access, patient=_checked_id("Patient", resource_id))
    made = fhir.patient(source) if source else None
    if made is None:
        raise _not_found("Patient", resource_id)
    return fhir_response(made)


@router.get("/Device/{resource_id}")
def read_device(resource_id: str, request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    source = fhir_search.report_with(
        _engine(request), access, model_sha256=_checked_id("Device", resource_id)
    )
    made = fhir.model_device(source) if source else None
    if made is None:
        raise _not_found("Device", resource_id)
    return fhir_response(made)


@router.get("/Organization/{resource_id}")
def read_organization(resource_id: str, request: Request, access: AccessDep) -> Response:
    _accepts_json(request)
    site = fhir_search.site_of(_engine(request), access, _checked_id("Organization", resource_id))
    if site is None:
        raise _not_found("Organization", resource_id)
    return fhir_response(fhir.site_organization(*site))


# ------------------------------------------------------------------ the sub-application


def create_fhir_app(engine: Engine) -> FastAPI:
    app = FastAPI(title="edge hub FHIR", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.fhir_engine = engine

    @app.exception_handler(FhirError)
    async def _refused(_: Request, error: FhirError) -> Response:
        return outcome(error.status, error.issue, error.message)

    @app.exception_handler(HTTPException)
    async def _framework(_: Request, error: HTTPException) -> Response:
        issue = {404: "not-found", 405: "not-supported"}.get(error.status_code, "processing")
        message = {404: "no such resource type or interaction", 405: "this endpoint is read-only (GET)"}.get(
            error.status_code, str(error.detail)
        )
        return outcome(error.status_code, issue, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, error: RequestValidationError) -> Response:
        return outcome(400, "invalid", "the request is malformed")

    app.include_router(router)
    return app
