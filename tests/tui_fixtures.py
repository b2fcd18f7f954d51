"""A device store filled by the real pipeline, at fixed times, for the TUI's tests.

The shipped samples go through `Pipeline.analyse_file` (results, heatmaps, a gate refusal, a clip
from a real recording), two more are left queued and running, and the technician's marks are
made through the store. The store's clock is frozen to set times so what the TUI draws depends on
the data alone; ids stay random (the TUI never shows them).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from edge.clock import utc_now as store_utc_now
from edge.config import Settings, load_settings
from edge.operations.health import snapshot
from edge.pipeline import Pipeline
from edge.store import Store
from edge.tui import actions
from edge.tui.app import EdgeApp, create_app
from edge.tui.context import TuiContext
from edge.video import analysis as _video_analysis  # noqa: F401 - loaded now, so its clock is frozen too

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
CXR = MODELS / "cxr-pneumonia" / "samples"
US = MODELS / "us-breast" / "samples"
# A real lung recording shipped with the repository (samples/video/README.md): the live screen
# plays it through the lung model and the store holds a clip analysed from it, so the TUI tests
# need no shared data. The ocular recording beside it is an eye: the ultrasound models refuse a
# clip of it OUT_OF_SCOPE, so it stands only for that refusal (test_tui.py's live tests).
CLIP = REPO / "samples" / "video" / "lung-regular-alines.mp4"
CLIP_MODEL = "us-lung"
STORED_CLIP = CLIP
OCULAR = REPO / "samples" / "video" / "clarius-ocular-short.mp4"
NOW = datetime(2025, 3, 14, 9, 30, tzinfo=timezone.utc)


def tui_settings(data_dir: Path) -> Settings:
    # FP32 on one thread: the same probabilities and heatmaps on every run (precision "auto"
    # picks a variant by timing, which varies).
    return load_settings(
        data_dir=data_dir, models={"dir": MODELS}, runtime={"precision": "fp32", "threads": 1}
    )


class FrozenClock:
    """Stands in for `utc_now` in every edge module that imported it."""

    def __init__(self) -> None:
        self.at = "2025-03-14T08:00:00.000Z"

    def set(self, at: str) -> None:
        self.at = at

    def __call__(self) -> str:
        return self.at


@contextmanager
def frozen_store_clock(clock: FrozenClock) -> Iterator[None]:
    original = store_utc_now
    with pytest.MonkeyPatch.context() as patch:
        for name, module in list(sys.modules.items()):
            if name.startswith("edge") and getattr(module, "utc_now", None) is original:
                patch.setattr(module, "utc_now", clock)
        yield


@dataclass
class Filled:
    """Ids of the rows the tests act on, by what they are."""

    ids: dict[str, dict[str, Any]]

    def __getitem__(self, name: str) -> dict[str, Any]:
        return self.ids[name]


def _analysed(
    pipeline: Pipeline, path: Path, model: str | None = None, refused: str | None = None
) -> dict[str, Any]:
    """Analyse one sample; it must be scored, or refused with `refused`'s code (a sample the
    model does not accept any more would otherwise leave rows the tests cannot find)."""
    analysis = pipeline.analyse_file(path, model)[0]
    assert analysis.code == refused, f"{path.name} with {model}: {analysis.code}: {analysis.message}"
    return {
        "study_id": analysis.study_id,
        "image_id": analysis.image_id,
        "job_id": analysis.job_id,
        "result_id": analysis.result.id if analysis.result else None,
        "code": analysis.code,
    }


def fill_store(settings: Settings, *, with_clip: bool = True) -> Filled:
    """Analyse real samples at fixed times and mark some as a technician would."""
    clock = FrozenClock()
    ids: dict[str, dict[str, Any]] = {}
    with frozen_store_clock(clock), Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store, actor="cli")
        try:
            clock.set("2025-03-13T16:40:00.000Z")  # yesterday: the worklist shows the date
            ids["normal_png"] = _analysed(pipeline, CXR / "sample-01.png")
            clock.set("2025-03-14T08:05:00.000Z")
            ids["pneumonia_png"] = _analysed(pipeline, CXR / "sample-12.png")
            clock.set("2025-03-14T08:12:00.000Z")
            ids["dicom"] = _analysed(pipeline, CXR / "demo" / "demo-07.dcm")
            clock.set("2025-03-14T08:20:00.000Z")
            ids["refused"] = _analysed(
                pipeline, CXR / "demo" / "demo-06.dcm", "us-breast", refused="MODALITY_NOT_ACCEPTED"
            )
            clock.set("2025-03-14T08:31:00.000Z")
            ids["breast"] = _analysed(pipeline, US / "sample-14.png", "us-breast")
            if with_clip:
                clock.set("2025-03-14T08:44:00.000Z")
                ids["clip"] = _analysed(pipeline, STORED_CLIP, CLIP_MODEL)
            clock.set("2025-03-14T09:02:00.000Z")
            queued = pipeline.ingest((CXR / "demo" / "demo-08.dcm").read_bytes(), "demo-08.dcm", "dicom")
            ids["queued"] = {"study_id": queued.outcome.study_id, "image_id": queued.outcome.image_id}
            clock.set("2025-03-14T09:05:00.000Z")
            running = pipeline.ingest((CXR / "sample-03.png").read_bytes(), "sample-03.png", "watch")
            # Held by a worker on another host: stays running whatever this process does.
            store.claim_job("other-host:1:worker", running.outcome.job_ids[0])
            ids["running"] = {"study_id": running.outcome.study_id, "image_id": running.outcome.image_id}
        finally:
            pipeline.close()
        clock.set("2025-03-14T09:10:00.000Z")
        store.technician.set_urgent(ids["dicom"]["study_id"], True, "tui:amina")
        store.technician.add_note(
            ids["dicom"]["study_id"], "Child coughing for 3 weeks; mother asks for a call.", "tui:amina"
        )
        store.technician.mark_seen(ids["normal_png"]["result_id"], "tui:amina")
        add_review(store, ids["pneumonia_png"]["result_id"])
        mark_applicability(store, ids["pneumonia_png"]["result_id"], BORDERLINE_SCOPE)
    return Filled(ids)


# A verdict near the edge of the model's training data (edge/inference/scope.py `Scope.as_dict`).
BORDERLINE_SCOPE = {"state": "borderline", "distance": 31.4, "p_value": 0.0312, "threshold": 40.2}


def mark_applicability(store: Store, result_id: str, scope: dict[str, Any]) -> None:
    """Set a result's applicability verdict, so the screens show a borderline result whatever
    the shipped model's own check says of this sample."""
    with store.writer.transaction("set the applicability"):
        store.db.execute("UPDATE results SET applicability = ? WHERE id = ?", [json.dumps(scope), result_id])


