"""Results back into the PACS: the exporter's queue, one round of it, and its loop.

Durable and exactly once by SOP Instance UID, with the same discipline as sync:

1. **Queue.** A round first gives every result without an export row its rows (`sr`, and
   `heatmap`), in one transaction, each with the SOP Instance UID made from the result id
   (`sr.instance_uid`). The pair (result, kind) is unique: a crash or a second exporter cannot
   queue twice. Results of PNG/JPEG inputs get `skipped` rows with the reason (no study in a PACS).
   Nothing in the worker changes: the result's own transaction stays as it was, and a result is
   queued a few seconds after it commits (the exporter scans for it).
2. **Send.** Due rows are built (deterministically: same UID, same bytes) and sent by C-STORE
   over one association; each answer commits its own row change. A row becomes `sent` only
   after the PACS answered that it holds the instance.
3. **Crash.** A kill at any instant leaves each row `pending` or `sent`. A pending row whose
   instance reached the PACS before the kill is sent again with the same UID, which the PACS
   keeps once ("already have it" counts as done). Nothing is lost (rows are durable before any
   send), nothing is stored twice (the receiver is idempotent by UID).

Where it runs: `edge pacs run`, its own process (systemd/edge-pacs.service), like the sync agent:
the PACS is another system on the network whose hangs and timeouts must never stall inference,
and systemd restarts and watches it on its own. `run_loop` takes a stop Event, so the agent can
also run it as a thread; one exporter per data directory either way (its flock).
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from edge import systemd
from edge.clock import PLAUSIBLE_FROM, still_failing, utc_after, utc_now
from edge.config import Settings
from edge.errors import EdgeError
from edge.interop import cstore, sr
from edge.processes import Doorbell, InstanceLock, holder, ring, this_host
from edge.store import Store, StoredResult
from edge.store.pacs import NewExport, PacsExport, PacsExports

log = logging.getLogger(__name__)

BATCH = 50
NOT_DICOM = "not a DICOM input (PNG/JPEG): it has no study in a PACS"
NO_HEATMAP = "the result has no heatmap"
HEATMAPS_OFF = "heatmaps are not sent ([pacs] heatmaps = false)"
TOO_OLD = "older than [pacs] backfill_days when the exporter first saw it"
SOURCE_GONE = "the source image was purged before export"
RESULT_GONE = "the result was deleted before export"
UID_COLLISION = "its SOP Instance UID belongs to another stored object (INSTANCE_UID_COLLISION)"


def exporter_lock(settings: Settings) -> Path:
    return settings.data_dir / "pacs" / "exporter.lock"


def doorbell(settings: Settings) -> Path:
    return settings.data_dir / "pacs" / "wake"


def exporter_running(settings: Settings) -> dict[str, Any] | None:
    """The running exporter (pid, host, started), or None."""
    return holder(exporter_lock(settings))


def request_send_now(settings: Settings) -> bool:
    """Wake a running exporter; False when none runs (then send in-process)."""
    return exporter_running(settings) is not None and ring(doorbell(settings))


class _SourceGone(Exception):
    pass


class _WaitForEarlier(Exception):
    """A report that replaces one still waiting to go: built after it."""


class PacsExporter:
    """One data directory's exporter: `run_round` queues new results and sends what is due."""

    def __init__(
        self, settings: Settings, store: Store, *, on_progress: Callable[[], None] | None = None
    ) -> None:
        self.settings = settings
        self.config = settings.pacs
        self.store = store
        self.exports = PacsExports(store.writer)
        self.provenance = sr.Provenance.for_site(settings.site, f"{this_host()}:{settings.data_dir}")
        self.on_progress = on_progress or (lambda: None)

    # ------------------------------------------------------------------ 1: queue

    def queue_new(self, limit: int = 500) -> int:
        """Export rows for results that have none yet (one transaction); how many were added."""
        horizon = utc_after(-self.config.backfill_days * 86400)
        new: list[NewExport] = []
        for row in self.exports.results_without_exports(limit):
            skipped = (
                NOT_DICOM
                if row["format"] != "dicom"
                else TOO_OLD
                if PLAUSIBLE_FROM <= row["created_at"] < horizon  # earlier: a clock not yet set
                else SOURCE_GONE
                if row["purged_at"]
                else UID_COLLISION
                if row.get("uid_collision")
                else None
            )
            heatmap_skipped = skipped or (
                HEATMAPS_OFF if not self.config.heatmaps else NO_HEATMAP if not row["heatmap_path"] else None
            )
            for kind, why in (("sr", skipped), ("heatmap", heatmap_skipped)):
                uid = None if why else sr.instance_uid(row["result_id"], kind)
                new.append(NewExport(row["result_id"], row["image_id"], kind, uid, why))
        return self.exports.queue(new) if new else 0

    # ------------------------------------------------------------------ 2: send

    def send_due(self) -> int:
        """Send what is due over one association; raises DestinationUnavailable when the PACS
        cannot be reached (the rows stay as they are). Returns how many the PACS now holds."""
        due = self.exports.due(BATCH, self.config.max_backoff_s)
        built: list[tuple[PacsExport, Dataset]] = []
        headers: dict[str, Dataset] = {}
        for export in due:
            try:
                built.append((export, self._build(export, headers)))
            except _SourceGone as gone:
                self.exports.skip(export.id, str(gone))
            except _WaitForEarlier:
                continue  # built once the earlier report it replaces went (next round, or next call)
            except (OSError, ValueError, AttributeError, TypeError, InvalidDicomError) as exc:
                log.error("pacs: cannot build %s of result %s: %s", export.kind, export.result_id, exc)
                # Not the PACS's fault, and no retry mends it: it ends `failed` like a refusal
                # (it was retried for ever, the device saying nothing), sent again on demand
                # (`edge pacs send-now --retry-failed`) once the software can build it.
                self._attempt(export, f"cannot build: {exc}", None, final=True)
        if not built:
            return 0
        held = 0
        where = cstore.destination(self.config)
        with cstore.Sender(self.config, {ds.SOPClassUID for _, ds in built}) as sender:
            for export, dataset in built:
                answer = sender.send(dataset)
                self.on_progress()
                if answer.held:
                    self.exports.mark_sent(export.id, answer.hex or "", where)
                    held += 1
                    continue
                if answer.status is None:
                    self._attempt(export, f"no answer from {where}: {answer.comment}", None)
                    # Some PACS (Orthanc 1.10) drop the association after a store from a caller
                    # they do not know: the network looked at fault.
                    raise cstore.DestinationUnavailable(
                        f"{where} stopped answering: {answer.comment}; if it does so after every"
                        f" store, check that it knows this device's AE title {self.config.calling_ae}"
                        " ([pacs] calling_ae) and may store from it"
                    )
                comment = f" ({answer.comment})" if answer.comment else ""
                self._attempt(export, f"{where} refused it with {answer.hex}{comment}", answer.hex)
        return held

    def _attempt(self, export: PacsExport, error: str, status: str | None, *, final: bool = False) -> None:
        """A retry later, with exponential backoff; refusals (a status) and objects that could
        not be built (`final`) end in `failed` after `max_attempts`."""
        attempts = export.attempts + 1
        delay = min(self.config.max_backoff_s, self.config.interval_s * 2.0**attempts)
        give_up = (status is not None or final) and attempts >= self.config.max_attempts
        log.warning(
            "pacs: %s %s of result %s: %s", export.kind, export.sop_instance_uid, export.result_id, error
        )
        self.exports.mark_attempt(
            export.id, error, utc_after(delay * random.uniform(0.5, 1.0)), status=status, give_up=give_up
        )

    def _build(self, export: PacsExport, headers: dict[str, Dataset]) -> Dataset:
        result = self.store.result(export.result_id)
        if result is None:
            raise _SourceGone(RESULT_GONE)
        header = headers.get(export.image_id)
        if header is None:
            header = headers[export.image_id] = self._source_header(export.image_id)
        if export.kind == "sr":
            replaced = self.exports.reports_replaced_by(result.id)
            # Only reports the PACS took are named (a failed one never arrived: the reference
            # dangled); while one still waits, this one waits for it, so what it names is
            # settled before it is built (a rebuild on retry is the same instance).
            if any(state == "pending" for *_, state in replaced):
                raise _WaitForEarlier(export.result_id)
            named = [(uid, model, version) for uid, model, version, state in replaced if state == "sent"]
            dataset: Dataset = sr.build_sr(result, header, self.provenance, named)
        else:
            dataset = sr.build_heatmap(result, header, self._heatmap(result))
        if dataset.SOPInstanceUID != export.sop_instance_uid:  # a UID must never change
            raise ValueError(f"built {dataset.SOPInstanceUID}, queued as {export.sop_instance_uid}")
        return dataset

    def _source_header(self, image_id: str) -> Dataset:
        image = self.store.image(image_id)
        if image is None or image["purged_at"]:
            raise _SourceGone(SOURCE_GONE)
        path = self.store.data_dir / image["path"]
        if not path.exists():
            raise _SourceGone(SOURCE_GONE)
        return sr.reference_header(pydicom.dcmread(path, stop_before_pixels=True))

    def _heatmap(self, result: StoredResult) -> np.ndarray:
        path = self.store.data_dir / (result.heatmap_path or "")
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if result.heatmap_path else None
        if bgr is None:
            raise _SourceGone(NO_HEATMAP)
        return np.ascontiguousarray(bgr[:, :, ::-1])

    # ------------------------------------------------------------------ a round

    def run_round(self) -> bool:
        """Queue, then send until nothing is due; its outcome recorded for `edge pacs status`.
        True when the PACS took everything that was due."""
        try:
            self.queue_new()
            while self.send_due():
                pass
        except cstore.DestinationUnavailable as exc:
            log.warning("pacs: %s", exc)
            self.exports.set_state(last_error=str(exc)[:300], last_error_at=utc_now(), failing=True)
            return False
        self.exports.set_state(last_round=utc_now(), failing=False)
        if self.exports.due(1, self.config.max_backoff_s):  # refused objects wait for their next attempt
            return True
        self.exports.set_state(last_success=utc_now())
        return True


