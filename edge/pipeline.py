"""The worker: how one study goes from bytes to a stored, calibrated result.

Read top to bottom, this is the flow of a study on the device:

1. read and decode the input; anything that is not an image we can read is refused with a code
   and nothing is stored (only an audit row says it happened);
2. choose the model(s) that may score it, and load them before storing anything, so that a
   missing or corrupt model refuses the input instead of leaving a job nobody can run (the
   DICOM listener, a PACS's store, keeps a well-formed instance all the same, with a refused
   job saying why it is not analysed);
3. store the file (durably) and queue one job per model, in one transaction;
4. claim a job, preprocess, infer, turn logits into a calibrated probability and a finding at
   the site's operating point;
5. store the job's new state, its result and its outbox row, in one transaction.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config import Settings
from edge.errors import DEVICE_FAILURES, Code, EdgeError
from edge.ids import uuid7
from edge.imaging import evidence
from edge.imaging.acquisition import file_moment
from edge.imaging.decode import DecodedImage, decode_bytes, read_input
from edge.imaging.decoded import DicomHeader, UndecodableDicom
from edge.imaging.dicom_changes import changed_fields
from edge.imaging.explain import heatmap_png
from edge.inference import gate, orientation
from edge.inference.model_choice import models_for
from edge.inference.pool import ModelPool, Prediction, ServedModel
from edge.inference.registry import Registry
from edge.processes import new_worker_id
from edge.results import Analysis, audit_refusal, result_record
from edge.store import Corrections, IngestOutcome, Job, NewImage, Store
from edge.store.files import remove_quietly, write_atomically
from edge.store.reads import evidence_beside
from edge.video.analysis import analyse_recording, process_cine
from edge.video.source import is_recording

log = logging.getLogger(__name__)


Decoder = Callable[[bytes, str], DecodedImage]
FrameDecoder = Callable[[bytes, str], Iterable[tuple[float, "np.ndarray"]]]
RecordingDecoder = Callable[[Path], Iterable[tuple[float, "np.ndarray"]]]
RECLAIM_EVERY_S = 5.0


@dataclass(frozen=True)
class Ingested:
    outcome: IngestOutcome
    decoded: DecodedImage | None
    """None for an instance stored without decodable pixels (`refusal` says why)."""
    decode_ms: float
    refusal: EdgeError | None = None
    """Why a stored DICOM instance is not analysed (`ingest(keep_dicom=True)` only)."""


def _looks_like_video(path: Path) -> bool:
    # A regular file only: opening a named pipe with no writer blocks for ever (found by fuzzing
    # `edge infer`); anything else is refused by `read_input` with its code.
    try:
        if not path.is_file():
            return False
        with path.open("rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return is_recording(head)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        registry: Registry | None = None,
        pool: ModelPool | None = None,
        actor: str = "cli",
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry = registry or Registry(settings.models.dir)
        self.pool = pool or ModelPool(self.registry, settings, settings.data_dir / "cache")
        self.actor = actor
        self.decoder: Decoder = decode_bytes
        """How a stored image is decoded again for its job; the agent sets its guarded decoder."""
        self.frame_decoder: FrameDecoder | None = None
        """How a cine's frames are decoded for the video path (None: in this process); the agent
        sets its guarded decoder's `frames`."""
        self.recording_decoder: RecordingDecoder | None = None
        """How a video file's frames are decoded (None: in this process); `edge infer` and the
        TUI set their guarded decoder's `recording`."""
        self.worker_id = new_worker_id()
        self._next_reclaim = 0.0
        self._unreleased: dict[str, tuple[Job, EdgeError]] = {}

    def close(self) -> None:
        self.pool.close()

    # ------------------------------------------------------------------ 1-3: input to queue

    def analyse_file(
        self,
        path: Path,
        model: str | None = None,
        source: str = "cli",
        name: str | None = None,
        sha256: str | None = None,
    ) -> list[Analysis]:
        """Ingest one file and analyse it now, in this process (what `edge infer` does). A video
        file is analysed as one clip (edge.video.analysis). `name`, `sha256`: the file's name as
        received and its content's hash, where `path` is a copy made from bytes already hashed
        (a dropped video's)."""
        if _looks_like_video(path):
            return [
                analyse_recording(
                    self.settings, self.store, self.pool, path, model, actor=self.actor,
                    decoder=self.recording_decoder, name=name, sha256=sha256,
                )
            ]  # fmt: skip
        try:
            data = read_input(path, self.settings.store.max_input_bytes)
        except EdgeError as error:
            self._audit_refusal(error)
            return [Analysis.refused(str(path), error)]
        try:
            mtime_ns: int | None = path.stat().st_mtime_ns
        except OSError:  # taken away since it was read: no file time, the rest as usual
            mtime_ns = None
        try:
            ingested = self.ingest(
                data, path.name, source, model=model, load_models=True, file_mtime_ns=mtime_ns
            )
        except EdgeError as error:  # already audited
            return [Analysis.refused(str(path), error)]
        outcome = ingested.outcome
        assert ingested.decoded is not None  # only the DICOM listener keeps what it cannot decode
        decoded = ingested.decoded
        ids = {"study_id": outcome.study_id, "image_id": outcome.image_id}
        return [
            self._analyse_job(str(path), job_id, decoded, ingested.decode_ms, outcome.duplicate, ids)
            for job_id in outcome.job_ids
        ]

    def ingest(
        self,
        data: bytes,
        name: str,
        source: str,
        *,
        model: str | None = None,
        decoder: Decoder | None = None,
        load_models: bool = False,
        keep_dicom: bool = False,
        file_mtime_ns: int | None = None,
    ) -> Ingested:
        """Steps 1-3 for any source: decode (guarded, when a decoder is given), route, store and
        queue. A refusal is audited (code only) and raised; nothing is stored for it.

        `load_models` opens each model before storing (an interactive caller wants the answer
        now); the agent's sources only check that the models exist and leave loading to the
        worker, which ends the job with a code if a model cannot be loaded.

        `keep_dicom` is a PACS's store (the DICOM listener): a well-formed DICOM instance that
        will not be analysed (no model accepts it, or its pixels are in an encoding this build
        cannot decode) is stored all the same, with a refused job saying why
        (`Ingested.refusal`); only bytes that are not a readable DICOM object are refused.
        A SOP Instance UID already stored with other content is a correction of the same
        patient's instance (`_corrections`) or another object reusing the UID, stored alongside
        and logged as INSTANCE_UID_COLLISION (`Store.ingest`).
        """
        try:
            started = time.perf_counter()
            try:
                decoded = (decoder or self.decoder)(data, name)
            except UndecodableDicom as refusal:
                if not keep_dicom:
                    raise
                return self._keep_unanalysed(refusal.header, data, name, source, refusal)
            decode_ms = (time.perf_counter() - started) * 1000
            try:
                models = [model] if model else self.route(decoded)
                for model_name in models:
                    if load_models:
                        self.pool.get(model_name)
                    else:
                        self.registry.get(model_name)
            except EdgeError as refusal:  # no model, or none that can be opened
                if not (keep_dicom and decoded.format == "dicom"):
                    raise
                return self._keep_unanalysed(decoded, data, name, source, refusal)
            if file_mtime_ns is not None and decoded.format != "dicom":  # no header to say when
                decoded = replace(decoded, meta={**decoded.meta, **file_moment(file_mtime_ns)})
            outcome = self.store.ingest(
                self.new_image(decoded, data, source, name),
                models,
                actor=source,
                corrections=self._corrections(keep_dicom),
            )
            self._note_collision(outcome)
        except sqlite3.Error as exc:
            error = EdgeError(Code.STORE_WRITE_FAILED, f"the input could not be stored: {exc}")
            self._audit_refusal(error)
            raise error from exc
        except EdgeError as error:
            self._audit_refusal(error)
            raise
        return Ingested(outcome, decoded, decode_ms)

    def _keep_unanalysed(
        self, image: DecodedImage | DicomHeader, data: bytes, name: str, source: str, refusal: EdgeError
    ) -> Ingested:
        """Store a DICOM instance no model will analyse, with its refusal as a refused job."""
        outcome = self.store.ingest(
            self.new_image(image, data, source, name),
            [],
            actor=source,
            refusal=(refusal.code, refusal.message),
            corrections=self._corrections(keep_dicom=True),
        )
        self._note_collision(outcome)
        log.info("stored, not analysed: %s", refusal.one_line())
        return Ingested(outcome, image if isinstance(image, DecodedImage) else None, 0.0, refusal)

    @staticmethod
    def _corrections(keep_dicom: bool) -> Corrections:
        """Issue 14: an instance stored before that arrives with other content from the same
        patient and study is a correction, stored as a new version and analysed anew when
        something an analysis reads changed. Through the DICOM listener only header corrections:
        DICOM gives an instance whose pixels change a new UID, so there changed pixels under an
        old UID are another object (issue 17's hostile collision), stored alongside."""
        return Corrections(changed_fields, pixels=not keep_dicom)

    @staticmethod
    def _note_collision(outcome: IngestOutcome) -> None:
        """Another object under a stored SOP Instance UID was kept alongside (audited by the
        store in the same transaction): one coded line for whoever reads the log."""
        if outcome.collides_with is not None:
            collision = EdgeError(
                Code.INSTANCE_UID_COLLISION,
                f"image {outcome.image_id} reuses the SOP Instance UID of image {outcome.collides_with}"
                f" with other content: both are kept, the new one without the UID",
            )
            log.warning("%s", collision.one_line())

    def _audit_refusal(self, error: EdgeError) -> None:
        audit_refusal(self.store, self.actor, error)

    def route(self, decoded: DecodedImage) -> list[str]:
        """The model(s) for an input (`edge.inference.model_choice.models_for`)."""
        return models_for(decoded, self.settings, self.registry, self.pool)

    @staticmethod
    def new_image(
        decoded: DecodedImage | DicomHeader, data: bytes, source: str, name: str | None
    ) -> NewImage:
        return NewImage(
            data=data,
            sha256=decoded.sha256,
            format=decoded.format,
            width=decoded.width,
            height=decoded.height,
            frames=decoded.frames,
            study=decoded.study,
            source=source,
            sop_instance_uid=decoded.sop_instance_uid,
            original_name=name,
            meta=decoded.meta,
        )

    def analyse_job(self, job_id: str) -> Analysis:
        """Analyse one queued job now, in this process (a re-run); its image is read from the
        store. No code and no result: another worker (an agent that just started) took it."""
        source = f"job {job_id}"
        job = self._claim(job_id)
        if job is None:
            return Analysis(source, job_id=job_id)
        try:
            self.process(job)
        except EdgeError as error:
            return Analysis.refused(source, error, job_id=job_id)
        return Analysis(source, result=self.store.result_for_job(job_id), job_id=job_id)

    def _claim(self, job_id: str) -> Job | None:
        lease_s = self.settings.worker.lease_s
        job = self.store.claim_job(self.worker_id, job_id, lease_s=lease_s)
        if job is None and self._reclaim(job_id)[0]:
            # Its holder is gone or its lease ran out: this process takes the job over.
            job = self.store.claim_job(self.worker_id, job_id, lease_s=lease_s)
        return job

    def _analyse_job(
        self,
        source: str,
        job_id: str,
        decoded: DecodedImage,
        decode_ms: float,
        duplicate: bool,
        ids: dict[str, Any],
    ) -> Analysis:
        existing = self.store.result_for_job(job_id)
        if existing is not None:
            return Analysis(source, result=existing, job_id=job_id, duplicate=True, **ids)
        job = self._claim(job_id)
        if job is None:
            row = self.store.job(job_id) or {}
            if row.get("error_code"):
                error = EdgeError(Code(row["error_code"]), row.get("error_message") or "")
                return Analysis.refused(source, error, job_id=job_id, duplicate=duplicate, **ids)
            error = EdgeError(Code.INFERENCE_FAILED, f"job is {row.get('state', 'missing')} elsewhere")
            return Analysis.refused(source, error, job_id=job_id, duplicate=duplicate, **ids)
        try:
            result_id = self.process(job, decoded, decode_ms)
        except EdgeError as error:
            return Analysis.refused(source, error, job_id=job_id, duplicate=duplicate, **ids)
        result = self.store.result_for_job(job_id)
        assert result is not None
        assert result.id == result_id
        return Analysis(source, result=result, job_id=job_id, duplicate=duplicate, **ids)

    # ------------------------------------------------------------------ 4-5: job to result

    def run_once(self) -> bool:
        """Claim and process the next queued job; False when the queue is empty. A full disk
        is raised (the agent backs off and frees its reserve); other failures end the job."""
        self._release_held()
        self._reclaim_stale_jobs()
        job = self.store.claim_job(self.worker_id, lease_s=self.settings.worker.lease_s)
        if job is None:
            return False
        try:
            self.process(job)
        except EdgeError as error:
            if error.code is Code.DISK_FULL:
                raise
            log.warning("job %s ended without a result: %s", job.id, error.one_line())
        return True

    def _reclaim(self, job_id: str | None = None) -> tuple[int, int]:
        limits = self.settings.worker
        return self.store.leases.reclaim(limits.max_attempts, limits.max_restarts, job_id=job_id)

    def _reclaim_stale_jobs(self) -> None:
        """Leases: jobs whose holder died (this agent's previous run, an `edge infer` killed
        mid-job) or went silent go back to the queue, or end as JOB_ABANDONED; looked for at
        most every few seconds (one indexed query when there are none)."""
        now = time.monotonic()
        if now < self._next_reclaim:
            return
        self._next_reclaim = now + RECLAIM_EVERY_S
        requeued, abandoned = self._reclaim()
        if requeued:
            log.warning("%d job(s) whose worker died or went silent are queued again", requeued)
        if abandoned:
            log.error("%d job(s) given up after repeated attempts (JOB_ABANDONED)", abandoned)

    def process(self, job: Job, decoded: DecodedImage | None = None, decode_ms: float = 0.0) -> str:
        """Score one claimed job and store its result. A refusal or failure of the job ends it
        with its code; a failure of the device (full disk, store error) gives it back to the
        queue; a bug ends it as INFERENCE_FAILED. Whatever happens, the job is not left running."""
        try:
            return self._score(job, decoded, decode_ms)
        except EdgeError as error:
            self._end_without_result(job, error)
            raise
        except (KeyboardInterrupt, SystemExit):
            # The process is being stopped, not failed by its input: the job goes back to the
            # queue now, its attempt not counted (left running, its holder's death would count).
            with contextlib.suppress(EdgeError, sqlite3.Error):
                self.store.leases.release(job, Code.JOB_INTERRUPTED, "stopped before a result was stored")
            raise
        except Exception as exc:  # a bug must end the job, not wedge the queue
            log.exception("job %s failed unexpectedly", job.id)
            failure = EdgeError(Code.INFERENCE_FAILED, f"internal error: {type(exc).__name__}")
            self._end_without_result(job, failure)
            raise failure from exc

    def _end_without_result(self, job: Job, error: EdgeError) -> None:
        try:
            if error.code in DEVICE_FAILURES:
                if self.store.leases.release(job, error.code, error.message):
                    log.warning("job %s back in the queue: %s", job.id, error.one_line())
                return
            row = self.store.job(job.id) or {}
            if row.get("state") == "running" and row.get("worker") == job.worker:
                self.store.fail_job(job, error.code, error.message)
        except (EdgeError, sqlite3.Error) as exc:
            # The store cannot write either (the disk is still full): released by the next
            # `run_once` that can write, or by anyone once its lease has run out.
            log.warning("job %s stays claimed for now: %s", job.id, exc)
            self._unreleased[job.id] = (job, error)

    def _release_held(self) -> None:
        """Give back the jobs a full disk kept us from releasing, now that we may write again."""
        for job_id, (job, error) in list(self._unreleased.items()):
            try:
                self.store.leases.release(job, error.code, error.message)
            except (EdgeError, sqlite3.Error):
                return  # still cannot write; the next turn tries again
            del self._unreleased[job_id]

    def _score(self, job: Job, decoded: DecodedImage | None, decode_ms: float) -> str:
        started = time.perf_counter()
        data: bytes | None = None
        if decoded is None:
            path = self.store.image_file(job.image_id)
            data = read_input(path, self.settings.store.max_input_bytes)
            decoded = self.decoder(data, path.name)
        model = self.pool.get(job.model_name)
        verdict = gate.check(decoded, model.entry.manifest)
        if self.settings.gate.enabled and not verdict.passed:
            refusal = gate.refusal_in_service(verdict, lambda: self._out_of_scope(model, decoded))
            self.store.fail_job(job, refusal.code, refusal.message, refused=True)
            raise refusal
        if decoded.frames > 1:  # a cine: the frames go to the video path, as one clip
            if data is None:  # decoded by the caller (`edge infer`): read the file once, here
                data = read_input(self.store.image_file(job.image_id), self.settings.store.max_input_bytes)
            frames = None if self.frame_decoder is None else self.frame_decoder(data, f"job {job.id}")
            return process_cine(self.settings, self.store, self.pool, job, decoded, data, frames)
        point = self.settings.models.operating_point
        given = model.predict([decoded.pixels], point)[0]
        enforce = self.settings.gate.refuses_out_of_scope
        prediction, out_of_scope = orientation.judged(model, decoded.pixels, given, enforce, point)
        if prediction is not given:
            log.info("job %s: read with the flat frame along its edges filled from the film's edge", job.id)
        if out_of_scope is not None:  # no finding, even with the model forced: it was not made for this
            self.store.fail_job(job, out_of_scope.code, out_of_scope.message, refused=True)
            raise out_of_scope
        # The lease: still ours after inference (renewed for the writes), or given to another
        # worker because this one took too long, in which case its answer stands, not ours.
        if not self.store.leases.renew(job, self.settings.worker.lease_s):
            raise EdgeError(Code.JOB_LEASE_LOST, f"job {job.id} was given to another worker (lease ended)")
        finding = prediction.finding
        result_id = uuid7()
        heatmap = self._write_heatmap(result_id, model, decoded, prediction)
        record = result_record(
            model,
            finding,
            latency_ms=prediction.latency_ms,
            total_ms=decode_ms + (time.perf_counter() - started) * 1000,
            heatmap_path=str(heatmap.relative_to(self.store.data_dir)) if heatmap else None,
            quality=verdict.quality.as_dict(),
            applicability=prediction.scope.as_dict() if prediction.scope else None,
        )
        try:
            self.store.complete_job(job, record, result_id)
        except BaseException as exc:
            if heatmap is not None:
                remove_quietly(heatmap)
                remove_quietly(Path(evidence_beside(str(heatmap))))
            if isinstance(exc, sqlite3.Error):
                raise EdgeError(Code.STORE_WRITE_FAILED, f"result not stored: {exc}") from exc
            raise
        log.info(
            "job %s: %s (p=%.3f, %s/%s)",
            job.id,
            finding.finding,
            finding.probability,
            model.backend,
            model.precision,
        )
        return result_id

    def _out_of_scope(self, model: ServedModel, decoded: DecodedImage) -> EdgeError | None:
        """The applicability check's refusal of an image the gate refused for its quality
        (`gate.refusal_in_service`), where the site enforces it."""
        if not self.settings.gate.refuses_out_of_scope or model.scope_check is None:
            return None
        return model.out_of_scope(model.predict([decoded.pixels])[0].scope, True)

    def _write_heatmap(
        self, result_id: str, model: ServedModel, decoded: DecodedImage, prediction: Prediction
    ) -> Path | None:
        """The CAM overlay (for the technician's screen and the PACS) and, beside it, the evidence
        grid the hub renders its own overlay from (a few hundred bytes on the wire instead of the
        PNG), both made durable before the result row that names them."""
        cam_name = model.entry.manifest.output.cam
        if not self.settings.explain.heatmaps or cam_name is None or cam_name not in prediction.outputs:
            return None
        target = model.entry.manifest.output.labels.index(prediction.finding.positive)
        try:
            cam = prediction.outputs[cam_name]
            data = heatmap_png(decoded.pixels, cam, target, model.spec, self.settings.explain.max_side)
            grid = evidence.encode(cam, target, model.spec, *decoded.pixels.shape[:2])
        except (ValueError, cv2.error) as exc:  # a result without its picture beats no result
            log.warning("job %s: no heatmap: %s", result_id, exc)
            return None
        path = self.store.heatmap_file(result_id)
        write_atomically(Path(evidence_beside(str(path))), grid)
        write_atomically(path, data)
        return path
