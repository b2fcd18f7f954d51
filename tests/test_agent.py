"""`edge run` as a real process: end to end, clean stop, and the crash test (bounded for CI)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import crashtest


def start(data_dir: Path, inbox: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return crashtest.start_agent(data_dir, inbox, handle)


def stop(agent: subprocess.Popen[bytes]) -> int:
    agent.send_signal(signal.SIGTERM)
    return agent.wait(timeout=120)


def assert_clean_exit(code: int, log: Path) -> None:
    """Exit 0 and no traceback in the agent's log."""
    said = log.read_text()
    assert code == 0, said[-3000:]
    assert "Traceback" not in said, said[-3000:]


def edge(data_dir: Path, *args: str) -> str:
    """What `edge --data-dir DATA_DIR ARGS` prints, as a technician runs it beside the agent."""
    command = [sys.executable, "-m", "edge", "--data-dir", str(data_dir), *args]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


def test_agent_ingests_scores_and_stops_cleanly(tmp_path: Path, sample_png: Path, sample_dcm: Path) -> None:
    inbox, data = tmp_path / "inbox", tmp_path / "data"
    inbox.mkdir()
    agent = start(data, inbox, tmp_path / "agent.log")
    try:
        assert crashtest.wait_until_running(data, agent.pid, timeout_s=120), "the agent did not start"
        shutil.copy(sample_png, inbox / "a.png")
        shutil.copy(sample_dcm, inbox / "b.dcm")
        (inbox / "c.txt").write_text("not an image")
        deadline = time.monotonic() + 60
        while not crashtest.drained(data / "edge.db", inbox) and time.monotonic() < deadline:
            time.sleep(0.2)
        status = subprocess.run(
            [sys.executable, "-m", "edge", "--data-dir", str(data), "status", "--json"],
            capture_output=True,
            text=True,
            check=True,
        )
        snap = json.loads(status.stdout)
        assert snap["agent"]["running"]
        assert snap["counts"]["results"] == 2
        assert snap["queue_depth"] == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=120)
    log = (tmp_path / "agent.log").read_text()
    assert code == 0, log[-3000:]
    assert "stopping: sources first" in log
    assert "Traceback" not in log, log[-3000:]
    assert len(list((tmp_path / "quarantine").rglob("c.txt.reason.txt"))) == 1


