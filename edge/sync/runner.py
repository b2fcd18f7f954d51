"""`edge sync run`: the sync agent's loop, its own process (edge-sync.service); one round of
it (`exchange`: results, files, reviews, model releases, site profiles, in that order); and `sync_status`, the
summary of the state each round records.

Rounds run every `interval_s` while all goes well; after a failure the wait grows exponentially
(with jitter) up to `max_backoff_s`, so a dead link costs almost nothing and a returning one is
found by itself. `edge sync now` rings its doorbell (a FIFO) and wakes it at once; the sync
agent's lock keeps it to one per data directory. State for `edge sync status`, the
TUI and the health snapshot is written to the store after every round.

Under systemd (edge-sync.service, Type=notify) it says READY=1 once the store is open and pets
the watchdog while it waits and after every answered request, never from a side thread: a
request hung past its timeout, or a wedged store, stops the pets and systemd restarts it.
"""

from __future__ import annotations

import logging
import random
import signal
import threading
import time
from typing import Any

import httpx

from edge import systemd
from edge.clock import still_failing, utc_now
from edge.config import Settings
from edge.errors import EdgeError
from edge.processes import Doorbell, InstanceLock, ring
from edge.store import Store
from edge.sync import doorbell, sync_lock
from edge.sync.client import UPLOAD_KINDS, SyncClient
from edge.sync.credential import Credential, HubRefused, HubUnavailable, check_hub_url
from edge.sync.deletions import push_tombstones
from edge.sync.profiles import pull_profiles
from edge.sync.protocol import WireCode
from edge.sync.releases import pull_models, recover_installs
from edge.sync.renditions import pull_rendition_requests

log = logging.getLogger(__name__)


def exchange(client: SyncClient) -> dict[str, int]:
    """Everything that is pending, in order (results, deletions, files, reviews, ...); raises
    HubUnavailable/HubRefused on failure."""
    counts = {"results": client.push_results()}
    counts["deletions"] = push_tombstones(client)  # after the results: a result before its tombstone
    pull_rendition_requests(client)  # before queueing: a requested rendition goes this round
    client.queue_uploads()
    counts["files"] = client.push_files()
    counts["reviews"] = client.pull_reviews()
    if client.settings.sync.public_key:
        counts["models"] = pull_models(client)
        counts["profiles"] = pull_profiles(client)  # after the models: a profile names a version
    return counts


# Refusals no retry will fix, each a state of its own (`edge sync status`, the TUI, `edge doctor`).
_REFUSAL_KINDS: dict[WireCode | None, str] = {
    WireCode.DEVICE_REVOKED: "revoked",
    WireCode.UPGRADE_REQUIRED: "upgrade required",
}
NEEDS_ACTION = ("failed", *_REFUSAL_KINDS.values())


def _exchange_or_stop(client: SyncClient) -> dict[str, int]:
    """`exchange`; a round that ends in an error no branch of `run_round` names is not left
    "running" (the status said "syncing" after such a crash, with no error)."""
    try:
        return exchange(client)
    except (HubUnavailable, HubRefused, EdgeError):
        raise
    except Exception as exc:
        client.store.outbox.set_sync_state(
            running=False,
            last_error=f"the round failed: {type(exc).__name__}: {exc}"[:300],
            last_error_at=utc_now(),
            last_error_kind="device",
            failing=True,
        )
        raise
    except BaseException:  # Ctrl-C, a stop: not a failure, but not running either
        client.store.outbox.set_sync_state(running=False)
        raise


def run_round(client: SyncClient) -> bool:
    """One round with its outcome recorded; True when everything pending went through."""
    store = client.store
    store.outbox.set_sync_state(running=True)
    try:
        counts = _exchange_or_stop(client)
    except HubUnavailable as exc:
        store.outbox.set_sync_state(
            running=False,
            last_error=f"the hub cannot be reached: {exc}"[:300],
            last_error_at=utc_now(),
            failing=True,
            last_error_kind="unavailable",
        )
        log.warning("sync: hub unavailable: %s", exc)
        return False
    except HubRefused as exc:
        store.outbox.set_sync_state(
            running=False,
            last_error=f"the hub refused: {exc}"[:300],
            last_error_at=utc_now(),
            failing=True,
            last_error_kind=_REFUSAL_KINDS.get(exc.code, "refused"),
        )
        log.error("sync: refused: %s", exc)
        return False
    except EdgeError as error:  # this device's own state (a full disk): said, and tried again
        store.outbox.set_sync_state(
            running=False,
            last_error=error.one_line()[:300],
            last_error_at=utc_now(),
            failing=True,
            last_error_kind="device",
        )
        log.error("sync: %s", error.one_line())
        return False
    store.outbox.set_sync_state(running=False, last_success=utc_now(), failing=False)
    if any(counts.values()):
        log.info("sync: %s", counts)
    return True


