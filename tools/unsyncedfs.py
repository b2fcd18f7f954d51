"""A file system that forgets everything not fsynced: power loss for tests, on FUSE.

    python -m tools.unsyncedfs DISK MOUNTPOINT        # serves until unmounted or killed

The daemon keeps every file's content and every directory's entries in its own memory (that is
the "page cache") and writes to DISK (a folder on a real file system, the "platter") only what
an fsync makes durable:

- fsync / fdatasync of a file: its content and size as they are now;
- fsync of a directory: its entries (name -> inode, kind, mode) as they are now. A new name, a
  rename or an unlink is durable only once its directory was fsynced (the strict POSIX reading;
  ext4 and XFS often make more durable, never less).

SIGKILL of the daemon is the power cut: all it held in memory is gone, and the next mount of
DISK shows exactly the synced state (a directory that was never fsynced comes back empty, a
file whose name was never made durable does not come back at all). `PowerDisk` below mounts,
cuts and remounts it for the campaign (tools/powercut.py) and the tests; docs/power-loss.md
says what this models of real power loss and what it does not.

The kernel's page cache sits above FUSE too: writes reach this daemon as the write(2) calls
return (no writeback cache), shared-mmap writes (SQLite's -shm) when the kernel writes the page
back. A cut therefore also unmounts, and a reboot mounts afresh, so no cached page survives.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

PAGE = 4096
ROOT = 1


class Node:
    """An inode: a file (content, dirty pages) or a directory (entries)."""

    def __init__(self, ino: int, mode: int) -> None:
        self.ino = ino
        self.mode = mode
        self.data = bytearray()
        self.loaded = True  # a file read from the disk is loaded lazily
        self.dirty: set[int] = set()  # pages written since the last fsync
        self.size_dirty = False
        self.entries: dict[str, Node] = {}
        self.nlink = 1
        self.times = time.time()
        self.name = ""  # the last name it was given: what the cut report counts it as

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class Platter:
    """The durable state, a folder: `inodes/<ino>` (file content), `dirs/<ino>.json` (entries)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "inodes").mkdir(parents=True, exist_ok=True)
        (root / "dirs").mkdir(parents=True, exist_ok=True)

    def content_path(self, ino: int) -> Path:
        return self.root / "inodes" / str(ino)

    def load(self) -> tuple[Node, int]:
        """The tree as the last fsyncs left it; returns (root, next free inode number).
        Inodes no durable entry reaches are freed, as fsck would."""
        nodes: dict[int, Node] = {}

        def node_for(ino: int, mode: int) -> Node:
            if ino in nodes:
                nodes[ino].nlink += 1
                return nodes[ino]
            node = nodes[ino] = Node(ino, mode)
            if node.is_dir:
                table = self.root / "dirs" / f"{ino}.json"
                entries = json.loads(table.read_text()) if table.exists() else {}
                node.entries = {
                    name: node_for(child, child_mode) for name, (child, child_mode) in entries.items()
                }
            else:
                node.loaded = False
            return node

        root = node_for(ROOT, stat.S_IFDIR | 0o755)
        for folder, suffix in (("inodes", ""), ("dirs", ".json")):
            for path in (self.root / folder).iterdir():
                ino = path.name.removesuffix(suffix)
                if not ino.isdigit() or int(ino) not in nodes:
                    path.unlink()
        return root, max(nodes) + 1

    def read_content(self, node: Node) -> None:
        if not node.loaded:
            path = self.content_path(node.ino)
            node.data = bytearray(path.read_bytes()) if path.exists() else bytearray()
            node.loaded = True

    def sync_file(self, node: Node) -> None:
        """Write the file's dirty pages and size in place (a cut in the middle of this leaves
        some of them written: fsync is not atomic on a disk either)."""
        if not node.dirty and not node.size_dirty:
            return
        fd = os.open(self.content_path(node.ino), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, len(node.data))
            for page in sorted(node.dirty):
                chunk = node.data[page * PAGE : (page + 1) * PAGE]
                if chunk:
                    os.pwrite(fd, chunk, page * PAGE)
        finally:
            os.close(fd)
        node.dirty.clear()
        node.size_dirty = False

    def sync_dir(self, node: Node) -> None:
        """Replace the directory's table at once (a directory block is written whole)."""
        table = self.root / "dirs" / f"{node.ino}.json"
        partial = table.with_suffix(".part")
        entries = {name: (child.ino, child.mode) for name, child in node.entries.items()}
        partial.write_text(json.dumps(entries))
        os.replace(partial, table)


