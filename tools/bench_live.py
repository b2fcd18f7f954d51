"""Live ultrasound benchmark: 720p H.264 at 30 fps, played in real time, analysed as it plays.

    python -m tools.bench_live [--seconds 30] [--target-fps 10] [--model us-lung] [--json out.json]

Makes a 1280x720, 30 fps H.264 file from a real device recording (ffmpeg, from Debian's
`ffmpeg`), plays it at its own frame rate through the same frame source a capture card uses
(newest frame kept, older ones dropped), and runs the live analyzer on it. Reports: analysed
frames against the target (target_fps x duration), capture-to-result latency p50/p95, frames
dropped by the source, and the CPU share of this process (user+system time over wall time,
against the machine's cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge.config import load_settings
from edge.inference.pool import ModelPool
from edge.inference.registry import Registry
from edge.video.live import LiveAnalyzer
from edge.video.source import FrameSource

SOURCE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "ultrasound-video"
    / "devices"
    / "butterfly-ocular-phantom.mp4"
)


def make_720p(target: Path, seconds: float) -> None:
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg is needed to make the H.264 test file: apt-get install -y ffmpeg")
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-stream_loop",
            "-1",
            "-i",
            str(SOURCE),
            "-t",
            str(seconds),
            "-vf",
            "scale=-2:720,pad=1280:720:(ow-iw)/2:0,fps=30",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            str(target),
        ],
        check=True,
    )


def run(seconds: float, target_fps: float, model: str | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-live-") as tmp:
        video = Path(tmp) / "live-720p30.mp4"
        make_720p(video, seconds)
        settings = load_settings(data_dir=Path(tmp) / "data")
        settings = settings.model_copy(
            update={"video": settings.video.model_copy(update={"target_fps": target_fps})}
        )
        registry = Registry(settings.models.dir)
        name = model or (settings.video.model if settings.video.model in registry.names() else "us-breast")
        pool = ModelPool(registry, settings, settings.data_dir / "cache")
        served = pool.get(name)
        source = FrameSource(str(video), realtime=True)
        analyzer = LiveAnalyzer(settings, served, source)
        before = resource.getrusage(resource.RUSAGE_SELF)
        started = time.monotonic()
        with source:
            analyzer.run(threading.Event())
        wall = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_SELF)
        pool.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    latencies = sorted(analyzer.stats.latencies_ms)
    analysing_s = max(0.0, seconds - settings.video.roi_seconds)  # the sector is found first
    return {
        "video": "1280x720 H.264 30 fps (real Butterfly recording, scaled and looped)",
        "seconds": seconds,
        "model": f"{served.name} {served.version} on {served.backend}/{served.variant_name}",
        "target_fps": target_fps,
        "frames_read": source.stats.read,
        "frames_dropped_by_source": source.stats.dropped,
        "frames_analysed": analyzer.stats.frames_analysed,
        "analysed_over_target": round(analyzer.stats.frames_analysed / (analysing_s * target_fps), 3),
        "latency_ms": {
            "p50": round(latencies[len(latencies) // 2], 1) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "cpu_share_of_machine": round(cpu / wall / (os.cpu_count() or 1), 3),
        "cpu_seconds_per_wall_second": round(cpu / wall, 3),
        "sector": analyzer.stats.roi,
        "status_counts": analyzer.stats.status_counts,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--target-fps", type=float, default=10.0)
    parser.add_argument("--model")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report = run(args.seconds, args.target_fps, args.model)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
