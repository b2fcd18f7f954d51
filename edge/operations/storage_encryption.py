"""Is the patient data on this box encrypted at rest? (issue 17, item 5)

The product relies on the platform's disk encryption (LUKS/dm-crypt; on a Jetson with the key
sealed by OP-TEE, on x86 by the TPM2: docs/install.md, "Encryption at rest") rather than
encrypting the database itself: the images are files beside the database, the store's WAL, fsync
and power-loss guarantees are SQLite's own, and a key the software could read unattended would
sit on the same disk as the data. So this module only *checks*: the data folder (and a drop
folder or swap outside it) must sit on an encrypted block device, a file-system-level encryption
(fscrypt, eCryptfs, gocryptfs) or memory. `edge doctor` reports the verdict; `edge run` warns or,
with `[security] require_encrypted_storage = true`, refuses (STORAGE_NOT_ENCRYPTED).

Everything is read from the mount table and sysfs (world-readable: no root needed), whose roots
are injectable (`Host`) so the tests build the layouts they need.
"""

from __future__ import annotations

import array
import fcntl
import logging
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge.config import Settings
from edge.errors import Code, EdgeError

log = logging.getLogger(__name__)

# cryptsetup names the device-mapper devices it creates `CRYPT-<TYPE>-...`. VERITY, INTEGRITY and
# SUBDEV (a LUKS2 integrity sub-device) carry the prefix too but encrypt nothing: only these do.
ENCRYPTING_DM_TYPES = ("LUKS1", "LUKS2", "PLAIN", "TCRYPT", "BITLK", "FVAULT2", "LOOPAES")
FILE_SYSTEM_ENCRYPTION = {"ecryptfs": "eCryptfs", "fuse.gocryptfs": "gocryptfs"}
MEMORY_FILE_SYSTEMS = {"tmpfs", "ramfs"}
FS_ENCRYPT_FL = 0x00000800  # the inode flag fscrypt sets (linux/fs.h)
# _IOR('f', 1, long): the request size is the platform's long, the kernel writes an int.
FS_IOC_GETFLAGS = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1
MAX_DEPTH = 16  # stacked devices (LVM on LUKS on md ...) are a few levels deep, never this many

HOW_TO = 'docs/install.md, "Encryption at rest"'


def fscrypt_flag(folder: Path) -> bool:
    """Whether `folder` carries fscrypt's encrypt flag (what `lsattr -d` shows as E)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False
    try:
        flags = array.array("i", [0, 0])  # room for a long; the kernel fills the first int
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        return bool(flags[0] & FS_ENCRYPT_FL)
    except OSError:  # ENOTTY/EINVAL: a file system without inode flags (tmpfs, overlay, NFS)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Host:
    """Where the facts are read: the real roots, or a test's."""

    sys_root: Path = Path("/sys")
    mountinfo: Path = Path("/proc/self/mountinfo")
    dev_root: Path = Path("/dev")
    swaps: Path = Path("/proc/swaps")
    fscrypt: Callable[[Path], bool] = field(default=fscrypt_flag)


@dataclass(frozen=True)
class Mount:
    mount_point: PurePosixPath
    device: str  # "major:minor"; major 0 is an anonymous device (tmpfs, btrfs, overlay, NFS)
    fs_type: str
    source: str
    super_options: str


@dataclass(frozen=True)
class Verdict:
    """What holds a path, and whether a thief of the powered-off box could read it."""

    label: str  # "data folder /var/lib/edge"
    holder: str  # "/dev/sda1", "tmpfs", "server:/export"
    state: str  # "encrypted", "memory", "plain" or "unknown"
    detail: str  # how it is encrypted, or why not / why unknown

    @property
    def protected(self) -> bool:
        return self.state in ("encrypted", "memory")

    def sentence(self) -> str:
        if self.state == "encrypted":
            return f"{self.label} is on {self.holder}: {self.detail}"
        if self.state == "memory":
            return f"{self.label} is in memory ({self.holder}): nothing of it outlives a power cut"
        what = "not encrypted" if self.state == "plain" else "encryption cannot be confirmed"
        return (
            f"{self.label} is on {self.holder}, {what}: {self.detail}; a stolen box would hand over "
            f"its patient images and results (put it on a LUKS volume: {HOW_TO})"
        )


