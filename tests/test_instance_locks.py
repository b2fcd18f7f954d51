"""No signals by pid file, one agent per data directory (issue 19, item 2)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge.config import load_settings
from edge.errors import Code, EdgeError
from edge.operations import health
from edge.processes import Doorbell, InstanceLock, holder, ring
from edge.sync import doorbell, request_sync_now, sync_agent, sync_lock
from tools import crashtest


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    with InstanceLock(path, "agent"):
        assert holder(path) is not None
        assert holder(path)["pid"] == os.getpid()  # type: ignore[index]
        with pytest.raises(EdgeError) as refused:
            InstanceLock(path, "agent").acquire()
        assert refused.value.code is Code.ALREADY_RUNNING
        assert f"pid {os.getpid()}" in refused.value.message
    assert holder(path) is None
    with InstanceLock(path, "agent"):  # free again once released
        pass


def test_a_killed_holder_releases_its_lock(tmp_path: Path) -> None:
    path = tmp_path / "agent.lock"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from edge.processes import InstanceLock
        InstanceLock(Path({str(path)!r}), "agent").acquire()
        print("held", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "held"
        assert holder(path) == {"pid": child.pid, "host": os.uname().nodename, **_started(path)}
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert path.exists()  # the file stays; nobody holds it
    assert holder(path) is None


def _started(path: Path) -> dict[str, str]:
    return {"started": json.loads(path.read_text())["started"]}


def test_a_stale_sync_pid_file_never_signals_the_process_that_reused_its_pid(tmp_path: Path) -> None:
    """Before: `edge sync now` sent SIGUSR1 to the pid in sync/sync.pid and killed an unrelated
    process that had reused it."""
    settings = load_settings(data_dir=tmp_path / "data")
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        pid_file = settings.data_dir / "sync" / "sync.pid"
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(str(unrelated.pid))  # left by a SIGKILLed sync agent; pid reused
        assert sync_agent(settings) is None
        assert request_sync_now(settings) is False  # so `edge sync now` syncs in-process
        time.sleep(0.2)
        assert unrelated.poll() is None  # alive: no signal was sent
    finally:
        unrelated.kill()
        unrelated.wait()


def test_the_doorbell_wakes_the_running_sync_agent_and_tells_when_none_listens(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    bell = Doorbell(doorbell(settings))
    assert ring(bell.path) is False  # no bell yet
    bell.listen()
    with InstanceLock(sync_lock(settings), "sync agent"):
        assert bell.wait(0.05) is False
        assert request_sync_now(settings) is True
        assert bell.wait(1.0) is True
        assert bell.wait(0.05) is False  # every pending ring consumed
    bell.close()
    assert ring(bell.path) is False  # the FIFO is still there, nobody reads it (ENXIO)
    assert request_sync_now(settings) is False


def test_a_reused_pid_in_agent_json_does_not_look_like_a_running_agent(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data")
    settings.data_dir.mkdir(parents=True)
    report = {"pid": os.getpid(), "started_at": "x", "updated_epoch": time.time()}  # alive, fresh
    health.agent_file(settings).write_text(json.dumps(report))
    agent = health.read_agent(settings)
    assert agent["running"] is False
    assert agent["reason"] == "the agent is not running"


def test_a_second_agent_on_one_data_directory_exits_with_a_code_naming_the_first(tmp_path: Path) -> None:
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    inbox.mkdir()
    log = tmp_path / "first.log"
    with log.open("ab") as handle:
        first = crashtest.start_agent(data, inbox, handle)
    try:
        assert crashtest.wait_until_running(data, first.pid, timeout_s=120), "the agent did not start"
        second = subprocess.run(
            [sys.executable, "-m", "edge", "--data-dir", str(data), "run", "--watch", "--inbox", str(inbox)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        assert "ALREADY_RUNNING" in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first carries on
        assert health.read_agent(load_settings(data_dir=data))["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)


def test_a_file_system_without_named_pipes_leaves_the_sync_agent_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the power-cut campaign (its FUSE file system has no mknod): `edge sync run`
    died at start. A data directory on FAT or some network file systems is the same."""

    def no_fifos(*args: object) -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "mkfifo", no_fifos)
    bell = Doorbell(tmp_path / "sync" / "wake")
    assert bell.listen() is False
    assert bell.wait(0.01) is False  # waits out its timeout: the loop's own schedule
    assert ring(bell.path) is False
    bell.close()
