"""Live ultrasound: the sector the model sees, the smoothed live score over time, and a clip
recorded on request and stored like any other result (`edge capture --record` in a screen).

The analyzer runs in a thread worker and posts each score back; the thumbnail is taken from the
newest frame it read, cropped to the sector (the rest of the screen may carry patient text).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import ClassVar, cast

from PIL import Image as PILImage
from rich.markup import escape
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Footer, Input, Static

from edge.device import Device, Live, capture_clip
from edge.errors import Code, EdgeError
from edge.inference.scope import BORDERLINE, OUT_OF_SCOPE
from edge.tui.screens.base import ActionFinished, EdgeScreen
from edge.tui.widgets.picture import Picture
from edge.tui.widgets.score_trace import ScoreTrace
from edge.tui.widgets.top_bar import TopBar
from edge.video.live import LiveAnalyzer, LiveScore
from edge.video.roi import crop
from edge.video.source import Frame, FrameSource

THUMBNAIL_SIDE = 192
THUMBNAIL_EVERY_S = 0.25  # of source time: a terminal redraw per frame would cost more than the model
STATUS_WORDS = {
    "ok": "[green]OK[/]",
    "frozen": "[yellow]FROZEN[/] the picture has not changed: scanner frozen or cable?",
    "black": "[yellow]BLACK[/] nothing on screen: probe asleep or unplugged?",
    "no-sector": "[yellow]NO SECTOR[/] looking for the moving image area",
}
SCOPE_WORDS = {  # the applicability check's word for an analysed frame (edge/inference/scope.py)
    OUT_OF_SCOPE: "[bold red]OUT OF SCOPE[/] unlike the model's training images: wrong model or view?",
    BORDERLINE: "[yellow]borderline[/]",
}


class _WatchedSource(FrameSource):
    """A frame source that remembers the newest frame handed out (for the thumbnail)."""

    newest: Frame | None = None

    def latest(self, timeout: float = 1.0) -> Frame | None:
        frame = super().latest(timeout)
        if frame is not None:
            self.newest = frame
        return frame


@dataclass(frozen=True)
class LiveModel:
    name: str
    version: str
    positive: str
    threshold: float
    """Each frame's finding is judged by this (the word on the status line)."""
    clip_threshold: float
    """The clip will be judged by this on the mean of its frames: the line on the smoothed trace."""


class LiveStarted(Message):
    def __init__(self, model: LiveModel) -> None:
        super().__init__()
        self.model = model


class LiveUpdate(Message):
    def __init__(self, score: LiveScore, thumbnail: PILImage.Image | None) -> None:
        super().__init__()
        self.score = score
        self.thumbnail = thumbnail


class LiveEnded(Message):
    def __init__(self, sentence: str, ok: bool) -> None:
        super().__init__()
        self.sentence = sentence
        self.ok = ok