def _operations_base() -> type:
    import mfusepy

    return mfusepy.Operations  # type: ignore[no-any-return]


class Gauge:
    """What the daemon holds unsynced, kept current in a small file outside the mount, so that
    after the cut the harness can tell what the cut threw away: (SQLite WAL or journal files,
    other files, directories) with unsynced changes, and fsyncs served so far."""

    FIELDS = ("wal", "files", "dirs", "fsyncs", "shm")

    def __init__(self, path: Path) -> None:
        import mmap

        path.write_bytes(bytes(8 * len(self.FIELDS)))
        self._file = path.open("r+b")
        self._map = mmap.mmap(self._file.fileno(), 8 * len(self.FIELDS))
        self.fsyncs = 0

    def show(self, unsynced: set[Node]) -> None:
        dirs = sum(node.is_dir for node in unsynced)
        wal = sum(node.name.endswith(("-wal", "-journal")) for node in unsynced if not node.is_dir)
        shm = sum(node.name.endswith("-shm") for node in unsynced)  # never synced, never data
        values = (wal, len(unsynced) - dirs - wal - shm, dirs, self.fsyncs, shm)
        self._map[:] = b"".join(value.to_bytes(8, "little") for value in values)

    @classmethod
    def read(cls, path: Path) -> dict[str, int]:
        data = path.read_bytes()
        return {name: int.from_bytes(data[8 * i : 8 * i + 8], "little") for i, name in enumerate(cls.FIELDS)}


