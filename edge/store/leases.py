"""Job leases: a claimed job belongs to its worker only while the worker keeps renewing it.

A worker claims a job with a lease (`Store.claim_job`) and renews it at each step of the work.
The holder is `host:pid:suffix` (`processes.new_worker_id`). A job goes back to the queue when
its lease ran out (a wedged worker, a worker on another host that vanished), when its holder
on this host is gone (killed, crashed: no need to wait for the lease), or when its worker
releases it after a failure that was not the job's fault (a full disk, a store error after the
claim). After `max_attempts` claims that ended without an answer the job fails with
`JOB_ABANDONED` instead of returning (an input that kills every worker must not loop forever).
A claim that a restart of the device ended (a power cut, a reboot: its holder ran in an earlier
boot) is not the input's doing and is not counted as an attempt; such restarts are counted
apart, and only `max_restarts` of them end the job (an input that hangs the whole device, as a
GPU fault can on a Jetson, must not loop forever either).

The work is idempotent: a result commits only if the job is still running under the worker
that computed it, so a worker that outlived its lease cannot overwrite anyone's answer.
"""

from __future__ import annotations

from typing import Any

from edge.clock import AHEAD_S, utc_after, utc_now
from edge.errors import Code
from edge.processes import holder_state
from edge.store.records import Job
from edge.store.writer import Writer


class Leases:
    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.db = writer.db

    def renew(self, job: Job, lease_s: float) -> bool:
        """Extend `job`'s lease; False when the job is no longer held by its worker."""
        with self.writer.transaction("renew a job's lease"):
            cursor = self.db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND worker IS ?",
                [utc_after(lease_s), job.id, job.worker],
            )
        return cursor.rowcount == 1

    def release(self, job: Job, code: Code, message: str) -> bool:
        """Give a held job back to the queue after a failure that was not the job's fault (the
        disk filled, the store could not write): the attempt is not counted. False when the job
        was no longer held."""
        with self.writer.transaction("return the job to the queue"):
            cursor = self.db.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL,"
                " attempts = max(attempts - 1, 0), error_code = ?, error_message = ?, updated_at = ?"
                " WHERE id = ? AND state = 'running' AND worker IS ?",
                [code.value, message, utc_now(), job.id, job.worker],
            )
            if cursor.rowcount == 1:
                self.writer.audit(job.worker or "worker", "job.released", job.id, {"code": code.value})
        return cursor.rowcount == 1

    def stale(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Running jobs (or the one named) whose lease ran out or whose holder here is gone,
        each with `holder`: its `processes.holder_state`. A lease ending more than a day ahead
        (`clock.AHEAD_S`; leases are shorter) was given by a clock that was ahead: it ran out."""
        sql = "SELECT id, worker, attempts, restarts, lease_until FROM jobs WHERE state = 'running'"
        params: list[Any] = []
        if job_id is not None:
            sql += " AND id = ?"
            params.append(job_id)
        now, latest = utc_now(), utc_after(AHEAD_S)
        rows = [dict(row) for row in self.db.execute(sql, params).fetchall()]
        for row in rows:
            row["holder"] = holder_state(row["worker"])
        return [
            row
            for row in rows
            if row["lease_until"] is None
            or row["lease_until"] < now
            or row["lease_until"] > latest
            or row["holder"] in ("gone", "restarted")
        ]

    def reclaim(self, max_attempts: int, max_restarts: int, *, job_id: str | None = None) -> tuple[int, int]:
        """Return stale jobs to the queue, or fail those that used up their attempts (or their
        restarts) with `JOB_ABANDONED`; (requeued, abandoned). Called by the agent's worker
        every few seconds (`Pipeline.run_once`) and by a caller that wants one job now
        (`edge infer`)."""
        stale = self.stale(job_id)
        if not stale:
            return 0, 0
        requeued = abandoned = after_restart = 0
        with self.writer.transaction("requeue jobs"):
            now = utc_now()
            for row in stale:
                restarted = row["holder"] == "restarted"
                message = _given_up(row, restarted, max_attempts, max_restarts)
                if message is not None:
                    cursor = self.db.execute(
                        "UPDATE jobs SET state = 'failed', worker = NULL, lease_until = NULL,"
                        " error_code = ?, error_message = ?, updated_at = ?, restarts = restarts + ?"
                        " WHERE id = ? AND state = 'running' AND worker IS ?",
                        [Code.JOB_ABANDONED.value, message, now, int(restarted), row["id"], row["worker"]],
                    )
                    if cursor.rowcount:
                        abandoned += 1
                        detail = {"attempts": row["attempts"], "restarts": row["restarts"] + restarted}
                        self.writer.audit("store", "job.abandoned", row["id"], detail)
                    continue
                # A restart gives the claim's attempt back and counts a restart instead.
                cursor = self.db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, updated_at = ?,"
                    " attempts = max(attempts - ?, 0), restarts = restarts + ?"
                    " WHERE id = ? AND state = 'running' AND worker IS ?",
                    [now, int(restarted), int(restarted), row["id"], row["worker"]],
                )
                requeued += cursor.rowcount
                if cursor.rowcount and restarted:
                    after_restart += 1
            if requeued:
                detail = {"count": requeued, "after_restart": after_restart}
                self.writer.audit("store", "jobs.requeued", None, detail)
        return requeued, abandoned


def _given_up(row: dict[str, Any], restarted: bool, max_attempts: int, max_restarts: int) -> str | None:
    """Why a stale job ends as JOB_ABANDONED instead of going back to the queue, or None."""
    if restarted and row["restarts"] + 1 >= max_restarts:
        return (
            f"given up after {row['restarts'] + 1} restarts of the device while it was being"
            " analysed (power cuts, or an input that brings the whole device down)"
        )
    if not restarted and row["attempts"] >= max_attempts:
        return (
            f"given up after {row['attempts']} attempts: each time its worker died or"
            " stopped answering before a result was stored"
        )
    return None
