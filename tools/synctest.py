"""End-to-end sync under faults: N results reach the hub exactly once, whatever breaks.

    python -m tools.synctest --results 10000 --kills 20 [--postgres URL] [--json report.json]

1. A device store gets N real results (the shipped chest X-ray model scores N distinct copies of
   a sample image through the product's pipeline; heatmaps off).
2. `edge hub serve` and `edge sync run` start as real processes, the sync agent talking to the
   hub through tools/faultproxy.py: refused connections, delays, trickled answers, and cuts after
   the hub committed but before the device heard.
3. While it drains, the hub and the sync agent are each SIGKILLed at random instants and
   restarted; a specialist reviews some results on the hub meanwhile.
4. Checks: hub records == N, no uuid twice, nothing quarantined, the device's outbox drained,
   every review back on the device. Reports bytes on the wire per result, results/s, drain time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.config import Settings, load_settings
from edge.imaging.decode import decode_bytes
from edge.operations.bench import png_variants
from edge.pipeline import Pipeline
from edge.store import Store
from tools.faultproxy import FaultProxy, Faults

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "models" / "cxr-pneumonia" / "samples" / "sample-01.png"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fill(settings: Settings, count: int) -> float:
    """N real results in the device store (scored by the shipped model); returns seconds taken."""
    started = time.monotonic()
    data = SAMPLE.read_bytes()
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store, actor="synctest")
        for blob in png_variants(data, count, "sync"):
            decoded = decode_bytes(blob)  # its sha256 is the variant's, so each is a new image
            image = Pipeline.new_image(decoded, blob, "synctest", None)
            outcome = store.ingest(image, ["cxr-pneumonia"], actor="synctest")
            job = store.claim_job(pipeline.worker_id, outcome.job_ids[0])
            assert job is not None
            pipeline.process(job, decoded)
        pipeline.close()
    return time.monotonic() - started


def env_for(settings_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, "EDGE_STORE__MIN_FREE_MB": "0", "EDGE_STORE__RESERVE_MB": "0", **extra}


SPAWNED: list[subprocess.Popen[bytes]] = []
"""Every hub and sync process started, so that a failed run leaves none behind."""


def start_hub(hub_dir: Path, port: int, database_url: str | None, log: Any) -> subprocess.Popen[bytes]:
    extra = {
        "EDGE_HUB__PORT": str(port),
        "EDGE_HUB__DIR": str(hub_dir),
        "EDGE_HUB__RATE_PER_S": "1000",
        "EDGE_HUB__RATE_BURST": "1000",
    }
    if database_url:
        extra["EDGE_HUB__DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "--data-dir", str(hub_dir), "hub", "serve"],
        env=env_for(hub_dir, extra),
        stdout=log,
        stderr=log,
    )
    SPAWNED.append(process)
    return process


def start_sync(device_dir: Path, log: Any) -> subprocess.Popen[bytes]:
    extra = {
        "EDGE_SYNC__INTERVAL_S": "0.5",
        "EDGE_SYNC__MAX_BACKOFF_S": "2",
        "EDGE_SYNC__IMAGES": "none",
        "EDGE_SYNC__TIMEOUT_S": "10",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "edge", "--data-dir", str(device_dir), "sync", "run"],
        env=env_for(device_dir, extra),
        stdout=log,
        stderr=log,
    )
    SPAWNED.append(process)
    return process


def wait_http(port: int, timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the hub did not come up")


def pending(device_db: Path) -> int:
    with sqlite3.connect(device_db, timeout=30) as conn:
        return int(
            conn.execute("SELECT count(*) FROM outbox WHERE acked_at IS NULL AND kind = 'result'").fetchone()[
                0
            ]
        )


def run(
    results: int, kills: int, seed: int, work: Path, database_url: str | None, faults: Faults
) -> dict[str, Any]:
    """The whole test; whatever happens, no hub or sync process outlives it."""
    try:
        return _run(results, kills, seed, work, database_url, faults)
    finally:
        for process in SPAWNED:
            if process.poll() is None:
                process.kill()
                process.wait()
        SPAWNED.clear()


def _review_some(engine: Any, rng: random.Random, reviewed: set[str]) -> None:
    """Up to three verdicts on results that have reached the hub."""
    from sqlalchemy import select

    from edge.hub import db, reviews

    with engine.connect() as conn:
        arrived = [r[0] for r in conn.execute(select(db.records.c.uuid).limit(5000)).all()]
    for uuid in rng.sample(arrived, min(3, len(arrived))):
        if uuid not in reviewed:
            reviews.add_review(engine, uuid, rng.choice(["agree", "disagree", "uncertain"]), note="synctest")
            reviewed.add(uuid)


def _run(
    results: int, kills: int, seed: int, work: Path, database_url: str | None, faults: Faults
) -> dict[str, Any]:
    from edge.hub import db, devices

    rng = random.Random(seed)
    device = load_settings(data_dir=work / "device", explain={"heatmaps": False})
    fill_s = fill(device, results)
    hub_dir = work / "hub"
    hub_settings = load_settings(data_dir=hub_dir, hub={"dir": hub_dir, "database_url": database_url})
    engine = db.make_engine(hub_settings.hub_database_url)
    hub_port = free_port()
    log = (work / "processes.log").open("ab")
    hub = start_hub(hub_dir, hub_port, database_url, log)
    wait_http(hub_port)
    proxy = FaultProxy(hub_port, faults, seed).start()
    code = devices.create_enroll_code(engine)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "edge",
            "--data-dir",
            str(device.data_dir),
            "sync",
            "enroll",
            f"http://127.0.0.1:{hub_port}",
            code,
            "--name",
            "synctest",
        ],
        check=True,
        capture_output=True,
    )
    credential_file = device.data_dir / "sync" / "credential.json"
    credential = json.loads(credential_file.read_text())
    credential["hub_url"] = f"http://127.0.0.1:{proxy.port}"  # from now on, through the faults
    credential_file.write_text(json.dumps(credential))
    with sqlite3.connect(device.db_path) as conn:
        result_ids = [row[0] for row in conn.execute("SELECT id FROM results ORDER BY created_at")]
    started = time.monotonic()
    sync = start_sync(device.data_dir, log)
    reviewed: set[str] = set()
    kill_log = []
    for number in range(kills):
        time.sleep(rng.uniform(0.5, 3.0))
        victim = "hub" if number % 2 else "sync"
        process = hub if victim == "hub" else sync
        process.send_signal(signal.SIGKILL)
        process.wait()
        kill_log.append(victim)
        if victim == "hub":
            hub = start_hub(hub_dir, hub_port, database_url, log)
            wait_http(hub_port)
        else:
            sync = start_sync(device.data_dir, log)
        _review_some(engine, rng, reviewed)  # a specialist reads whatever has arrived
    deadline = time.monotonic() + 600 + results * 0.05
    while not reviewed and time.monotonic() < deadline:  # a slow machine: nothing had arrived yet
        time.sleep(0.5)
        _review_some(engine, rng, reviewed)
    while time.monotonic() < deadline:
        with sqlite3.connect(device.db_path, timeout=30) as conn:
            back = conn.execute("SELECT count(*) FROM reviews").fetchone()[0]
        if pending(device.db_path) == 0 and back == len(reviewed):
            break
        time.sleep(0.5)
    drain_s = time.monotonic() - started
    sync.send_signal(signal.SIGTERM)
    sync.wait(60)
    hub.send_signal(signal.SIGTERM)
    hub.wait(60)
    proxy.stop()
    from sqlalchemy import func, select

    with engine.connect() as conn:
        stored = conn.execute(select(func.count()).select_from(db.records)).scalar()
        distinct = conn.execute(select(func.count(db.records.c.uuid.distinct()))).scalar()
        quarantined = conn.execute(select(func.count()).select_from(db.quarantine)).scalar()
        arrived_ids = {r[0] for r in conn.execute(select(db.records.c.uuid)).all()}
    with sqlite3.connect(device.db_path) as conn:
        back = conn.execute("SELECT count(*) FROM reviews").fetchone()[0]
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    return {
        "results": results,
        "kills": kills,
        "killed": {k: kill_log.count(k) for k in ("hub", "sync")},
        "hub_records": stored,
        "distinct_uuids": distinct,
        "quarantined": quarantined,
        "missing": len(set(result_ids) - arrived_ids),
        "device_pending": pending(device.db_path),
        "reviews_made": len(reviewed),
        "reviews_back": back,
        "device_integrity": integrity,
        "fill_seconds": round(fill_s, 1),
        "drain_seconds": round(drain_s, 1),
        "results_per_second": round(results / drain_s, 1),
        "bytes_to_hub_per_result": round(proxy.stats.to_hub / results, 1),
        "proxy": {
            "connections": proxy.stats.connections,
            "faults": proxy.stats.faults,
            "bytes_to_hub": proxy.stats.to_hub,
            "bytes_to_device": proxy.stats.to_device,
        },
        "database": "postgresql" if database_url else "sqlite",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=int, default=10000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres", help="hub on this PostgreSQL URL (default: SQLite)")
    parser.add_argument("--clean", action="store_true", help="no injected faults (for the throughput figure)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    faults = Faults() if args.clean else Faults(refuse=0.05, delay=0.1, trickle=0.05, cut_after_request=0.08)
    with tempfile.TemporaryDirectory(prefix="edge-synctest-") as tmp:
        report = run(args.results, args.kills, args.seed, Path(tmp), args.postgres, faults)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = (
        report["hub_records"] == report["distinct_uuids"] == args.results
        and report["missing"] == 0
        and report["quarantined"] == 0
        and report["device_pending"] == 0
        and report["reviews_back"] == report["reviews_made"]
    )
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
