"""A clip's cine for the hub (issue 20 item 2): a few frames of its ROI video as one filmstrip.

The clip's `clip.mp4` (edge/video/clip.py: the sector only, at most `[video] clip_fps`,
`clip_max_seconds` and `clip_max_side`) is read back, at most `CINE_FRAMES` frames are taken
evenly in time, made grey and at most `CINE_SIDE` px on the long side, and stacked vertically
into one greyscale JPEG (every frame the same size). One file rather than one per frame: one
upload, one hash, one retention and one burned-in text check (edge/sync/outgoing.py), and the
browser draws frame i as a band of the one picture. The facts (frame count and size, each
frame's time in seconds and the model's probability then) ride in a JPEG comment through
edge/imaging/rendition_meta.py, as the diagnostic rendition's windowing does.

Sizes, measured on the lung recording shipped in samples/video (its stored clip: 30 frames of
310 x 286; docs/install.md, "Diagnostic rendition"): about 5.5 KB a frame at q70 and 310 px
(12 frames 66 KB, 24 131 KB, 30 164 KB; q60 -18 %, q80 +26 %; 240 px -38 %). 32 frames at
<= 320 px, q70, is ~175-190 KB: under the 250-KB budget a clip may cost, where 48 frames at
320 px would be ~265 KB. 32 frames over the longest clip (`clip_max_seconds` 20 s) is 1.6 a
second, over a typical 10-s clip all of its ~30 (the analysis rate): enough to see lung sliding
and B-lines come and go, at the 320 px that keeps the pleural line sharp. A strip that still
comes out over `CINE_MAX_BYTES` (a busier picture) is thinned evenly until it fits; frames the
video does not hold are never invented.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.imaging.rendition_meta import embed

CINE_FRAMES = 32
CINE_SIDE = 320
CINE_QUALITY = 70
CINE_MAX_BYTES = 250_000
# A clip holds at most clip_max_seconds x clip_fps frames (160 by default); a file claiming
# far more is not ours, and is not decoded to the end.
_MAX_SCAN = 4000


class CineUnreadable(Exception):
    """The clip's video is missing, cannot be opened, or yields no frame."""


@dataclass
class Cine:
    """The chosen frames (grey, equal size) and what the page needs to play them."""

    frames: list[np.ndarray]
    times_s: list[float]
    probabilities: list[float | None]
    fps: float  # the video's own rate (clip_fps when it was written)
    video_frames: int  # how many frames the video yielded
    truncated: bool  # the container promised more frames than could be decoded

    def facts(self) -> dict[str, Any]:
        height, width = self.frames[0].shape[:2]
        return {
            "kind": "cine",
            "frames": len(self.frames),
            "frame_width": int(width),
            "frame_height": int(height),
            "times_s": self.times_s,
            "p": self.probabilities,
            "fps": round(self.fps, 3),
            "video_frames": self.video_frames,
            "truncated": self.truncated,
        }

    def with_frames(self, frames: list[np.ndarray]) -> Cine:
        """The same cine with its frames replaced (burned-in text blacked out)."""
        return replace(self, frames=frames)

    def thinned(self, wanted: int) -> Cine:
        """`wanted` of its frames, evenly, with their times and probabilities."""
        keep = evenly(len(self.frames), wanted)
        return replace(
            self,
            frames=[self.frames[i] for i in keep],
            times_s=[self.times_s[i] for i in keep],
            probabilities=[self.probabilities[i] for i in keep],
        )


def evenly(count: int, wanted: int) -> list[int]:
    """`wanted` indices of `count` frames spread evenly, first and last included."""
    if count <= wanted:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(i * (count - 1) / (wanted - 1)) for i in range(wanted)})


