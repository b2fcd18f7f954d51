"""Cut the power of the device's disk at random instants while it ingests and syncs, reboot, and
prove that nothing acknowledged was lost, nothing doubled and nothing broke.

    python tools/powercut.py --cuts 200 [--seed 1] [--work DIR] [--json report.json]

The device's data directory lives on tools/unsyncedfs.py: every byte not fsynced is gone at
the cut (docs/power-loss.md). Each round:

1. "boot": mount the disk as the last fsyncs left it; check it (below);
2. start `edge run` (DICOM listener, worker) and `edge sync run` (to a hub whose data lives on
   the real disk: the hub does not lose power), and two clients: `edge infer --json` on new
   PNG copies and dcmtk's `storescu` sending new DICOM copies to the listener. An input whose
   acknowledgement never came is sent again in a later round, as a modality or a person would;
3. cut the power: a fifth of the time during the boot (within --min-s of power-on), else at a
   random instant within --max-s of the agent's listener being up (the file system's daemon
   first, then every process).

The kernel of this machine keeps running, so the software of each round is told the new boot
it would see after a real power cut (`BOOTED`: `edge.processes.boot_id` answers the round's).

Acknowledged means: a result line printed by `edge infer`, a C-STORE Success seen by
`storescu`. Checks after every boot: `PRAGMA integrity_check` ok; every acknowledged `edge infer`
result and every acknowledged DICOM image in the database; no input stored twice, no job with
two results, no result with two outbox rows; every file the database points at present. At the
end the software runs once more until every queued job is done and the hub has every result;
then the hub holds each result exactly once and nothing quarantined, and no job was abandoned
(a power cut is never held against an input). Exit status 1 on any violation.
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
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python tools/powercut.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.operations.bench import dicom_variants, png_variants
from tools import dcmtk
from tools.unsyncedfs import PowerDisk

STORESCU = dcmtk.tool("storescu")  # dcmtk's, whose answer lines this parses

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "models" / "cxr-pneumonia" / "samples"
MODEL = "cxr-pneumonia"

# `python -c BOOTED BOOT edge-arguments...`: the edge CLI in a process that sees boot BOOT.
BOOTED = (
    "import runpy, sys; import edge.processes as p; boot = sys.argv.pop(1); p.boot_id = lambda: boot;"
    " runpy.run_module('edge', run_name='__main__', alter_sys=True)"
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def device_env(port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",  # an acknowledgement printed is an acknowledgement seen
        "EDGE_STORE__MIN_FREE_MB": "0",
        "EDGE_STORE__RESERVE_MB": "0",
        "EDGE_WORKER__POLL_S": "0.2",
        "EDGE_DICOM__PORT": str(port),
        "EDGE_DICOM__BIND": "127.0.0.1",
        "EDGE_DICOM__ALLOWED_CALLERS": '["STORESCU"]',  # storescu's default calling AE title
        "EDGE_SYNC__INTERVAL_S": "0.3",
        "EDGE_SYNC__MAX_BACKOFF_S": "1",
        "EDGE_SYNC__TIMEOUT_S": "10",
        "EDGE_RUNTIME__THREADS": "1",
    }


class Inputs:
    """Distinct inputs on the real disk; each waits to be sent until acknowledged."""

    def __init__(self, folder: Path, pngs: int, dicoms: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        png = (SAMPLES / "sample-01.png").read_bytes()
        dcm = (SAMPLES / "demo" / "demo-05.dcm").read_bytes()
        self.png: list[Path] = []
        self.dicom: dict[Path, str] = {}  # file -> SOP Instance UID
        for index, data in enumerate(png_variants(png, pngs, "powercut")):
            path = folder / f"in-{index:05d}.png"
            path.write_bytes(data)
            self.png.append(path)
        import io

        import pydicom

        for index, data in enumerate(dicom_variants(dcm, dicoms, "powercut")):
            path = folder / f"in-{index:05d}.dcm"
            path.write_bytes(data)
            self.dicom[path] = str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)
        self.acked_results: dict[str, str] = {}  # png input -> result id printed
        self.acked_sops: set[str] = set()
        self.sent = Counter[str]()

    def next_png(self, count: int) -> list[Path]:
        return [p for p in self.png if str(p) not in self.acked_results][:count]

    def next_dicom(self) -> Path | None:
        return next((p for p, sop in self.dicom.items() if sop not in self.acked_sops), None)


class Round:
    """One power-on period: the agent, the sync agent and both clients, until the cut."""

    def __init__(self, data_dir: Path, inputs: Inputs, port: int, log: Any) -> None:
        self.data_dir = data_dir
        self.inputs = inputs
        self.port = port
        self.log = log
        self.env = device_env(port)
        self.stop = threading.Event()
        self.processes: list[subprocess.Popen[bytes]] = []
        self.lock = threading.Lock()
        self.exited_early: list[str] = []
        self.boot = uuid.uuid4().hex[:12]

    def spawn(self, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        with self.lock:
            if self.stop.is_set():
                raise RuntimeError("cut")
            process = subprocess.Popen(args, env=self.env, **kwargs)
            self.processes.append(process)
            return process

    def edge(self, *args: str) -> tuple[str, ...]:
        return (sys.executable, "-c", BOOTED, self.boot, "--data-dir", str(self.data_dir), *args)

    def start(self) -> None:
        self.agent = self.spawn(*self.edge("run", "--dicom", "--no-watch"), stdout=self.log, stderr=self.log)
        self.sync = self.spawn(*self.edge("sync", "run"), stdout=self.log, stderr=self.log)
        self.threads = [
            threading.Thread(target=self._infer_client, daemon=True),
            threading.Thread(target=self._dicom_client, daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def _infer_client(self) -> None:
        """`edge infer --json` on a few unacknowledged PNGs at a time; each result line read
        is an acknowledgement."""
        while not self.stop.is_set():
            batch = self.inputs.next_png(3)
            if not batch:
                return
            try:
                client = self.spawn(
                    *self.edge("infer", "--json", *map(str, batch)), stdout=subprocess.PIPE, stderr=self.log
                )
            except RuntimeError:
                return
            assert client.stdout is not None
            for line in client.stdout:
                try:
                    answer = json.loads(line)
                except ValueError:
                    continue
                if answer.get("status") == "ok" and answer.get("result_id"):
                    self.inputs.acked_results[answer["input"]] = answer["result_id"]
            client.wait()

    def _dicom_client(self) -> None:
        """storescu, one file per association; "Success" in its answer is an acknowledgement."""
        while not self.stop.is_set():
            path = self.inputs.next_dicom()
            if path is None:
                return
            try:
                client = self.spawn(
                    STORESCU, "-v", "-aec", "EDGE", "-to", "20", "127.0.0.1", str(self.port), str(path),
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                )  # fmt: skip
            except RuntimeError:
                return
            output, _ = client.communicate()
            if client.returncode == 0 and b"Received Store Response (Success)" in output:
                self.inputs.acked_sops.add(self.inputs.dicom[path])
            else:
                time.sleep(0.2)  # the listener is not up yet (booting) or refused: try again

    def wait_listening(self, timeout_s: float) -> None:
        """Until the agent's DICOM listener accepts connections (the agent is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.agent.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)

    def note_exited(self) -> None:
        """The agent or the sync agent that is no longer running while the disk still is."""
        for name, process in (("run", self.agent), ("sync", self.sync)):
            if process.poll() is not None:
                self.exited_early.append(f"edge {name} exited {process.returncode}")

    def kill_all(self) -> None:
        with self.lock:
            self.stop.set()
            for process in self.processes:
                if process.poll() is None:
                    process.kill()
            for process in self.processes:
                process.wait()
        for thread in self.threads:
            thread.join(timeout=30)


