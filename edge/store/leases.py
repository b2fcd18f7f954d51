"""Job leases: a claimed job belongs to its worker only while the worker keeps renewing it.

A worker claims a job with a lease (`Store.claim_job`) and renews it at each step of the work.
The holder is `host:pid:suffix` (`processes.new_worker_id`). A job goes back to the queue when
its lease ran out (a wedged worker, a worker on another host that vanished), when its holder
on this host is gone (killed, crashed: no need to wait for the lease), or when its worker
releases it after a failure that was not the job's fault (a full disk, a store error after the
claim). After `max_attempts` claims that ended without an answer the job fails with
`JOB_ABANDONED` instead of returning (an input that kills every worker must not loop forever).

The work is idempotent: a result commits only if the job is still running under the worker
that computed it, so a worker that outlived its lease cannot overwrite anyone's answer.
"""

from __future__ import annotations

from typing import Any

from edge.clock import utc_after, utc_now
from edge.errors import Code
from edge.processes import process_alive, this_host
from edge.store.records import Job
from edge.store.writer import Writer


def _holder_gone(worker: str | None) -> bool:
    """The holder is a process of this host that no longer exists."""
    parts = (worker or "").split(":")
    if len(parts) < 2 or parts[0] != this_host() or not parts[1].isdigit():
        return False
    return not process_alive(int(parts[1]))


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
        """Running jobs (or the one named) whose lease ran out or whose holder here is gone."""
        sql = "SELECT id, worker, attempts, lease_until FROM jobs WHERE state = 'running'"
        params: list[Any] = []
        if job_id is not None:
            sql += " AND id = ?"
            params.append(job_id)
        now = utc_now()
        rows = [dict(row) for row in self.db.execute(sql, params).fetchall()]
        return [
            row
            for row in rows
            if row["lease_until"] is None or row["lease_until"] < now or _holder_gone(row["worker"])
        ]

    def reclaim(self, max_attempts: int, *, job_id: str | None = None) -> tuple[int, int]:
        """Return stale jobs to the queue, or fail those that used up their attempts with
        `JOB_ABANDONED`; (requeued, abandoned). Called by the agent's worker every few seconds
        (`Pipeline.run_once`) and by a caller that wants one job now (`edge infer`)."""
        stale = self.stale(job_id)
        if not stale:
            return 0, 0
        requeued = abandoned = 0
        with self.writer.transaction("requeue jobs"):
            now = utc_now()
            for row in stale:
                if row["attempts"] >= max_attempts:
                    message = (
                        f"given up after {row['attempts']} attempts: each time its worker died or"
                        " stopped answering before a result was stored"
                    )
                    cursor = self.db.execute(
                        "UPDATE jobs SET state = 'failed', worker = NULL, lease_until = NULL,"
                        " error_code = ?, error_message = ?, updated_at = ?"
                        " WHERE id = ? AND state = 'running' AND worker IS ?",
                        [Code.JOB_ABANDONED.value, message, now, row["id"], row["worker"]],
                    )
                    if cursor.rowcount:
                        abandoned += 1
                        self.writer.audit("store", "job.abandoned", row["id"], {"attempts": row["attempts"]})
                    continue
                cursor = self.db.execute(
                    "UPDATE jobs SET state = 'queued', worker = NULL, lease_until = NULL, updated_at = ?"
                    " WHERE id = ? AND state = 'running' AND worker IS ?",
                    [now, row["id"], row["worker"]],
                )
                requeued += cursor.rowcount
            if requeued:
                self.writer.audit("store", "jobs.requeued", None, {"count": requeued})
        return requeued, abandoned
