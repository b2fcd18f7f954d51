"""`edge run`: the agent. One process runs the enabled ingest sources and the worker.

Threads: the worker (claims queued jobs and scores them), the drop-folder watcher, and
pynetdicom's association threads for the DICOM listener. Sources wake the worker as soon as they
queue a job; the worker also polls, for jobs queued by other processes. SIGTERM or SIGINT stops
the sources first, lets the worker finish the job in hand, then exits; a job claimed by an agent
that was killed instead is requeued when the next agent starts.
"""

from __future__ import annotations

import logging
import shutil
import signal
import threading
from collections.abc import Callable
from typing import Any

from edge.config import Settings
from edge.ingest.guard import GuardedDecoder
from edge.pipeline import Pipeline
from edge.store import Store

log = logging.getLogger(__name__)


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.ready = threading.Event()
        self.listener: Any = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ disk guard

    def accepting(self) -> tuple[bool, str]:
        """False (with the reason) when free space is below `[store] min_free_mb`."""
        try:
            free_mb = shutil.disk_usage(self.settings.data_dir).free // (1024 * 1024)
        except OSError as exc:
            return False, f"cannot read free space: {exc.strerror}"
        if free_mb < self.settings.store.min_free_mb:
            return False, f"{free_mb} MB free, below the {self.settings.store.min_free_mb} MB floor"
        return True, ""

    # ------------------------------------------------------------------ threads

    def _pipeline(self, actor: str) -> Pipeline:
        store = Store(self.settings.data_dir, busy_timeout_ms=self.settings.store.busy_timeout_ms)
        return Pipeline(self.settings, store, actor=actor)

    def _work(self) -> None:
        pipeline = self._pipeline("agent")
        try:
            while not self.stop.is_set():
                if not pipeline.run_once():
                    self.wake.wait(self.settings.worker.poll_s)
                    self.wake.clear()
        finally:
            pipeline.close()
            pipeline.store.close()

    def _watch(self, decoder: GuardedDecoder) -> None:
        from edge.ingest.watch import DropFolder

        pipeline = self._pipeline("watch")
        try:
            folder = DropFolder(
                self.settings, pipeline, decoder.decode, on_queued=self.wake.set, accepting=self.accepting
            )
            folder.run(self.stop)
        finally:
            pipeline.close()
            pipeline.store.close()

    def _start(self, name: str, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # ------------------------------------------------------------------ lifecycle

    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop.set())
        Store(self.settings.data_dir).close()  # create and migrate once, before the threads
        ingest = self.settings.ingest
        decoder = GuardedDecoder(ingest.decode_timeout_s, ingest.decode_memory_mb, ingest.decode_workers)
        try:
            self._start("worker", self._work)
            if self.settings.watch.enabled:
                self._start("watch", self._watch, decoder)
            if self.settings.dicom.enabled:
                from edge.ingest.dicom_listener import DicomListener

                self.listener = DicomListener(
                    self.settings,
                    lambda: self._pipeline("dicom"),
                    decoder.decode,
                    on_queued=self.wake.set,
                    accepting=self.accepting,
                )
                self.listener.start()
            log.info(
                "agent running (dicom %s, watch %s)", self.settings.dicom.enabled, self.settings.watch.enabled
            )
            self.ready.set()
            self.stop.wait()
            log.info("stopping: sources first, then the job in hand")
        finally:
            if self.listener is not None:
                self.listener.stop()
            self.stop.set()
            self.wake.set()
            for thread in self._threads:
                thread.join(timeout=60)
            decoder.close()
        return 0
