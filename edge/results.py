"""One home for results: what an analysis came to, the record a finding is stored as, and the
audit of a refused input.

The pipeline (images), the video path (recordings, captures, cines) and the façade all hand
back the same `Analysis`, and every stored result, image or clip, is built by `result_record`,
so a result names its model and finding the same way whichever way it came.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any

from edge.errors import EdgeError
from edge.inference.pool import ServedModel
from edge.inference.postprocess import Finding
from edge.store import ResultRecord, Store, StoredResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Analysis:
    """What happened to one input for one model: a result, or a coded refusal."""

    input: str
    code: str | None = None
    message: str | None = None
    result: StoredResult | None = None
    study_id: str | None = None
    image_id: str | None = None
    job_id: str | None = None
    duplicate: bool = False

    @property
    def ok(self) -> bool:
        return self.result is not None

    @classmethod
    def refused(cls, source: str, error: EdgeError, **ids: Any) -> Analysis:
        return cls(input=source, code=error.code.value, message=error.message, **ids)


def audit_refusal(store: Store, actor: str, error: EdgeError) -> None:
    """Record a refused input in the audit trail, its code only (a file name can identify a
    patient), and log it: one line either way. A refusal that cannot be audited (the store
    cannot write: a full disk) is logged as an error that says so."""
    try:
        store.audit(actor, "input.refused", None, {"code": error.code.value})
    except (EdgeError, sqlite3.Error) as exc:
        cause = exc.one_line() if isinstance(exc, EdgeError) else f"the store: {exc}"
        log.error("input refused, not audited: %s (%s)", error.one_line(), cause)
        return
    log.warning("input refused: %s", error.one_line())


def result_record(
    model: ServedModel,
    finding: Finding,
    *,
    latency_ms: float,
    total_ms: float,
    heatmap_path: str | None = None,
    quality: dict[str, Any] | None = None,
    applicability: dict[str, Any] | None = None,
) -> ResultRecord:
    """A result as stored: which model (name, version, file, variant, backend) decided what."""
    return ResultRecord(
        model_name=model.name,
        model_version=model.version,
        model_sha256=model.sha256,
        variant=model.variant_name,
        backend=model.backend,
        precision=model.precision,
        finding=finding.finding,
        finding_label=finding.positive,
        probability=finding.probability,
        probabilities=finding.probabilities,
        threshold=finding.threshold,
        operating_point=finding.operating_point,
        latency_ms=latency_ms,
        total_ms=total_ms,
        heatmap_path=heatmap_path,
        quality=quality,
        applicability=applicability,
        profile_id=finding.profile_id,
    )