def test_a_drop_folder_that_cannot_be_made_is_said_not_a_dead_thread(tmp_path: Path) -> None:
    """A file where the inbox should be: the watch thread died with a traceback, `edge status`
    said "running" and nothing was ever taken. Now the agent says why and keeps trying."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    data = tmp_path / "data"
    agent = start(data, blocker / "inbox", tmp_path / "agent.log")
    try:
        assert crashtest.wait_until_running(data, agent.pid, timeout_s=120), "the agent did not start"
        deadline, said = time.monotonic() + 30, ""
        while "cannot be used" not in said and time.monotonic() < deadline:
            time.sleep(0.5)
            said = edge(data, "status")
        assert f"agent: the drop folder {blocker / 'inbox'} cannot be used" in said
        doctor = edge(data, "doctor", "--json")
        [check] = [c for c in json.loads(doctor) if c["name"] == "agent"]
        assert check["level"] == "warn"
        assert "files dropped there are not taken" in check["message"]
        assert agent.poll() is None  # alive, trying again
    finally:
        code = stop(agent)
    assert_clean_exit(code, tmp_path / "agent.log")


def test_a_dicom_port_another_program_holds_is_said_and_the_rest_runs(
    tmp_path: Path, sample_png: Path
) -> None:
    """The listener's port held by another program: the agent died with a traceback (OSError:
    Address already in use) and systemd restarted it every few seconds, the drop folder with
    it. Now the agent runs, says why modalities cannot send, and tries the port again."""
    import socket

    inbox, data = tmp_path / "inbox", tmp_path / "data"
    inbox.mkdir()
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        os.environ["EDGE_DICOM__PORT"] = str(port)
        try:
            with (tmp_path / "agent.log").open("ab") as log:
                agent = crashtest.spawn_agent(data, log, "--watch", "--inbox", str(inbox), "--dicom")
        finally:
            del os.environ["EDGE_DICOM__PORT"]
        try:
            assert crashtest.wait_until_running(data, agent.pid, timeout_s=120), "the agent did not start"
            said = edge(data, "status")
            assert f"agent: the DICOM listener cannot open 0.0.0.0:{port}" in said, said
            assert "another program holds it" in said
            doctor = edge(data, "doctor", "--json")
            [check] = [c for c in json.loads(doctor) if c["name"] == "dicom listener"]
            assert check["level"] == "fail"
            assert "another program holds it" in check["message"]
            crashtest.drop(inbox, "a.png", sample_png.read_bytes())
            deadline = time.monotonic() + 60
            while not crashtest.drained(data / "edge.db", inbox) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert crashtest.drained(data / "edge.db", inbox)  # the drop folder works meanwhile
            assert agent.poll() is None
        finally:
            code = stop(agent)
    assert_clean_exit(code, tmp_path / "agent.log")


def test_crash_safety_under_sigkill(tmp_path: Path) -> None:
    """A bounded run of tools/crashtest.py (the full one: 200 images, 100 kills; see the notes)."""
    report = crashtest.run(images=24, kills=6, seed=7, workdir=tmp_path, log_path=tmp_path / "agents.log")
    print(f"\ncrash test: {json.dumps({k: v for k, v in report.items() if not isinstance(v, list)})}")
    assert report["lost"] == [], report["lost"]
    assert report["duplicated"] == []
    assert report["processed_twice"] == 0
    assert report["wrong"] == [], report["wrong"]
    assert report["integrity"] == "ok"
    assert report["results"] + report["coded_refusals"] == 24
    assert report["results"] == report["good_inputs"] > 0  # every good image answered
    assert report["never_up"] == 0
    # the kills landed in the work, not only in the start (they all did, before the agent was up)
    assert report["kills_in_work"] > 0, report
    assert report["waits_timed_out"] == 0, report
    assert report["last_exit"] == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_refuses_clearly_keeps_everything_and_recovers(tmp_path: Path) -> None:
    from edge.config import load_settings
    from edge.pipeline import Pipeline
    from edge.store import Store
    from tests.conftest import MODELS, png_bytes

    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        settings = load_settings(
            data_dir=mount,
            # Named: noise is stored (then refused out of scope), as routing would refuse it first.
            models={"dir": MODELS, "default": "cxr-pneumonia"},
            explain={"heatmaps": False},
            store={"min_free_mb": 0, "reserve_mb": 0},
        )
        rng = __import__("numpy").random.default_rng(0)
        codes, stored = [], 0
        with Store(mount) as store:
            pipeline = Pipeline(settings, store)
            for index in range(60):  # incompressible images until the 1 MB disk is full
                path = tmp_path / f"noise-{index}.png"
                path.write_bytes(png_bytes(rng.integers(0, 255, (160, 160), dtype="uint8")))
                [analysis] = pipeline.analyse_file(path)
                if analysis.ok or analysis.job_id:
                    stored += 1
                else:
                    codes.append(analysis.code)
            assert "DISK_FULL" in codes, codes
            assert set(codes) <= {
                "DISK_FULL",
                "STORE_WRITE_FAILED",
                "MOSTLY_BLANK",
                "LOW_CONTRAST",
                "BLURRED",
            }
            assert store.integrity() == "ok"
            before = store.counts()
            assert before["images"] == stored
            assert before["jobs_running"] == 0 or before["jobs_running"] <= 1
        # Space comes back (the tmpfs grows): the same pipeline accepts again and nothing was lost.
        subprocess.run(["mount", "-o", "remount,size=8m", str(mount)], check=True)
        with Store(mount) as store:
            pipeline = Pipeline(settings, store)
            [analysis] = pipeline.analyse_file(tmp_path / "noise-59.png")
            assert analysis.code != "DISK_FULL"
            after = store.counts()
            assert after["images"] >= before["images"]
            assert store.integrity() == "ok"
            pipeline.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
