"""Job leases: no job stays "running" while the agent runs (issue 19, item 1).

A claimed job returns to the queue when its worker fails after the claim for a reason that is
not the job's (a full disk), when its holder dies (a killed `edge infer`), or when its lease runs
out (a wedged worker); after `max_attempts` claims without an answer it ends as JOB_ABANDONED.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from edge import processes
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import gradient, png_bytes
from tests.tinymodel import make_model_dir
from tools import crashtest

PAST = "2000-01-01T00:00:00.000Z"


@pytest.fixture
def env(tmp_path: Path) -> Any:
    make_model_dir(tmp_path / "models")
    settings = load_settings(
        data_dir=tmp_path / "data", models={"dir": tmp_path / "models", "default": "tiny"}
    )
    store = Store(settings.data_dir)
    pipeline = Pipeline(settings, store)
    yield settings, store, pipeline
    pipeline.close()
    store.close()


def queue_one(store: Store, seed: int = 0) -> str:
    data = png_bytes((gradient() + seed).astype("uint8"))
    outcome = store.ingest(
        Pipeline.new_image(decode_bytes(data), data, "watch", "x.png"), ["tiny"], actor="test"
    )
    return outcome.job_ids[0]


def job_row(store: Store, job_id: str) -> dict[str, Any]:
    row = store.job(job_id)
    assert row is not None
    return row


def test_a_full_disk_after_the_claim_returns_the_job_to_the_queue(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The heatmap write fails after the job was claimed: before, the job stayed "running" under
    the live idle worker until the agent restarted."""
    _settings, store, pipeline = env
    job_id = queue_one(store)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise EdgeError(Code.DISK_FULL, "no space left to store the heatmap")

    monkeypatch.setattr(Pipeline, "_write_heatmap", disk_full)
    with pytest.raises(EdgeError) as raised:
        pipeline.run_once()  # the agent's worker sees DISK_FULL and backs off
    assert raised.value.code is Code.DISK_FULL
    row = job_row(store, job_id)
    assert (row["state"], row["attempts"], row["error_code"]) == ("queued", 0, "DISK_FULL")
    monkeypatch.undo()
    assert pipeline.run_once() is True  # the same live worker, no restart
    assert job_row(store, job_id)["state"] == "done"
    assert store.counts()["results"] == 1


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_process_stopped_mid_job_gives_the_job_back_uncounted(
    env: Any, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]
) -> None:
    """Ctrl-C on `edge infer` (or a handler's sys.exit) while it analyses: the job went back to
    the queue only once the process was gone, counted as a death: three impatient Ctrl-C on a
    slow device abandoned the study."""
    settings, store, pipeline = env
    job_id = queue_one(store)

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise stop()

    monkeypatch.setattr(Pipeline, "_write_heatmap", interrupted)
    for _ in range(settings.worker.max_attempts + 1):
        with pytest.raises(stop):
            pipeline.run_once()
        row = job_row(store, job_id)
        assert (row["state"], row["attempts"], row["error_code"]) == ("queued", 0, "JOB_INTERRUPTED")
    monkeypatch.undo()
    assert pipeline.run_once() is True
    assert job_row(store, job_id)["state"] == "done"