class UnsyncedFS(_operations_base()):  # type: ignore[misc]
    """The FUSE operations over the in-memory tree; one lock, so every operation is atomic."""

    use_ns = True

    def __init__(self, platter: Platter, gauge: Gauge | None = None) -> None:
        self.platter = platter
        self.gauge = gauge
        self.unsynced: set[Node] = set()  # files and directories changed since their last fsync
        self.root, first_free = platter.load()
        self.numbers = itertools.count(first_free)
        self.handles: dict[int, Node] = {}
        self.handle_numbers = itertools.count(1)
        self.mutex = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def _lookup(self, path: str) -> Node:
        node = self.root
        for part in path.strip("/").split("/"):
            if not part:
                continue
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            if part not in node.entries:
                raise OSError(errno.ENOENT, path)
            node = node.entries[part]
        return node

    def _parent(self, path: str) -> tuple[Node, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise OSError(errno.ENOTDIR, path)
        return parent, name

    def _node(self, path: str | None, fh: int | None) -> Node:
        if fh and fh in self.handles:
            return self.handles[fh]
        if path is None:
            raise OSError(errno.EBADF, "no path, no handle")
        return self._lookup(path)

    def _changed(self, *nodes: Node) -> None:
        self.unsynced.update(nodes)
        if self.gauge is not None:
            self.gauge.show(self.unsynced)

    def _synced(self, node: Node) -> None:
        self.unsynced.discard(node)
        if self.gauge is not None:
            self.gauge.fsyncs += 1
            self.gauge.show(self.unsynced)

    def _file(self, node: Node) -> Node:
        self.platter.read_content(node)
        return node

    def _new(self, path: str, mode: int) -> Node:
        parent, name = self._parent(path)
        if name in parent.entries:
            raise OSError(errno.EEXIST, path)
        node = Node(next(self.numbers), mode)
        node.size_dirty = not node.is_dir  # an empty file still needs its inode on the disk
        node.name = name
        parent.entries[name] = node
        parent.times = time.time()
        self._changed(parent, node)
        return node

    # ------------------------------------------------------------------ metadata

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        with self.mutex:
            node = self._node(path, fh)
            size = len(self._file(node).data) if not node.is_dir else PAGE
            ns = int(node.times * 1e9)
            links = 2 + sum(child.is_dir for child in node.entries.values()) if node.is_dir else node.nlink
            return {
                "st_mode": node.mode,
                "st_ino": node.ino,
                "st_nlink": links,
                "st_size": size,
                "st_blocks": (size + 511) // 512,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": ns,
                "st_mtime": ns,
                "st_ctime": ns,
            }

    def readdir(self, path: str, fh: int) -> list[str]:
        with self.mutex:
            return [".", "..", *self._lookup(path).entries]

    def access(self, path: str, amode: int) -> int:
        with self.mutex:
            self._lookup(path)
        return 0

    def chmod(self, path: str | None, mode: int) -> int:
        with self.mutex:
            node = self._lookup(path or "/")
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(mode)
        return 0

    def chown(self, path: str | None, uid: int, gid: int) -> int:
        return 0

    def utimens(self, path: str | None, times: tuple[int, int] | None = None) -> int:
        with self.mutex:
            self._lookup(path or "/").times = (times[1] / 1e9) if times else time.time()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        usage = shutil.disk_usage(self.platter.root)
        return {
            "f_bsize": PAGE,
            "f_frsize": PAGE,
            "f_blocks": usage.total // PAGE,
            "f_bfree": usage.free // PAGE,
            "f_bavail": usage.free // PAGE,
            "f_namemax": 255,
        }

    # ------------------------------------------------------------------ names

    def mkdir(self, path: str, mode: int) -> int:
        with self.mutex:
            self._new(path, stat.S_IFDIR | stat.S_IMODE(mode))
        return 0

    def rmdir(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            node = self._lookup(path)
            if not node.is_dir:
                raise OSError(errno.ENOTDIR, path)
            if node.entries:
                raise OSError(errno.ENOTEMPTY, path)
            del parent.entries[name]
            self._changed(parent)
        return 0

    def unlink(self, path: str) -> int:
        with self.mutex:
            parent, name = self._parent(path)
            node = self._lookup(path)
            if node.is_dir:
                raise OSError(errno.EISDIR, path)
            del parent.entries[name]
            node.nlink -= 1
            self._changed(parent)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self.mutex:
            old_parent, old_name = self._parent(old)
            node = self._lookup(old)
            new_parent, new_name = self._parent(new)
            target = new_parent.entries.get(new_name)
            if target is not None and target.is_dir and target.entries:
                raise OSError(errno.ENOTEMPTY, new)
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = node
            node.name = new_name
            self._changed(old_parent, new_parent)
        return 0

    # ------------------------------------------------------------------ content

    def create(self, path: str, mode: int, flags: int = 0) -> int:
        with self.mutex:
            node = self._new(path, stat.S_IFREG | stat.S_IMODE(mode))
            number = next(self.handle_numbers)
            self.handles[number] = node
            return number

    def open(self, path: str, flags: int) -> int:
        with self.mutex:
            node = self._lookup(path)
            number = next(self.handle_numbers)
            self.handles[number] = node
            return number

    def release(self, path: str | None, fh: int) -> int:
        with self.mutex:
            self.handles.pop(fh, None)
        return 0

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        with self.mutex:
            return bytes(self._file(self._node(path, fh)).data[offset : offset + size])

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.mutex:
            node = self._file(self._node(path, fh))
            end = offset + len(data)
            if end > len(node.data):
                node.data.extend(bytes(end - len(node.data)))
                node.size_dirty = True
            node.data[offset:end] = data
            node.dirty.update(range(offset // PAGE, (end - 1) // PAGE + 1))
            node.times = time.time()
            self._changed(node)
            return len(data)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.mutex:
            node = self._file(self._node(path, fh))
            if length < len(node.data):
                del node.data[length:]
                node.dirty.add(length // PAGE)  # the partial last page now ends in zeros
            else:
                node.data.extend(bytes(length - len(node.data)))
            node.size_dirty = True
            self._changed(node)
        return 0

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            node = self._file(self._node(path, fh))
            self.platter.sync_file(node)
            self._synced(node)
        return 0

    def opendir(self, path: str) -> int:
        with self.mutex:
            node = self._lookup(path)
            number = next(self.handle_numbers)
            self.handles[number] = node
            return number

    def releasedir(self, path: str | None, fh: int) -> int:
        return self.release(path, fh)

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self.mutex:
            node = self._node(path, fh)
            self.platter.sync_dir(node)
            self._synced(node)
        return 0


def serve(disk: Path, mountpoint: Path, gauge: Path | None = None) -> None:
    """Mount and serve in the foreground (returns when unmounted)."""
    import mfusepy

    operations = UnsyncedFS(Platter(disk), Gauge(gauge) if gauge else None)
    mfusepy.FUSE(
        operations,
        str(mountpoint),
        foreground=True,
        nothreads=False,
        hard_remove=True,  # an unlinked open file is kept by its handle, not renamed to .fuse_hidden*
        kernel_cache=True,  # all access goes through this mount, so cached pages stay true
        fsname="unsyncedfs",
        subtype="unsyncedfs",
    )


class PowerDisk:
    """A data directory that can lose power: `mount()`, `cut()`, then `mount()` again.

    `cut()` SIGKILLs the daemon first (nothing more can reach the platter), then lazily
    unmounts; the caller kills its own processes that used the mount. `close()` always leaves
    nothing mounted and no daemon running.
    """

    def __init__(self, disk: Path, mountpoint: Path, log: Path | None = None) -> None:
        self.disk = disk
        self.mountpoint = mountpoint
        self.log = log
        self.gauge = disk.with_name(disk.name + ".gauge")
        self.daemon: subprocess.Popen[bytes] | None = None

    @staticmethod
    def unavailable() -> str | None:
        """Why this machine cannot run it, or None."""
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse"
        if not (shutil.which("fusermount3") or shutil.which("fusermount")):
            return "no fusermount3 (apt-get install fuse3)"
        try:
            import mfusepy  # noqa: F401
        except (ImportError, OSError) as exc:
            return f"mfusepy or libfuse missing: {exc}"
        return None

    def mount(self, timeout_s: float = 20) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.disk.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        command = [
            sys.executable,
            "-m",
            "tools.unsyncedfs",
            str(self.disk),
            str(self.mountpoint),
            str(self.gauge),
        ]
        repo = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
        self.daemon = subprocess.Popen(command, stdout=out, stderr=out, env=env, cwd=repo)
        deadline = time.monotonic() + timeout_s
        while not os.path.ismount(self.mountpoint):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"unsyncedfs did not mount {self.mountpoint} (see {self.log})")
            time.sleep(0.02)

    def cut(self) -> dict[str, int]:
        """Power off: whatever was not fsynced is gone. Returns what was lost (the `Gauge`:
        how many WAL/journal files, other files and directories had unsynced changes)."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGKILL)
            self.daemon.wait()
        self.daemon = None
        self._unmount(lazy=True)
        return Gauge.read(self.gauge) if self.gauge.exists() else {}

    def sync_all(self) -> None:
        """fsync every file and directory under the mount (what `sync` before a clean
        shutdown does); for setting up a state that must survive the first cut."""
        for folder, _dirs, files in os.walk(self.mountpoint):
            for name in [*files, "."]:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def close(self) -> None:
        """Leave nothing mounted and no daemon running (a cut: nothing more is synced)."""
        self.cut()

    def _unmount(self, *, lazy: bool) -> None:
        if not os.path.ismount(self.mountpoint) and not _stale_mount(self.mountpoint):
            return
        tool = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"
        subprocess.run([tool, "-u", *(["-z"] if lazy else []), str(self.mountpoint)], check=False)
        if _stale_mount(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)

    def __enter__(self) -> PowerDisk:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stale_mount(path: Path) -> bool:
    """A mount whose daemon died answers ENOTCONN; os.path.ismount then says False."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


if __name__ == "__main__":
    serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