def written_times(series: list[Any] | None, fps: float, count: int) -> list[float] | None:
    """The times (s from the clip's start) of the frames ClipRecorder wrote to the video: it
    writes an analysed frame once 1/fps has passed since the last written one, so the series
    (every analysed frame's time) says which; None when the series does not account for
    `count` frames (another writer, a clip cut short), and the times are index / fps."""
    if not series or fps <= 0:
        return None
    times: list[float] = []
    next_t = 0.0
    for item in series:
        t = float(item[0])
        if t + 1e-6 < next_t:
            continue
        times.append(round(t, 3))
        next_t = t + 1.0 / fps
    return times[:count] if len(times) >= count else None


def read_cine(
    video: Path, series: list[Any] | None, frames: int = CINE_FRAMES, side: int = CINE_SIDE
) -> Cine:
    """The cine of the clip whose video is `video` and per-frame series `series` ([t, p], ...)."""
    if not video.is_file():
        raise CineUnreadable("the clip's video is not on the device")
    capture = cv2.VideoCapture(str(video))
    try:
        if not capture.isOpened():
            raise CineUnreadable("the clip's video cannot be opened (damaged or truncated)")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        promised = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        count = 0
        while count < _MAX_SCAN and capture.grab():  # count what really decodes, first
            count += 1
    finally:
        capture.release()
    if count == 0:
        raise CineUnreadable("the clip's video holds no readable frame")
    chosen = evenly(count, frames)
    grey = _frames_at(video, chosen, side)
    if len(grey) != len(chosen):
        raise CineUnreadable("the clip's video changed while it was read")
    times = written_times(series, fps, count)
    if times is None:
        times = [round(i / fps, 3) if fps > 0 else float(i) for i in range(count)]
    p_by_t = {round(float(t), 3): float(p) for t, p in (series or [])}
    picked_times = [times[i] for i in chosen]
    return Cine(
        frames=grey,
        times_s=picked_times,
        probabilities=[p_by_t.get(t) for t in picked_times],
        fps=fps,
        video_frames=count,
        truncated=promised > count,
    )


def _frames_at(video: Path, indices: list[int], side: int) -> list[np.ndarray]:
    wanted = set(indices)
    capture = cv2.VideoCapture(str(video))
    out: list[np.ndarray] = []
    size: tuple[int, int] | None = None
    try:
        for index in range(indices[-1] + 1):
            if not capture.grab():
                break
            if index not in wanted:
                continue
            ok, frame = capture.retrieve()
            if not ok:
                break
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
            if size is None:
                scale = min(1.0, side / max(grey.shape[:2]))
                size = (max(1, round(grey.shape[1] * scale)), max(1, round(grey.shape[0] * scale)))
            if (grey.shape[1], grey.shape[0]) != size:
                grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
            out.append(np.ascontiguousarray(grey))
    finally:
        capture.release()
    return out


def pack(frames: list[np.ndarray], facts: dict[str, Any], quality: int = CINE_QUALITY) -> bytes:
    """The frames stacked top to bottom as one greyscale JPEG, `facts` in its comment."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    ok, encoded = cv2.imencode(".jpg", np.vstack(frames), params)
    if not ok:
        raise CineUnreadable("the filmstrip could not be encoded")
    return embed(encoded.tobytes(), facts)


def pack_within(cine: Cine, budget: int = CINE_MAX_BYTES, quality: int = CINE_QUALITY) -> tuple[bytes, Cine]:
    """The filmstrip of `cine`, thinned evenly (a quarter of its frames at a time, at least 2
    kept) until it is at most `budget` bytes; the cine it holds."""
    while True:
        data = pack(cine.frames, cine.facts(), quality)
        if len(data) <= budget or len(cine.frames) <= 2:
            return data, cine
        cine = cine.thinned(max(2, len(cine.frames) * 3 // 4))


def unpack(data: bytes, facts: dict[str, Any]) -> list[np.ndarray]:
    """The frames of a filmstrip (tests, tools): `facts["frames"]` bands of `frame_height`."""
    strip = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if strip is None:
        raise CineUnreadable("not a filmstrip")
    height = int(facts["frame_height"])
    return [strip[i * height : (i + 1) * height] for i in range(int(facts["frames"]))]
