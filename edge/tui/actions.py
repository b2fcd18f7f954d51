"""The technician's actions, each a blocking call that returns one sentence to show.

No Textual here: screens run these in thread workers. Writes go through the store (one
transaction with its audit row each); a refusal is raised as `EdgeError` and shown as
`CODE: sentence`. A re-run is analysed by the agent when it runs, else right here.
"""

from __future__ import annotations

import logging
from typing import Any

from edge.config import Settings
from edge.device import Device
from edge.errors import EdgeError
from edge.hints import SYNC_NOT_CONFIGURED, SYNC_NOT_RUNNING, next_step
from edge.sync import request_sync_now
from edge.tui.context import TuiContext

log = logging.getLogger(__name__)


def set_urgent(context: TuiContext, study_id: str, urgent: bool) -> str:
    with context.open_store() as store:
        store.technician.set_urgent(study_id, urgent, context.actor)
    return "flagged urgent: it is now at the top of the worklist" if urgent else "urgent flag removed"


def add_note(context: TuiContext, study_id: str, text: str, result_id: str | None = None) -> str:
    with context.open_store() as store:
        store.technician.add_note(study_id, text, context.actor, result_id=result_id)
    return "note added"


def mark_seen(context: TuiContext, result_id: str) -> str:
    with context.open_store() as store:
        fresh = store.technician.mark_seen(result_id, context.actor)
    return "marked seen" if fresh else "already marked seen"


def rerun(context: TuiContext, image_id: str, model_name: str) -> str:
    """Queue the image for another model; without a running agent, analyse it now."""
    agent_running = bool(context.agent(context.settings).get("running"))
    # analysed here only without an agent: then decoded as the agent would, bounded
    guarded = not agent_running
    with Device(context.settings, actor=context.actor, registry=context.registry, guarded=guarded) as device:
        rerun = device.rerun(image_id, model_name, agent_running=agent_running)
    if rerun.state == "done":
        return f"already analysed with {model_name}: its result is in the worklist"
    if rerun.state == "running":
        return f"{model_name} is analysing it right now"
    if rerun.state == "queued":
        return f"queued for {model_name}" + (": the agent will analyse it" if agent_running else "")
    analysis = rerun.analysis
    assert analysis is not None
    if not analysis.ok or analysis.result is None:
        step = next_step(analysis.code)
        return f"{model_name} did not score it: {analysis.code}: {analysis.message}" + (
            f"\nNext: {step}" if step else ""
        )
    result = analysis.result
    return f"{model_name}: {result.finding}, P({result.finding_label}) = {result.probability:.3f}"


def delete_study(context: TuiContext, study_id: str) -> str:
    with context.open_store() as store:
        removed = store.technician.delete_study(study_id, context.actor)
    return (
        f"study deleted: {removed['images']} image(s), {removed['results']} result(s), "
        f"{removed['files']} file(s); the audit trail records it"
    )


def delete_result(context: TuiContext, job_id: str) -> str:
    """Delete one row's result (a wrong model's), keeping the study and its other results."""
    with context.open_store() as store:
        removed = store.technician.delete_result(job_id, context.actor)
    return (
        f"result deleted ({removed['files']} file(s)); the study and its other results stay. "
        "The hub keeps a copy it already has"
    )


def job_contents(context: TuiContext, job_id: str) -> dict[str, Any]:
    with context.open_store() as store:
        return store.technician.job_contents(job_id)


def refusal_sentence(error: EdgeError) -> str:
    """`CODE: sentence`, and what to do next when the hints table knows the code."""
    step = next_step(error.code)
    return error.one_line() + (f"\nNext: {step}" if step else "")


def study_contents(context: TuiContext, study_id: str) -> dict[str, int]:
    with context.open_store() as store:
        return store.technician.study_contents(study_id)


def sync_now(settings: Settings) -> str:
    """Ask the sync service to run now."""
    try:
        answer = request_sync_now(settings)
    except EdgeError as error:
        return refusal_sentence(error)
    if answer is False:
        from edge.sync.credential import Credential

        # Not enrolled: starting a service would not help; enrolling is the next step.
        return SYNC_NOT_RUNNING if Credential.load(settings) is not None else SYNC_NOT_CONFIGURED
    if isinstance(answer, str):
        return answer
    return "sync requested: the panel updates when it finishes"
