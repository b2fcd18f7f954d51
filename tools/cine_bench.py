"""How fast and in how much memory a cine's frames are decoded, per encoding, in-process and
streamed from the guard's worker (what the agent, `edge infer` and the TUI's re-run do).

    python -m tools.cine_bench --frames 300 --size 800x600
    python -m tools.cine_bench --clip ../shared/data/ultrasound-video/lung-clips/X.mp4 --frames 900

The cine is made from a real clip's frames (looped, each shifted a little so none repeats):
JPEG baseline as most machines send a cine, and, where the `ffmpeg` program is installed, the
video stream syntaxes (H.264, HEVC, MPEG-2). Times are the best of `--reps`; the worker's peak
is its VmHWM read from /proc while it streams; the parent's rise is its resident size over
the streaming (it should hold about one frame, not the cine).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np
from pydicom import uid

from edge.errors import EdgeError
from edge.imaging.dicom import display_frames
from edge.ingest.guard import GuardedDecoder, resident_bytes
from tools import dicomgen

SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "video" / "lung-regular-alines.mp4"


def clip_frames(clip: Path, count: int, size: tuple[int, int]) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(clip))
    source = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        source.append(np.ascontiguousarray(cv2.resize(bgr, size)[:, :, ::-1]))
    capture.release()
    if not source:
        raise SystemExit(f"{clip}: no frame could be read")
    return [np.roll(source[i % len(source)], 2 * i, axis=1) for i in range(count)]


def _worker_peak_mb(pids: Iterable[int]) -> int:
    peak = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM"):
                    peak = max(peak, int(line.split()[1]) // 1024)
        except OSError:
            continue
    return peak


def _best(run: Callable[[], int], reps: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(reps):
        started = time.perf_counter()
        count = run()
        times.append(time.perf_counter() - started)
    return min(times), count


def measure(data: bytes, reps: int) -> dict[str, float]:
    in_process, count = _best(lambda: sum(1 for _ in display_frames(data)), reps)
    with GuardedDecoder(timeout_s=120) as guarded:
        pool = set(guarded.pids())
        rise, peak = 0, 0

        def streamed() -> int:
            nonlocal rise, peak
            base, n = resident_bytes(), 0
            for _ in guarded.frames(data, "cine.dcm"):
                n += 1
                rise = max(rise, resident_bytes() - base)
                if n % 25 == 1:
                    peak = max(peak, _worker_peak_mb(set(guarded.pids()) - pool))
            return n

        guarded_s, streamed_count = _best(streamed, reps)
    assert streamed_count == count, (streamed_count, count)
    return {
        "frames": count,
        "in_process_s": in_process,
        "guarded_s": guarded_s,
        "parent_rise_mb": rise / 2**20,
        "worker_peak_mb": peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=SAMPLE)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="800x600", help="WIDTHxHEIGHT, both even")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated encodings, e.g. 'JPEG baseline'")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    frames = clip_frames(args.clip, args.frames, (width, height))
    encodings = {"JPEG baseline": lambda: dicomgen.jpeg_cine(frames)}
    if shutil.which("ffmpeg"):
        for label, syntax in (("H.264", uid.MPEG4HP41), ("HEVC", uid.HEVCMP51), ("MPEG-2", uid.MPEG2MPHL)):
            encodings[label] = lambda syntax=syntax: dicomgen.video_cine(frames, syntax, fps=30.0)
    print(f"{args.frames} frames of {args.clip.name} at {width}x{height}, best of {args.reps}")
    print("| encoding | file MB | in-process s | guard, streamed s | parent rise MB | worker peak MB |")
    print("|---|---|---|---|---|---|")
    wanted = {name.strip() for name in args.only.split(",") if name.strip()} or set(encodings)
    for label, build in encodings.items():
        if label not in wanted:
            continue
        data = dicomgen.to_bytes(build())
        try:
            got = measure(data, args.reps)
        except EdgeError as error:
            print(f"| {label} | {len(data) / 1e6:.1f} | refused: {error.one_line()[:80]} | | | |")
            continue
        print(
            f"| {label} | {len(data) / 1e6:.1f} | {got['in_process_s']:.2f} | {got['guarded_s']:.2f}"
            f" | {got['parent_rise_mb']:.0f} | {got['worker_peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