def check(data_dir: Path, inputs: Inputs) -> dict[str, Any]:
    """The invariants, on the disk as it is after a boot (before any software ran on it)."""
    from edge.store import Store

    found: dict[str, Any] = {"lost": [], "duplicates": [], "missing_files": [], "integrity": "ok"}
    db_path = data_dir / "edge.db"
    if not db_path.exists():
        found["lost"] += sorted(inputs.acked_results.values()) + sorted(inputs.acked_sops)
        return found
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as conn:
        found["integrity"] = conn.execute("PRAGMA integrity_check").fetchone()[0]
        results = {row[0] for row in conn.execute("SELECT id FROM results")}
        sops = {
            row[0]
            for row in conn.execute("SELECT sop_instance_uid FROM images WHERE sop_instance_uid IS NOT NULL")
        }
        found["lost"] += [r for r in inputs.acked_results.values() if r not in results]
        found["lost"] += [s for s in inputs.acked_sops if s not in sops]
        for what, query in (
            ("image per sha256", "SELECT sha256, count(*) FROM images GROUP BY sha256"),
            ("job per image and model", "SELECT image_id || model_name, count(*) FROM jobs GROUP BY 1"),
            ("result per job", "SELECT job_id, count(*) FROM results GROUP BY job_id"),
            ("outbox row per result", "SELECT ref_id, count(*) FROM outbox WHERE kind = 'result' GROUP BY 1"),
        ):
            found["duplicates"] += [f"{what}: {key}" for key, count in conn.execute(query) if count > 1]
    with Store(data_dir) as store:
        found["missing_files"] = [p for p in store.referenced_files() if not (data_dir / p).exists()]
    return found


