"""One health snapshot for `edge status --json`, the TUI, the hub and the agent's STATUS= line.

The agent holds `<data dir>/agent.lock` while it runs and writes `<data dir>/agent.json` (pid,
start, last heartbeat, sources) on every maintenance tick; everything else is read from the
store and the host, so the snapshot also works, and says so, when no agent is running.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from edge import __version__
from edge.clock import utc_after
from edge.config import Settings
from edge.operations.housekeeping import disk_state
from edge.processes import holder
from edge.store import Store
from edge.store.database import schema_newer
from edge.sync.runner import sync_status

AGENT_FILE = "agent.json"
AGENT_LOCK = "agent.lock"
STALE_AFTER_S = 180.0


def agent_file(settings: Settings) -> Path:
    return settings.data_dir / AGENT_FILE


def agent_lock(settings: Settings) -> Path:
    """The flock `edge run` holds for its life (`processes.InstanceLock`)."""
    return settings.data_dir / AGENT_LOCK


def read_agent(settings: Settings) -> dict[str, Any]:
    """The agent's own report, with `running` decided here: its lock is held (the kernel drops
    it when the agent dies, so a reused pid cannot look like an agent) and its report is fresh."""
    first = holder(agent_lock(settings))
    try:
        report = json.loads(agent_file(settings).read_text())
    except (OSError, ValueError):
        report = {}
    if first is None:
        reason = "the agent is not running" if report else "no agent has run with this data directory"
        return {**report, "running": False, "reason": reason}
    if report.get("pid") != first.get("pid"):  # started, not reporting yet (models loading)
        started = first.get("started")
        return {"pid": first.get("pid"), "started_at": started, "running": True, "starting": True}
    report["running"] = time.time() - float(report.get("updated_epoch", 0)) < STALE_AFTER_S
    if not report["running"]:
        report["reason"] = "the agent stopped reporting (wedged?)"
    return report


def versions() -> dict[str, str]:
    out = {"edge": __version__, "python": platform.python_version()}
    for module in ("onnxruntime", "tensorrt", "pydicom", "numpy"):
        loaded = sys.modules.get(module)
        if loaded is None:
            try:
                from importlib.metadata import version

                out[module] = version(module)
            except Exception:  # noqa: BLE001 - absent is a fine answer
                continue
        else:
            out[module] = str(getattr(loaded, "__version__", "unknown"))
    return out


def snapshot(settings: Settings, store: Store | None = None) -> dict[str, Any]:
    disk = disk_state(settings)
    own = store is None
    # A reader: a database written by newer software is shown (read-only), and says so.
    store = store or Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms, reader=True)
    try:
        counts = store.counts()
        newer = schema_newer(store.db_path, store.schema) if store.schema.newer else None
        out: dict[str, Any] = {
            "site": settings.site,
            "data_dir": str(settings.data_dir),
            "agent": read_agent(settings),
            "schema": {
                "version": store.schema.version,
                "latest": store.schema.latest,
                "newer": store.schema.newer,
                "unknown": list(store.schema.unknown),
                "refusal": newer.one_line() if newer else None,
            },
            "queue_depth": counts["jobs_queued"] + counts["jobs_running"],
            "counts": counts,
            "last_result": store.last_result(),
            "recent_errors": store.recent_errors(),
            "outbox_pending": sum(store.outbox.pending_counts().values()),
            "sync": sync_status(settings, store),
            "disk": {
                "free_mb": disk.free_mb,
                "total_mb": disk.total_mb,
                "accepting": disk.accepting,
                "warning": disk.warning,
                "reason": disk.reason,
            },
            "versions": versions(),
            "dicom_callers": _dicom_callers(settings),
        }
    finally:
        if own:
            store.close()
    return out


def hospital_links(settings: Settings) -> dict[str, Any]:
    """For `edge status` only (not the snapshot the TUI and the watchdog rebuild every few
    seconds): the PACS exporter's state where results go back to one
    (`pacs_export.pacs_status`), and what the DICOM listener refused in 7 days."""
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms, reader=True) as store:
        pacs = None
        if settings.pacs.enabled:
            from edge.interop.pacs_export import pacs_status  # pynetdicom: only where a PACS is set

            pacs = pacs_status(settings, store)
        return {"pacs": pacs, "dicom_refused": store.refused_inputs("dicom", utc_after(-7 * 86400))}


def _dicom_callers(settings: Settings) -> list[str] | None:
    """The listener's caller verdict (level, sentence) when it listens (`dicom_access`)."""
    if not settings.dicom.enabled:
        return None
    from edge.ingest.dicom_access import callers_verdict

    return list(callers_verdict(settings))


def status_line(snap: dict[str, Any]) -> str:
    """One line for systemd's STATUS= (shown by `systemctl status`)."""
    last = snap.get("last_result") or {}
    disk = snap["disk"]
    parts = [f"queue {snap['queue_depth']}", f"results {snap['counts']['results']}"]
    if last:
        parts.append(f"last {last['finding']} {last['created_at'][11:19]}Z")
    parts.append(f"disk {disk['free_mb']} MB free" + (" (NOT accepting)" if not disk["accepting"] else ""))
    return ", ".join(parts)


def sync_line(snap: dict[str, Any]) -> str:
    """The sync in one line for `edge status`: its state, what waits, the last success and,
    while it fails, why (it said nothing of the hub: `edge sync status` had to be known)."""
    sync = snap["sync"]
    if sync["hub"] is None:
        return "sync: no hub enrolled (results stay on this device)"
    line = (
        f"sync: {sync['state']} ({sync['hub']}), {sync['pending']['results']} result(s) waiting,"
        f" last success {sync['last_success'] or 'never'}"
    )
    if sync["state"] not in ("up to date", "syncing") and sync.get("last_error"):
        line += f": {sync['last_error']}"
    return line


def pacs_line(snap: dict[str, Any]) -> str | None:
    """The PACS in one line for `edge status`, where results go back to one: its state, what
    waits and failed, and why it fails or what is retried (only `edge pacs status` said it)."""
    pacs = snap.get("pacs")
    if not pacs:
        return None
    counts = pacs["counts"]
    line = (
        f"pacs: {pacs['state']} ({pacs['destination']}), {counts['pending']} object(s) waiting,"
        f" {counts['failed']} failed"
    )
    if not pacs.get("exporter"):  # only the exporter queues new results: "up to date" hid that
        line += "; the exporter is not running (sudo systemctl start edge-pacs): new results wait"
    why = (
        pacs.get("last_error")
        or next((r["error"] for r in pacs.get("retrying", [])), None)
        or next((f"failed: {r['reason']}" for r in pacs.get("failed", [])), None)
    )
    return f"{line}: {why}" if why else line


def dicom_refused_line(snap: dict[str, Any]) -> str | None:
    """What the DICOM listener refused in 7 days (answered with a failure, nothing stored), for
    `edge status`: the worklist cannot show what was never stored."""
    refused = snap.get("dicom_refused") or {}
    if not refused.get("count"):
        return None
    codes = ", ".join(f"{code} x{count}" for code, count in sorted(refused["by_code"].items()))
    return (
        f"dicom: {refused['count']} instance(s) refused in 7 days ({codes}), newest"
        f" {refused['newest']}: the sender was told it failed; see `journalctl -u edge-agent`"
    )
