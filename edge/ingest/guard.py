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

A cine's frames are streamed, one message per frame, from a worker of their own that lives for
that cine: the worker once answered with every frame at once, and a 30 s 800x600 cine (900
frames, 1.3 GB decoded) was DECODE_CRASHED under the default 2 GB bound, while the parent held
all of them too. The pipe's buffer paces the worker to the video path's reading, so neither side
holds the decoded cine, and the pool's workers stay free for ingest while the clip is analysed.
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
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import cv2
import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.decode import DecodedImage, decode_bytes
from edge.imaging.dicom import display_frames
from edge.imaging.dicom_video import FFMPEG_OPTIONS
from edge.ingest import scratch
from edge.ingest.scratch import Scratch
from edge.video.source import RECORDING_FFMPEG_OPTIONS, recorded_frames

if TYPE_CHECKING:
    from edge.config import IngestSettings

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">Q")
CINE_BUDGET_FACTOR = 10
"""A cine's frames get this many decode timeouts of decoding in all (300 s by default; a 30 s
800x600 JPEG cine took 9 s here): a frame is bounded on its own, a cine of many slow frames
was not."""


def _write_frame(stream: IO[bytes], payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def _write_request(stream: IO[bytes], op: str, data: bytes, name: str, budget_s: float) -> None:
    """A request: its header pickled, then the input's bytes as they are. Pickled with them, a
    512 MB input cost the sender two more copies of itself (the pickle, then header + pickle).
    `budget_s`: the decoding time a cine's frames get together."""
    _write_frame(stream, (op, name, len(data), budget_s))
    stream.write(data)
    stream.flush()


def _read_request(stream: IO[bytes]) -> tuple[str, bytes, str, float]:
    op, name, size, budget_s = _read_frame(stream)
    return op, _read_exact(stream, size), name, budget_s


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    """`size` bytes; a buffered stream's `read` allocates them once (a request's input)."""
    chunks, remaining = [], size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            raise EOFError("the other side closed the pipe")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _read_frame(stream: IO[bytes], limit: int = 1 << 40) -> Any:
    """The next pickled message, read into one buffer: the answers come from the raw pipe,
    64 KB a read, and joining the pieces of a large decoded image cost a copy of it. A length
    over `limit` (more than the worker could hold) is a stream out of step: UnpicklingError."""
    (size,) = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    if size > limit:
        raise pickle.UnpicklingError(f"a message of {size} bytes: the stream is out of step")
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        got = stream.readinto(view[done:])  # type: ignore[attr-defined]
        if not got:
            raise EOFError("the other side closed the pipe")
        done += got
    return pickle.loads(buffer)


def resident_bytes() -> int:
    """This process's resident set now (Linux /proc), else its peak (getrusage)."""
    try:
        with open("/proc/self/statm", "rb") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _refusal(exc: BaseException, name: str, memory_mb: int) -> EdgeError:
    """What a worker answers for a failed decode: the decoder's own refusal, else a coded one."""
    if isinstance(exc, EdgeError):
        return exc
    if isinstance(exc, MemoryError) or _out_of_memory(exc):
        return EdgeError(
            Code.DECODE_CRASHED, f"{name} needs more memory than the {memory_mb} MB decode bound"
        )
    said = str(exc).strip().splitlines()  # what the decoder said, its first line: "error" alone
    detail = f"{type(exc).__name__}: {said[0]}" if said else type(exc).__name__  # (OpenCV) told nothing
    return EdgeError(Code.IMAGE_DECODE_FAILED, f"{name} could not be decoded ({detail[:160]})")


def _out_of_memory(exc: BaseException) -> bool:
    """OpenCV's own MemoryError: a picture FFmpeg decoded, too large to copy under the bound (a
    7.5 MB AVI of 16000x16000 pictures took a reader 5.6 GB)."""
    return isinstance(exc, cv2.error) and getattr(exc, "code", None) == cv2.Error.StsNoMem


def _stream_frames(
    sink: IO[bytes], frames: Generator[tuple[float, np.ndarray], None, None], name: str, memory_mb: int,
    budget_s: float,
) -> None:  # fmt: skip
    """A cine's or a recording's frames, one message each, then None; or the refusal that ended
    them. The time spent decoding them (not waiting for the reader) is bounded by `budget_s` in
    all: a frame is bounded by the reader's deadline, and a cine of many slow frames by this."""
    index, spent = 0, 0.0
    try:
        while True:
            started = time.monotonic()
            frame = next(frames, None)
            spent += time.monotonic() - started
            if frame is None:
                break
            if spent > budget_s:
                raise TimeoutError
            _write_frame(sink, frame)
            index += 1
            del frame
    except TimeoutError:
        late = f"{name}: its frames took longer than {budget_s:g} s to decode (at frame {index + 1})"
        _write_frame(sink, EdgeError(Code.DECODE_TIMEOUT, late))
        return
    except Exception as exc:  # noqa: BLE001 - MemoryError included: a refusal, not a crash
        failure = _refusal(exc, name, memory_mb)
        if index:
            failure = EdgeError(failure.code, f"frame {index + 1}: {failure.message}")
        _write_frame(sink, failure)
        return
    finally:
        frames.close()
    _write_frame(sink, None)


_FRAMES: dict[str, Any] = {
    "frames": display_frames,  # a DICOM cine: its bytes
    "recording": lambda path: recorded_frames(path.decode()),  # a video file: its path
}
"""The requests answered with a stream of frames, and what makes the frames of each."""


def serve(memory_mb: int) -> None:
    """The worker's loop: limit its own memory, then decode requests until stdin closes."""
    import resource

    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    # The answers get the real stdout, buffered (each write whole) and to themselves: what C
    # code prints to descriptor 1 goes to stderr, where it cannot put the stream out of step.
    source, sink = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        try:
            op, data, name, budget_s = _read_request(source)
        except EOFError:
            return
        result: Any = None
        if op in _FRAMES:
            _stream_frames(sink, _FRAMES[op](data), name, memory_mb, budget_s)
        else:
            try:
                result = decode_bytes(data, name)
            except Exception as exc:  # noqa: BLE001 - anything else is still a refusal, not a crash
                result = _refusal(exc, name, memory_mb)
            _write_frame(sink, result)
        del data, result
        gc.collect()  # the job's objects are freed before the size is read
        _write_frame(sink, resident_bytes())


class _Worker:
    """One decoder process. Its temporary files (a video cine's stream, GDCM's copy of a file:
    the patient's pictures) go to a scratch folder of its own, removed when it is killed: a
    worker killed mid-decode could not remove them itself."""

    def __init__(self, memory_mb: int, quiet: bool = False, ffmpeg_options: str = FFMPEG_OPTIONS) -> None:
        self.limit = memory_mb * 1024 * 1024
        self.scratch = Scratch()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.scratch.path)}
        env["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = ffmpeg_options  # its formats only, files only
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "edge.ingest.guard", str(memory_mb)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL if quiet else None,
                env=env,
            )
        except BaseException:
            self.scratch.remove()
            raise
        self.resident = 0
        """Its resident bytes after the last job."""

    def send(self, op: str, data: bytes, name: str, budget_s: float = 0.0) -> None:
        assert self.process.stdin is not None
        _write_request(self.process.stdin, op, data, name, budget_s)

    def receive(self, timeout_s: float) -> Any:
        """The worker's next message, within `timeout_s` (TimeoutError)."""
        assert self.process.stdout is not None
        # Unbuffered: a buffered reader may already hold the next messages of a stream, which
        # poll, asking the pipe, would not see. (poll, not select: no limit on the descriptor.)
        answers = self.process.stdout.raw  # type: ignore[attr-defined]
        waiting = select.poll()
        waiting.register(answers.fileno(), select.POLLIN)
        if not waiting.poll(max(0, int(timeout_s * 1000))):
            raise TimeoutError
        return _read_frame(answers, self.limit)

    def ask(self, op: str, data: bytes, name: str, timeout_s: float) -> Any:
        self.send(op, data, name)
        result = self.receive(timeout_s)
        self.resident = int(self.receive(timeout_s))  # sent right after the answer
        return result

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        self.scratch.remove()
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
        self.cine_budget_s = CINE_BUDGET_FACTOR * timeout_s
        """The decoding time a cine's frames get together (each frame: `timeout_s`)."""
        self._closing = threading.Event()
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self.size = max(1, workers)
        self._short = 0
        """Workers that could not be started again (memory, processes, /tmp full): retried."""
        scratch.sweep()  # what a decoder left when its agent died
        for _ in range(self.size):
            self._add()

    @classmethod
    def from_settings(
        cls, ingest: IngestSettings, workers: int = 1, *, quiet: bool = False
    ) -> GuardedDecoder:
        """The decoder `[ingest]` describes (its timeout, memory bound and recycling size)."""
        return cls(
            ingest.decode_timeout_s, ingest.decode_memory_mb, workers, ingest.decode_recycle_mb, quiet=quiet
        )

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
            self._short += 1
        self._top_up()

    def _top_up(self) -> None:
        """Start the workers missing; one that cannot start is tried again at the next decode
        (a pool left empty waited for ever)."""
        with self._lock:
            short, self._short = self._short, 0
        for _ in range(short):
            try:
                self._add()
            except OSError as exc:
                log.error("no decoder process could start (%s): tried again at the next decode", exc)
                with self._lock:
                    self._short += 1

    def _take(self, name: str) -> _Worker:
        self._top_up()
        with self._lock:
            none_left = self._short >= self.size
        if none_left:
            raise EdgeError(Code.DECODER_UNAVAILABLE, f"{name}: no decoder process could start")
        return self._idle.get()

    def decode(self, data: bytes, name: str = "input") -> DecodedImage:
        result = self._ask("image", data, name)
        if not isinstance(result, DecodedImage):
            raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder answered nonsense")
        return result

    def frames(self, data: bytes, name: str = "cine") -> Iterator[tuple[float, np.ndarray]]:
        """Every display frame of a multi-frame DICOM (`display_frames`), lazily, decoded in a
        worker of this cine's own under the same memory bound; each frame must come within
        `timeout_s`, and all of them within `cine_budget_s` of decoding. A worker that dies or
        hangs ends them with DECODE_CRASHED or DECODE_TIMEOUT; a frame the decoder refuses ends
        them with its refusal; `close` (the agent stopping) ends them with JOB_INTERRUPTED, and
        a worker that cannot start with DECODER_UNAVAILABLE: the job goes back to the queue.
        Closing the iterator early (the clip's limit) kills the worker."""
        return self._streamed("frames", data, name, FFMPEG_OPTIONS)

    def recording(self, path: Path) -> Iterator[tuple[float, np.ndarray]]:
        """A video file's frames (`recorded_frames`: `edge infer clip.mp4`), as `frames` streams
        a cine's, from a worker whose FFmpeg opens only a recording's containers. Its decoder is
        the same C code fed with bytes from outside: a crafted stream took FFmpeg's parser
        gigabytes in the process that read it."""
        return self._streamed("recording", str(path.resolve()).encode(), path.name, RECORDING_FFMPEG_OPTIONS)

    def _streamed(
        self, op: str, data: bytes, name: str, ffmpeg_options: str
    ) -> Generator[tuple[float, np.ndarray], None, None]:
        try:
            worker = _Worker(self.memory_mb, self.quiet, ffmpeg_options)
        except OSError as exc:  # no process to be had (memory, process limit): not the file's fault
            raise EdgeError(
                Code.DECODER_UNAVAILABLE, f"{name}: no decoder process could start ({exc})"
            ) from exc
        with self._lock:
            self._all.append(worker)  # killed by `close` too, should the reader still wait on it
        done = 0
        try:
            worker.send(op, data, name, self.cine_budget_s)
            while True:
                answer = worker.receive(self.timeout_s)
                if answer is None:
                    return
                if isinstance(answer, EdgeError):
                    raise answer
                if not isinstance(answer, tuple):
                    raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder answered nonsense")
                done += 1
                yield answer
        except TimeoutError as exc:
            log.error("a cine's frame took over %.0f s: decoder process killed", self.timeout_s)
            late = f"{name}: frame {done + 1} took longer than {self.timeout_s:g} s to decode"
            raise EdgeError(Code.DECODE_TIMEOUT, late) from exc
        except (EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
            if self._closing.is_set():
                stopped = f"{name}: stopped at frame {done + 1}: the decoder was closed"
                raise EdgeError(Code.JOB_INTERRUPTED, stopped) from exc
            log.error("the decoder process died in a cine, at frame %d", done + 1)
            raise EdgeError(Code.DECODE_CRASHED, f"{name}: the decoder crashed at frame {done + 1}") from exc
        finally:
            worker.kill()
            with self._lock:
                if worker in self._all:
                    self._all.remove(worker)

    def _ask(self, op: str, data: bytes, name: str) -> Any:
        worker = self._take(name)
        healthy = True
        try:
            result = worker.ask(op, data, name, self.timeout_s)
        except TimeoutError as exc:
            healthy = False
            log.error("decoding took over %.0f s: decoder process killed and replaced", self.timeout_s)
            raise EdgeError(
                Code.DECODE_TIMEOUT, f"{name}: decoding took longer than {self.timeout_s:g} s"
            ) from exc
        except (EOFError, OSError, ValueError, MemoryError, pickle.UnpicklingError) as exc:
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
        self._closing.set()
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