def add_review(
    store: Store,
    result_id: str,
    verdict: str = "agree",
    finding: str = "pneumonia",
    note: str = "Right lower lobe consolidation. Treat per protocol.",
    received_at: str = "2025-03-14T09:21:00.000Z",
    reviewed_at: str | None = "2025-03-14T09:20:00.000Z",
) -> None:
    """A specialist's review as the sync will store it (the hub makes reviews; no store method
    receives them yet, so the fixture writes the row itself); `reviewed_at` None: when received."""
    with store.writer.transaction("add a review"):
        store.db.execute(
            "INSERT INTO reviews (id, result_id, verdict, finding, note, reviewer_role, reviewed_at,"
            " received_at) VALUES (?, ?, ?, ?, ?, 'radiologist', ?, ?)",
            [
                f"review-{result_id}-{received_at}",
                result_id,
                verdict,
                finding,
                note,
                reviewed_at or received_at,
                received_at,
            ],
        )


def fixed_health(real: Any, **overrides: Any) -> Any:
    """The real health snapshot with the host's changing facts replaced by fixed ones."""

    def health(settings: Settings, store: Store) -> dict[str, Any]:
        snap = real(settings, store)
        snap.update(
            data_dir="/var/lib/edge",
            disk={"free_mb": 41_984, "total_mb": 59_392, "accepting": True, "warning": False, "reason": ""},
            versions={"edge": "0.6.0", "python": "3.10.12", "onnxruntime": "1.20.1"},
        )
        snap.update(overrides)
        return snap

    return health