def serve(settings: Settings, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    credential = Credential.load(settings)
    if credential is None:
        log.error("sync is not configured: run `edge sync enroll URL CODE` first")
        return 2
    try:
        check_hub_url(credential.hub_url, credential.insecure)
    except EdgeError as error:
        log.error("%s", error.one_line())
        return 2
    lock = InstanceLock(sync_lock(settings), "sync agent (`edge sync run`)")
    try:
        lock.acquire()  # one sync agent per data directory, held until this process ends
    except EdgeError as error:
        log.error("%s", error.one_line())
        return 1
    (settings.data_dir / "sync" / "sync.pid").unlink(missing_ok=True)  # left by older versions
    recover_installs(settings.models.dir)  # a model update a kill interrupted
    bell = Doorbell(doorbell(settings))
    try:
        if not bell.listen():
            log.warning("no doorbell at %s (no named pipes here): `edge sync now` syncs by itself", bell.path)
        return _loop(settings, credential, bell, stop)
    finally:
        bell.close()
        lock.release()


def _loop(settings: Settings, credential: Credential, bell: Doorbell, stop: threading.Event) -> int:
    def halt(*_: object) -> None:
        stop.set()
        ring(bell.path)

    signal.signal(signal.SIGTERM, halt)
    signal.signal(signal.SIGINT, halt)
    signal.signal(signal.SIGUSR1, lambda *_: ring(bell.path))  # older `edge sync now`: harmless
    failures = 0
    with (
        Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store,
        httpx.Client() as http,
    ):
        client = SyncClient(settings, store, http, credential)
        pet = _Petter(systemd.watchdog_interval())
        client.on_progress = pet
        log.info("sync agent for %s running", credential.hub_url)
        systemd.notify(f"READY=1\nSTATUS=syncing with {credential.hub_url}")
        while not stop.is_set():
            ok = run_round(client)
            pet()
            failures = 0 if ok else failures + 1
            delay = settings.sync.interval_s if ok else min(settings.sync.max_backoff_s, 2.0**failures)
            delay *= random.uniform(0.5, 1.0)  # jitter: a fleet coming back does not arrive in step
            systemd.notify(f"STATUS={_status_line(store)}")
            deadline = time.monotonic() + delay
            while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
                if bell.wait(min(left, pet.interval or left)):
                    break  # `edge sync now`, the TUI, or a stop
                pet()
        systemd.notify("STOPPING=1")
    return 0


class _Petter:
    """WATCHDOG=1 at most every interval/4 (the interval is already half of WatchdogSec)."""

    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self._last = 0.0

    def __call__(self) -> None:
        if self.interval is None:
            return
        now = time.monotonic()
        if now - self._last >= self.interval / 4:
            systemd.notify("WATCHDOG=1")
            self._last = now


def _status_line(store: Store) -> str:
    pending = store.outbox.pending_counts()
    state = store.outbox.sync_state()
    waiting = ", ".join(f"{count} {kind}" for kind, count in sorted(pending.items())) or "nothing"
    error = f"; failing: {state['last_error']}" if still_failing(state, "last_success") else ""
    return f"waiting: {waiting}{error}"[:200]


def sync_status(settings: Settings, store: Store) -> dict[str, Any]:
    """For `edge sync status`, the health snapshot and the TUI: offline / syncing / failed / up to date."""
    credential = Credential.load(settings)
    state = store.outbox.sync_state()
    pending = store.outbox.pending_counts()
    broken = Credential.problem(settings) if credential is None else None
    if broken is not None:
        summary = "failed"
        state = {**state, "last_error": f"{broken[1]}: enrol this device again (`edge sync enroll URL CODE`)"}
    elif credential is None:
        summary = "not configured"
    elif still_failing(state, "last_success"):
        kind = state.get("last_error_kind")
        summary = "offline" if kind == "unavailable" else kind if kind in NEEDS_ACTION else "failed"
    elif state.get("running"):
        summary = "syncing"
    else:
        waiting = pending.get("result") or pending.get("tombstone")
        summary = "syncing" if waiting else "up to date"
    return {
        "state": summary,
        "hub": credential.hub_url if credential else broken[0] if broken else None,
        "last_success": state.get("last_success"),
        "last_error": state.get("last_error"),
        "last_error_at": state.get("last_error_at"),
        "pending": {
            "results": pending.get("result", 0),
            "deletions": pending.get("tombstone", 0),
            "files": sum(v for k, v in pending.items() if k in UPLOAD_KINDS),
        },
        "review_cursor": state.get("review_cursor", 0),
        "models_refused": state.get("models_refused", {}),
        "profiles_refused": state.get("profiles_refused", {}),
    }


def refused_updates(status: dict[str, Any]) -> list[str]:
    """What the hub sent that this device refused, one sentence each, for every place that
    shows the sync (edge sync now|status, edge doctor, the TUI): a model release, whose
    installed version keeps serving, and a site profile, whose calibration in force stays. A
    profile for a model version not installed yet is waiting, not refused."""
    lines = [
        f"model release {release} refused (the installed version keeps serving): {reason}"
        for release, reason in (status.get("models_refused") or {}).items()
    ]
    for key, reason in (status.get("profiles_refused") or {}).items():
        model, profile_id, *_ = key.split(" ")
        if " while " in key:
            lines.append(f"site profile {profile_id} waits for its model version: {reason}")
        else:
            kept = f"{model} keeps its calibration in force"
            lines.append(f"site profile {profile_id} refused ({kept}): {reason}")
    return lines