class LiveScreen(EdgeScreen):
    AUTO_FOCUS = ""  # keys go to the screen (1-4 still switch screens); e puts the cursor in the source
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "toggle_analysis", "Start/stop"),
        Binding("c", "toggle_clip", "Clip"),
        Binding("e", "edit_source", "Source"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.scores: list[float] = []
        self.out_of_scope = 0
        """Frames the applicability check judged unlike the model's training images."""
        self.model: LiveModel | None = None
        self.running = False
        self.recording = False
        self._stop = threading.Event()
        self._analyzer: LiveAnalyzer | None = None
        self._live: Live | None = None
        self._last_thumbnail_at = -1.0
        self._progress = ""
        self._clip_lock = threading.Lock()
        self._clip_requested = False

    def compose(self) -> ComposeResult:
        video = self.context.settings.video
        yield TopBar("live")
        with Horizontal(id="live-top"):
            yield Input(
                self.context.live_source or "",
                placeholder="/dev/video0, a file or rtsp://…",
                id="live-source",
            )
            yield Static(f"model {self.context.live_model or video.model}", id="live-model")
        with Horizontal(id="live-body"):
            yield Picture(self.context.graphics, id="live-picture")
            with Vertical(id="live-side"):
                yield Static("stopped · a starts the analysis", id="live-status", classes="section")
                yield Static("smoothed live score, 0 to 1", id="live-trace-caption")
                yield ScoreTrace(id="live-trace")
                yield Static("c records a clip and stores it as a result", id="live-clip", classes="section")
                yield Static("", id="live-info", classes="section")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(Picture).show(None, "no picture yet")
        if not self.query_one("#live-source", Input).value:
            self.query_one("#live-status", Static).update("no video source yet · e to type one")

    def on_unmount(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ keys

    def action_edit_source(self) -> None:
        self.query_one("#live-source", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.set_focus(None)
        if not self.running:
            self.action_toggle_analysis()

    def action_toggle_analysis(self) -> None:
        if self.running:
            self._stop.set()
            self.query_one("#live-status", Static).update("stopping…")
            return
        if self.recording:  # a clip left from the last run, never stored: a new run starts clean
            self._discard_clip()
        self._start()

    def _start(self) -> None:
        source = self.query_one("#live-source", Input).value.strip()
        if not source:
            self.notify("type the video source first (e)", severity="warning")
            return
        self._stop = threading.Event()
        self.running = True
        self._analyzer = None
        self.scores = []
        self.out_of_scope = 0
        self._last_thumbnail_at = -1.0
        self.query_one("#live-status", Static).update(f"opening {escape(source)}…")
        self._analyse(source, self.context.live_model or self.context.settings.video.model)

    def _discard_clip(self) -> None:
        self.recording = False
        if self._analyzer is not None and self._analyzer.recorder is not None:
            self._analyzer.recorder.discard()
            self._analyzer.recorder = None
        self.query_one("#live-clip", Static).update("the last clip was not stored · c records a new one")

    def action_toggle_clip(self) -> None:
        """Start a clip (starting the analysis too when it is stopped), or stop and store it."""
        clip = self.query_one("#live-clip", Static)
        if self.recording:
            self.recording = False
            clip.update("storing the clip…")
            self.perform(self._store_clip)
            return
        if not self.running and not self.query_one("#live-source", Input).value.strip():
            self.notify("type the video source first (e)", severity="warning")
            return
        self.recording = True
        clip.update("[bold red]● recording[/] · c stops and stores the clip")
        with self._clip_lock:  # the analysis thread may be creating the analyzer right now
            if self._analyzer is not None and self.running:
                self._analyzer.start_clip()
            else:
                self._clip_requested = True
        if not self.running:
            self._start()

    # ------------------------------------------------------------------ the analysis thread

    @work(thread=True, exclusive=True, group="live")
    def _analyse(self, source: str, model_name: str) -> None:
        settings = self.context.settings
        try:
            with Device(settings, actor=self.context.actor, registry=self.context.registry) as device:
                live = device.live(
                    source,
                    model_name,
                    realtime=self.context.live_realtime,
                    on_score=lambda score: self._scored(score, frames),
                    source_type=_WatchedSource,
                )
                frames = cast(_WatchedSource, live.frames)
                served, analyzer = live.served, live.analyzer
                _, _, point, _ = served.calibration(settings.models.operating_point)
                self._live = live
                self.post_message(
                    LiveStarted(
                        LiveModel(
                            served.name,
                            served.version,
                            served.entry.manifest.output.positive,
                            point.threshold,
                            point.threshold_for_clips,
                        )
                    )
                )
                with self._clip_lock:
                    self._analyzer = analyzer
                    if self._clip_requested:
                        analyzer.start_clip()
                        self._clip_requested = False
                with frames:
                    analyzer.run(self._stop)
                self._post_thumbnail(frames, analyzer, force=True)
                ended = "stopped" if self._stop.is_set() else frames.stats.end_reason or "ended"
                counted = f"{analyzer.stats.frames_analysed} frame(s) analysed of {frames.stats.read} read"
                self.post_message(LiveEnded(f"{ended}: {counted}", ok=True))
        except EdgeError as error:
            self.post_message(LiveEnded(error.one_line(), ok=False))

    def _scored(self, score: LiveScore, frames: _WatchedSource) -> None:
        """Called in the analysis thread for every frame looked at."""
        analyzer = self._analyzer
        thumbnail = None
        if analyzer is not None and score.position_s - self._last_thumbnail_at >= THUMBNAIL_EVERY_S:
            thumbnail = _thumbnail(frames.newest, analyzer)
            if thumbnail is not None:
                self._last_thumbnail_at = score.position_s
        self.post_message(LiveUpdate(score, thumbnail))

    def _post_thumbnail(self, frames: _WatchedSource, analyzer: LiveAnalyzer, force: bool = False) -> None:
        thumbnail = _thumbnail(frames.newest, analyzer)
        if thumbnail is not None or force:
            self.post_message(LiveUpdate(LiveScore(-1, -1.0, "thumbnail"), thumbnail))

    def _store_clip(self) -> str:
        """Runs in a thread worker (`perform`): the clip's files and rows, like `edge capture --record`."""
        live = self._live
        if live is None or self._analyzer is None:
            raise EdgeError(Code.VIDEO_TOO_SHORT, "no clip is being recorded")
        with self.context.open_store() as store:
            return capture_clip(self.context.settings, store, live)

    # ------------------------------------------------------------------ messages

    def on_live_started(self, message: LiveStarted) -> None:
        self.model = message.model
        self.query_one("#live-model", Static).update(f"model {message.model.name} {message.model.version}")
        model = message.model
        # The trace is smoothed over frames, so its guide line is what the clip will be judged by.
        guide = "clip threshold" if model.clip_threshold != model.threshold else "threshold"
        self.query_one("#live-trace-caption", Static).update(
            f"P({model.positive}) smoothed · ··· {guide} {model.clip_threshold:.2f}"
        )
        self.query_one(ScoreTrace).update_values([], model.clip_threshold)

    def on_live_update(self, message: LiveUpdate) -> None:
        if message.thumbnail is not None:
            self.query_one(Picture).show(message.thumbnail, "the sector the model sees")
        score = message.score
        if score.status == "thumbnail":
            return
        if score.status == "ok" and score.smoothed is not None:
            self.scores.append(score.smoothed)
            self.query_one(ScoreTrace).update_values(self.scores)
            self.out_of_scope += score.scope == OUT_OF_SCOPE
        self.query_one("#live-status", Static).update(status_text(score, self.model))
        analyzer = self._analyzer
        if analyzer is not None:
            stats = analyzer.stats
            unlike = f" ({self.out_of_scope} out of scope)" if self.out_of_scope else ""
            self._progress = (
                f"{stats.frames_analysed} frames analysed{unlike} · sector {stats.roi or 'not found yet'}"
            )
            self.query_one("#live-info", Static).update(self._progress)

    def on_action_finished(self, message: ActionFinished) -> None:
        """The clip's outcome stays on screen (EdgeScreen's handler also notifies)."""
        self.query_one("#live-clip", Static).update(escape(message.sentence))

    def on_live_ended(self, message: LiveEnded) -> None:
        self.running = False
        self.notify(message.sentence, severity="information" if message.ok else "error", timeout=6)
        self.query_one("#live-info", Static).update(f"{self._progress}\n{escape(message.sentence)}")
        if self.recording:
            self.query_one("#live-clip", Static).update(
                "the source ended · c stores the clip recorded so far"
            )


def status_text(score: LiveScore, model: LiveModel | None) -> str:
    """The live lines: status, and for an analysed frame the probability smoothed and now."""
    position = f"t={score.position_s:.1f} s"
    if score.status != "ok":
        return f"{STATUS_WORDS.get(score.status, score.status)}\n{position}"
    label = model.positive if model else "positive"
    numbers = (
        f"P({label}) [b]{score.smoothed:.3f}[/b] over the last seconds · {score.probability:.3f} this frame"
    )
    if score.scope == OUT_OF_SCOPE:
        # No finding for a frame unlike the model's training images: a clip of such frames is
        # refused OUT_OF_SCOPE, so the screen says so while the probe is still on the patient.
        return f"{SCOPE_WORDS[OUT_OF_SCOPE]} · {position}\n[dim]{numbers}[/dim]"
    # The word is this frame's finding (judged by the frame threshold); its colour says the same.
    above = model is not None and score.finding == model.positive
    colour = "bold yellow" if above else "bold green"
    near_edge = f" · {SCOPE_WORDS[BORDERLINE]}" if score.scope == BORDERLINE else ""
    finding = f"[{colour}]{score.finding}[/]{near_edge}"
    return f"{STATUS_WORDS['ok']} picture usable · this frame: {finding} · {position}\n{numbers}"


def _thumbnail(frame: Frame | None, analyzer: LiveAnalyzer) -> PILImage.Image | None:
    roi = analyzer.roi
    if frame is None or roi is None:
        return None
    try:
        sector = crop(frame.image, roi)
    except (ValueError, IndexError):  # the frame changed size under the sector: next frame
        return None
    image = PILImage.fromarray(sector)
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    return image