def _unescape(text: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as octal escapes.
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def parse_mountinfo(text: str) -> list[Mount]:
    """proc(5): `id parent major:minor root mount-point options [optional...] - type source super`."""
    mounts = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(
            Mount(
                mount_point=PurePosixPath(_unescape(fields[4])),
                device=fields[2],
                fs_type=tail[0],
                source=_unescape(tail[1]),
                super_options=tail[2] if len(tail) > 2 else "",
            )
        )
    return mounts


def mount_of(path: PurePosixPath, mounts: list[Mount]) -> Mount | None:
    """The mount that holds `path`: the deepest mount point above it, the latest of equals
    (a later mount on the same point hides the earlier one)."""
    best: Mount | None = None
    for mount in mounts:
        holds = path == mount.mount_point or mount.mount_point in path.parents
        if holds and (best is None or len(mount.mount_point.parts) >= len(best.mount_point.parts)):
            best = mount
    return best


def _existing(path: Path) -> Path:
    """The folder itself, or the nearest ancestor that exists (it will be created there)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path.resolve()


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


class _Inspector:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.mounts: list[Mount] | None = None

    def _mounts(self) -> list[Mount]:
        if self.mounts is None:
            self.mounts = parse_mountinfo(self.host.mountinfo.read_text())
        return self.mounts

    def path(self, label: str, path: Path, depth: int = 0) -> Verdict:
        if depth > MAX_DEPTH:  # a loop device over a file on a loop device ...
            return Verdict(label, str(path), "unknown", "stacked too deep to follow")
        folder = _existing(path)
        if self.host.fscrypt(folder):
            return Verdict(label, str(folder), "encrypted", "fscrypt (per-file encryption)")
        try:
            mount = mount_of(PurePosixPath(folder), self._mounts())
        except OSError as exc:
            return Verdict(label, "?", "unknown", f"the mount table cannot be read: {exc.strerror}")
        if mount is None:
            return Verdict(label, "?", "unknown", "no mount holds it")
        if mount.fs_type in MEMORY_FILE_SYSTEMS:
            return Verdict(label, mount.fs_type, "memory", "")
        if mount.fs_type in FILE_SYSTEM_ENCRYPTION:
            return Verdict(label, mount.source, "encrypted", FILE_SYSTEM_ENCRYPTION[mount.fs_type])
        if mount.fs_type == "overlay":
            # A container's root: what is written lands in the upper directory's file system.
            upper = re.search(r"(?:^|,)upperdir=([^,]+)", mount.super_options)
            if upper:
                return self.path(label, Path(_unescape(upper.group(1))), depth + 1)
        name = self._block_name(mount)
        if name is None:
            # NFS, CIFS, ZFS, FUSE: whatever encrypts them (if anything) is out of this check's sight.
            detail = f"a {mount.fs_type} file system, not a block device this check can follow"
            return Verdict(label, mount.source, "unknown", detail)
        holder = mount.source if mount.source.startswith("/dev/") else f"/dev/{name}"
        return self._verdict(label, holder, name)

    def device(self, label: str, device: str) -> Verdict:
        """A block device named by its path (`/dev/sda3`, a swap partition)."""
        name = self._name_of_dev(device)
        if name is None:
            return Verdict(label, device, "unknown", "no such block device in sysfs")
        return self._verdict(label, device, name)

    def _verdict(self, label: str, holder: str, name: str) -> Verdict:
        found = self._walk(name, 0)
        if found is None:
            return Verdict(label, holder, "unknown", "sysfs does not describe it")
        encrypted, detail = found
        return Verdict(label, holder, "encrypted" if encrypted else "plain", detail)

    def _block_name(self, mount: Mount) -> str | None:
        major = mount.device.partition(":")[0]
        if major != "0":
            node = self.host.sys_root / "dev" / "block" / mount.device
            if node.exists():
                return node.resolve().name
        # btrfs reports an anonymous device number; its source still names the device.
        if mount.source.startswith("/dev/"):
            return self._name_of_dev(mount.source)
        return None

    def _name_of_dev(self, device: str) -> str | None:
        relative = device.removeprefix("/dev/")
        name = (self.host.dev_root / relative).resolve().name  # /dev/mapper/root -> dm-0
        return name if (self.host.sys_root / "class" / "block" / name).exists() else None

    def _walk(self, name: str, depth: int) -> tuple[bool, str] | None:
        """(encrypted, how or why not) for a block device and what it is stacked on."""
        node = self.host.sys_root / "class" / "block" / name
        if depth > MAX_DEPTH or not node.exists():
            return None
        node = node.resolve()
        uuid = _read(node / "dm" / "uuid") or ""
        kind = uuid.split("-")[1] if uuid.startswith("CRYPT-") else ""
        if kind in ENCRYPTING_DM_TYPES:
            mapped = _read(node / "dm" / "name") or name
            return True, f"{kind} (dm-crypt) as /dev/mapper/{mapped}"
        backing = _read(node / "loop" / "backing_file")
        if backing:  # a loop device is as safe as the file behind it
            inner = self.path("loop", Path(backing), depth + 1)
            return inner.protected, f"loop device over {backing} ({inner.detail or inner.state})"
        if (node / "partition").exists():
            below = self._walk(node.parent.name, depth + 1)  # a partition of an md or dm device
            return below if below is not None else (False, f"no dm-crypt layer under /dev/{name}")
        slaves = sorted(p.name for p in (node / "slaves").iterdir()) if (node / "slaves").is_dir() else []
        if not slaves:
            return False, f"no dm-crypt layer down to /dev/{name}"
        verdicts = [self._walk(slave, depth + 1) for slave in slaves]
        plain = [s for s, v in zip(slaves, verdicts, strict=True) if v is None or not v[0]]
        if plain:  # LVM or RAID over several devices: every one must be encrypted
            return False, f"/dev/{name} spans /dev/{plain[0]}, which has no dm-crypt layer"
        return True, verdicts[0][1] if verdicts[0] else ""


def _swaps(host: Host) -> list[tuple[str, str]]:
    """(path, type) of each active swap area; zram lives in memory."""
    text = _read(host.swaps) or ""
    rows = [line.split() for line in text.splitlines()[1:]]
    return [(_unescape(row[0]), row[1]) for row in rows if len(row) > 1]


def inspect(settings: Settings, host: Host | None = None) -> list[Verdict]:
    """The data folder, a watched drop folder outside it, and each swap area (memory holding
    decoded images can be paged out to it)."""
    host = host or Host()
    inspector = _Inspector(host)
    out = [inspector.path(f"data folder {settings.data_dir}", settings.data_dir)]
    inbox = settings.inbox
    if settings.watch.enabled and not Path(os.path.abspath(inbox)).is_relative_to(
        os.path.abspath(settings.data_dir)
    ):
        out.append(inspector.path(f"drop folder {inbox}", inbox))
    for path, kind in _swaps(host):
        label = f"swap {path}"
        if kind == "partition" and Path(path).name.startswith("zram"):
            continue  # compressed RAM (a Jetson has one per core): nothing reaches a disk
        if kind == "partition":
            out.append(inspector.device(label, path))
        else:
            out.append(inspector.path(label, Path(path)))
    return out


def _safe_inspect(settings: Settings, host: Host | None) -> list[Verdict]:
    try:
        return inspect(settings, host)
    except OSError as exc:  # no /proc (not Linux), or an unreadable sysfs: say so, never crash
        label = f"data folder {settings.data_dir}"
        return [Verdict(label, "?", "unknown", f"the host cannot be inspected: {exc}")]


def level_for(settings: Settings, verdict: Verdict) -> str:
    """The doctor's level: pass when protected or accepted, else warn, or fail when required."""
    required = settings.security.require_encrypted_storage
    if verdict.protected or required is False:
        return "pass"
    return "fail" if required is True else "warn"


def doctor_lines(settings: Settings, host: Host | None = None) -> list[tuple[str, str]]:
    """(level, message) per place checked, for `edge doctor`."""
    out = []
    for verdict in _safe_inspect(settings, host):
        message = verdict.sentence()
        if not verdict.protected and settings.security.require_encrypted_storage is False:
            message += " (accepted: [security] require_encrypted_storage = false)"
        out.append((level_for(settings, verdict), message))
    return out


def enforce(settings: Settings, host: Host | None = None) -> None:
    """At the agent's start: refuse (required), warn (default) or say nothing (false)."""
    required = settings.security.require_encrypted_storage
    if required is False:
        return
    exposed = [v for v in _safe_inspect(settings, host) if not v.protected]
    if not exposed:
        return
    sentence = "; ".join(v.sentence() for v in exposed)
    if required is True:
        raise EdgeError(
            Code.STORAGE_NOT_ENCRYPTED,
            f"{sentence}. [security] require_encrypted_storage = true: not starting",
        )
    log.warning("%s: %s", Code.STORAGE_NOT_ENCRYPTED.value, sentence)
