"""Kill the agent at random instants while it ingests, restart it, and prove nothing was lost or
duplicated.

    python -m tools.crashtest --images 200 --kills 100 [--seed 1] [--json report.json]

Makes N distinct inputs (the model's sample images with distinct bytes, plus a share of broken
files that must end as coded refusals), drops them into a watched inbox in small waves, and
SIGKILLs `edge run` M times at random instants (during decoding, SQLite commits, file renames,
inference...), restarting it each time. Then it lets the last agent drain and checks, per input:
exactly one image with exactly one job in a final state (a result, or a coded refusal), or a
quarantined file with its reason; no input both processed and quarantined; no input lost; no
result twice; `PRAGMA integrity_check` ok. Prints the counts; exit status 1 on any loss or
duplicate.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from edge.operations.bench import png_variants

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "models" / "cxr-pneumonia" / "samples"


def make_inputs(count: int, broken_share: float, rng: random.Random) -> list[tuple[str, bytes, bool]]:
    """(name, bytes, should_be_refused) triples, every one with distinct content."""
    sources = sorted(SAMPLES.glob("*.png"))
    out = []
    per_source = count // len(sources) + 1
    variants = [v for source in sources for v in png_variants(source.read_bytes(), per_source, source.stem)]
    rng.shuffle(variants)
    for index in range(count):
        data = variants[index]
        broken = rng.random() < broken_share
        if broken:
            data = data[: len(data) // 2]  # truncated: IMAGE_TRUNCATED
        out.append((f"input-{index:05d}.png", data, broken))
    return out


def start_agent(data_dir: Path, inbox: Path, log: Any) -> subprocess.Popen[bytes]:
    """`edge run` watching `inbox` (no DICOM listener)."""
    return spawn_agent(data_dir, log, "--watch", "--inbox", str(inbox), "--no-dicom")


def spawn_agent(data_dir: Path, log: Any, *run_args: str) -> subprocess.Popen[bytes]:
    """`edge run RUN_ARGS` polling fast, with no free-space floor (test disks are small)."""
    env = {
        **os.environ,
        "EDGE_WATCH__INTERVAL_S": "0.2",
        "EDGE_WATCH__SETTLE_S": "0",
        "EDGE_STORE__MIN_FREE_MB": "0",
        "EDGE_STORE__RESERVE_MB": "0",
        "EDGE_WORKER__POLL_S": "0.2",
        "EDGE_DICOM__ALLOWED_CALLERS": '["STORESCU"]',  # dcmtk's storescu, the benches' modality
    }
    command = [sys.executable, "-m", "edge", "--data-dir", str(data_dir), "run", *run_args]
    return subprocess.Popen(command, env=env, stdout=log, stderr=log)


def drop(inbox: Path, name: str, data: bytes) -> None:
    partial = inbox / f"{name}.part"  # written under a partial name, then renamed: complete on sight
    partial.write_bytes(data)
    os.replace(partial, inbox / name)


def wait_until_running(data_dir: Path, pid: int, timeout_s: float) -> bool:
    """Until this agent wrote its status file (it installs its signal handlers before that);
    False when it did not within `timeout_s`."""
    status = data_dir / "agent.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if json.loads(status.read_text()).get("pid") == pid:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.2)
    return False


def work_in_flight(db: Path, inbox: Path) -> bool:
    """Something the agent is working on: a file waiting in the inbox or a job not final."""
    return not drained(db, inbox) and (db.exists() or _waiting(inbox) > 0)


def progress(db: Path, inbox: Path) -> int:
    """Jobs the agent finished less files still waiting: grows with each file it takes or answers."""
    return (_jobs(db, final=True) or 0) - _waiting(inbox)


def wait_for_progress(db: Path, inbox: Path, beyond: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if progress(db, inbox) > beyond:
            return True
        time.sleep(0.02)
    return False


def drained(db: Path, inbox: Path) -> bool:
    return _waiting(inbox) == 0 and _jobs(db, final=False) == 0


def _waiting(inbox: Path) -> int:
    return sum(p.is_file() for p in inbox.rglob("*"))


def _jobs(db: Path, final: bool) -> int | None:
    """The agent's jobs that are final (or, with `final` False, still queued or running); None
    before it made its database."""
    if not db.exists():
        return None
    query = f"SELECT count(*) FROM jobs WHERE state {'NOT IN' if final else 'IN'} ('queued', 'running')"
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            return conn.execute(query).fetchone()[0]
    except sqlite3.OperationalError:  # the agent is still creating its tables
        return None


def check(work: Path, inputs: list[tuple[str, bytes, bool]]) -> dict[str, Any]:
    data_dir, inbox = work / "data", work / "inbox"
    processed, quarantine = work / "processed", work / "quarantine"
    conn = sqlite3.connect(data_dir / "edge.db")
    conn.row_factory = sqlite3.Row
    images = {row["sha256"]: row["id"] for row in conn.execute("SELECT id, sha256 FROM images")}
    jobs: dict[str, list[sqlite3.Row]] = {}
    for row in conn.execute("SELECT * FROM jobs"):
        jobs.setdefault(row["image_id"], []).append(row)
    results_per_job = dict(conn.execute("SELECT job_id, count(*) FROM results GROUP BY job_id").fetchall())
    quarantined = {
        p.name for p in quarantine.rglob("*") if p.is_file() and not p.name.endswith(".reason.txt")
    }
    reasons = {p.name[: -len(".reason.txt")]: p.read_text().strip() for p in quarantine.rglob("*.reason.txt")}
    processed_names = [p.name for p in processed.rglob("*") if p.is_file()]
    report: dict[str, Any] = {
        "inputs": len(inputs),
        "lost": [],
        "duplicated": [],
        "wrong": [],
        "results": 0,
        "coded_refusals": 0,
    }
    for name, data, broken in inputs:
        sha = hashlib.sha256(data).hexdigest()
        in_db = sha in images
        in_quarantine = name in quarantined
        if in_db and in_quarantine:
            report["duplicated"].append(f"{name}: stored and quarantined")
        if not in_db and not in_quarantine:
            report["lost"].append(name)
            continue
        if in_quarantine:
            if not reasons.get(name, "").split(":")[0].isupper():
                report["wrong"].append(f"{name}: quarantined without a coded reason")
            report["coded_refusals"] += 1
            if not broken:
                report["wrong"].append(f"{name}: a good image was refused: {reasons.get(name)}")
            continue
        image_jobs = jobs.get(images[sha], [])
        if len(image_jobs) != 1:
            report["duplicated" if len(image_jobs) > 1 else "lost"].append(f"{name}: {len(image_jobs)} jobs")
            continue
        job = image_jobs[0]
        results = results_per_job.get(job["id"], 0)
        if results > 1:
            report["duplicated"].append(f"{name}: {results} results")
        elif job["state"] == "done" and results == 1:
            report["results"] += 1
        elif job["state"] in ("refused", "failed") and job["error_code"]:
            report["coded_refusals"] += 1
            if not broken:  # a good image refused is no success, however well coded
                report["wrong"].append(f"{name}: a good image was refused: {job['error_code']}")
        else:
            report["lost"].append(f"{name}: job {job['state']} with {results} results")
    report["processed_twice"] = len(processed_names) - len(set(processed_names))
    report["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
    report["left_in_inbox"] = [p.name for p in inbox.rglob("*") if p.is_file()]
    conn.close()
    return report


def run(images: int, kills: int, seed: int, workdir: Path, log_path: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    inputs = make_inputs(images, 0.1, rng)
    inbox = workdir / "inbox"
    inbox.mkdir(parents=True)
    data_dir = workdir / "data"
    started = time.monotonic()
    pending = list(inputs)
    kill_log = []
    kills_in_work = 0
    never_up = 0
    waits_timed_out = 0  # kills made after a minute's wait for the agent to take a file
    with log_path.open("ab") as log:
        agent = start_agent(data_dir, inbox, log)
        for number in range(kills):
            wave = max(1, len(pending) // max(1, kills - number)) if pending else 0
            # What `progress` will read once the wave is down and before the agent takes any of it.
            untouched = progress(data_dir / "edge.db", inbox) - wave
            for name, data, _ in pending[:wave]:
                drop(inbox, name, data)
            pending = pending[wave:]
            if rng.random() < 0.2:  # during the start: recovery, requeueing, model loading
                time.sleep(rng.uniform(0.3, 2.5))
            else:  # in the work, however slow or fast this machine is
                up = wait_until_running(data_dir, agent.pid, timeout_s=120)
                never_up += not up
                if up and wave:
                    # Once the agent has taken a file of the wave, then up to half as long again
                    # (2 s at most): a fixed pause after the start let a fast machine finish
                    # every wave before its kill.
                    began = time.monotonic()
                    took = wait_for_progress(data_dir / "edge.db", inbox, beyond=untouched, timeout_s=60)
                    waits_timed_out += not took
                    time.sleep(min(2.0, rng.uniform(0.0, 0.5) * (time.monotonic() - began)))
                kills_in_work += work_in_flight(data_dir / "edge.db", inbox)
            agent.send_signal(signal.SIGKILL)
            agent.wait()
            kill_log.append(round(time.monotonic() - started, 2))
            agent = start_agent(data_dir, inbox, log)
        for name, data, _ in pending:
            drop(inbox, name, data)
        deadline = time.monotonic() + 120 + images * 0.5
        while not drained(data_dir / "edge.db", inbox) and time.monotonic() < deadline:
            time.sleep(0.5)
        never_up += not wait_until_running(data_dir, agent.pid, timeout_s=60)
        agent.send_signal(signal.SIGTERM)  # the last one is stopped cleanly: it must exit 0
        exit_code = agent.wait(timeout=120)
    report = check(workdir, inputs)
    report.update(
        kills=kills,
        kills_in_work=kills_in_work,
        waits_timed_out=waits_timed_out,
        never_up=never_up,
        good_inputs=sum(not broken for _, _, broken in inputs),
        seed=seed,
        seconds=round(time.monotonic() - started, 1),
        last_exit=exit_code,
        lost_count=len(report["lost"]),
        duplicated_count=len(report["duplicated"]) + report["processed_twice"],
    )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-crash-") as tmp:
        work = args.keep or Path(tmp)
        report = run(args.images, args.kills, args.seed, work, work / "agents.log")
    summary = {k: v for k, v in report.items() if k not in ("lost", "duplicated", "wrong", "left_in_inbox")}
    print(json.dumps(summary, indent=1))
    for key in ("lost", "duplicated", "wrong", "left_in_inbox"):
        if report[key]:
            print(f"{key}: {report[key][:20]}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    bad = (
        report["lost"]
        or report["duplicated"]
        or report["wrong"]
        or report["processed_twice"]
        or report["integrity"] != "ok"
        or report["never_up"]
        or report["results"] != report["good_inputs"]
    )
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
