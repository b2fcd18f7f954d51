"""A clip: what was scanned between start and stop, kept small, and its one result.

While recording, each analysed frame adds its calibrated probability to the series; frames that
were frozen or black are counted but not aggregated. The clip's probability is the **mean** of
the analysed frames' calibrated probabilities: the same aggregation the model's clip-level
(per-video) validation used, so the clip threshold means what the model card says it means;
the mean is also steadier than the maximum, which a single noisy frame can move. A few key
frames (the most positive ones and the first) are kept with their class activation maps, and
the sector-only video is written at a reduced frame rate and size, capped in length: a clip on
disk is bounded, and it never holds the scanner's UI or burned-in text.
"""

from __future__ import annotations

import heapq
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.errors import Code, EdgeError

log = logging.getLogger(__name__)
SHORT_BYTES = 64 << 20
"""Free space under which a recording cut short is taken for a full disk (`_check_video`)."""

AGGREGATE = "mean of the analysed frames' calibrated probabilities (frozen and black frames excluded)"
MIN_FRAMES = 3


@dataclass
class KeyFrame:
    t: float
    probability: float
    image: np.ndarray  # RGB sector crop
    cam: np.ndarray | None


@dataclass
class ClipSummary:
    probability: float
    probabilities: dict[str, float]
    frames_analysed: int
    frames_excluded: int
    duration_s: float
    series: list[tuple[float, float]]
    key_frames: list[KeyFrame]
    video_file: Path | None
    events: list[str] = field(default_factory=list)
    distances: list[float] = field(default_factory=list)
    """Each analysed frame's applicability distance (edge/inference/scope.py), where the model has
    the check: the clip is judged by their median."""


RECORDING_PREFIX = ".recording-"


class ClipRecorder:
    def __init__(
        self,
        labels: list[str],
        positive: str,
        *,
        fps: float,
        max_seconds: float,
        max_side: int,
        key_frames: int,
        folder: Path | None = None,
    ) -> None:
        """`folder`: where the clip's video is written while it is recorded (the data
        directory's clips folder: the patient's pictures stay where the store keeps them,
        under its encryption, and a recording a power cut interrupted is swept at the next
        start; /tmp held them outside both). None: the system's temporary folder."""
        self.folder = folder
        self.labels = labels
        self.positive = positive
        self.fps = fps
        self.max_seconds = max_seconds
        self.max_side = max_side
        self.key_count = key_frames
        self.series: list[tuple[float, float]] = []
        self.distances: list[float] = []
        self.sums = np.zeros(len(labels))
        self.excluded = 0
        self.events: list[str] = []
        self._first: KeyFrame | None = None
        self._best: list[tuple[float, int, KeyFrame]] = []  # min-heap on probability
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None
        self._video: Path | None = None  # made with the first written frame; a clip may have none
        self._written = 0  # frames given to the writer (`_check_video`)
        self._next_video_t = 0.0
        self._start_t: float | None = None
        self._last_t = 0.0

    def exclude(self, t: float, reason: str) -> None:
        self.excluded += 1
        if not self.events or not self.events[-1].startswith(reason):
            self.events.append(f"{reason} at {t:.1f} s")

    def add(
        self,
        t: float,
        crop: np.ndarray,
        probabilities: dict[str, float],
        cam: np.ndarray | None,
        distance: float | None = None,
    ) -> None:
        if distance is not None:
            self.distances.append(distance)
        if self._start_t is None:
            self._start_t = t
        rel = t - self._start_t
        self._last_t = rel
        p = probabilities[self.positive]
        self.series.append((round(rel, 3), round(p, 5)))
        self.sums += np.array([probabilities[label] for label in self.labels])
        frame = KeyFrame(rel, p, crop, cam)
        if self._first is None:
            self._first = frame
        else:
            entry = (p, len(self.series), frame)
            if len(self._best) < self.key_count - 1:
                heapq.heappush(self._best, entry)
            elif self._best and p > self._best[0][0]:
                heapq.heapreplace(self._best, entry)
        self._write_video(rel, crop)

    def _write_video(self, rel: float, crop: np.ndarray) -> None:
        if rel > self.max_seconds or rel < self._next_video_t:
            return
        self._next_video_t = rel + 1.0 / self.fps
        if self._writer is None:
            scale = min(1.0, self.max_side / max(crop.shape[:2]))
            self._size = (
                max(16, int(crop.shape[1] * scale) // 2 * 2),
                max(16, int(crop.shape[0] * scale) // 2 * 2),
            )
            if self.folder is not None:
                self.folder.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(suffix=".mp4", prefix=RECORDING_PREFIX, dir=self.folder)
            os.close(handle)  # OpenCV opens the file by name
            self._video = Path(name)
            self._writer = cv2.VideoWriter(name, cv2.VideoWriter.fourcc(*"mp4v"), self.fps, self._size)
        assert self._size is not None
        bgr = crop[:, :, ::-1] if crop.ndim == 3 else cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        self._writer.write(np.ascontiguousarray(cv2.resize(bgr, self._size, interpolation=cv2.INTER_AREA)))
        self._written += 1

    def finish(self) -> ClipSummary:
        if self._writer is not None:
            self._writer.release()
            self._check_video()
        analysed = len(self.series)
        mean = self.sums / max(1, analysed)
        keys = ([self._first] if self._first else []) + [
            k for _, _, k in sorted(self._best, key=lambda e: -e[0])
        ]
        return ClipSummary(
            probability=float(mean[self.labels.index(self.positive)]) if analysed else 0.0,
            probabilities={label: float(v) for label, v in zip(self.labels, mean, strict=True)},
            frames_analysed=analysed,
            frames_excluded=self.excluded,
            duration_s=round(self._last_t, 3),
            series=self.series,
            key_frames=keys,
            video_file=self._video,
            events=self.events,
            distances=self.distances,
        )

    def _check_video(self) -> None:
        """The video holds the frames written, or it is not kept: OpenCV's writer says nothing
        when the disk fills (FFmpeg warns, "Failed to write frame"), and a clip was stored whose
        video had no index and no frame. With the disk still short the clip is not stored
        (DISK_FULL gives the job back); otherwise (the space came back, or this OpenCV cannot
        write the format at all, which a retry would not mend) it is stored without its video,
        its events saying why."""
        assert self._video is not None
        capture = cv2.VideoCapture(str(self._video))
        try:
            readable = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if capture.isOpened() else 0
        finally:
            capture.release()
        if readable >= self._written:
            return
        folder = self._video.parent
        self.discard()
        self._video = None
        said = f"the clip's video could not be written ({readable} of {self._written} frames readable)"
        if shutil.disk_usage(folder).free < SHORT_BYTES:
            raise EdgeError(Code.DISK_FULL, f"{said}: the disk is full; not stored")
        log.warning("%s: the clip is stored without it", said)
        self.events.append(f"{said}: stored without its video")

    def discard(self) -> None:
        if self._writer is not None:
            self._writer.release()
        if self._video is not None:
            self._video.unlink(missing_ok=True)
