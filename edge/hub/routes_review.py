"""The reader's pages: the worklist, one study with its pictures, and the verdict form (and
the pages' own CSS and script).

The worklist's filters travel in the query string of every study link, so next/previous and
"after the verdict" follow the list the reader was looking at; so does `upto`, which pins the
list to the results held when it was loaded (edge/hub/worklist.py: the order never changes
under the reader).
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from edge.hub import agreement, blobs, db, presenters, rendition_requests, reviews, worklist
from edge.hub.errors import HubError
from edge.hub.review_http import Reader, ReaderDep, Refused, page, state, static_response
from edge.hub.study import Study, find_study
from edge.hub.worklist import Filters

router = APIRouter()
MAX_NOTE = 2000
MAX_FINDING = 64
_UUID = re.compile(r"^[0-9a-fA-F-]{36}$")
REPEAT_WINDOW_S = 120  # the same verdict twice from one reader in this time is one verdict


def _saved(request: Request) -> str:
    """The study a verdict was just saved for (a result uuid, or nothing)."""
    value = request.query_params.get("saved", "")
    return value if _UUID.match(value) else ""


def _add_review(*args: Any, **kwargs: Any) -> str:
    """`reviews.add_review`; a result its device deleted since the page opened: the page's 410."""
    try:
        return reviews.add_review(*args, **kwargs)
    except HubError as error:
        gone = "This study was deleted on the device while it was open."
        raise Refused(error.status, gone if error.status == 410 else error.message) from error


def _study_or_404(request: Request, reader: Reader, uuid: str) -> Study:
    study = find_study(state(request).engine, reader.user, uuid)
    if study is None:
        raise Refused(404, "No such study, or it belongs to a programme you do not read for.")
    if study.deleted_at is not None:
        raise Refused(410, "This study was deleted on the device; the hub keeps it only until it is purged.")
    # Upload bytes as files on this node (on PostgreSQL: copied once from the chunk rows).
    web = state(request)
    study.uploads = blobs.readable(web.engine, web.files / blobs.CACHE_FOLDER, study.uploads)
    return study


def _kinds(request: Request) -> presenters.Kinds:
    """What each model reads, from its manifest (for studies that carry no modality)."""
    web = state(request)
    return presenters.Kinds(
        lambda model, version: agreement.shipped_manifest(web.engine, web.models_dir, model, version)
    )


@router.get("/static/{name}")
def static_file(name: str, request: Request) -> Response:
    return static_response(request, name)


@router.get("/")
def worklist_page(request: Request, reader: ReaderDep) -> Response:
    web = state(request)
    filters = Filters.parse(request.query_params)
    listing = worklist.worklist_page(web.engine, reader.user, filters)
    return page(
        request,
        "worklist.html",
        reader,
        listing=listing,
        options=worklist.filter_options(web.engine, reader.user),
        context=listing.filters.query(),
        unpinned=replace(listing.filters, upto=0, page=1).query(),
        when=presenters.when,
        acquired=presenters.acquired,
        kinds=_kinds(request),
        short_key=presenters.short_key,
        percent=presenters.percent,
        patient=presenters.patient,
        saved=_saved(request),
        unknown=worklist.UNKNOWN,
    )


def _study_page(request: Request, reader: Reader, study: Study, status: int = 200, **form: Any) -> Response:
    web = state(request)
    filters = Filters.parse(request.query_params)
    previous, following = worklist.neighbours(web.engine, reader.user, filters, study.record_id)
    context = filters.query()
    picture = presenters.picture(web.renditions, study.uploads)
    kinds = _kinds(request)
    # No picture to read from yet (neither the rendition nor the full image): opening the study
    # asks the device for its rendition, which it sends at its next round (issue 20).
    requested = False
    if not {"rendition", "image"} & (set(study.uploads) | study.pending):
        rendition_requests.ask(web.engine, study.device_id, study.uuid, reader.user.name)
        requested = True
    return page(
        request,
        "study.html",
        reader,
        status=status,
        study=study,
        view=presenters.study_view(study, kinds),
        picture=picture,
        preview=presenters.preview_note(study, picture.source, requested),
        windowing=presenters.rendition_windowing(study.uploads) if picture.source == "rendition" else None,
        cine=presenters.cine(study.uploads),
        cine_note=presenters.cine_note(study, requested),
        spacing=presenters.pixel_spacing(study) if picture.source else None,
        original_width=study.part("image").get("width"),
        marked_reviews=presenters.reviews_marked(study),
        short_key=presenters.short_key,
        context=context,
        previous=previous,
        following=following,
        when=presenters.when,
        saved=_saved(request),
        form={"verdict": "", "finding": "", "note": "", "errors": [], **form},
    )


