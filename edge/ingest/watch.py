"""A watched drop folder: DICOM, PNG or JPEG files left in an inbox (a share the X-ray PC writes
to, a USB import script) are ingested once complete, then moved out of the way. A video file
(MP4/MOV, AVI, MKV: an ultrasound loop exported) is analysed as one clip, as `edge infer` does.

- Complete means: not hidden or named like a partial download, and size and modification time
  unchanged for `settle_s` (a copy in progress keeps changing). Polling, not inotify: it works
  the same on SMB/NFS shares, where change notification is unreliable. A video whose container
  is not finished (`video.containers`: an MP4 without its index, an AVI stating no frames, a
  Matroska segment of unknown size, or one cut short) and an empty file are waited for until
  they have not changed for `UNFINISHED_PATIENCE_S`: a recorder writing into the inbox pauses,
  and its first pictures were stored as the whole clip.
- After the ingest commits, the file moves to processed/<date>/; a refused file moves to
  quarantine/<date>/ with `<name>.reason.txt` holding `CODE: sentence`. Every refusal is
  audited (its code), whether the decoder or the file itself (empty, too large, unreadable)
  refused it. A crash between the commit and the move makes the next scan see the file again:
  it is then a duplicate (same bytes), stored once, and simply moved. A restart never processes
  a file twice.
- When the disk guard says no, the folder pauses: no file is looked at until it says yes again
  (one log line each way). When the store cannot write (DISK_FULL, STORE_WRITE_FAILED), the
  file stays in the inbox and the folder tries again after `RETRY_S`, one file first; the
  others are left alone meanwhile, and once the store takes a file again (or the guard comes
  back from a pause) every file left in the inbox is taken.
- What the folder did not take is remembered by path, size and modification time (a changed
  file is a new file): a file the store could not take, and one refused or stored whose move
  failed (a read-only inbox, a full quarantine), is not decoded again each scan; only the move
  is tried again, after `RETRY_S`. At most `MAX_HELD` files are remembered.
- Only plain files of the expected owner are read (issue 17): a symbolic link
  (`DROP_FILE_LINKED`: it could point at any file the agent may read, another patient's study
  included), a file with more than one hard link (`DROP_FILE_LINKED`: the same trick without a
  symlink), or one owned by another user than `[watch] owners` (default: the agent's own;
  `DROP_FILE_NOT_OWNED`) is quarantined unread, like any refusal. The file is opened with
  O_NOFOLLOW and judged by fstat() on what was opened, so swapping it for a link between the
  listing and the read does not help.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from edge.clock import utc_now
from edge.config import Settings
from edge.errors import MODEL_UNAVAILABLE, Code, EdgeError
from edge.imaging.decoded import sha256_hex
from edge.ingest.recording_attempts import RecordingAttempts
from edge.pipeline import Decoder, Pipeline
from edge.results import Analysis, audit_refusal
from edge.store.files import fsync_dir, make_dirs, remove_quietly, write_atomically
from edge.video import containers
from edge.video.clip import RECORDING_PREFIX
from edge.video.source import is_recording

log = logging.getLogger(__name__)
PARTIAL_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart", ".swp")
DROPPED = f"{RECORDING_PREFIX}dropped-"
"""A dropped video's private copy under clips/, by its content (one per video, not per attempt)."""
LEAVE_FOR_LATER = {
    Code.DISK_FULL,
    Code.STORE_WRITE_FAILED,
    Code.STORE_READ_ONLY,
    Code.DECODER_UNAVAILABLE,
    *MODEL_UNAVAILABLE,
}
"""The device's state, not the file's: the file stays in the inbox, tried again after RETRY_S. A
model that cannot be opened (a damaged file) quarantined every picture dropped meanwhile, and
none was tried again once the model was put right (an outside-style check)."""
RETRY_S = 60.0
UNFINISHED_PATIENCE_S = 300.0
"""A recording whose container is not finished (or an empty file) is waited for until it has
not changed for this long: a recorder writing into the inbox, or a copy, may pause for minutes."""
UNFINISHED_STEP_S = 5.0
MAX_HELD = 10_000
COUNTS = ("ingested", "duplicate", "quarantined", "waiting", "deferred", "held", "gone", "paused")