def test_a_job_the_full_disk_kept_from_being_released_is_released_when_space_returns(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _settings, store, pipeline = env
    job_id = queue_one(store)

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise EdgeError(Code.DISK_FULL, "disk full")

    monkeypatch.setattr(Pipeline, "_write_heatmap", disk_full)
    monkeypatch.setattr(type(store.leases), "release", disk_full)  # the store cannot write either
    with pytest.raises(EdgeError):
        pipeline.run_once()
    assert job_row(store, job_id)["state"] == "running"
    monkeypatch.undo()
    assert pipeline.run_once() is True  # gives it back, claims it again, finishes it
    assert job_row(store, job_id)["state"] == "done"


def test_a_wedged_worker_loses_its_job_and_its_late_answer_is_dropped(env: Any) -> None:
    settings, store, pipeline = env
    job_id = queue_one(store)
    job = store.claim_job(pipeline.worker_id, lease_s=300)
    assert job is not None
    store.db.execute("UPDATE jobs SET lease_until = ?", [PAST])  # it went silent past its lease
    store.db.conn.commit()
    other = Pipeline(settings, store)
    assert other.run_once() is True  # reclaims the job (its lease ended) and answers it
    assert job_row(store, job_id)["worker"] == other.worker_id
    with pytest.raises(EdgeError) as late:
        pipeline.process(job)  # the wedged worker wakes up and finishes
    assert late.value.code is Code.JOB_LEASE_LOST
    assert store.counts()["results"] == 1
    other.close()


def test_a_job_that_kills_every_worker_is_abandoned_with_a_code(env: Any) -> None:
    settings, store, _pipeline = env
    job_id = queue_one(store)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    dead_worker = f"{os.uname().nodename}:{dead.stdout.strip()}:x"
    for _attempt in range(settings.worker.max_attempts):
        claimed = store.claim_job(dead_worker)
        assert claimed is not None
        assert claimed.id == job_id
        limits = settings.worker
        assert store.leases.reclaim(limits.max_attempts, limits.max_restarts) in ((1, 0), (0, 1))
    row = job_row(store, job_id)
    assert (row["state"], row["error_code"], row["attempts"]) == ("failed", "JOB_ABANDONED", 3)
    actions = [r["action"] for r in store.db.execute("SELECT action FROM audit").fetchall()]
    assert "job.abandoned" in actions


def test_a_restart_of_the_device_is_not_counted_against_the_job(env: Any, monkeypatch: Any) -> None:
    """A power cut kills the worker whatever it was doing: the claim is given back, counted as a
    restart, and the holder of an earlier boot is gone at once, even under a pid now in use
    (boot order gives services the same pids). Only `max_restarts` of them end the job."""
    settings, store, _pipeline = env
    job_id = queue_one(store)
    monkeypatch.setattr(processes, "boot_id", lambda: "bootnow")
    alive_pid = os.getpid()
    earlier_boot = f"{processes.this_host()}:{alive_pid}:x:bootbefore"
    limits = settings.worker
    for restart in range(1, limits.max_restarts):
        assert store.claim_job(earlier_boot) is not None
        assert store.leases.reclaim(limits.max_attempts, limits.max_restarts) == (1, 0)
        row = job_row(store, job_id)
        assert (row["state"], row["attempts"], row["restarts"]) == ("queued", 0, restart)
    assert restart > limits.max_attempts  # more restarts than attempts allow, and still queued
    assert store.claim_job(earlier_boot) is not None
    assert store.leases.reclaim(limits.max_attempts, limits.max_restarts) == (0, 1)
    row = job_row(store, job_id)
    assert (row["state"], row["error_code"], row["restarts"]) == ("failed", "JOB_ABANDONED", 10)
    assert "10 restarts of the device" in row["error_message"]
    requeued = store.db.execute("SELECT detail FROM audit WHERE action = 'jobs.requeued'").fetchall()
    assert all(json.loads(r["detail"])["after_restart"] == 1 for r in requeued)


def test_a_holder_of_this_boot_is_alive_while_its_process_is(monkeypatch: Any) -> None:
    monkeypatch.setattr(processes, "boot_id", lambda: "bootnow")
    host = processes.this_host()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True, text=True
    )
    assert processes.holder_state(f"{host}:{os.getpid()}:x:bootnow") == "alive"
    assert processes.holder_state(f"{host}:{dead.stdout.strip()}:x:bootnow") == "gone"
    assert processes.holder_state(f"{host}:{os.getpid()}:x:bootbefore") == "restarted"
    assert processes.holder_state(f"{host}:{os.getpid()}:x") == "alive"  # older software: no boot
    assert processes.holder_state(f"{host}:{os.getpid()}:x:") == "alive"  # the kernel did not say
    assert processes.holder_state(f"elsewhere:{os.getpid()}:x:bootbefore") == "unknown"
    assert processes.holder_state(None) == "unknown"
    assert processes.new_worker_id().endswith(":bootnow")


def test_the_boot_is_read_from_the_kernel(tmp_path: Path, monkeypatch: Any) -> None:
    boot_file = tmp_path / "boot_id"
    boot_file.write_text("4e3a5c1f-9b2d-4c8e-a1f0-2d7b6e9c0a11\n")
    monkeypatch.setattr(processes, "BOOT_ID_FILE", boot_file)
    try:
        processes.boot_id.cache_clear()
        assert processes.boot_id() == "4e3a5c1f9b2d"
        monkeypatch.setattr(processes, "BOOT_ID_FILE", tmp_path / "absent")
        assert processes.boot_id() == "4e3a5c1f9b2d"  # read once per process
        processes.boot_id.cache_clear()
        assert processes.boot_id() is None
    finally:
        processes.boot_id.cache_clear()  # the real one for the tests after


def test_stale_leases_of_older_software_count_as_expired(store: Store) -> None:
    job_id = queue_one_plain(store)
    store.db.execute("UPDATE jobs SET state = 'running', worker = 'elsewhere:1:x', lease_until = NULL")
    store.db.conn.commit()
    assert [row["id"] for row in store.leases.stale()] == [job_id]


def test_a_lease_a_clock_ahead_gave_runs_out(env: Any) -> None:
    """A lease given while the clock read 2040, its holder alive but wedged: it was never
    reclaimed (the stamps compared) until 2040. A lease ends within a day of being given."""
    _, store, pipeline = env
    job_id = queue_one(store)
    job = store.claim_job(pipeline.worker_id, job_id, lease_s=300)
    assert job is not None
    assert store.leases.stale(job_id) == []  # alive, its lease running
    store.db.execute("UPDATE jobs SET lease_until = '2040-06-01T00:05:00.000Z' WHERE id = ?", [job_id])
    store.db.conn.commit()
    assert [row["id"] for row in store.leases.stale(job_id)] == [job_id]
    assert store.leases.reclaim(3, 3, job_id=job_id) == (1, 0)


