"""DICOM listener throughput and ingest-to-result latency, with dcmtk's real `storescu`.

    python -m tools.bench_listener --images 200 [--json report.json]

Starts `edge run` (DICOM listener + worker) on a free port with a fresh data directory, sends N
distinct DICOM files (the model's demo DICOMs with fresh SOP Instance UIDs) in one association,
and reports: images/s as storescu saw it (C-STORE Success is answered only after the job row
committed), and, from the database, p50/p95 latency from an image's commit to its result's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from edge.operations.bench import dicom_variants
from tools.crashtest import spawn_agent, wait_until_running
from tools.synctest import free_port

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "models" / "cxr-pneumonia" / "samples" / "demo"


def parse(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def run(images: int, work: Path) -> dict[str, Any]:
    sources = [p for p in sorted(DEMO.glob("*.dcm")) if b"1.2.840.10008.1.2.5" not in p.read_bytes()[:400]]
    files = []
    per_source = images // len(sources) + 1
    for source in sources:
        for index, blob in enumerate(dicom_variants(source.read_bytes(), per_source, source.stem)):
            path = work / "send" / f"{source.stem}-{index:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
            files.append(path)
    files = files[:images]
    port = free_port()
    data = work / "data"
    with (work / "agent.log").open("ab") as log:
        agent = spawn_agent(data, log, "--dicom", "--port", str(port), "--no-watch")
    try:
        if not wait_until_running(data, agent.pid, timeout_s=120):
            raise RuntimeError("the agent did not start within 120 s")
        started = time.perf_counter()
        result = subprocess.run(
            ["/usr/bin/storescu", "-aec", "EDGE", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        sent_s = time.perf_counter() - started
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with sqlite3.connect(data / "edge.db", timeout=10) as conn:
                left = conn.execute(
                    "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')"
                ).fetchone()[0]
            if left == 0:
                break
            time.sleep(0.2)
        all_done_s = time.perf_counter() - started
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=120)
    with sqlite3.connect(data / "edge.db") as conn:
        rows = conn.execute(
            "SELECT i.created_at, r.created_at FROM results r JOIN images i ON i.id = r.image_id"
        ).fetchall()
        stored = conn.execute("SELECT count(*) FROM images").fetchone()[0]
    latencies = sorted((parse(done) - parse(created)) * 1000 for created, done in rows)
    return {
        "images_sent": len(files),
        "storescu_exit": result.returncode,
        "stored": stored,
        "results": len(rows),
        "send_seconds": round(sent_s, 2),
        "images_per_second": round(len(files) / sent_s, 1),
        "all_results_seconds": round(all_done_s, 2),
        "ingest_to_result_ms": {
            "p50": round(statistics.median(latencies), 1) if latencies else None,
            "p95": round(latencies[int(0.95 * (len(latencies) - 1))], 1) if latencies else None,
            "max": round(latencies[-1], 1) if latencies else None,
        },
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-listener-") as tmp:
        report = run(args.images, Path(tmp))
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    if report["storescu_exit"] or not report["images_sent"] == report["stored"] == report["results"]:
        sys.exit(
            f"not a measurement: {report['images_sent']} sent, {report['stored']} stored, "
            f"{report['results']} results"
        )


if __name__ == "__main__":
    main()
