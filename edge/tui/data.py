"""What the screens show, read in one go from the store, the health snapshot and the files.

No Textual here: these functions run in the screens' thread workers (each opens its own store;
SQLite connections stay in their thread) and return plain data the screens only format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edge.clock import PLAUSIBLE_FROM
from edge.errors import EdgeError
from edge.hints import SYNC_NOT_CONFIGURED
from edge.imaging.decode import read_input
from edge.inference import site_profile
from edge.inference.registry import ModelEntry
from edge.ingest.watch import recent_refusals
from edge.store import StoredResult, WorklistItem
from edge.sync.runner import refused_updates
from edge.tui.context import TuiContext

# The worklist's state filter cycles through these (None: every state).
STATE_FILTERS: tuple[str | None, ...] = (None, "queued", "running", "done", "refused", "failed")
STATE_LABELS = {
    "queued": "new",
    "running": "running",
    "done": "done",
    "refused": "refused",
    "failed": "failed",
}
PICTURE_MAX_SIDE = 512  # the terminal shows far fewer pixels; decoding more only costs time
BORDERLINE = 0.15  # a quality measure within 15% of its limit is flagged borderline


SORT_WORDS = "sorted: flagged, disagreed, positive, newest"
NOT_SENT = "not sent"


@dataclass(frozen=True)
class WorklistFilter:
    search: str = ""
    state: str | None = None
    urgent_only: bool = False
    """Flagged studies and positive findings only (what "urgent" means on the worklist)."""
    unseen_only: bool = False

    def describe(self) -> str:
        parts = ["[b]URGENT ONLY[/b]" if self.urgent_only else SORT_WORDS]
        if self.state:
            parts.append(f"state: {STATE_LABELS[self.state]}")
        if self.unseen_only:
            parts.append("unseen only")
        return " · ".join(parts)


def is_urgent(item: WorklistItem) -> bool:
    """Flagged by a person, a specialist's disagreement not yet seen, or a positive finding on
    the current version of the image (`store.technician.worklist`'s order)."""
    return (
        item.urgent
        or new_disagreement(item)
        or (item.state == "done" and item.positive and not item.superseded)
    )


def new_disagreement(item: WorklistItem) -> bool:
    """The specialist disagrees with the model, in a reply not yet marked seen."""
    return item.review_verdict == "disagree" and item.new_reply


def review_words(item: WorklistItem) -> str:
    """The specialist's answer in a few words: agree / disagree: their finding / uncertain /
    pending (at the hub, no reply yet) / not sent (the hub has not got it: no specialist can
    read it yet, a TUI audit found "pending" said of both); empty before there is a result."""
    if not item.result_id:
        return ""
    verdict = item.review_verdict
    if not verdict:
        return "pending" if item.at_hub else NOT_SENT
    if item.review_finding and verdict != "agree":
        return f"{verdict}: {item.review_finding}"
    return verdict


def middle_ellipsis(text: str, width: int) -> str:
    """`text` in at most `width` cells, cut in the middle so both ends stay readable (file names
    differ at the end: `study-2025-…-07.dcm`)."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    head = width // 2
    tail = width - 1 - head
    return text[:head] + "…" + (text[-tail:] if tail else "")


@dataclass(frozen=True)
class QualityFlag:
    name: str
    value: float
    limit: float | None
    bound: str  # "min" or "max"
    state: str  # ok | borderline | beyond | no limit


@dataclass(frozen=True)
class ResultDetail:
    item: WorklistItem
    """The worklist row: job, image, study and (when done) the result's summary."""
    result: StoredResult | None = None
    clip: dict[str, Any] | None = None
    reviews: list[dict[str, Any]] = field(default_factory=list)
    notes: list[dict[str, Any]] = field(default_factory=list)
    quality: list[QualityFlag] = field(default_factory=list)
    model_title: str | None = None


def load_worklist(context: TuiContext, chosen: WorklistFilter) -> list[WorklistItem]:
    with context.open_store() as store:
        return store.technician.worklist(
            search=chosen.search,
            states=(chosen.state,) if chosen.state else (),
            urgent_only=chosen.urgent_only,
            unseen_only=chosen.unseen_only,
            positive_counts_as_urgent=True,
        )


def load_result(context: TuiContext, job_id: str) -> ResultDetail | None:
    with context.open_store() as store:
        item = store.technician.worklist_item(job_id)
        if item is None:
            return None
        result = store.result(item.result_id) if item.result_id else None
        clip = store.clip_for_result(result.id) if result else None
        reviews = store.technician.reviews_for(result.id) if result else []
        notes = store.technician.notes_for(item.study_id)
    title, flags = None, []
    try:
        manifest = context.registry.get(item.model_name).manifest
        title = manifest.title
        if result and result.quality:
            flags = quality_flags(result.quality, manifest.quality.model_dump())
    except EdgeError:  # the model was removed since: the result still shows, without limits
        if result and result.quality:
            flags = quality_flags(result.quality, {})
    return ResultDetail(item, result, clip, reviews, notes, flags, title)


def quality_flags(measures: dict[str, float], rule: dict[str, Any]) -> list[QualityFlag]:
    """Each quality measure against the model's gate limit: ok, borderline (close) or beyond."""
    out = []
    for name, value in measures.items():
        if name == "min_side":
            limit, bound = rule.get("min_side"), "min"
        elif f"max_{name}" in rule:
            limit, bound = rule[f"max_{name}"], "max"
        else:
            limit, bound = rule.get(f"min_{name}"), "min"
        if limit is None:
            state = "no limit"
        elif (value > limit) if bound == "max" else (value < limit):
            state = "beyond"
        else:
            margin = abs(limit) * BORDERLINE
            close = value > limit - margin if bound == "max" else value < limit + margin
            state = "borderline" if close else "ok"
        out.append(QualityFlag(name, float(value), limit, bound, state))
    return out


def load_picture(context: TuiContext, detail: ResultDetail, heatmap: bool) -> tuple[Image.Image | None, str]:
    """The image to draw (the heatmap overlay when asked and stored) and a caption saying which."""
    item, data_dir = detail.item, context.settings.data_dir
    stored_heatmap = detail.result.heatmap_path if detail.result else None
    if heatmap and stored_heatmap:
        path = data_dir / stored_heatmap
        try:
            with Image.open(path) as opened:
                return _shrunk(opened.convert("RGB")), "heatmap overlay (t: image)"
        except OSError:
            return None, "the heatmap file is missing"
    if item.purged_at:
        return None, "image file removed by retention (the hub has it)"
    with context.open_store() as store:
        path = store.image_file(item.image_id)
    try:
        decoded = context.decoder.decode(read_input(path, context.settings.store.max_input_bytes), path.name)
    except EdgeError as error:
        return None, error.one_line()
    caption = "image (t: heatmap)" if stored_heatmap else "image (no heatmap stored)"
    return _shrunk(Image.fromarray(_display_pixels(decoded.pixels))), caption


def _display_pixels(pixels: np.ndarray) -> np.ndarray:
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    return pixels


def _shrunk(image: Image.Image) -> Image.Image:
    image = image.copy()
    image.thumbnail((PICTURE_MAX_SIDE, PICTURE_MAX_SIDE))
    return image


def load_health(context: TuiContext) -> dict[str, Any]:
    with context.open_store() as store:
        snap = context.health(context.settings, store)
        snap["models_in_use"] = store.technician.models_in_use()
    return snap


def installed_models(context: TuiContext) -> list[dict[str, Any]]:
    """Every model folder with its version and variants, or why it cannot be loaded."""
    out: list[dict[str, Any]] = []
    for name in context.registry.names():
        try:
            entry = context.registry.get(name)
        except EdgeError as error:
            out.append({"name": name, "error": error.one_line()})
            continue
        manifest = entry.manifest
        out.append(
            {
                "name": name,
                "version": manifest.version,
                "title": manifest.title,
                "modalities": list(manifest.accepts.modalities),
                "variants": sorted(v for v, spec in manifest.variants.items() if spec.servable),
                "profile": _profile(context, entry),
            }
        )
    return out


def _profile(context: TuiContext, entry: ModelEntry) -> str:
    """The calibration in force, in words: a site profile's id, or the shipped one."""
    data_dir, name = context.settings.data_dir, entry.name
    try:
        chosen = site_profile.active_id(data_dir, name)
        profile = site_profile.load(data_dir, name, chosen) if chosen else None
    except EdgeError as error:
        return f"shipped calibration ({error.code.value})"
    if profile is None:
        return "shipped calibration"
    if not site_profile.serves(data_dir, profile, entry):
        return f"shipped calibration (site profile {profile.id} is for {profile.model_version})"
    if profile.model_version != entry.manifest.version:
        return f"site profile {profile.id} (the same weights)"
    return f"site profile {profile.id}"


def load_device(context: TuiContext) -> dict[str, Any]:
    snap = load_health(context)
    snap["agent"] = context.agent(context.settings)  # the same report the top bar shows
    snap["installed_models"] = installed_models(context)
    snap["host"] = context.facts()
    snap["backend_setting"] = f"{context.settings.runtime.backend}/{context.settings.runtime.precision}"
    snap["drop_refused"], snap["drop_refused_newest"] = recent_refusals(context.settings)
    return snap


def sync_view(snap: dict[str, Any]) -> dict[str, Any]:
    """The sync panel's facts, from the sync's own report in the snapshot; a build or device
    without one shows "not configured" and what waits in the outbox."""
    sync = snap.get("sync")
    if not sync:
        return {
            "state": "not configured",
            "hub": None,
            "last_success": None,
            "pending": {"records": int(snap.get("outbox_pending", 0))},
            "last_error": None,
            "last_error_at": None,
            "refused": [],
        }
    return {
        "state": sync.get("state") or "unknown",
        "hub": sync.get("hub"),
        "last_success": sync.get("last_success"),
        "pending": dict(sync.get("pending") or {}),
        "last_error": sync.get("last_error"),
        "last_error_at": sync.get("last_error_at"),
        "refused": refused_updates(sync),
    }


def _readable(value: object) -> str:
    """A stored name as a person reads it, or "" when it says nothing (DICOM's `^` separators,
    or placeholders such as `--` or `^^^` that anonymising senders write)."""
    text = " ".join(str(value or "").replace("^", " ").split())
    return text if any(char.isalnum() for char in text) else ""


def display_name(item: WorklistItem) -> str:
    """Who or what a worklist row is: the patient's name (DICOM), else the accession or patient
    id, else the file name as received; never a bare placeholder."""
    name = _readable(item.phi_patient_name)
    if name:
        return name
    for label, value in (("accession", item.phi_accession), ("patient ID", item.phi_patient_id)):
        if _readable(value):
            return f"{label} {_readable(value)}"
    original = _readable(item.phi_original_name)
    if original:
        return Path(str(item.phi_original_name)).name
    return _readable(item.description) or _readable(item.source) or "unnamed study"


def identity_lines(item: WorklistItem) -> list[str]:
    """Everything a technician can tell a study by (for the delete confirmation): name, patient
    id, accession, file name, what it is and when it came."""
    facts = [
        ("patient", _readable(item.phi_patient_name)),
        ("patient ID", _readable(item.phi_patient_id)),
        ("accession", _readable(item.phi_accession)),
        ("file", Path(str(item.phi_original_name)).name if _readable(item.phi_original_name) else ""),
        ("study", " ".join(str(p) for p in (item.modality, item.body_part, item.description) if p)),
    ]
    return [f"{label}: {value}" for label, value in facts if value]


@dataclass(frozen=True)
class SyncState:
    short: str  # the top bar's word or two
    style: str  # coloured by what it asks of the technician
    meaning: str  # the sync screen's sentence


SYNC_STATES = {
    "up to date": SyncState("sync ok", "green", "everything the hub needs has been sent and acknowledged"),
    "syncing": SyncState("sending", "cyan", "sending now"),
    "offline": SyncState(
        "offline", "yellow", "the hub cannot be reached: results wait here and go when the link is back"
    ),
    "failed": SyncState(
        "SYNC FAILED",
        "bold red",
        "the last attempt failed (below); it is tried again automatically while edge-sync runs",
    ),
    "revoked": SyncState(
        "SYNC REVOKED",
        "bold red",
        "the hub revoked this device: nothing more is sent; enrol it again with a new code",
    ),
    "upgrade required": SyncState(
        "SYNC: UPGRADE", "bold red", "the hub speaks another sync protocol: upgrade this device's software"
    ),
    "not configured": SyncState(
        "no hub", "dim", "no hub is set up: results stay on this device.\n" + SYNC_NOT_CONFIGURED
    ),
}


def elapsed_words(seconds: float) -> str:
    """A span as the top bar says it: 40m, 5h, 3d."""
    minutes = int(seconds // 60)
    if minutes < 120:
        return f"{minutes}m"
    if minutes < 48 * 60:
        return f"{minutes // 60}h"
    return f"{minutes // (24 * 60)}d"


def sync_short(view: dict[str, Any], context: TuiContext) -> tuple[str, str]:
    """The sync state in a few words, and its style: how long the hub has been out of reach
    (since the last success) and how many results wait, so a technician sees days without a
    link without opening the sync screen (which has the times and the error in full)."""
    state = view["state"]
    known = SYNC_STATES.get(state)
    words, style = (known.short, known.style) if known else (f"sync {state}", "yellow")
    last = context.local(view["last_success"])
    since = (context.now() - last).total_seconds() if last is not None else -1.0
    # A success stamped by a clock set back (no RTC battery, no NTP yet), or one that is now:
    # no age ("offline 20791d" was a 1970 stamp).
    if state == "offline" and since >= 0 and view["last_success"] >= PLAUSIBLE_FROM:
        words += f" {elapsed_words(since)}"
    waiting = int(view["pending"].get("results", 0) or 0)
    if waiting and state not in ("up to date", "not configured"):  # without a hub nothing waits
        words += f", {waiting} waiting"
    return words, style
