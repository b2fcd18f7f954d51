"""Decoding in a child process, bounded in time and memory.

Image decoders are C code fed with bytes from the network; a crafted or broken file can hang
them or make them allocate without end. Each decode therefore runs in a worker process with an
address-space limit (RLIMIT_AS) and a deadline: on timeout the worker is killed and replaced,
and the input is refused with DECODE_TIMEOUT; if the worker dies (segfault, out of its memory
bound) the input is refused with DECODE_CRASHED. The agent itself never sees the fault.

Workers are plain `python -m edge.ingest.guard` subprocesses speaking length-prefixed pickles
over their stdin/stdout, so nothing depends on how the parent was started or on forking a
threaded process (the DICOM listener is threaded).

A worker whose resident memory is above `recycle_mb` after a job is replaced (issue 17): after
one large input it kept ~900 MB of heap, which counts against its address-space bound, so the
next large study, one it had accepted before, was refused as DECODE_CRASHED. Each answer
carries the worker's resident size, read from /proc after the job's objects are freed.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
from typing import IO, Any

import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.decode import DecodedImage, decode_bytes
from edge.imaging.dicom import display_frames

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">Q")


def _write_frame(stream: IO[bytes], payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes]) -> Any:
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return pickle.loads(_read_exact(stream, size))


def resident_bytes() -> int:
    """This process's resident set now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def serve(memory_mb: int) -> None:
    """The worker's loop: limit its own memory, then decode requests until stdin closes."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but frames on the real stdout
    while True:
        try:
            op, data, name = _read_frame(source)
        except EOFError:
            return
        try:
            result: Any = decode_bytes(data, name) if op == "image" else list(display_frames(data))
        except EdgeError as error:
            result = error
        except MemoryError:
            result = EdgeError(
                Code.DECODE_CRASHED, f"{name} needs more memory than the {memory_mb} MB decode bound"
            )
        except Exception as exc:  # noqa: BLE001 - anything else is still a refusal, not a crash
            result = EdgeError(
                Code.IMAGE_DECODE_FAILED, f"{name} could not be decoded ({type(exc).__name__})"
            )
        _write_frame(sink, result)
        del data, result
        gc.collect()  # the job's objects are freed before the size is read
        _write_frame(sink, resident_bytes())


class _Worker:
    def __init__(self, memory_mb: int, quiet: bool = False) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge.ingest.guard", str(memory_mb)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL if quiet else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.resident = 0
        """Its resident bytes after the last job."""

    def ask(self, op: str, data: bytes, name: str, timeout_s: float) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        _write_frame(self.process.stdin, (op, data, name))
        ready, _, _ = select.select([self.process.stdout], [], [], timeout_s)
        if not ready:
            raise TimeoutError
        result = _read_frame(self.process.stdout)
        self.resident = int(_read_frame(self.process.stdout))  # sent right after the answer
        return result

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):  # unflushed bytes to a dead process
                    stream.close()


class GuardedDecoder:
    """`decode(data, name)` like `decode_bytes`, but in bounded worker processes."""

    def __init__(
        self,
        timeout_s: float = 30.0,
        memory_mb: int = 2048,
        workers: int = 1,
        recycle_mb: int = 512,
        *,
        quiet: bool = False,
    ) -> None:
        """`quiet`: the workers' stderr (decoders' warnings, a dying worker's traceback) is
        dropped, for a terminal a screen is drawn on (the TUI); the refusal still says what
        happened. Otherwise it is the parent's (the agent's journal)."""
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.recycle_mb = recycle_mb
        self.quiet = quiet
        self.recycled = 0
        """Workers replaced for their size after a job (not for a timeout or a crash)."""
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        for _ in range(max(1, workers)):
            self._add()

    def _add(self) -> None:
        worker = _Worker(self.memory_mb, self.quiet)
        with self._lock:
            self._all.append(worker)
        self._idle.put(worker)

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            if worker in self._all:
                self._all.remove(worker)
        self._add()

    def decode(self, data: bytes, name: str = "input") -> DecodedImage:
        result = self._ask("image", data, name)
        if not isinstance(result, DecodedImage):
            raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder answered nonsense")
        return result

    def frames(self, data: bytes, name: str = "cine") -> list[tuple[float, np.ndarray]]:
        """Every display frame of a multi-frame DICOM (`display_frames`), decoded in a worker
        under the same bounds: the video path's cines, which the agent decoded in-process."""
        result = self._ask("frames", data, name)
        if not isinstance(result, list):
            raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder answered nonsense")
        return result

    def _ask(self, op: str, data: bytes, name: str) -> Any:
        worker = self._idle.get()
        healthy = True
        try:
            result = worker.ask(op, data, name, self.timeout_s)
        except TimeoutError as exc:
            healthy = False
            log.error("decoding took over %.0f s: decoder process killed and replaced", self.timeout_s)
            raise EdgeError(
                Code.DECODE_TIMEOUT, f"{name}: decoding took longer than {self.timeout_s:g} s"
            ) from exc
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            healthy = False
            log.error("the decoder process died: replaced")
            raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder crashed on this file") from exc
        finally:
            if healthy and worker.resident > self.recycle_mb * 1024 * 1024:
                log.info(
                    "the decoder process holds %d MB after %s: replaced (over [ingest] decode_recycle_mb)",
                    worker.resident // (1024 * 1024),
                    name,
                )
                self.recycled += 1
                self._replace(worker)
            elif healthy:
                self._idle.put(worker)
            else:
                self._replace(worker)
        if isinstance(result, EdgeError):
            raise result
        return result

    def pids(self) -> list[int]:
        """The worker processes' ids (which process decodes: for tests and `edge status`)."""
        with self._lock:
            return [worker.process.pid for worker in self._all]

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for worker in workers:
            worker.kill()

    def __enter__(self) -> GuardedDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
