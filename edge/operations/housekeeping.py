"""Keeping a small disk healthy: free-space guard, emergency reserve, orphan sweep, retention,
WAL checkpoints. Called by the agent's maintenance thread and by `edge doctor`.

- Below `[store] min_free_mb` the agent stops accepting studies (DICOM answers out-of-resources,
  the drop folder leaves files where they are); below `warn_free_mb` it warns.
- A reserve file (`reserve_mb`) is kept full; when the disk fills anyway it is deleted, because
  SQLite needs free pages even to delete rows, and recreated once space is back.
- Image, heatmap and clip files that no row points at (a crash between the file and its
  commit), and interrupted writes' temporary files, are swept right after start and then every
  few minutes, once old enough (ORPHAN_GRACE_S) not to belong to a commit in flight.
- Image files go only after the retention period, and only once the hub acknowledged every
  result of the image (and the image itself where full images are sent): the clinic's PACS or
  modality is the archive, the box is not; results, heatmaps and thumbnails stay.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from edge.clock import clock_plausible, confirmed_at, plausible_stamps, since_confirmed
from edge.config import Settings
from edge.ingest.recording_attempts import FILE as ATTEMPTS_FILE
from edge.store import Store
from edge.store.files import remove_quietly
from edge.video.clip import RECORDING_PREFIX

log = logging.getLogger(__name__)
# A file is written before the row that names it commits (seconds later, or as long as a live
# clip is still being recorded, which keeps touching its file): younger files are in flight.
ORPHAN_GRACE_S = 120.0
RECORDING_GRACE_S = 3600.0


@dataclass(frozen=True)
class DiskState:
    free_mb: int
    total_mb: int
    accepting: bool
    warning: bool
    reason: str


def disk_state(settings: Settings) -> DiskState:
    where = settings.data_dir
    while not where.exists() and where != where.parent:  # not created yet: its future filesystem
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return DiskState(0, 0, False, True, f"cannot read free space: {exc.strerror}")
    free_mb, total_mb = usage.free // 2**20, usage.total // 2**20
    floor, warn = settings.store.min_free_mb, settings.store.warn_free_mb
    if free_mb < floor:
        return DiskState(free_mb, total_mb, False, True, f"{free_mb} MB free, below the {floor} MB floor")
    if free_mb < warn:
        return DiskState(
            free_mb, total_mb, True, True, f"{free_mb} MB free, below the {warn} MB warning level"
        )
    return DiskState(free_mb, total_mb, True, False, "")


def reserve_path(settings: Settings) -> Path:
    return settings.data_dir / "reserve.bin"


def ensure_reserve(settings: Settings) -> bool:
    """Create the reserve file if it is missing and there is room for it (beyond the floor)."""
    size = settings.store.reserve_mb * 2**20
    path = reserve_path(settings)
    if size == 0 or (path.exists() and path.stat().st_size >= size):
        return True
    if disk_state(settings).free_mb < settings.store.min_free_mb + settings.store.reserve_mb:
        return False
    try:
        with path.open("wb") as handle:
            os.posix_fallocate(handle.fileno(), 0, size)
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink(missing_ok=True)
        log.warning("could not create the disk reserve: %s", exc.strerror)
        return False
    return True


def release_reserve(settings: Settings) -> bool:
    """Free the reserve so the database can work again on a full disk; True if it was there."""
    path = reserve_path(settings)
    if not path.exists():
        return False
    remove_quietly(path)
    log.error("disk full: released the %d MB reserve so the database can recover", settings.store.reserve_mb)
    return True


ORPHANS = "orphans"
"""Stored files no row points at, set aside (`sweep_orphans`), under the data directory (not
`lost+found`: fsck owns that name at a file system's root)."""
ORPHAN_KEEP_S = 30 * 86400.0
"""How long a file set aside is kept, for someone to send its image again or restore a backup."""


def sweep_orphans(store: Store, min_age_s: float = ORPHAN_GRACE_S) -> int:
    """Clear what no row points at, once older than `min_age_s` (a clip's video being recorded,
    `.recording-*`: an hour): the temporary files of interrupted atomic writes and unfinished
    recordings are deleted; an image, heatmap or clip file is set aside in `orphans/`, kept
    `ORPHAN_KEEP_S`, and put back where a row points at it again (a backup restored). A file
    without its row is most often a write a crash interrupted (its source sends it again), but
    also what a database rolled back leaves (its -wal deleted, an older backup restored): an
    outside-style check found those deleted as "left by an interrupted write", the only copy of
    results the database lost. A file that cannot be set aside stays where it is."""
    referenced = set(store.referenced_files())
    returned = _put_back(store.data_dir, referenced)
    cutoff = time.time() - min_age_s
    recordings_cutoff = min(cutoff, time.time() - RECORDING_GRACE_S)
    removed = kept = 0
    for path in _candidates(store.data_dir):
        # A clip being recorded (by the TUI's live screen or `edge capture` beside the agent)
        # is written until its length is reached, then waits for its stop: an hour's grace.
        limit = recordings_cutoff if path.name.startswith(RECORDING_PREFIX) else cutoff
        try:
            if not path.is_file() or path.stat().st_mtime > limit:
                continue
        except OSError:  # removed meanwhile (a study deleted, retention)
            continue
        relative = path.relative_to(store.data_dir)
        if path.name == ATTEMPTS_FILE or (str(relative) in referenced and not path.name.endswith(".tmp")):
            continue  # the drop folder's count of a video's deaths lives in clips/ too
        # Interrupted writes, a site profile's staged copy, and a recording a kill left
        # unfinished (never a result; a video can fill a small disk) are deleted; the rest is
        # set aside.
        if path.name.endswith((".tmp", ".new")) or path.name.startswith(RECORDING_PREFIX):
            remove_quietly(path)
            removed += 1
        elif _set_aside(store.data_dir, relative):
            kept += 1
    if removed:
        log.warning("swept %d orphaned file(s) left by an interrupted write", removed)
    if kept:
        log.warning(
            "set aside %d stored file(s) that no record points at in %s (a write a crash"
            " interrupted, or a database rolled back): send again any image whose result is missing",
            kept,
            store.data_dir / ORPHANS,
        )
    return removed + kept + returned + _expire_orphans(store.data_dir)


def _set_aside(data_dir: Path, relative: Path) -> bool:
    """Move a file no row points at into orphans/, its path kept; False (it stays) if it cannot."""
    target = data_dir / ORPHANS / relative
    try:
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.replace(data_dir / relative, target)
        os.utime(target)  # kept ORPHAN_KEEP_S from now
    except OSError as exc:
        log.warning("a stored file no record points at cannot be set aside (%s): left", exc.strerror or exc)
        return False
    return True


def _put_back(data_dir: Path, referenced: set[str]) -> int:
    """Move back from orphans/ the files a row points at again (a backup restored); how many."""
    root = data_dir / ORPHANS
    returned = 0
    for path in root.rglob("*") if root.is_dir() else ():
        relative = str(path.relative_to(root))
        if relative in referenced and not (data_dir / relative).exists():
            try:
                (data_dir / relative).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.replace(path, data_dir / relative)
            except OSError:
                continue
            returned += 1
    if returned:
        log.warning("put back %d file(s) from %s that records point at again", returned, root)
    return returned


def put_back_orphans(settings: Settings) -> int:
    """`_put_back` for what the store now points at (`edge store restore`); how many."""
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        return _put_back(store.data_dir, set(store.referenced_files()))


def _expire_orphans(data_dir: Path) -> int:
    """Delete what orphans/ has kept longer than ORPHAN_KEEP_S; how many."""
    cutoff = time.time() - ORPHAN_KEEP_S
    expired = 0
    for path in (data_dir / ORPHANS).rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                remove_quietly(path)
                expired += 1
        except OSError:
            continue
    return expired


def orphaned_images(data_dir: Path) -> int:
    """How many images orphans/ keeps (`sweep_orphans`)."""
    try:
        return sum(1 for path in (data_dir / ORPHANS / "images").rglob("*") if path.is_file())
    except OSError:
        return 0


def _candidates(data_dir: Path) -> Iterator[Path]:
    """Files the store owns (images, heatmaps, clips) and `write_atomically`'s temporary files
    (`.name.<id>.tmp`) in the data directory's own folders (agent.json, the sync state, the
    site profiles)."""
    for folder in ("images", "heatmaps", "clips"):
        root = data_dir / folder
        if root.is_dir():
            yield from root.rglob("*")
    for own in (data_dir, data_dir / "sync", data_dir / "cache"):
        if own.is_dir():
            yield from own.glob(".*.tmp")
    # A site profile's staged copy (`.<id>.toml.<hex>.new`) and its interrupted writes: a kill
    # during `edge models calibrate` left full copies of profiles there.
    for pattern in ("*/.*.tmp", "*/.*.new"):
        yield from (data_dir / "profiles").glob(pattern)


CLOCK_DISAGREEMENT_S = 86400.0
"""Retention waits while the clock is this far from the hub's (as of the last sync)."""
CONFIRMED_FOR_S = 86400.0
"""Retention runs only this long after the hub last confirmed the clock (`clock.confirmed_at`),
by the clock now."""


def clock_unconfirmed(store: Store, off_hub_s: float, *, enrolled: bool = True) -> str | None:
    """Why the clock may not be trusted to tell ages now, or None: it reads an impossible year,
    it was a day off the hub's at the last sync (`off_hub_s`, the credential's offset), or the
    hub has not confirmed it (`clock.confirmed_at`) within a day of what it reads. A clock that
    jumped months ahead while the hub was out of reach read plausible years, and retention
    deleted images taken that day (an outside-style check); the confirmation, stamped before
    the jump, shows it.

    A device never `enrolled` whose clock no hub ever confirmed has only a plausible year to go
    by: retention can take nothing there but refused images (an analysed one waits for the
    hub's acknowledgement), which would otherwise fill its disk for good."""
    now = datetime.now(timezone.utc)
    if not clock_plausible():
        return f"the clock reads {now.isoformat(timespec='seconds')}, not a plausible time"
    if abs(off_hub_s) > CLOCK_DISAGREEMENT_S:
        way = "behind" if off_hub_s > 0 else "ahead of"
        return f"the clock was {abs(off_hub_s) / 3600:.0f} h {way} the hub's at the last sync"
    state = store.outbox.sync_state()
    since = since_confirmed(state)
    if since is None and not enrolled:
        return None
    if since is None:
        return "the hub has not confirmed the clock (no reply to this device yet)"
    if not 0 <= since <= CONFIRMED_FOR_S:
        return (
            f"the hub last confirmed the clock at {confirmed_at(state)}, not within a day of the clock's now"
        )
    return None


def purge_expired(
    store: Store,
    retention_days: float,
    *,
    image_upload: bool = False,
    off_hub_s: float = 0.0,
    enrolled: bool = True,
) -> int:
    """Delete image files past retention whose results (and, with `image_upload`, the image
    itself) the hub acknowledged; rows, results and heatmaps stay (images.purged_at).

    Ages are told by the clock, so nothing goes while it may be wrong (`clock_unconfirmed`): an
    image of today would look months old. An image stamped while the clock was wrong (before
    2024, or ahead of it) has its age started again when it is right: an outside-style check
    found an image taken at 1970 deleted minutes after NTP put the clock right."""
    why = clock_unconfirmed(store, off_hub_s, enrolled=enrolled)
    if why is not None:
        log.warning("retention waits: %s; no image is deleted until it is", why)
        return 0
    restarted = store.restart_misstamped_ages(*plausible_stamps())
    if restarted:
        log.warning(
            "retention: %d image(s) stamped while the clock was wrong are kept %g days from now",
            restarted,
            retention_days,
        )
    purged = 0
    for image in store.purgeable_images(_horizon(retention_days), image_upload=image_upload):
        remove_quietly(store.data_dir / image["path"])
        store.mark_purged(image["id"])
        purged += 1
    if purged:
        log.info("retention: deleted %d acknowledged image file(s)", purged)
    return purged


def retention_args(settings: Settings) -> dict[str, Any]:
    """What `purge_expired` and `retention_waiting` take from the device's set-up besides the
    store: whether full images travel, the clock's offset from the hub's at the last sync, and
    whether this device ever enrolled."""
    from edge.sync.credential import Credential  # httpx and the keys: only where retention runs

    credential = Credential.load(settings)
    return {
        "image_upload": settings.sync.images == "full",
        "off_hub_s": credential.clock_offset if credential is not None else 0.0,
        "enrolled": Credential.path(settings).exists(),
    }


def _horizon(retention_days: float) -> str:
    """The stamp before which an image is past retention, in the store's format."""
    moment = datetime.now(timezone.utc) - timedelta(days=retention_days)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def retention_waiting(
    store: Store,
    retention_days: float,
    *,
    image_upload: bool = False,
    off_hub_s: float = 0.0,
    enrolled: bool = True,
) -> tuple[str, int] | None:
    """Why retention waits and how many image files it would delete now if the clock were
    confirmed, or None when it does not wait or would delete nothing: said by `edge doctor`
    (it was said only in the agent's log, and a device whose hub stays out of reach keeps every
    image: its disk fills)."""
    why = clock_unconfirmed(store, off_hub_s, enrolled=enrolled)
    if why is None:
        return None
    held = len(store.purgeable_images(_horizon(retention_days), image_upload=image_upload))
    return (why, held) if held else None