def settled(data_dir: Path, hub_db: Path) -> bool:
    """Every job final, every result acknowledged by the hub, and there."""
    with sqlite3.connect(data_dir / "edge.db", timeout=30) as conn:
        open_jobs = conn.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[
            0
        ]
        unsent = conn.execute(
            "SELECT count(*) FROM outbox WHERE kind = 'result' AND acked_at IS NULL"
        ).fetchone()[0]
        results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
    with sqlite3.connect(hub_db, timeout=30) as conn:
        at_hub = conn.execute("SELECT count(DISTINCT uuid) FROM records WHERE kind = 'result'").fetchone()[0]
    return open_jobs == 0 and unsent == 0 and at_hub >= results


def hub_report(data_dir: Path, hub_db: Path, inputs: Inputs) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "edge.db") as conn:
        results = {row[0] for row in conn.execute("SELECT id FROM results")}
        sop_done = {
            row[0]
            for row in conn.execute(
                "SELECT i.sop_instance_uid FROM images i JOIN results r ON r.image_id = i.id"
                " WHERE i.sop_instance_uid IS NOT NULL"
            )
        }
        open_jobs = conn.execute("SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()[
            0
        ]
        abandoned = conn.execute("SELECT count(*) FROM jobs WHERE error_code = 'JOB_ABANDONED'").fetchone()[0]
        restarts = conn.execute("SELECT coalesce(sum(restarts), 0) FROM jobs").fetchone()[0]
    with sqlite3.connect(hub_db) as conn:
        uuids = Counter(row[0] for row in conn.execute("SELECT uuid FROM records WHERE kind = 'result'"))
        quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    return {
        "device_results": len(results),
        "hub_results": sum(uuids.values()),
        "hub_duplicates": sum(count - 1 for count in uuids.values()),
        "hub_missing": len(results - set(uuids)),
        "hub_unknown": len(set(uuids) - results),
        "hub_quarantined": quarantined,
        "jobs_left_unfinished": open_jobs,
        "jobs_abandoned": abandoned,
        "job_claims_ended_by_a_cut": restarts,  # given back, not counted as attempts
        "dicom_acked_without_result": len(inputs.acked_sops - sop_done),
    }


def run(cuts: int, seed: int, work: Path, min_s: float = 3.0, max_s: float = 6.0) -> dict[str, Any]:
    """The campaign; whatever happens, no process or mount outlives it."""
    rng = random.Random(seed)
    started = time.monotonic()
    log = (work / "processes.log").open("ab")
    disk = PowerDisk(work / "disk", work / "mnt", work / "unsyncedfs.log")
    data_dir = work / "mnt" / "edge"
    hub_dir = work / "hub"
    inputs = Inputs(work / "inputs", pngs=cuts * 3 + 10, dicoms=cuts * 2 + 10)
    port = free_port()
    hub_port = free_port()
    hub = None
    report: dict[str, Any] = {
        "cuts": 0, "acknowledged": 0, "lost": 0, "duplicates": 0, "integrity_failures": 0,
        "missing_files": 0, "cuts_losing_unsynced": {"any": 0, "wal": 0, "files": 0, "dirs": 0},
        "software_exited_early": 0, "violations": [],
    }  # fmt: skip
    round_seconds: list[float] = []
    try:
        hub = subprocess.Popen(
            [sys.executable, "-m", "edge", "--data-dir", str(hub_dir), "hub", "serve"],
            env={**device_env(port), "EDGE_HUB__PORT": str(hub_port), "EDGE_HUB__DIR": str(hub_dir),
                 "EDGE_HUB__RATE_PER_S": "1000", "EDGE_HUB__RATE_BURST": "1000"},
            stdout=log, stderr=log,
        )  # fmt: skip
        disk.mount()
        enroll(data_dir, hub_dir, hub_port, device_env(port), log)
        from edge.store import Store

        Store(data_dir).close()  # installed: the database exists before the first power-on
        disk.sync_all()  # enrolment is the installer's work, done before the power is ever cut
        disk.cut()
        for number in range(cuts):
            round_started = time.monotonic()
            disk.mount()
            record(report, number, "boot", check(data_dir, inputs))
            this = Round(data_dir, inputs, port, log)
            this.start()
            if rng.random() < 0.2:  # during the boot: recovery, migrations, requeueing
                time.sleep(rng.uniform(0.2, min_s))
            else:  # during the work, however slow this machine is to start the software
                this.wait_listening(timeout_s=90)
                time.sleep(rng.uniform(0.0, max_s))
            # judged before the cut: a process that the vanished disk stops in the instant
            # before it is killed is doing what it should
            this.note_exited()
            lost = disk.cut()
            this.kill_all()
            report["cuts"] += 1
            report["software_exited_early"] += len(this.exited_early)
            report["violations"] += [f"round {number}: {what}" for what in this.exited_early]
            if any(lost.get(k) for k in ("wal", "files", "dirs")):
                report["cuts_losing_unsynced"]["any"] += 1
            for key in ("wal", "files", "dirs"):
                report["cuts_losing_unsynced"][key] += bool(lost.get(key))
            round_seconds.append(time.monotonic() - round_started)
        disk.mount()
        record(report, cuts, "final boot", check(data_dir, inputs))
        report["final"] = drain(data_dir, hub_dir / "hub.db", inputs, port, log)
        record(report, cuts, "after drain", check(data_dir, inputs))
    finally:
        disk.close()
        if hub is not None:
            hub.kill()
            hub.wait()
    report["acknowledged"] = len(inputs.acked_results) + len(inputs.acked_sops)
    report["acknowledged_by"] = {"edge infer": len(inputs.acked_results), "storescu": len(inputs.acked_sops)}
    report["seconds"] = round(time.monotonic() - started, 1)
    report["seconds_per_round"] = round(sum(round_seconds) / max(1, len(round_seconds)), 2)
    return report