def run_loop(
    settings: Settings,
    stop: threading.Event,
    bell: Doorbell | None = None,
    pet: Callable[[], None] | None = None,
) -> None:
    """Rounds until `stop` is set: every `interval_s`, sooner when rung, backing off
    exponentially (with jitter) while the PACS cannot be reached. Usable as a thread."""
    failures = 0
    pet = pet or (lambda: None)
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        exporter = PacsExporter(settings, store, on_progress=pet)
        while not stop.is_set():
            try:
                ok = exporter.run_round()
            except EdgeError as error:  # a full disk, a store error: wait and try again
                log.error("pacs: %s", error.one_line())
                ok = False
            pet()
            failures = 0 if ok else failures + 1
            delay = (
                settings.pacs.interval_s
                if ok
                else min(settings.pacs.max_backoff_s, settings.pacs.interval_s * 2.0**failures)
            )
            deadline = time.monotonic() + delay * random.uniform(0.5, 1.0)
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if bell is not None and bell.wait(min(left, 5.0)):
                    break
                if bell is None:
                    stop.wait(min(left, 5.0))
                pet()


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    """`edge pacs run`: the exporter as its own process (edge-pacs.service)."""
    if not settings.pacs.enabled:
        log.error("PACS export is disabled: set [pacs] enabled = true and host in the settings")
        return 2
    stop = stop or threading.Event()
    lock = InstanceLock(exporter_lock(settings), "PACS exporter (`edge pacs run`)")
    try:
        lock.acquire()
    except EdgeError as error:
        log.error("%s", error.one_line())
        return 1
    bell = Doorbell(doorbell(settings))

    def halt(*_: object) -> None:
        stop.set()
        ring(bell.path)

    signal.signal(signal.SIGTERM, halt)
    signal.signal(signal.SIGINT, halt)
    try:
        bell.listen()
        log.info("PACS exporter to %s running", cstore.destination(settings.pacs))
        systemd.notify(f"READY=1\nSTATUS=exporting to {cstore.destination(settings.pacs)}")
        run_loop(settings, stop, bell, _petter(systemd.watchdog_interval()))
        systemd.notify("STOPPING=1")
        return 0
    finally:
        bell.close()
        lock.release()