_Key = tuple[Path, int, int]  # path, size, mtime_ns: a file as the folder saw it


def expected_owners(names: list[str]) -> frozenset[int]:
    """The uids `[watch] owners` names (user names or numbers); none named: our own user."""
    if not names:
        return frozenset({os.geteuid()})
    uids = set()
    for name in names:
        if name.isdigit():
            uids.add(int(name))
            continue
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError as exc:
            raise EdgeError(Code.CONFIG_INVALID, f"[watch] owners: no user {name!r} on this device") from exc
    return frozenset(uids)


def read_dropped(path: Path, max_bytes: int, owners: frozenset[int]) -> bytes:
    """A dropped file's bytes, if it is a plain file of an expected owner with one link: opened
    without following a symlink (O_NOFOLLOW) or waiting on a FIFO (O_NONBLOCK), then judged by
    what was opened (fstat), so no swap between the check and the read gets past it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise EdgeError(Code.INPUT_NOT_FOUND, f"{path.name} is gone") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise EdgeError(Code.DROP_FILE_LINKED, f"{path.name} is a symbolic link: not read") from exc
        raise EdgeError(Code.INPUT_UNREADABLE, f"{path.name} cannot be read: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise EdgeError(Code.INPUT_UNREADABLE, f"{path.name} is not a regular file")
        if info.st_nlink > 1:
            raise EdgeError(Code.DROP_FILE_LINKED, f"{path.name} has {info.st_nlink} hard links: not read")
        if info.st_uid not in owners:
            raise EdgeError(
                Code.DROP_FILE_NOT_OWNED,
                f"{path.name} belongs to uid {info.st_uid}, not to [watch] owners: not read",
            )
        if info.st_size > max_bytes:
            raise EdgeError(
                Code.INPUT_TOO_LARGE, f"{path.name} is {info.st_size} bytes, over the {max_bytes} limit"
            )
        try:
            data = handle.read(max_bytes + 1)
        except OSError as exc:
            raise EdgeError(Code.INPUT_UNREADABLE, f"{path.name} cannot be read: {exc.strerror}") from exc
    if len(data) > max_bytes:  # grew after the fstat
        raise EdgeError(Code.INPUT_TOO_LARGE, f"{path.name} is over the {max_bytes} byte limit")
    if not data:
        raise EdgeError(Code.INPUT_EMPTY, f"{path.name} is empty")
    return data


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    stable_since: float


@dataclass
class _Held:
    """A file not taken: `target` None when the store could not take it (take it again later),
    else where it goes (processed/ or quarantine/) and `reason` its refusal, already audited."""

    retry_at: float
    target: Path | None = None
    reason: str | None = None
    outcome: str = "deferred"  # what the scan counts once the move is done


class DropFolder:
    def __init__(
        self,
        settings: Settings,
        pipeline: Pipeline,
        decoder: Decoder,
        *,
        on_queued: Callable[[], None] = lambda: None,
        accepting: Callable[[], tuple[bool, str]] = lambda: (True, ""),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.inbox = settings.inbox
        self.processed = self.inbox.parent / "processed"
        self.quarantine = self.inbox.parent / "quarantine"
        self._pipeline = pipeline
        self._decoder = decoder
        self._on_queued = on_queued
        self._accepting = accepting
        self._clock = clock
        self._seen: dict[Path, _Seen] = {}
        self._held: OrderedDict[_Key, _Held] = OrderedDict()  # oldest first
        self._announced: dict[Path, _Key] = {}  # unfinished files, as last logged
        self._paused: str | None = None  # the disk guard's reason while it says no
        self._blocked: str | None = None  # why the store could not take a file, until one is taken
        self._retry_at = 0.0  # while blocked: when to try a file again
        self._owners = expected_owners(settings.watch.owners)
        for folder in (self.inbox, self.processed, self.quarantine):
            make_dirs(folder)
        # Copies of dropped videos a killed agent left (`_take_recording`): no other process
        # makes them, and this folder is one per agent, under its lock.
        for left in (settings.data_dir / "clips").glob(f"{DROPPED}*"):
            remove_quietly(left)

    def candidates(self) -> list[Path]:
        out = []
        for root, dirs, files in os.walk(self.inbox):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if (
                    name.startswith(".")
                    or name.lower().endswith(PARTIAL_SUFFIXES)
                    or name.endswith(".reason.txt")
                ):
                    continue
                out.append(Path(root) / name)
        return out

    def _settled(self, path: Path, now: float) -> _Key | None:
        """The file's key once it is complete (unchanged for `settle_s`); None while it is not."""
        try:
            info = path.lstat()  # a link is judged as itself (and refused when read)
        except FileNotFoundError:
            self._seen.pop(path, None)
            return None
        seen = self._seen.get(path)
        if seen is None or (seen.size, seen.mtime_ns) != (info.st_size, info.st_mtime_ns):
            self._seen[path] = _Seen(info.st_size, info.st_mtime_ns, now)
            settled = self.settings.watch.settle_s == 0
        else:
            settled = now - seen.stable_since >= self.settings.watch.settle_s
        return (path, info.st_size, info.st_mtime_ns) if settled else None

    def scan_once(self) -> dict[str, int]:
        """One pass over the inbox; returns counts of what happened (for logs and tests)."""
        counts = dict.fromkeys(COUNTS, 0)
        now = self._clock()
        if not self._guard_allows() or now < self._retry_at:
            counts["paused"] = 1  # nothing is looked at: no churn while the answer would be no
            return counts
        paths = self.candidates()
        self._forget_all_but(paths)
        settled = []
        for path in paths:
            key = self._settled(path, now)
            if key is None:
                counts["waiting"] += 1
                continue
            held = self._held.get(key)
            if held is not None and now < held.retry_at:
                counts["held"] += 1
                continue
            settled.append((held is not None, key))
        # Files never tried before those the store could not take: one that keeps failing (its
        # retry comes after the others) cannot stop the others from being taken.
        for _, key in sorted(settled, key=lambda entry: entry[0]):
            if not self._guard_allows():
                counts["paused"] = 1
                break
            outcome = self._take(key, now)
            counts[outcome] += 1
            if outcome == "deferred":
                break  # the store cannot write: the next files would fail the same way
        return counts

    def _guard_allows(self) -> bool:
        """The disk guard's answer; its change either way logged once."""
        accepting, reason = self._accepting()
        if not accepting:
            if self._paused is None:
                log.warning("drop folder paused: %s; files stay in the inbox", reason)
            self._paused = reason
            return False
        if self._paused is not None:
            log.info("drop folder resumed: the disk guard accepts files again")
            self._paused = None
            self._unblock()
        return True

    def _take(self, key: _Key, now: float) -> str:
        path = key[0]
        held = self._held.pop(key, None)
        if held is not None and held.target is not None:  # refused or stored before: only the move
            return self._move(key, held.target, held.reason, now, held.outcome)
        try:
            data = read_dropped(path, self.settings.store.max_input_bytes, self._owners)
        except EdgeError as error:
            if error.code is Code.INPUT_NOT_FOUND:  # taken away since the listing: nothing refused
                self._seen.pop(path, None)
                return "gone"
            if error.code is Code.INPUT_EMPTY and self._may_still_grow(key, now):
                return self._wait(key, now, "it is empty")
            audit_refusal(self._pipeline.store, self._pipeline.actor, error)  # ingest audits its own
            return self._move(key, self.quarantine, error.one_line(), now, "quarantined")
        if is_recording(data[:12]):
            unfinished = containers.unfinished(data)
            if unfinished is not None and self._may_still_grow(key, now):
                return self._wait(key, now, unfinished)
            return self._take_recording(key, data, now)
        try:
            ingested = self._pipeline.ingest(
                data, path.name, "watch", decoder=self._decoder, file_mtime_ns=key[2]
            )
        except EdgeError as error:
            if error.code in LEAVE_FOR_LATER:
                self._block(key, error, now)
                return "deferred"
            return self._move(key, self.quarantine, error.one_line(), now, "quarantined")
        self._unblock()
        self._on_queued()
        return self._move(
            key, self.processed, None, now, "duplicate" if ingested.outcome.duplicate else "ingested"
        )

    def _may_still_grow(self, key: _Key, now: float) -> bool:
        """Whether a file that looks unfinished has changed within `UNFINISHED_PATIENCE_S`."""
        seen = self._seen.get(key[0])
        return seen is not None and now - seen.stable_since < UNFINISHED_PATIENCE_S

    def _wait(self, key: _Key, now: float, why: str) -> str:
        """Leave an unfinished file in the inbox and look at it again shortly (it is taken once
        finished, or as it is once it has not changed for `UNFINISHED_PATIENCE_S`)."""
        if self._announced.get(key[0]) != key:  # once per state of the file, not every look
            self._announced[key[0]] = key
            log.info(
                "drop folder: %s is not finished (%s); waiting for it (up to %.0f s unchanged)",
                key[0].name,
                why,
                UNFINISHED_PATIENCE_S,
            )
        self._hold(key, _Held(now + max(self.settings.watch.settle_s, UNFINISHED_STEP_S)))
        return "waiting"

    def _take_recording(self, key: _Key, data: bytes, now: float) -> str:
        """A video file (an ultrasound loop exported as MP4, AVI or MKV) analysed as one clip, as
        `edge infer clip.mp4` does, its frames decoded in the guard's worker
        (`Pipeline.recording_decoder`). It was refused as "not a DICOM, PNG or JPEG file".
        The bytes already read and checked are what is analysed, from a private copy under the
        data folder's clips/ (swept like an unfinished recording, should the agent die): the
        dropped path could be swapped for a link after the check. A clip is stored once (by the
        recording's sha256), so a restart mid-way analyses it again and stores it once."""
        folder = self.settings.data_dir / "clips"
        make_dirs(folder)
        content = sha256_hex(data)
        copy = folder / f"{DROPPED}{content[:32]}{key[0].suffix.lower()[:8]}"
        worker = self.settings.worker
        attempts = RecordingAttempts(folder, worker.max_attempts, worker.max_restarts)
        try:
            attempts.begin(content, key[0].name)
            write_atomically(copy, data)
            [analysis] = self._pipeline.analyse_file(copy, source="watch", name=key[0].name, sha256=content)
        except EdgeError as error:  # given up, or the copy could not be written (a full disk)
            if error.code is Code.JOB_ABANDONED:
                audit_refusal(self._pipeline.store, self._pipeline.actor, error)
            analysis = Analysis.refused(key[0].name, error)
        finally:
            remove_quietly(copy)
        if analysis.code != Code.JOB_ABANDONED.value:
            attempts.end(content)
        if analysis.message:  # the reason names the file dropped, not the private copy
            analysis = replace(analysis, message=analysis.message.replace(copy.name, key[0].name))
        code = Code(analysis.code) if analysis.code else None
        if analysis.ok or analysis.duplicate:
            self._unblock()
            return self._move(
                key, self.processed, None, now, "duplicate" if analysis.duplicate else "ingested"
            )
        if code in LEAVE_FOR_LATER or code is Code.JOB_INTERRUPTED:  # the device's state, not the file's
            assert code is not None
            self._block(key, EdgeError(code, analysis.message or ""), now)
            return "deferred"
        return self._move(key, self.quarantine, f"{analysis.code}: {analysis.message}", now, "quarantined")

    def _move(self, key: _Key, target_root: Path, reason: str | None, now: float, outcome: str) -> str:
        """Move the file out of the inbox; if that fails, remember it and try only the move again
        after RETRY_S (it is never decoded, audited or stored twice for this)."""
        try:
            self._move_now(key[0], target_root, reason)
        except (OSError, EdgeError) as exc:
            cause = exc.one_line() if isinstance(exc, EdgeError) else exc.strerror or type(exc).__name__
            log.warning(
                "drop folder: a file cannot be moved to %s/ (%s); tried again in %.0f s",
                target_root.name,
                cause,
                RETRY_S,
            )
            self._hold(key, _Held(now + RETRY_S, target_root, reason, outcome))
            return "held"
        return outcome

    def _move_now(self, path: Path, target_root: Path, reason: str | None) -> None:
        day = target_root / utc_now()[:10]
        make_dirs(day)  # durable: a power cut must not take a moved input's folder away
        target = day / path.name
        counter = 1
        while target.exists():  # the same name dropped twice: keep both
            target = day / f"{path.stem}.{counter}{path.suffix}"
            counter += 1
        if reason is not None:
            write_atomically(target.with_name(target.name + ".reason.txt"), (reason + "\n").encode())
        os.replace(path, target)
        fsync_dir(day)
        fsync_dir(path.parent)
        self._seen.pop(path, None)

    def _block(self, key: _Key, error: EdgeError, now: float) -> None:
        """The store could not take a file: leave it, and every other, until RETRY_S has passed."""
        if self._blocked is None:
            log.warning(
                "drop folder: files cannot be taken now (%s); they stay in the inbox, tried again"
                " every %.0f s",
                error.one_line(),
                RETRY_S,
            )
        self._blocked = error.one_line()
        self._retry_at = now + RETRY_S
        self._hold(key, _Held(now + RETRY_S))

    def _unblock(self) -> None:
        """The store takes files again (or the disk guard came back): every file left is taken."""
        if self._blocked is None:
            return
        log.info("drop folder: the store takes files again")
        self._blocked = None
        self._retry_at = 0.0
        for key in [key for key, held in self._held.items() if held.target is None]:
            del self._held[key]

    def _hold(self, key: _Key, held: _Held) -> None:
        self._held[key] = held
        while len(self._held) > MAX_HELD:  # forgotten: decoded once more, at worst
            self._held.popitem(last=False)

    def _forget_all_but(self, paths: list[Path]) -> None:
        """Memory only for files still in the inbox (one removed by hand is forgotten)."""
        present = set(paths)
        for path in [path for path in self._seen if path not in present]:
            del self._seen[path]
        for path in [path for path in self._announced if path not in present]:
            del self._announced[path]
        for key in [key for key in self._held if key[0] not in present]:
            del self._held[key]

    def run(self, stop: threading.Event) -> None:
        log.info("watching %s every %.1f s", self.inbox, self.settings.watch.interval_s)
        while not stop.is_set():
            try:
                counts = self.scan_once()
                if counts["ingested"] or counts["quarantined"]:
                    log.info("drop folder: %s", {name: count for name, count in counts.items() if count})
            except Exception:  # the watcher must outlive one bad scan
                log.exception("drop folder scan failed")
            stop.wait(self.settings.watch.interval_s)


def recent_refusals(settings: Settings, days: int = 7, limit: int = 3) -> tuple[int, list[dict[str, str]]]:
    """Files the drop folder refused (quarantine/<day>/<name>.reason.txt) in the last `days`
    days: how many, and the newest `limit` (name, reason, when). A refused file never reaches
    the store, so the worklist cannot show it: a technician who dropped one saw nothing."""
    quarantine = settings.inbox.parent / "quarantine"
    try:
        folders = sorted((p for p in quarantine.iterdir() if p.is_dir()), reverse=True)[:days]
    except OSError:
        return 0, []
    found: list[tuple[float, Path]] = []
    for folder in folders:
        try:
            found.extend((entry.stat().st_mtime, entry) for entry in folder.glob("*.reason.txt"))
        except OSError:
            continue
    found.sort(reverse=True)
    newest = []
    for when, path in found[:limit]:
        try:
            reason = path.read_text(errors="replace").strip().splitlines()[0][:300]
        except (OSError, IndexError):
            reason = "(the reason cannot be read)"
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))
        newest.append({"name": path.name.removesuffix(".reason.txt"), "reason": reason, "when": stamp})
    return len(found), newest
