"""The device's object graph, built in one place: settings -> store, registry, model pool, pipeline.

Every edge that acts on the device (the `edge` commands, the TUI, the agent's threads, the demo
and the benchmark) opens a `Device` and calls the operation it needs, instead of assembling the
parts itself:

- `analyse_file`: ingest one file and analyse it now (`edge infer`, the demo);
- `rerun`: queue a stored image for another model and, when no agent runs, analyse it now;
- `live` / `capture_clip`: a live ultrasound session and its recorded clip (`edge capture`,
  the TUI's live screen).

A `Device` belongs to one thread (its SQLite connection does). Opening one requeues nothing:
the agent's worker returns jobs whose holders died or whose leases ran out (`store.leases`), and
a caller that wants one job now takes over that job's lease only when its holder is gone
(`Pipeline._claim`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.config import Settings
from edge.inference.pool import ModelPool, ServedModel
from edge.inference.registry import Registry
from edge.ingest.guard import GuardedDecoder
from edge.pipeline import Pipeline
from edge.results import Analysis
from edge.store import Store
from edge.video.analysis import store_capture
from edge.video.live import LiveAnalyzer, LiveScore
from edge.video.source import FrameSource


@dataclass(frozen=True)
class Rerun:
    """What asking for another model's opinion came to."""

    model_name: str
    job_id: str
    state: str
    """done (it already had one) | running (elsewhere) | queued (for the agent) | analysed | refused"""
    analysis: Analysis | None = None


@dataclass
class Live:
    """A live session's parts: the model serving it, the frame source and the analyzer."""

    served: ServedModel
    frames: FrameSource
    analyzer: LiveAnalyzer


class Device:
    def __init__(
        self,
        settings: Settings,
        *,
        actor: str = "cli",
        registry: Registry | None = None,
        guarded: bool = False,
    ) -> None:
        """`guarded`: images are decoded as the agent decodes them, in a worker process bounded
        by `[ingest] decode_timeout_s` and `decode_memory_mb` (edge.ingest.guard), for files
        from anywhere (`edge infer`, the TUI's re-run); a decompression bomb or a decoder that
        hangs then costs a coded refusal, not this process or the device's memory. A cine's
        frames, and a video file's, are streamed from a worker of their own (`GuardedDecoder.frames`,
        `recording`). The workers'
        stderr is dropped (the TUI draws on this terminal)."""
        self.settings = settings
        self.actor = actor
        self.store = Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms)
        self.registry = registry or Registry(settings.models.dir)
        self.pool = ModelPool(self.registry, settings, settings.data_dir / "cache")
        self.pipeline = Pipeline(settings, self.store, registry=self.registry, pool=self.pool, actor=actor)
        self.decoder: GuardedDecoder | None = None
        if guarded:
            self.decoder = GuardedDecoder.from_settings(settings.ingest, quiet=True)
            self.pipeline.decoder = self.decoder.decode
            self.pipeline.frame_decoder = self.decoder.frames
            self.pipeline.recording_decoder = self.decoder.recording

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.close()
        self.pool.close()
        self.store.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ images and recordings

    def analyse_file(self, path: Path, model: str | None = None, source: str = "cli") -> list[Analysis]:
        """Ingest one file (image, DICOM or video) and analyse it now, in this process."""
        return self.pipeline.analyse_file(path, model, source)

    def rerun(self, image_id: str, model_name: str, *, agent_running: bool) -> Rerun:
        """Queue a stored image for `model_name`; when no agent runs, analyse it here and now."""
        self.registry.get(model_name)  # an unknown or broken model is refused before queueing
        job_id = self.store.technician.requeue_with_model(image_id, model_name, self.actor)
        state = (self.store.job(job_id) or {}).get("state", "missing")
        if state in ("done", "running"):
            return Rerun(model_name, job_id, state)
        if agent_running:
            return Rerun(model_name, job_id, "queued")
        analysis = self.pipeline.analyse_job(job_id)
        if analysis.ok:
            return Rerun(model_name, job_id, "analysed", analysis)
        if analysis.code is None:  # an agent that just started took it
            return Rerun(model_name, job_id, "queued")
        return Rerun(model_name, job_id, "refused", analysis)

    # ------------------------------------------------------------------ live ultrasound

    def live(
        self,
        source: str,
        model_name: str | None = None,
        *,
        realtime: bool = True,
        on_score: Callable[[LiveScore], None] = lambda score: None,
        source_type: type[FrameSource] = FrameSource,
    ) -> Live:
        """A live session on `source`, opened as the active device profile says; start the
        analyzer with `live.analyzer.run(stop)` inside `with live.frames:`."""
        served = self.pool.get(model_name or self.settings.video.model)
        frames = source_type.from_settings(source, self.settings.video, realtime=realtime)
        analyzer = LiveAnalyzer(self.settings, served, frames, on_score=on_score)
        return Live(served, frames, analyzer)


def capture_clip(settings: Settings, store: Store, live: Live) -> str:
    """Stop the live session's recording and store it as a clip; one sentence to show. `store`
    is the calling thread's (the TUI stores from another thread than the one analysing)."""
    result_id = store_capture(settings, store, live.analyzer, live.served)
    result = store.result(result_id)
    assert result is not None  # committed just now, in this thread
    clip = store.clip_for_result(result_id) or {}
    return (
        f"clip stored: {result.finding} P({result.finding_label}) = {result.probability:.3f}"
        f" over {clip.get('frames_analysed')} frames; result {result_id}"
    )