def _petter(interval: float | None) -> Callable[[], None]:
    """WATCHDOG=1 at most every interval/4: pets come between answered objects and while waiting,
    so a C-STORE hung past its timeout stops them."""
    last = [0.0]

    def pet() -> None:
        now = time.monotonic()
        if interval is not None and now - last[0] >= interval / 4:
            systemd.notify("WATCHDOG=1")
            last[0] = now

    return pet


def pacs_status(settings: Settings, store: Store) -> dict[str, Any]:
    """For `edge pacs status` and `edge doctor`: disabled / up to date / sending / failing."""
    exports = PacsExports(store.writer)
    counts = exports.counts()
    state = exports.state()
    failing = still_failing(state, "last_round")
    if not settings.pacs.enabled:
        summary = "disabled"
    elif failing:
        summary = "unreachable"
    elif counts.get("pending"):
        summary = "sending"
    else:
        summary = "up to date"
    oldest = exports.oldest_pending()
    return {
        "state": summary,
        "destination": cstore.destination(settings.pacs) if settings.pacs.host else None,
        "exporter": exporter_running(settings),
        "counts": {key: counts.get(key, 0) for key in ("pending", "sent", "skipped", "failed")},
        "oldest_pending": oldest,
        "oldest_pending_age_s": _age_s(oldest),
        "skipped": exports.skip_reasons(),
        "failed": [
            {"result_id": e.result_id, "kind": e.kind, "status": e.status, "reason": e.reason}
            for e in exports.recent("failed")
        ],
        # Waiting after an attempt that did not go through, and why: "sending, 2 waiting" said
        # nothing of objects retried for an hour.
        "retrying": [
            {"result_id": e.result_id, "kind": e.kind, "attempts": e.attempts, "error": e.last_error}
            for e in exports.recent("pending", 20)
            if e.attempts
        ][:5],
        "last_success": state.get("last_success"),
        "last_error": state.get("last_error") if failing else None,
        "last_error_at": state.get("last_error_at"),
    }


def _age_s(moment: str | None) -> float | None:
    if not moment:
        return None
    then = datetime.strptime(moment[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    return round((datetime.now(timezone.utc) - then) / timedelta(seconds=1), 1)
