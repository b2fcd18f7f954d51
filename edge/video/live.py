"""Real-time analysis of an ultrasound picture: sector, quality, score, smoothing, clip.

The loop takes the newest frame from the source (older ones are dropped by the source), at most
`target_fps` times a second. The sector is found first (or taken from the device profile) and
found again whenever the picture changes size; until then nothing is analysed or kept. Frozen
and black pictures are reported and skipped. Each analysed frame gives a calibrated probability,
an exponentially smoothed live score and its capture-to-result latency; when a clip is being
recorded the frame also goes to the clip.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference.pool import ServedModel
from edge.video.clip import MIN_FRAMES, ClipRecorder, ClipSummary
from edge.video.monitor import FreezeDetector, is_black
from edge.video.roi import Box, crop, detect_sector, fits, unstretch
from edge.video.source import Frame, FrameSource

log = logging.getLogger(__name__)
CAPTURES = ("device", "stream")
"""Sources that come through a capture card or encoder, which the device profile describes."""
# A live source silent this long when the clip stops was lost (a stream killed, a cable
# pulled): reconnecting only begins after `[video] stall_s`, which may be after the clip ends.
SOURCE_LOST_S = 2.0
# How sources end normally: a file or a cine read to its end, or told to stop.
NORMAL_ENDS = ("end of file", "end of frames", "stopped", "")


@dataclass(frozen=True)
class LiveScore:
    frame: int
    position_s: float
    status: str  # ok | frozen | black | no-sector
    probability: float | None = None
    smoothed: float | None = None
    finding: str | None = None
    latency_ms: float | None = None
    scope: str | None = None
    """The applicability check's word for this frame (in scope, borderline, out of scope)."""


@dataclass
class LiveStats:
    frames_analysed: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    status_counts: dict[str, int] = field(default_factory=dict)
    roi: Box | None = None
    resizes: int = 0
    roi_changes: int = 0

    def count(self, status: str) -> None:
        self.status_counts[status] = self.status_counts.get(status, 0) + 1


MIN_SECTOR_FRAMES = 4
"""Fewer frames than this tell no sector (what changes over them is mostly noise)."""