@router.get("/studies/{uuid}")
def study_page(uuid: str, request: Request, reader: ReaderDep) -> Response:
    return _study_page(request, reader, _study_or_404(request, reader, uuid))


@router.get("/studies/{uuid}/image")
def study_image(uuid: str, request: Request, reader: ReaderDep, w: int = 1024) -> Response:
    study = _study_or_404(request, reader, uuid)
    data = presenters.image(state(request).renditions, study.uploads, max(64, min(w, 4096)))
    if data is None:
        raise Refused(404, "No image was sent for this study.")
    return Response(data, media_type="image/jpeg")


@router.get("/studies/{uuid}/thumbnail")
def study_thumbnail(uuid: str, request: Request, reader: ReaderDep) -> Response:
    """The worklist row's small picture (the synced thumbnail, shrunk)."""
    data = presenters.thumbnail_jpeg(_study_or_404(request, reader, uuid).uploads)
    if data is None:
        raise Refused(404, "No thumbnail was sent for this study.")
    return Response(data, media_type="image/jpeg")


@router.get("/studies/{uuid}/cine")
def study_cine(uuid: str, request: Request, reader: ReaderDep) -> Response:
    """A clip's filmstrip as the device sent it (its frames stacked top to bottom, its facts in
    a JPEG comment): already a small greyscale JPEG, so it is not decoded here."""
    row = _study_or_404(request, reader, uuid).uploads.get("cine")
    if row is None:
        raise Refused(404, "No cine was sent for this study.")
    try:
        with open(row.path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise Refused(404, "The cine's file is not on this hub.") from error
    return Response(data, media_type="image/jpeg")


@router.get("/studies/{uuid}/layer")
def study_layer(uuid: str, request: Request, reader: ReaderDep) -> Response:
    study = _study_or_404(request, reader, uuid)
    layer = state(request).renditions.layer(study.uploads)
    if layer is None:
        raise Refused(404, "No heatmap was sent for this study.")
    data, media_type, kind = layer
    return Response(data, media_type=media_type, headers={"X-Edge-Layer": kind})


def _repeated(request: Request, reader: Reader, study: Study, verdict: str, finding: Any, note: Any) -> bool:
    """A double press or a resent form: the same reader's identical verdict moments ago."""
    with state(request).engine.connect() as conn:
        last = conn.execute(
            select(db.reviews)
            .where(
                db.reviews.c.result_uuid == study.uuid,
                db.reviews.c.device_id == study.device_id,
                db.reviews.c.reviewer == reader.user.name,
            )
            .order_by(db.reviews.c.seq.desc())
            .limit(1)
        ).first()
    if last is None or (last.verdict, last.finding, last.note) != (verdict, finding, note):
        return False
    reviewed = datetime.fromisoformat(last.reviewed_at.replace("Z", "+00:00")).timestamp()
    return time.time() - reviewed < REPEAT_WINDOW_S


@router.post("/studies/{uuid}/review")
async def submit_review(uuid: str, request: Request, reader: ReaderDep) -> Response:
    form = await request.form()
    verdict = str(form.get("verdict") or "")
    finding = str(form.get("finding") or "").strip()
    note = str(form.get("note") or "").strip()
    study = await run_in_threadpool(_study_or_404, request, reader, uuid)
    errors = []
    if verdict not in reviews.VERDICTS:
        errors.append("Choose a verdict: agree (a), disagree (d) or uncertain (u).")
    if len(finding) > MAX_FINDING:
        errors.append(f"The finding has at most {MAX_FINDING} characters.")
    if len(note) > MAX_NOTE:
        errors.append(f"The note has at most {MAX_NOTE} characters.")
    if errors:
        form_values = {"verdict": verdict, "finding": finding, "note": note, "errors": errors}
        return await run_in_threadpool(lambda: _study_page(request, reader, study, 400, **form_values))
    view = presenters.study_view(study)
    chosen = finding or presenters.default_finding(
        verdict, study.part("result").get("finding"), view["labels"]
    )
    if not await run_in_threadpool(_repeated, request, reader, study, verdict, chosen, note or None):
        await run_in_threadpool(
            _add_review,
            state(request).engine,
            study.uuid,
            verdict,
            finding=chosen,
            note=note or None,
            reviewer=reader.user.name,
            reviewer_role=reader.user.role,
            device_id=study.device_id,
        )
    filters = Filters.parse(request.query_params)
    following = await run_in_threadpool(
        worklist.next_unreviewed, state(request).engine, reader.user, filters, study.record_id
    )
    context = filters.query()
    saved = f"saved={study.uuid}"
    base = str(request.scope.get("root_path", "")).rstrip("/")
    target = f"{base}/studies/{following}?{context}&{saved}" if following else f"{base}/?{context}&{saved}"
    return RedirectResponse(target.replace("?&", "?"), status_code=303)
