"""Clips into the store: a recorded file (`edge infer clip.mp4`), a live capture (`edge capture
--record`) or a DICOM cine arriving like any other image. One result per clip, with its per-frame
series, key frames and their heatmaps, and the sector-only video.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.clock import utc_now
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.ids import uuid7
from edge.imaging import evidence
from edge.imaging.decoded import DecodedImage, sha256_hex
from edge.imaging.dicom import display_frames
from edge.imaging.explain import heatmap_png
from edge.imaging.png import with_text
from edge.inference.pool import ModelPool, ServedModel
from edge.inference.postprocess import decide_from_probabilities
from edge.inference.registry import sha256_file
from edge.results import Analysis, audit_refusal, result_record
from edge.store import Job, NewImage, Store
from edge.store.files import remove_quietly, write_atomically
from edge.store.reads import evidence_beside
from edge.study import StudyInfo
from edge.video.clip import AGGREGATE, ClipSummary
from edge.video.live import LiveAnalyzer
from edge.video.source import FrameSource

log = logging.getLogger(__name__)


def analyse_recording(
    settings: Settings,
    store: Store,
    pool: ModelPool,
    path: Path,
    model: str | None = None,
    *,
    actor: str = "cli",
    realtime: bool = False,
    decoder: Callable[[Path], Iterable[tuple[float, np.ndarray]]] | None = None,
    name: str | None = None,
    sha256: str | None = None,
) -> Analysis:
    """A video file as one clip (every frame offered, paced by the file's own clock). `decoder`:
    its frames decoded elsewhere (the guard's worker, `recorded_frames`), else read here.
    `name`: the file's name as received, kept with the clip (default: the path's); `sha256`: its
    content's hash where the caller has it (else read from the file)."""
    try:
        if not path.is_file():
            raise EdgeError(Code.INPUT_NOT_FOUND, f"{path} does not exist")
        sha = sha256 or sha256_file(path)
        served = pool.get(model or settings.video.model)
        existing = store.clip_for_source(sha, served.name)
        if existing is not None:
            result = store.result(existing["result_id"])
            return Analysis(
                str(path), result=result, job_id=result.job_id if result else None, duplicate=True
            )
        frames = None if decoder is None else decoder(path)
        source = FrameSource(str(path), realtime=realtime, lossless=not realtime, frames=frames)
        summary, analyzer, elapsed = _record(settings, served, source)  # a truncated file is refused
        result_id = store_clip(
            settings,
            store,
            summary,
            served,
            analyzer,
            source="file",
            source_sha256=sha,
            study=StudyInfo(modality="US", description="video file"),
            elapsed_s=elapsed,
            original_name=name or path.name,
        )
    except EdgeError as error:
        audit_refusal(store, actor, error)
        return Analysis.refused(str(path), error)
    result = store.result(result_id)
    return Analysis(str(path), result=result, job_id=result.job_id if result else None)


def _record(
    settings: Settings, served: ServedModel, source: FrameSource
) -> tuple[ClipSummary, LiveAnalyzer, float]:
    analyzer = LiveAnalyzer(settings, served, source)
    analyzer.start_clip()
    started = time.monotonic()
    try:
        with source:
            analyzer.run(threading.Event())
        if source.stats.end_reason.startswith("cannot open"):
            raise EdgeError(Code.VIDEO_UNREADABLE, f"{source.stats.end_reason} (damaged or incomplete file?)")
        if source.stats.failure is not None:  # its frames' decoder refused, crashed or hung
            raise source.stats.failure
    except BaseException:
        if analyzer.recorder is not None:
            analyzer.recorder.discard()
            analyzer.recorder = None
        raise
    return analyzer.stop_clip(), analyzer, time.monotonic() - started


def process_cine(
    settings: Settings,
    store: Store,
    pool: ModelPool,
    job: Job,
    decoded: DecodedImage,
    data: bytes,
    frames: Iterable[tuple[float, np.ndarray]] | None = None,
) -> str:
    """The worker's path for a multi-frame DICOM (ultrasound cine): the frames become a clip.
    `frames`: already decoded (the agent's guarded decoder), else decoded here from `data`."""

    served = pool.get(job.model_name)
    source = FrameSource(
        "dicom cine", lossless=True, frames=display_frames(data) if frames is None else frames
    )
    summary, analyzer, elapsed = _record(settings, served, source)
    return store_clip(
        settings,
        store,
        summary,
        served,
        analyzer,
        source="dicom",
        source_sha256=None,
        study=decoded.study,
        elapsed_s=elapsed,
        job=job,
    )


def store_capture(settings: Settings, store: Store, analyzer: LiveAnalyzer, served: ServedModel) -> str:
    """Stop the live analyzer's recording and store it as a clip (`edge capture --record`, the
    TUI's live screen); returns the result id."""
    summary = analyzer.stop_clip()
    return store_clip(
        settings,
        store,
        summary,
        served,
        analyzer,
        source="capture",
        source_sha256=None,
        study=StudyInfo(modality="US", description="live capture"),
        elapsed_s=summary.duration_s,
    )


def store_clip(
    settings: Settings,
    store: Store,
    summary: ClipSummary,
    served: ServedModel,
    analyzer: LiveAnalyzer,
    *,
    source: str,
    source_sha256: str | None,
    study: StudyInfo,
    elapsed_s: float,
    job: Job | None = None,
    original_name: str | None = None,
) -> str:
    """Write the clip's files, then its rows in one transaction; on failure remove the files."""
    manifest = served.entry.manifest
    result_id = uuid7()
    folder = store.data_dir / "clips" / utc_now()[:10] / result_id
    written: list[Path] = []
    try:
        # Judged before anything is written: a refused clip leaves no file or folder behind.
        clip_scope = served.scope_check.judge_clip(summary.distances) if served.scope_check else None
        enforce = settings.gate.refuses_out_of_scope
        out_of_scope = served.out_of_scope(clip_scope, enforce)
        if out_of_scope is not None:
            if job is not None:
                store.fail_job(job, out_of_scope.code, out_of_scope.message, refused=True)
            raise out_of_scope
        key_frames: list[dict[str, Any]] = []
        key_pngs = [_png(key.image) for key in summary.key_frames]
        target = manifest.output.labels.index(manifest.output.positive)
        for number, key in enumerate(summary.key_frames, start=1):
            image_path = folder / f"key-{number}.png"
            _write(image_path, key_pngs[number - 1], written)
            heat_path = None
            if key.cam is not None:
                heat_path = folder / f"heat-{number}.png"
                _write(
                    heat_path,
                    heatmap_png(key.image, key.cam, target, served.spec, settings.explain.max_side),
                    written,
                )
                # What the hub renders its overlay from (edge.imaging.evidence), beside the PNG.
                _write(
                    Path(evidence_beside(str(heat_path))),
                    evidence.encode(key.cam, target, served.spec, *key.image.shape[:2]),
                    written,
                )
            key_frames.append(
                {
                    "path": _rel(store.data_dir, image_path),
                    "t": round(key.t, 3),
                    "p": round(key.probability, 5),
                    "heatmap": _rel(store.data_dir, heat_path) if heat_path else None,
                }
            )
        video_rel = None
        if summary.video_file is not None and summary.video_file.exists():
            video_path = folder / "clip.mp4"
            _write(video_path, summary.video_file.read_bytes(), written)
            summary.video_file.unlink(missing_ok=True)
            video_rel = _rel(store.data_dir, video_path)
        # The frames were scored under the profile in force; the clip is judged under it too.
        _, op_name, op, profile_id = served.calibration(settings.models.operating_point)
        finding = decide_from_probabilities(
            summary.probabilities, manifest.output.positive, op.threshold_for_clips, op_name, profile_id
        )
        latencies = analyzer.stats.latencies_ms
        record = result_record(
            served,
            finding,
            latency_ms=statistics.median(latencies) if latencies else 0.0,
            total_ms=elapsed_s * 1000,
            heatmap_path=key_frames[-1]["heatmap"] if key_frames else None,
            applicability=clip_scope.as_dict() if clip_scope else None,
        )
        clip = {
            "source": source,
            "source_sha256": source_sha256,
            "roi": list(analyzer.roi) if analyzer.roi else None,
            "frames_analysed": summary.frames_analysed,
            "frames_excluded": summary.frames_excluded,
            "duration_s": summary.duration_s,
            "aggregate": AGGREGATE,
            "series": summary.series,
            "key_frames": key_frames,
            "video_path": video_rel,
            "events": summary.events
            + [f"size changed {analyzer.stats.resizes} time(s)"] * bool(analyzer.stats.resizes),
        }
        if job is not None:
            store.complete_job(job, record, result_id, clip=clip)
        else:
            index = max(range(len(summary.key_frames)), key=lambda i: summary.key_frames[i].probability)
            best = summary.key_frames[index]
            # Tagged with its clip, so the same frames captured twice stay two clips.
            png = with_text(key_pngs[index], "edge-clip", result_id)
            key_image = NewImage(
                data=png,
                sha256=sha256_hex(png),
                format="png",
                width=best.image.shape[1],
                height=best.image.shape[0],
                study=study,
                source=source,
                original_name=original_name,
                meta={"kind": "video key frame", "roi": list(analyzer.roi) if analyzer.roi else None},
            )
            store.record_clip(key_image, record, result_id, clip, actor=source)
    except BaseException:
        for path in written:
            remove_quietly(path)
        if summary.video_file is not None:
            summary.video_file.unlink(missing_ok=True)
        raise
    log.info(
        "clip %s: %s (mean P=%.3f over %d frames)",
        result_id,
        finding.finding,
        summary.probability,
        summary.frames_analysed,
    )
    return result_id


def _png(image: np.ndarray) -> bytes:
    bgr = image[:, :, ::-1] if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise EdgeError(Code.STORE_WRITE_FAILED, "a key frame could not be encoded")
    return encoded.tobytes()


def _write(path: Path, data: bytes, written: list[Path]) -> None:
    write_atomically(path, data)
    written.append(path)


def _rel(root: Path, path: Path | None) -> str | None:
    return str(path.relative_to(root)) if path else None