class LiveAnalyzer:
    def __init__(
        self,
        settings: Settings,
        model: ServedModel,
        source: FrameSource,
        *,
        on_score: Callable[[LiveScore], None] = lambda score: None,
        operating_point: str | None = None,
        horizontal_stretch: float | None = None,
    ) -> None:
        self.settings = settings
        self.video = settings.video
        self.model = model
        self.source = source
        self.on_score = on_score
        self.operating_point = operating_point or settings.models.operating_point
        profile = self.video.profiles.get(self.video.profile or "") if self.video.profile else None
        # The profile describes this device's capture (where the sector sits on its screen, how
        # the card stretches it): a file or a DICOM cine never went through that card, and a
        # recording made here already holds the corrected sector, so its sector is detected.
        capture = profile if source.kind in CAPTURES else None
        self.fixed_roi: Box | None = capture.roi if capture is not None else None
        if horizontal_stretch is None:
            horizontal_stretch = capture.horizontal_stretch if capture is not None else 1.0
        self.horizontal_stretch = horizontal_stretch
        self.roi: Box | None = self.fixed_roi
        self.stats = LiveStats()
        self.smoothed: float | None = None
        self.recorder: ClipRecorder | None = None
        self._window: deque[Frame] = deque()
        self._window_start: float | None = None
        self._freeze = FreezeDetector(self.video.freeze_seconds)
        self._shape: tuple[int, ...] | None = None
        # Half-size copies, one per 0.1 s over the detection window: a view of the full frame
        # would keep every full frame alive (hundreds of MB at 1080p on an 8 GB Jetson).
        recent = max(4, int(self.video.roi_seconds / 0.1) + 2)
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=recent)
        self._last_recheck = 0.0
        self._lock = threading.Lock()
        self._last_frame_at: float | None = None
        self._run_ended_at: float | None = None  # when `run` returned (the capture stopped)
        self._clip_reconnects: int | None = None  # the source's count when the clip's first frame came

    # ------------------------------------------------------------------ clips

    def start_clip(self) -> None:
        out = self.model.entry.manifest.output
        with self._lock:
            if self.recorder is not None:
                self.recorder.discard()
            self.recorder = ClipRecorder(
                out.labels,
                out.positive,
                fps=self.video.clip_fps,
                max_seconds=self.video.clip_max_seconds,
                max_side=self.video.clip_max_side,
                key_frames=self.video.key_frames,
                folder=self.settings.data_dir / "clips",
            )
            self._clip_reconnects = None

    def stop_clip(self) -> ClipSummary:
        """The clip recorded since `start_clip`; refused with a code, and nothing kept, when it
        has too few analysable frames or its source was lost before it ended (fail closed: a
        clip cut short must not read as a finding)."""
        with self._lock:
            recorder, self.recorder = self.recorder, None
        if recorder is None:
            raise EdgeError(Code.VIDEO_TOO_SHORT, "no clip is being recorded")
        summary = recorder.finish()
        lost = self.source_lost()
        if lost:
            if summary.video_file:
                summary.video_file.unlink(missing_ok=True)
            raise EdgeError(
                Code.VIDEO_SOURCE_LOST,
                f"{lost}: the clip ({summary.frames_analysed} frames analysed) is incomplete, not stored",
            )
        if summary.frames_analysed < MIN_FRAMES:
            if summary.video_file:
                summary.video_file.unlink(missing_ok=True)
            reason = "; ".join(summary.events[:5]) or "too few frames"
            counts = self.stats.status_counts
            if self.roi is None and not counts:
                # Ended before one sector-detection window was seen (a single frame, a blip).
                code = Code.VIDEO_TOO_SHORT
            elif self.roi is None:
                code = Code.VIDEO_FROZEN if counts.get("frozen") else Code.VIDEO_NO_SECTOR
            elif counts.get("black", 0) > counts.get("ok", 0):
                code = Code.VIDEO_BLACK
            elif counts.get("frozen", 0) > counts.get("ok", 0):
                code = Code.VIDEO_FROZEN
            else:
                code = Code.VIDEO_TOO_SHORT
            raise EdgeError(
                code, f"only {summary.frames_analysed} analysable frame(s) in the clip ({reason})"
            )
        return summary

    def source_lost(self) -> str | None:
        """Why the source cannot be trusted to have delivered the whole clip, or None: it was
        reopened after frames had come, it ended otherwise than at its end (a truncated
        recording), or a live source fell silent before the clip was stopped."""
        stats = self.source.stats
        if self._clip_reconnects is not None and stats.reconnects > self._clip_reconnects:
            return f"the {self.source.kind} was lost and reopened during the clip"
        if stats.ended and stats.end_reason not in NORMAL_ENDS:
            return f"the {self.source.kind} ended early ({stats.end_reason})"
        if not self.source.lossless and self._last_frame_at is not None:
            silent = (self._run_ended_at or time.monotonic()) - self._last_frame_at
            if silent > SOURCE_LOST_S:
                return f"no frame from the {self.source.kind} for the last {silent:.0f} s"
        return None

    # ------------------------------------------------------------------ the loop

    def run(self, stop: threading.Event, max_seconds: float | None = None) -> LiveStats:
        """Analyse until the source ends, `stop` is set or `max_seconds` pass. A lossless source
        (a recording analysed after the fact) is paced by its own clock, so the same file gives
        the same frames and the same result on any machine."""
        self._interval = 1.0 / self.video.target_fps
        self._next_at = -1.0
        self.warm_up()
        started = time.monotonic()
        self._run_ended_at = None
        while not stop.is_set():
            if max_seconds is not None and time.monotonic() - started > max_seconds:
                break
            frame = self.source.latest(timeout=0.5)
            if frame is None:
                if self.source.ended:
                    self._analyse_short_recording()
                    break
                continue
            self._last_frame_at = time.monotonic()
            if self.recorder is not None and self._clip_reconnects is None:
                self._clip_reconnects = self.source.stats.reconnects
            resized = frame.resized or (self._shape is not None and frame.image.shape != self._shape)
            self._shape = frame.image.shape
            if resized and self.fixed_roi is None:
                self.stats.resizes += 1
                self.roi = None
                self._window.clear()
            if self.roi is None:
                found = self._find_sector(frame)
                # A recording: the frames looked at to find the sector are analysed too; live,
                # only the newest of them still matters.
                for buffered in found if self.source.lossless else found[-1:]:
                    self._paced(buffered)
                continue
            self._paced(frame)
            self._recheck_sector(frame)
        self._run_ended_at = time.monotonic()
        return self.stats

    def _recheck_sector(self, frame: Frame) -> None:
        """Look for the sector again every `roi_recheck_s`: a depth or preset change moves it,
        and some capture paths rescale a new resolution to the old one instead of reporting it."""
        if self.fixed_roi is not None:
            return
        now = frame.position_s
        if not self._recent or now - self._recent[-1][0] >= 0.1:
            self._recent.append((now, np.ascontiguousarray(frame.image[::2, ::2])))
        if now - self._last_recheck < self.video.roi_recheck_s or self.roi is None:
            return
        self._last_recheck = now
        window = [image for t, image in self._recent if now - t <= self.video.roi_seconds]
        box = detect_sector(window) if len(window) >= MIN_SECTOR_FRAMES else None
        if box is None:
            return
        found = (box[0] * 2, box[1] * 2, box[2] * 2, box[3] * 2)
        if _overlap(found, self.roi) < 0.85 and fits(found, frame.image.shape):  # detection jitter is ~0.95
            log.warning("the imaging sector moved: %s -> %s", self.roi, found)
            self.roi = found
            self.stats.roi = found
            self.stats.roi_changes += 1

    def _paced(self, frame: Frame) -> None:
        now = frame.position_s if self.source.lossless else time.monotonic()
        if now < self._next_at:
            return  # faster than the target rate: let this one go
        # Keep to the schedule (not "interval after this frame"), so frame timing jitter does not
        # lower the rate; after falling behind, start the schedule again from now.
        self._next_at = max(self._next_at + self._interval, now - self._interval / 2)
        self.analyse(frame)

    def warm_up(self) -> None:
        """One inference on a blank frame first: a backend's first call is slow (lazy setup),
        and that must not count as the first frame's latency."""
        spec = self.model.spec
        self.model.predict([np.zeros((spec.height, spec.width), np.uint8)])

    def _analyse_short_recording(self) -> None:
        """A recording that ended before `roi_seconds` of it were collected (a 1 s loop, as many
        ultrasound machines store): its sector is looked for in what there is, and its frames
        analysed. Every such cine was refused VIDEO_TOO_SHORT with 0 frames analysed, and one
        without a stated frame rate (taken as 30 fps) was refused where the same frames with
        one were read (an outside-style check)."""
        if self.roi is not None or not self.source.lossless or len(self._window) < MIN_SECTOR_FRAMES:
            return
        for buffered in self._find_sector(self._window.pop(), final=True):
            self._paced(buffered)

    def _find_sector(self, frame: Frame, *, final: bool = False) -> list[Frame]:
        """Collect frames until the sector can be found (`final`: no more will come); returns
        them once it is."""
        if self._window_start is None:
            self._window_start = frame.position_s
        self._window.append(frame)
        collecting = frame.position_s - self._window_start < self.video.roi_seconds and len(self._window) < 60
        if collecting and not final:
            return []
        window = list(self._window)
        self._window.clear()
        self._window_start = None
        box = detect_sector([f.image for f in window])
        if box is not None and fits(box, frame.image.shape):
            self.roi = box
            self.stats.roi = box
            log.info("imaging sector found at %s", box)
            return window
        first, last = window[0].image, window[-1].image
        still = first.shape == last.shape and np.array_equal(first, last)
        status = "frozen" if still else "no-sector"
        self._emit(LiveScore(frame.index, frame.position_s, status))
        if self.recorder is not None:
            self.recorder.exclude(frame.position_s, status)
        return []

    def analyse(self, frame: Frame) -> LiveScore:
        assert self.roi is not None
        if not fits(self.roi, frame.image.shape):
            self.roi = self.fixed_roi if self.fixed_roi and fits(self.fixed_roi, frame.image.shape) else None
            return self._emit(LiveScore(frame.index, frame.position_s, "no-sector"))
        sector = unstretch(crop(frame.image, self.roi), self.horizontal_stretch)
        status = (
            "black"
            if is_black(sector)
            else "frozen"
            if self._freeze.update(sector, frame.position_s)
            else "ok"
        )
        if status != "ok":
            if self.recorder is not None:
                self.recorder.exclude(frame.position_s, status)
            return self._emit(LiveScore(frame.index, frame.position_s, status))
        prediction = self.model.predict([sector], self.operating_point)[0]
        latency = (time.monotonic() - frame.captured) * 1000
        p = prediction.finding.probability
        alpha = self.video.smoothing
        self.smoothed = p if self.smoothed is None else alpha * p + (1 - alpha) * self.smoothed
        self.stats.frames_analysed += 1
        self.stats.latencies_ms.append(latency)
        with self._lock:
            if self.recorder is not None:
                cam_name = self.model.entry.manifest.output.cam
                cam = prediction.outputs.get(cam_name) if cam_name else None
                distance = prediction.scope.distance if prediction.scope else None
                self.recorder.add(frame.position_s, sector, prediction.finding.probabilities, cam, distance)
        return self._emit(
            LiveScore(
                frame.index,
                frame.position_s,
                "ok",
                p,
                self.smoothed,
                prediction.finding.finding,
                latency,
                prediction.scope.state if prediction.scope else None,
            )
        )

    def _emit(self, score: LiveScore) -> LiveScore:
        self.stats.count(score.status)
        self.on_score(score)
        return score


def _overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union else 0.0