RUNNING_AGENT = {
    "running": True,
    "pid": 4242,
    "started_at": "2025-03-14T06:58:12+00:00",
    "worker_heartbeat_age_s": 0.4,
    "jobs_done_since_start": 17,
    "sources": {"dicom": "EDGE@11112", "watch": "/var/lib/edge/inbox"},
}

FIXED_FACTS = {
    "board": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit",
    "jetson": True,
    "cpus": 6,
    "memory_mb": (7620, 4410),
    "gpu_load": 0.37,
    "temperatures": [("cpu-thermal", 52.3), ("gpu-thermal", 54.1), ("tj-thermal", 55.0)],
}


_TEMPLATE: dict[str, Any] = {}


def filled_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Filled]:
    """One filled store per test session (the pipeline runs once); tests copy it."""
    if "data" not in _TEMPLATE:
        data = tmp_path_factory.mktemp("tui-template") / "data"
        with pytest.MonkeyPatch.context() as patch:  # as conftest isolates each test
            for name in list(os.environ):
                if name.startswith("EDGE_") or name in ("STATE_DIRECTORY", "JOURNAL_STREAM"):
                    patch.delenv(name, raising=False)
            patch.setattr("edge.config.SYSTEM_CONFIG", data.parent / "no-system-config.toml")
            _TEMPLATE["filled"] = fill_store(tui_settings(data))
        _TEMPLATE["data"] = data
    return _TEMPLATE["data"], _TEMPLATE["filled"]


def copy_of_template(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> tuple[Settings, Filled]:
    template, filled = filled_template(tmp_path_factory)
    data = tmp_path / "data"
    shutil.copytree(template, data)
    return tui_settings(data), filled


def build_app(settings: Settings, **overrides: Any) -> EdgeApp:
    """The app as the tests drive it: fixed clock, zone, host facts and host parts of the health
    snapshot; half-cell images (no terminal graphics protocol), Textual's own glyphs; no timed
    reloads."""
    options: dict[str, Any] = {
        "health": fixed_health(snapshot),
        "facts": lambda: FIXED_FACTS,
        "clock": lambda: NOW,
        "display_tz": timezone.utc,
        "graphics": "halfcell",
        "console": False,  # whatever TERM the tests run under
        "refresh_s": 3600.0,
        "actor": "tui:test",
        "live_model": CLIP_MODEL,
        "live_realtime": False,
    }
    options.update(overrides)
    return create_app(settings, **options)


async def settle(pilot: Pilot[Any], rounds: int = 3) -> None:
    """Let thread workers finish and the messages they posted be handled (which may start more)."""
    for _ in range(rounds):
        await pilot.app.workers.wait_for_complete()
        await pilot.pause()


def add_second_result(settings: Settings, ids: Filled) -> str:
    """The refused DICOM (us-breast: the wrong model) analysed again with the chest model, here
    (no agent): its study now holds two rows. Returns the chest result's job id."""
    context = TuiContext(settings, agent=lambda _: {"running": False}, actor="tui:test")
    clock = FrozenClock()
    clock.set("2025-03-14T09:15:00.000Z")  # fixed, so the snapshots that show it do not change
    with frozen_store_clock(clock):
        said = actions.rerun(context, ids["refused"]["image_id"], "cxr-pneumonia")
    assert said.startswith("cxr-pneumonia: "), said
    with Store(settings.data_dir) as store:
        row = store.db.execute(
            "SELECT id FROM jobs WHERE image_id = ? AND model_name = 'cxr-pneumonia'",
            [ids["refused"]["image_id"]],
        ).fetchone()
    return str(row["id"])


Scenario = Callable[[Pilot[Any], list[str]], Awaitable[None]]


def drive(app: EdgeApp, scenario: Scenario, size: tuple[int, int] = (80, 24)) -> list[str]:
    """Run `scenario(pilot, notifications)` against the app; returns what it notified."""
    said: list[str] = []
    original = app.notify

    def notify(message: str, **options: Any) -> None:
        said.append(message)
        original(message, **options)

    app.notify = notify  # type: ignore[method-assign]

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await scenario(pilot, said)

    asyncio.run(run())
    return said
