"""The agreement figures the administrator's page shows, per site and model weights, remembered
by what they were computed from and finished in the background where a page has no time left
(`agreement.figures` computes them; this module decides when, and keeps them)."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import fields
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from edge.hub.agreement import CaseSet, SiteModel, figures, reviewed_cases

log = logging.getLogger(__name__)

FIGURES_BUDGET_S = 5.0
"""How long a page computes figures not known yet before it shows the rest in part."""


def site_figures(
    engine: Engine, models_dir: Path | None, budget_s: float | None = None
) -> list[dict[str, Any]]:
    """Every site x model weights with reviewed results: what the admin page and JSON show.
    Figures not known yet are computed here until `budget_s` has passed since the call began
    (None: all of them; the scan counts, and a site begun is finished), the others in the
    background; those are shown meanwhile in part (`figures(full=False)`)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    groups = reviewed_cases(engine, models_dir)
    _FIGURES.hold_at_least(2 * len(groups))  # a page's sites never evict one another
    out = []
    for group in groups.values():
        key = _FIGURES.key(group)
        found = _FIGURES.cached(key)
        if found is None and (deadline is None or time.monotonic() < deadline):
            found = _FIGURES.compute(key, group)
        elif found is None:
            _FIGURES.in_background(key, group)
            found = figures(group, group.manifest, full=False)
        out.append(found)
    return out


def wait_for_figures() -> None:
    """Until the figures handed to the background are computed (tests, tools)."""
    _FIGURES.join()


class _FiguresCache:
    """`figures` by the content of what they are computed from (every case, the manifest): an
    administrator's page reloads ask again for sites nobody reviewed since. Bounded (at least
    twice the sites a page shows); a copy out. One background thread per process computes what
    a page had no time left for: per site the newest cases asked for, once."""

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._entries: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[SiteModel] = queue.Queue()
        self._waiting: dict[SiteModel, tuple[str, CaseSet]] = {}  # the newest asked, per site
        self._worker: threading.Thread | None = None

    def hold_at_least(self, entries: int) -> None:
        with self._lock:
            self._size = max(self._size, entries)

    @staticmethod
    def key(group: CaseSet) -> str:
        """Every field of the group and of its cases, and the manifest (each case's `vars`,
        not `asdict`'s deep copy: 0.3 s instead of 1.3 s for 114,000 cases)."""
        manifest = group.manifest
        head = {f.name: getattr(group, f.name) for f in fields(group) if f.name not in ("cases", "manifest")}
        head["key"] = vars(group.key)
        content = json.dumps(
            [
                head,
                [vars(case) for case in group.cases],
                manifest.model_dump(mode="json") if manifest else None,
            ],
            sort_keys=True,
        )
        return hashlib.sha256(content.encode()).hexdigest()

    def cached(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            if key not in self._entries:
                return None
            self._entries.move_to_end(key)
            return copy.deepcopy(self._entries[key])

    def compute(self, key: str, group: CaseSet) -> dict[str, Any]:
        found = figures(group, group.manifest)
        with self._lock:
            self._entries[key] = copy.deepcopy(found)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return found

    def in_background(self, key: str, group: CaseSet) -> None:
        with self._lock:
            queued = group.key in self._waiting
            self._waiting[group.key] = (key, group)  # newer cases replace what still waits
            if queued:
                return
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="agreement-figures", daemon=True)
                self._worker.start()
        self._queue.put(group.key)

    def _work(self) -> None:
        while True:
            site = self._queue.get()
            with self._lock:
                key, group = self._waiting.pop(site)
            try:
                with self._lock:
                    known = key in self._entries  # a page may have computed it meanwhile
                if not known:
                    self.compute(key, group)
            except Exception:  # a page asking again queues it again; the log says why it failed
                log.exception("agreement figures of %s %s %s failed", site.site, site.model, site.version)
            finally:
                self._queue.task_done()

    def join(self) -> None:
        self._queue.join()


_FIGURES = _FiguresCache()