def enroll(data_dir: Path, hub_dir: Path, hub_port: int, env: dict[str, str], log: Any) -> None:
    from edge.config import load_settings
    from edge.hub import db, devices

    deadline = time.monotonic() + 60
    settings = load_settings(data_dir=hub_dir, hub={"dir": hub_dir})
    engine = db.make_engine(settings.hub_database_url)
    while True:
        try:
            code = devices.create_enroll_code(engine)
            subprocess.run(
                [sys.executable, "-m", "edge", "--data-dir", str(data_dir), "sync", "enroll", "--name",
                 "powercut", "--", f"http://127.0.0.1:{hub_port}", code],  # a code may begin with "-"
                env=env, check=True, stdout=log, stderr=log,
            )  # fmt: skip
            return
        except (subprocess.CalledProcessError, Exception):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def drain(
    data_dir: Path, hub_db: Path, inputs: Inputs, port: int, log: Any, timeout_s: float = 180
) -> dict[str, Any]:
    """The last boot: the software runs until every job is done and the hub has every result."""
    last = Round(data_dir, inputs, port, log)
    last.agent = last.spawn(*last.edge("run", "--dicom", "--no-watch"), stdout=log, stderr=log)
    last.sync = last.spawn(*last.edge("sync", "run"), stdout=log, stderr=log)
    last.threads = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            time.sleep(1)
            if (data_dir / "edge.db").exists() and settled(data_dir, hub_db):
                break
        last.note_exited()
    finally:
        last.kill_all()
    return {**hub_report(data_dir, hub_db, inputs), "software_exited_early": len(last.exited_early)}


def record(report: dict[str, Any], number: int, when: str, found: dict[str, Any]) -> None:
    report["lost"] += len(found["lost"])
    report["duplicates"] += len(found["duplicates"])
    report["missing_files"] += len(found["missing_files"])
    report["integrity_failures"] += found["integrity"] != "ok"
    for key in ("lost", "duplicates", "missing_files"):
        report["violations"] += [f"{when} {number}: {key} {item}" for item in found[key][:5]]
    if found["integrity"] != "ok":
        report["violations"].append(f"{when} {number}: integrity {found['integrity']}")


def failed(report: dict[str, Any]) -> bool:
    final = report.get("final", {})
    return bool(
        report["lost"] or report["duplicates"] or report["missing_files"] or report["integrity_failures"]
        or report["software_exited_early"] or not final
        or final["hub_duplicates"] or final["hub_missing"] or final["hub_quarantined"]
        or final["jobs_left_unfinished"] or final["jobs_abandoned"] or final["dicom_acked_without_result"]
        or final["software_exited_early"]
        # a client that never got an acknowledgement in a real campaign checked nothing
        or (report["cuts"] >= 5 and min(report["acknowledged_by"].values()) == 0)
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cuts", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--min-s", type=float, default=3.0, help="a fifth of the cuts: within this long of power-on"
    )
    parser.add_argument(
        "--max-s", type=float, default=6.0, help="the others: within this long of the agent being up"
    )
    parser.add_argument(
        "--work", type=Path, help="keep the disk, logs and hub here (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if reason := PowerDisk.unavailable():
        sys.exit(f"cannot cut power here: {reason}")
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        report = run(args.cuts, args.seed, args.work, args.min_s, args.max_s)
    else:
        with tempfile.TemporaryDirectory(prefix="edge-powercut-") as tmp:
            report = run(args.cuts, args.seed, Path(tmp), args.min_s, args.max_s)
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    sys.exit(1 if failed(report) else 0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally clauses unmount
    main()