def queue_one_plain(store: Store) -> str:
    from tests.test_store import new_image

    return store.ingest(new_image(), ["m"], actor="test").job_ids[0]


_HOLD_A_JOB = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge.config import load_settings
    from edge.store import Store
    from edge.processes import new_worker_id
    settings = load_settings(data_dir=Path(sys.argv[1]))
    with Store(settings.data_dir) as store:
        job = store.claim_job(new_worker_id(), lease_s=3600)  # like `edge infer` mid-inference
        print(job.id if job else "none", flush=True)
        time.sleep(600)
    """
)


def test_a_killed_infer_s_job_is_finished_by_the_running_agent(tmp_path: Path, sample_png: Path) -> None:
    """Before, a job held by a killed `edge infer` waited for some new process to start."""
    data, inbox = tmp_path / "data", tmp_path / "inbox"
    inbox.mkdir()
    settings: Settings = load_settings(data_dir=data)
    with Store(data) as store:  # queued, as the drop folder or the listener would leave it
        raw = sample_png.read_bytes()
        store.ingest(
            Pipeline.new_image(decode_bytes(raw), raw, "cli", sample_png.name), ["cxr-pneumonia"], actor="t"
        )
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_A_JOB, str(data)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    held = holder.stdout.readline().strip()
    assert held != "none"
    log = tmp_path / "agent.log"
    with log.open("ab") as handle:
        agent = crashtest.start_agent(data, inbox, handle)
    try:
        assert crashtest.wait_until_running(data, agent.pid, timeout_s=120), "the agent did not start"
        time.sleep(1.0)
        with Store(data) as store:
            assert job_row(store, held)["state"] == "running"  # its holder is alive: not taken
        holder.send_signal(signal.SIGKILL)  # `edge infer` killed mid-job
        holder.wait()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with Store(data) as store:
                if job_row(store, held)["state"] == "done":
                    break
            time.sleep(0.5)
        with Store(data) as store:
            row = job_row(store, held)
            assert row["state"] == "done", (row, log.read_text()[-2000:])
            assert row["attempts"] == 2
            assert store.counts()["results"] == 1
    finally:
        holder.kill()
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=120)
    assert settings.worker.max_attempts == 3


def test_jobs_a_damaged_model_failed_are_queued_again_once_it_is_mended(env: Any) -> None:
    """A model whose files were damaged failed every job for it, for good: a DICOM study so failed
    stayed failed after the model was reinstalled (its modality told long before that it was
    stored). The agent's maintenance gives them back once the model opens (an outside-style check)."""
    import threading
    from types import SimpleNamespace

    from edge.inference.pool import model_problem
    from edge.inference.registry import Registry
    from edge.operations.agent import Agent

    settings, store, pipeline = env
    folder = Registry(settings.models.dir).get("tiny").folder
    saved = {name: (folder / name).read_bytes() for name in ("tiny-fp32.onnx", "tiny-int8.onnx")}
    for name in saved:
        (folder / name).write_bytes(b"damaged")
    job_id = queue_one(store)
    assert pipeline.run_once()
    assert job_row(store, job_id)["state"] == "failed"
    assert job_row(store, job_id)["error_code"] == Code.MODEL_CHECKSUM_MISMATCH.value
    maintenance = SimpleNamespace(settings=settings, wake=threading.Event())
    Agent._retry_model_failures(maintenance, store)  # type: ignore[arg-type]
    assert job_row(store, job_id)["state"] == "failed"  # still damaged: it waits
    assert model_problem(Registry(settings.models.dir), "tiny", settings) is not None
    for name, data in saved.items():
        (folder / name).write_bytes(data)
    assert model_problem(Registry(settings.models.dir), "tiny", settings) is None
    Agent._retry_model_failures(maintenance, store)  # type: ignore[arg-type]
    assert job_row(store, job_id)["state"] == "queued"
    assert maintenance.wake.is_set()
    assert pipeline.run_once()  # the same pool: a failed load is not remembered
    assert job_row(store, job_id)["state"] == "done"


def test_a_job_a_model_that_looks_whole_still_fails_is_not_requeued_for_ever(env: Any) -> None:
    """Checksums off and every file truncated: the model looked whole to the maintenance and its
    jobs were given back every 5 minutes for ever. Each claim counts: max_attempts claims."""
    import threading
    from types import SimpleNamespace

    from edge.operations.agent import Agent

    settings, store, _ = env
    job_id = queue_one(store)
    store.db.execute(
        "UPDATE jobs SET state = 'failed', error_code = ?, attempts = ? WHERE id = ?",
        [Code.MODEL_CHECKSUM_MISMATCH.value, settings.worker.max_attempts, job_id],
    )
    store.db.conn.commit()
    Agent._retry_model_failures(SimpleNamespace(settings=settings, wake=threading.Event()), store)  # type: ignore[arg-type]
    assert job_row(store, job_id)["state"] == "failed"
