"""Frames from a capture card, a file or a network stream, newest first.

A reader thread pulls frames through OpenCV as fast as the source gives them and keeps only the
newest in a one-slot mailbox: a consumer that is slower than the source drops frames instead of
queueing them, so memory stays bounded and the analysed frame is always the latest. Every frame
carries the monotonic time it was captured, for capture-to-result latency.

- Devices (`/dev/videoN` or an index) and streams (`rtsp://`, `http://`) that stop delivering
  are reopened with exponential backoff (0.5 s doubling to `reconnect_max_s`), forever.
- Files end; with `realtime=True` they are paced at their own frame rate (or their timestamps),
  to stand in for a live device in tests and benchmarks.
- A frame whose size differs from the previous one is flagged (`resized`): the sector must be
  found again.
- A stream's reads give up after `stall_s`, its open after at least 15 s (FFmpeg's own timeout
  is 30 s for both), and stopping waits for the reader: a process that ended while its reader
  sat in OpenCV's read aborted ("terminate called without an active exception", exit 134: the
  thread was unwound through C++ at interpreter exit). Sources running at exit are stopped first.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np

from edge.errors import Code, EdgeError

if TYPE_CHECKING:
    from edge.config import VideoSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Frame:
    index: int
    image: np.ndarray  # RGB uint8 (or grey)
    captured: float  # time.monotonic() when read
    position_s: float  # position in the source (files), or seconds since start (live)
    resized: bool = False


@dataclass
class SourceStats:
    read: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: list[str] = field(default_factory=list)
    ended: bool = False
    end_reason: str = ""
    failure: EdgeError | None = None
    """The coded refusal that ended the frames (a cine's guarded decoder: DECODE_CRASHED, ...)."""


RECORDING_FFMPEG_OPTIONS = (
    "format_whitelist;mov,avi,matroska,h264,hevc,mpegvideo,mpeg,mpegts|protocol_whitelist;file"
)
"""For OpenCV's FFmpeg reader in the guard's worker that reads a recording: the containers a
recording comes in (MP4/MOV, AVI, MKV: what `edge infer` takes for a video) and bare streams,
from files; no playlist, no network."""


def is_recording(head: bytes) -> bool:
    """Whether a file's first 12 bytes begin a recording: MP4/MOV, AVI (not WebP, also RIFF), MKV."""
    riff_video = head.startswith(b"RIFF") and head[8:12] == b"AVI "
    return head[4:8] == b"ftyp" or riff_video or head.startswith(b"\x1aE\xdf\xa3")


def recorded_frames(path: str) -> Generator[tuple[float, np.ndarray], None, None]:
    """A recording's frames as (position s, RGB image), every one, in order, by its own clock:
    what a lossless `FrameSource` of the file delivers, for decoding it in the guard's worker.
    VIDEO_UNREADABLE when it cannot be opened; VIDEO_SOURCE_LOST when it ends before the frames
    its container states (a truncated file: the clip would be incomplete)."""
    name = Path(path).name
    capture = cv2.VideoCapture(path)
    try:
        if not capture.isOpened():
            raise EdgeError(Code.VIDEO_UNREADABLE, f"cannot open {name} (damaged or incomplete file?)")
        stated, index = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            position = (capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000
            yield position, np.ascontiguousarray(image[:, :, ::-1]) if image.ndim == 3 else image
            index += 1
        if stated and index < stated - 1:
            lost = f"{name}: {_ended_early(index, stated)}: the clip is incomplete, not stored"
            raise EdgeError(Code.VIDEO_SOURCE_LOST, lost)
    finally:
        capture.release()


def _ended_early(read: int, stated: int) -> str:
    return f"the file ended early: {read} of {stated} frames (truncated?)"


def kind_of(source: str) -> str:
    if source.isdigit() or source.startswith("/dev/video"):
        return "device"
    if "://" in source:
        return "stream"
    return "file"


_Source = TypeVar("_Source", bound="FrameSource")
OPEN_TIMEOUT_S = 15.0  # a stream's open, at least (FFmpeg's own: 30 s)
_RUNNING: weakref.WeakSet[FrameSource] = weakref.WeakSet()


@atexit.register
def _stop_running_sources() -> None:
    for source in list(_RUNNING):
        source.stop()


class FrameSource:
    def __init__(
        self,
        source: str,
        *,
        realtime: bool = False,
        width: int | None = None,
        height: int | None = None,
        fps: float | None = None,
        fourcc: str | None = None,
        reconnect_max_s: float = 8.0,
        stall_s: float = 5.0,
        opener: Callable[[str], Any] | None = None,
        lossless: bool = False,
        frames: Iterable[tuple[float, np.ndarray]] | None = None,
    ) -> None:
        """`lossless`: hand over every frame (the reader waits for the consumer), for analysing a
        recording deterministically. `frames`: (position s, RGB image) pairs of a DICOM cine,
        in memory or decoded as they are read (a generator is closed when the reader stops),
        instead of opening `source`."""
        self.source = source
        self.kind = "frames" if frames is not None else kind_of(source)
        self.realtime = realtime
        self.lossless = lossless
        self._frames = frames
        self._settings = (width, height, fps, fourcc)
        self._reconnect_max_s = reconnect_max_s
        self._stall_s = stall_s
        self._open_s = max(stall_s, OPEN_TIMEOUT_S)
        self._opener = opener or self._open
        self.stats = SourceStats()
        self._slot: Frame | None = None
        self._condition = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"video:{self.kind}", daemon=True)
        self.fps: float = 0.0
        self.frame_count: int = 0

    @classmethod
    def from_settings(cls: type[_Source], source: str, video: VideoSettings, *, realtime: bool) -> _Source:
        """`source` opened as the active device profile says (size, rate, FOURCC). A file not
        paced in real time is read losslessly: every frame, so a rerun gives the same clip."""
        profile = video.profiles.get(video.profile or "")
        return cls(
            source,
            realtime=realtime,
            lossless=not realtime and kind_of(source) == "file",
            width=profile.width if profile else None,
            height=profile.height if profile else None,
            fps=profile.fps if profile else None,
            fourcc=profile.fourcc if profile else None,
            reconnect_max_s=video.reconnect_max_s,
            stall_s=video.stall_s,
        )

    # ------------------------------------------------------------------ opening

    def _open(self, source: str) -> Any:
        target: Any = int(source) if source.isdigit() else source
        if self.kind == "device":
            capture = cv2.VideoCapture(target, cv2.CAP_V4L2)
        elif self.kind == "stream":  # bounded: a read that gives up leaves the capture failed,
            # so only when the stall would be declared anyway (then it is reopened); opening
            # probes the stream (FFmpeg reads up to 5 s of it), so it gets longer
            read_ms, open_ms = int(self._stall_s * 1000), int(self._open_s * 1000)
            bounds = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms]
            capture = cv2.VideoCapture(target, cv2.CAP_ANY, bounds)
        else:
            capture = cv2.VideoCapture(target)
        width, height, fps, fourcc = self._settings
        if self.kind == "device":
            if fourcc:
                capture.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter.fourcc(*fourcc))
            if width:
                capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            if height:
                capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
            if fps:
                capture.set(cv2.CAP_PROP_FPS, fps)
            capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a backlog
        return capture

    def start(self) -> FrameSource:
        self._thread.start()
        _RUNNING.add(self)
        return self

    def stop(self) -> None:
        """Stop the reader and wait for it: at most an open's or a read's bound for a stream
        (V4L2 devices: OpenCV's own 10 s)."""
        self._stop.set()
        with self._condition:
            self._condition.notify_all()
        if self._thread.is_alive():
            patience = max(10.0, self._stall_s, self._open_s) + 5.0
            self._thread.join(timeout=patience)
            if self._thread.is_alive():
                log.warning("the %s reader did not stop within %.0f s", self.kind, patience)
        _RUNNING.discard(self)

    def __enter__(self) -> FrameSource:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ consumer side

    def latest(self, timeout: float = 1.0) -> Frame | None:
        """The newest frame not yet taken (waits up to `timeout`), or None."""
        with self._condition:
            if self._slot is None and not self.stats.ended:
                self._condition.wait(timeout)
            frame, self._slot = self._slot, None
            self._condition.notify_all()  # a lossless reader waits for the slot to empty
            return frame

    @property
    def ended(self) -> bool:
        with self._condition:
            return self.stats.ended and self._slot is None

    # ------------------------------------------------------------------ reader thread

    def _publish(self, frame: Frame) -> None:
        with self._condition:
            while self.lossless and self._slot is not None and not self._stop.is_set():
                self._condition.wait(0.5)
            if self._slot is not None:
                self.stats.dropped += 1
                if self._slot.resized and not frame.resized:  # a dropped frame must not hide a resize
                    frame = Frame(frame.index, frame.image, frame.captured, frame.position_s, resized=True)
            self._slot = frame
            self._condition.notify_all()

    def _finish(self, reason: str) -> None:
        with self._condition:
            self.stats.ended = True
            self.stats.end_reason = reason
            self._condition.notify_all()

    def _run(self) -> None:
        """The reader thread: whatever ends it, the source ends with a reason. A damaged frame of
        a cine raised out of it, the thread died without a word, and its reader waited for ever
        with the job running (found by fuzzing); now the clip reads as cut short."""
        self._index = 0
        try:
            self._read_source()
        except EdgeError as error:  # a decoder's coded refusal: the job ends with its code
            self.stats.failure = error
            self._finish(f"frame {self._index + 1} could not be decoded: {error.code.value}")
        except Exception as exc:  # noqa: BLE001 - any decoder's error ends the source, said
            self._finish(f"frame {self._index + 1} could not be decoded: {type(exc).__name__}"[:120])

    def _read_source(self) -> None:
        backoff = 0.5
        self._last_shape: tuple[int, ...] | None = None
        self._started = time.monotonic()
        if self._frames is not None:
            try:
                for position, image in self._frames:
                    if self._stop.is_set():
                        break
                    self._deliver(image[:, :, ::-1] if image.ndim == 3 else image, position)
            finally:
                close = getattr(self._frames, "close", None)
                if close is not None:  # a generator stopped early: its decoder goes now
                    close()
            self._finish("end of frames")
            return
        while not self._stop.is_set():
            capture = self._opener(self.source)
            if not capture.isOpened():
                if self.kind == "file":
                    self._finish(f"cannot open {Path(self.source).name}")
                    return
                self._note(f"cannot open the {self.kind}: retrying in {backoff:.1f} s")
            else:
                outcome = self._read_all(capture)
                capture.release()
                if outcome != "stalled":
                    if outcome != "stopped":
                        self._finish(outcome)
                        return
                    break
                backoff = 0.5  # it worked before: start the backoff over
            self.stats.reconnects += 1
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self._reconnect_max_s)
        self._finish("stopped")

    def _read_all(self, capture: Any) -> str:
        """Read until the source ends ("end of file", or why it ended early), stalls
        ("stalled") or we are told to stop ("stopped")."""
        self.fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        pace_start = time.monotonic()
        last_ok = time.monotonic()
        while not self._stop.is_set():
            ok, image = capture.read()
            now = time.monotonic()
            if not ok or image is None:
                if self._stop.is_set():
                    return "stopped"  # a read that gave up after the stop: no stall to reopen
                if self.kind == "file":
                    if self.frame_count and self._index < self.frame_count - 1:
                        return _ended_early(self._index, self.frame_count)
                    return "end of file"
                if now - last_ok > self._stall_s:
                    self._note(f"the {self.kind} stalled for {now - last_ok:.0f} s: reopening")
                    return "stalled"
                time.sleep(0.02)
                continue
            last_ok = now
            if self.kind == "file":
                position = (capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0) / 1000
                if self.realtime:  # paced by the file's own clock (irregular timestamps stay so)
                    delay = position - (time.monotonic() - pace_start)
                    if delay > 0 and self._stop.wait(delay):
                        return "stopped"
            else:
                position = now - self._started
            self._deliver(image, position)
        return "stopped"

    def _deliver(self, image: np.ndarray, position: float) -> None:
        rgb = image[:, :, ::-1] if image.ndim == 3 else image
        resized = self._last_shape is not None and rgb.shape != self._last_shape
        if resized:
            log.warning("the %s changed size: %s -> %s", self.kind, self._last_shape, rgb.shape)
        self._last_shape = rgb.shape
        self.stats.read += 1
        self._publish(Frame(self._index, np.ascontiguousarray(rgb), time.monotonic(), position, resized))
        self._index += 1

    def _note(self, message: str) -> None:
        log.warning("%s", message)
        self.stats.errors.append(message)
        del self.stats.errors[:-20]  # bounded
