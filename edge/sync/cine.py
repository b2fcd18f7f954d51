"""The clip's cine on its way to the hub (issue 20 item 2): upload kind "cine".

A clip result reaches the hub as its key frame; the specialist reading lung ultrasound needs the
motion. Its cine is a filmstrip of the clip's ROI video (edge/video/filmstrip.py) that passes
the same burned-in text check as every outgoing pixel (`PixelGuard.prepare_cine`), sent under
the diagnostic rendition's policy (`[sync] diagnostic`): queued with it by
`SyncClient.queue_uploads` and on the hub's request (edge/sync/renditions.py). A video that is
missing, unreadable or empty is an outcome, not a fault: the task is acknowledged with a note
and one coded log line (CINE_UNAVAILABLE), never retried in a loop.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from edge.errors import Code
from edge.store import Store
from edge.sync.outgoing import Outgoing, PixelGuard
from edge.video.filmstrip import CineUnreadable, read_cine

log = logging.getLogger(__name__)
MEDIA_TYPE = "image/jpeg"


def has_video(store: Store, result_id: str) -> bool:
    """Whether this result is a clip with a video to make a cine of."""
    clip = store.clip_for_result(result_id)
    return bool(clip and clip.get("video_path"))


def outgoing_cine(store: Store, guard: PixelGuard, payload: dict[str, Any]) -> Outgoing:
    """The filmstrip of the clip of `payload["result_id"]` as it may leave, or why not. Raises
    KeyError when the result or its image is gone (the caller's "withdrawn")."""
    result_id = payload["result_id"]
    clip = store.clip_for_result(result_id)
    image = store.image(payload["image_id"]) or {}
    image["meta"] = json.loads(image.get("meta") or "{}")
    study = store.db.execute("SELECT * FROM studies WHERE id = ?", [image["study_id"]]).fetchone()
    if clip is None or not clip.get("video_path"):
        return _unavailable("this result has no clip video")
    try:
        cine = read_cine(store.data_dir / clip["video_path"], clip.get("series"))
    except CineUnreadable as exc:
        return _unavailable(str(exc))
    if cine.truncated:
        log.warning(
            "%s: cine of result %s: the video ended after %d frame(s); sent what it holds",
            Code.CINE_UNAVAILABLE.value, result_id, cine.video_frames,
        )  # fmt: skip
    return guard.prepare_cine(cine, image, dict(study) if study else None)


def _unavailable(reason: str) -> Outgoing:
    note = f"not sent ({Code.CINE_UNAVAILABLE.value}): {reason}; the key frames and the result were sent"
    return Outgoing(None, MEDIA_TYPE, Code.CINE_UNAVAILABLE, note, {"reason": reason})
