"""`edge run`: the agent. One process runs the enabled ingest sources and the worker.

Threads: the worker (claims queued jobs and scores them; every few seconds it also returns jobs
whose holder died or whose lease ran out to the queue, `Pipeline.run_once`), the drop-folder
watcher, pynetdicom's association threads for the DICOM listener, a maintenance thread (disk
guard, reserve, orphan sweep, WAL checkpoint, retention, agent.json) and, under systemd, the
watchdog. Start-up: take the data directory's agent lock (a second agent is refused, naming the
first), migrate the store, sweep orphaned files, open every model (a TensorRT engine may be
built now: STATUS says so), then READY=1 and the first maintenance tick.
SIGTERM or SIGINT: STOPPING=1, the sources stop first, the worker finishes the job in hand, and
the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from edge import systemd
from edge.config import Settings
from edge.device import Device
from edge.errors import MODEL_UNAVAILABLE, Code, EdgeError
from edge.inference.pool import model_problem
from edge.inference.registry import Registry
from edge.ingest.guard import GuardedDecoder
from edge.operations import health, housekeeping, storage_encryption
from edge.processes import InstanceLock
from edge.store import Store
from edge.store.files import write_atomically
from edge.sync.releases import recover_installs

log = logging.getLogger(__name__)
MAINTENANCE_S = 30.0
CHECKPOINT_EVERY_S = 600.0
RETENTION_EVERY_S = 3600.0
MODEL_RETRY_EVERY_S = 300.0
WATCH_RETRY_S = 60.0
SWEEP_EVERY_S = 600.0


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ready = threading.Event()
        self.heartbeat = systemd.Heartbeat()
        self.listener: Any = None
        self.started = datetime.now(timezone.utc)
        self.jobs_done = 0
        self.worker_ready = threading.Event()
        self.failed = False
        self._disk_warned = False
        self._threads: list[threading.Thread] = []
        self.source_problems: dict[str, str] = {}
        """A source that cannot work now, by name, and why (in agent.json: `edge status`, doctor)."""

    # ------------------------------------------------------------------ disk guard

    def accepting(self) -> tuple[bool, str]:
        state = housekeeping.disk_state(self.settings)
        return state.accepting, state.reason

    # ------------------------------------------------------------------ threads

    def _work(self, decoder: GuardedDecoder) -> None:
        """The worker thread: its own store connection, models opened before READY. A job whose
        image is read back from the store is decoded by the guarded decoder too (issue 17: the
        worker decoded it again in the agent's own process, unbounded)."""
        device = None
        try:
            device = Device(self.settings, actor="agent")
            device.pipeline.decoder = decoder.decode
            device.pipeline.frame_decoder = decoder.frames
            self._warm_up(device)
            self.worker_ready.set()
            while not self.stop.is_set():
                self.heartbeat.beat()
                try:
                    worked = device.pipeline.run_once()
                except EdgeError as error:  # the store itself failed (disk full, I/O error)
                    log.error("worker: %s", error.one_line())
                    if error.code is Code.DISK_FULL:
                        housekeeping.release_reserve(self.settings)
                    worked = False
                    self.stop.wait(self.settings.worker.poll_s)
                if worked:
                    self.jobs_done += 1
                else:
                    self.wake.wait(self.settings.worker.poll_s)
                    self.wake.clear()
        except BaseException:
            # A dead worker must not leave a live-looking agent: stop, and exit non-zero so
            # systemd restarts us.
            log.exception("the worker died")
            self.failed = True
            self.stop.set()
        finally:
            if device is not None:
                device.close()

    def _watch(self, decoder: GuardedDecoder) -> None:
        """The drop folder; one whose folders cannot be made (a file where the inbox should be,
        a mount missing) is said, coded, and tried again: the thread died with a traceback while
        the agent looked healthy and nothing was ever taken (an outside-style check)."""
        from edge.ingest.watch import DropFolder

        said = None
        with Device(self.settings, actor="watch") as device:
            device.pipeline.recording_decoder = decoder.recording  # a dropped video's frames
            while not self.stop.is_set():
                try:
                    folder = DropFolder(
                        self.settings,
                        device.pipeline,
                        decoder.decode,
                        on_queued=self.wake.set,
                        accepting=self.accepting,
                    )
                except (OSError, EdgeError) as exc:
                    why = exc.one_line() if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
                    self.source_problems["watch"] = (
                        f"the drop folder {self.settings.inbox} cannot be used ({why}): files dropped"
                        f" there are not taken; fix the folder or [watch] inbox (tried again every"
                        f" {WATCH_RETRY_S:.0f} s)"
                    )
                    if why != said:
                        log.error("%s", self.source_problems["watch"])
                        said = why
                    self.stop.wait(WATCH_RETRY_S)
                    continue
                if said is not None:
                    log.info("the drop folder %s can be used again", self.settings.inbox)
                self.source_problems.pop("watch", None)
                folder.run(self.stop)
                return

    def _listen(self, decoder: GuardedDecoder) -> bool:
        """Start the DICOM listener; False, the problem said and shown in `edge status` and
        doctor, when its port cannot be opened (another program holds it): the agent died
        with a traceback and systemd restarted it every few seconds (an outside-style check)."""
        from edge.ingest.dicom_listener import DicomListener

        config = self.settings.dicom
        listener = DicomListener(
            self.settings,
            lambda: Device(self.settings, actor="dicom").pipeline,  # closed by the listener
            decoder.decode,
            on_queued=self.wake.set,
            accepting=self.accepting,
        )
        try:
            listener.start()
        except OSError as exc:
            problem = (
                f"the DICOM listener cannot open {config.bind}:{config.port}"
                f" ({exc.strerror or exc}): another program holds it (ss -ltnp | grep :{config.port})"
                f" or [dicom] port is wrong; modalities cannot send here (tried again every"
                f" {WATCH_RETRY_S:.0f} s)"
            )
            if self.source_problems.get("dicom") != problem:
                log.error("%s", problem)
            self.source_problems["dicom"] = problem
            return False
        if self.source_problems.pop("dicom", None) is not None:
            log.info("the DICOM listener is open on port %d again", config.port)
        self.listener = listener
        return True

    def _listen_later(self, decoder: GuardedDecoder) -> None:
        while not self.stop.wait(WATCH_RETRY_S):
            if self._listen(decoder):
                return

    def _maintain(self) -> None:
        while not self.ready.wait(1.0):  # agent.json says "running" only once the sources are up
            if self.stop.is_set():
                return
        store = Store(self.settings.data_dir, busy_timeout_ms=self.settings.store.busy_timeout_ms)
        # (every s, task): each runs when its period has passed since it last ran; the first
        # two run on every tick, the first tick right after start. (Stale jobs are reclaimed by
        # the worker itself, `Pipeline.run_once`.)
        tasks: list[tuple[float, Callable[[Store], object]]] = [
            (0.0, lambda _: self._guard_disk()),
            (0.0, self._write_agent_file),
            (SWEEP_EVERY_S, housekeeping.sweep_orphans),
            (CHECKPOINT_EVERY_S, lambda store: store.checkpoint()),
            (RETENTION_EVERY_S, self._purge),
            (MODEL_RETRY_EVERY_S, self._retry_model_failures),
        ]
        last = [time.monotonic()] * len(tasks)
        try:
            while True:
                for index, (every, task) in enumerate(tasks):
                    now = time.monotonic()
                    if every and now - last[index] < every:
                        continue
                    last[index] = now
                    try:
                        task(store)
                    except (EdgeError, sqlite3.Error, OSError) as error:
                        text = error.one_line() if isinstance(error, EdgeError) else repr(error)
                        log.error("maintenance: %s", text)
                if self.stop.wait(MAINTENANCE_S):
                    return
        finally:
            store.close()

    def _guard_disk(self) -> None:
        state = housekeeping.disk_state(self.settings)
        if state.warning and not self._disk_warned:
            log.warning("disk: %s", state.reason)
        self._disk_warned = state.warning
        if state.accepting:
            housekeeping.ensure_reserve(self.settings)

    def _retry_model_failures(self, store: Store) -> None:
        """Give back to the queue the jobs that failed because their model could not be opened
        (a damaged file), once it can: a DICOM study so failed stayed failed after the model was
        reinstalled, its modality long since told it was stored (an outside-style check)."""
        registry = Registry(self.settings.models.dir)
        # Each claim counts: a job a model that looks whole (checksums off) still fails is given
        # back until it was claimed max_attempts times, not every 5 minutes for ever.
        limit = self.settings.worker.max_attempts
        for model, job_ids in store.technician.failed_for_a_model(MODEL_UNAVAILABLE, limit).items():
            if model_problem(registry, model, self.settings) is None:
                count = store.technician.requeue_failed(job_ids, "agent", f"{model} can be opened again")
                log.warning("%s can be opened again: %d job(s) it failed back in the queue", model, count)
                self.wake.set()

    def _purge(self, store: Store) -> None:
        housekeeping.purge_expired(
            store, self.settings.store.retention_days, **housekeeping.retention_args(self.settings)
        )

    def _write_agent_file(self, store: Store) -> None:
        report = {
            "pid": os.getpid(),
            "started_at": self.started.isoformat(timespec="seconds"),
            "updated_epoch": time.time(),
            "worker_heartbeat_age_s": round(self.heartbeat.age(), 1),
            "jobs_done_since_start": self.jobs_done,
            "sources": {
                "dicom": f"{self.settings.dicom.ae_title}@{self.settings.dicom.port}"
                if self.settings.dicom.enabled
                else None,
                "watch": str(self.settings.inbox) if self.settings.watch.enabled else None,
            },
            "problems": dict(self.source_problems),
        }
        write_atomically(health.agent_file(self.settings), json.dumps(report, indent=1).encode())
        # Under systemd without a watchdog nothing else says STATUS=; the watchdog says it itself,
        # and outside systemd there is no one to tell. The snapshot is not free: build it only then.
        if os.environ.get("NOTIFY_SOCKET") and systemd.watchdog_interval() is None:
            systemd.notify(f"STATUS={health.status_line(health.snapshot(self.settings, store))}")

    def healthy(self, store: Store) -> tuple[bool, str]:
        """The watchdog's question: is the worker looping, is every source alive, and does the
        store answer? A source thread that died left a healthy-looking agent taking nothing."""
        age = self.heartbeat.age()
        if age > self.settings.worker.stall_s:
            return False, f"worker loop silent for {age:.0f} s (stalled)"
        dead = [thread.name for thread in self._threads if not thread.is_alive()]
        if dead and not self.stop.is_set():
            return False, f"the {', '.join(dead)} thread(s) died"
        store.db.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        return True, ""

    def _start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _start_watchdog(self) -> None:
        interval = systemd.watchdog_interval()
        if interval is None:
            return

        def run() -> None:
            # The watchdog's store connection belongs to its own thread.
            with Store(self.settings.data_dir, busy_timeout_ms=self.settings.store.busy_timeout_ms) as store:
                systemd.Watchdog(
                    interval,
                    lambda: self.healthy(store),
                    lambda: health.status_line(health.snapshot(self.settings, store)),
                    self.stop,
                ).run()

        self._start("watchdog", run)

    # ------------------------------------------------------------------ lifecycle

    def run(self, install_signals: bool = True) -> int:
        """Run until stopped; the exit status (0 stopped, 1 refused or failed)."""
        storage_encryption.enforce(self.settings)  # STORAGE_NOT_ENCRYPTED when it is required
        lock = InstanceLock(health.agent_lock(self.settings), "agent (`edge run`)")
        try:
            lock.acquire()  # one agent per data directory, held until this process ends
        except EdgeError as error:
            log.error("%s", error.one_line())
            return 1
        try:
            return self._run(install_signals)
        finally:
            lock.release()

    def _run(self, install_signals: bool) -> int:
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop.set())
        recover_installs(self.settings.models.dir)  # a model update a kill interrupted: back first
        with Store(self.settings.data_dir, check=True) as store:  # create, migrate, quick_check: or refuse
            housekeeping.sweep_orphans(store)
        ingest = self.settings.ingest
        decoder = GuardedDecoder.from_settings(ingest, ingest.decode_workers)
        try:
            self._start("worker", self._work, decoder)
            while not (self.worker_ready.wait(1.0) or self.stop.is_set()):
                pass
            if self.stop.is_set():
                return 1 if self.failed else 0
            self._start("maintenance", self._maintain)
            if self.settings.watch.enabled:
                self._start("watch", self._watch, decoder)
            if self.settings.dicom.enabled and not self._listen(decoder):
                # Retried beside the rest: the drop folder and the queue go on meanwhile.
                retry = threading.Thread(target=self._listen_later, args=(decoder,), name="dicom-retry")
                retry.daemon = True
                retry.start()
            self._start_watchdog()
            log.info(
                "agent running (dicom %s, watch %s)", self.settings.dicom.enabled, self.settings.watch.enabled
            )
            systemd.notify("READY=1")
            self.ready.set()
            self.stop.wait()
            systemd.notify("STOPPING=1")
            log.info("stopping: sources first, then the job in hand")
        finally:
            if self.listener is not None:
                self.listener.stop()
            self.stop.set()
            self.wake.set()
            for thread in self._threads:
                thread.join(timeout=60)
            decoder.close()
        return 1 if self.failed else 0

    def _warm_up(self, device: Device) -> None:
        """Open every installed model before READY: a first TensorRT build takes minutes, and the
        service must not look ready (or be killed by the watchdog) while it runs."""
        for name in device.registry.names():
            systemd.notify(f"STATUS=loading model {name}")
            systemd.notify("EXTEND_TIMEOUT_USEC=1800000000")
            try:
                served = device.pool.get(name)
                log.info("model %s %s ready on %s/%s", name, served.version, served.backend, served.precision)
            except EdgeError as error:
                log.error("model %s cannot be served: %s", name, error.one_line())
