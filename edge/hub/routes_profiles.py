"""The administrators' agreement page (per site and model weights: how the model agrees with
the specialists, and the site's suggested thresholds), its JSON, and site profiles: the
unsigned draft to sign where the publisher's key is, and the post that publishes a signed one.
Logic in `agreement.py`, `agreement_figures.py` and `site_profiles.py`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from edge.hub import agreement, agreement_figures, presenters, site_profiles
from edge.hub.errors import HubError
from edge.hub.review_http import AdminDep, Reader, Refused, page, state
from edge.sync import protocol

router = APIRouter()
MAX_PROFILE_BYTES = 64 * 1024


def _figures(request: Request) -> list[dict[str, Any]]:
    web = state(request)
    return agreement_figures.site_figures(web.engine, web.models_dir, agreement_figures.FIGURES_BUDGET_S)


def _agreement_page(request: Request, reader: Reader, status: int = 200, **extra: Any) -> Response:
    web = state(request)
    context = {"message": "", "error": "", **extra}
    return page(
        request,
        "agreement.html",
        reader,
        status=status,
        sites=_figures(request),
        profiles=site_profiles.list_profiles(web.engine),
        minimum=agreement.MIN_CASES_PER_CLASS,
        cross_validated=agreement.CROSS_VALIDATED,
        when=presenters.when,
        **context,
    )


@router.get("/admin/agreement")
async def agreement_page(request: Request, reader: AdminDep) -> Response:
    return await run_in_threadpool(_agreement_page, request, reader)


@router.get("/admin/agreement.json")
async def agreement_json(request: Request, reader: AdminDep) -> JSONResponse:
    sites = await run_in_threadpool(_figures, request)
    return JSONResponse({"minimum_cases_per_class": agreement.MIN_CASES_PER_CLASS, "sites": sites})


@router.get("/admin/profiles/draft")
async def profile_draft(
    request: Request,
    reader: AdminDep,
    programme: str,
    site: str,
    model: str,
    version: str | None = None,
) -> Response:
    """The unsigned profile of a site's suggestion, as a file to sign with the publisher's key."""
    web = state(request)
    try:
        release = await run_in_threadpool(
            site_profiles.draft, web.engine, web.models_dir, programme, site, model, version
        )
    except HubError as error:
        raise Refused(error.status, error.message) from error
    return Response(
        json.dumps(release.model_dump(), indent=1),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{release.id}.unsigned.json"'},
    )


@router.post("/admin/profiles")
async def profile_publish(request: Request, reader: AdminDep) -> Response:
    """Publish a signed profile (pasted: `edge hub profile sign` wrote it)."""
    form = await request.form()
    text = str(form.get("signed") or "")
    try:
        if len(text.encode()) > MAX_PROFILE_BYTES:
            raise HubError(413, protocol.WireCode.TOO_LARGE, "that is not a site profile: too large")
        try:
            release = protocol.ProfileRelease.model_validate_json(text)
        except ValidationError as error:
            raise HubError(400, protocol.WireCode.BAD_PROFILE, "that is not a signed site profile") from error
        web = state(request)
        note = await run_in_threadpool(
            site_profiles.publish, web.engine, release, reader.user.name, web.publisher_key
        )
    except HubError as error:
        return await run_in_threadpool(_agreement_page, request, reader, 400, error=error.message)
    message = f"Profile {release.id} published for site {release.site or '(unnamed)'} ({release.programme})"
    message += f": {note}." if note else "."
    return await run_in_threadpool(_agreement_page, request, reader, message=message)
