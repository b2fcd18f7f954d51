"""The flow of a study, end to end on a tiny real model: input -> store -> result -> outbox."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.config import Settings, load_settings
from edge.pipeline import Pipeline
from edge.store import Store
from edge.store.writer import Writer
from tests.conftest import gradient, png_bytes
from tests.tinymodel import make_model_dir
from tools import dicomgen

EMPTY = {"studies": 0, "images": 0, "jobs": 0, "results": 0, "outbox": 0}


@pytest.fixture
def env(tmp_path: Path) -> tuple[Settings, Store, Pipeline]:
    make_model_dir(tmp_path / "models")
    settings = load_settings(
        data_dir=tmp_path / "data", models={"dir": tmp_path / "models", "default": "tiny"}
    )
    store = Store(settings.data_dir)
    pipeline = Pipeline(settings, store)
    yield settings, store, pipeline  # type: ignore[misc]
    pipeline.close()
    store.close()


def stored(store: Store) -> dict[str, int]:
    counts = store.counts()
    return {k: counts[k] for k in EMPTY}


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_png_to_result_with_provenance(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    bright = write(tmp_path / "bright.png", png_bytes(np.full((30, 20), 250, np.uint8)))
    [analysis] = pipeline.analyse_file(bright)
    assert analysis.ok, analysis.message
    r = analysis.result
    assert r is not None
    assert (r.finding, r.finding_label, r.operating_point) == ("finding", "finding", "balanced")
    assert r.model_name == "tiny"
    assert r.model_version == "0.0.1"
    assert len(r.model_sha256) == 64
    assert r.backend == "onnxruntime"
    assert r.precision in ("fp32", "int8")
    assert 0 < r.latency_ms <= r.total_ms
    assert r.probability == pytest.approx(r.probabilities["finding"])
    assert stored(store) == {"studies": 1, "images": 1, "jobs": 1, "results": 1, "outbox": 1}
    job = store.job(analysis.job_id)
    assert job is not None
    assert job["state"] == "done"


def test_the_same_file_twice_is_one_result(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    path = write(tmp_path / "a.png", png_bytes(gradient()))
    first = pipeline.analyse_file(path)[0]
    again = pipeline.analyse_file(path)[0]
    assert again.duplicate
    assert again.result.id == first.result.id
    assert stored(store)["results"] == 1


def test_dicom_is_routed_by_modality_and_body_part(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    cr = dicomgen.grey_dicom(dicomgen.twelve_bit(gradient()), bits_stored=12, window=(2048, 4096))
    [analysis] = pipeline.analyse_file(write(tmp_path / "cr.dcm", dicomgen.to_bytes(cr)))
    assert analysis.ok
    assert analysis.result.model_name == "tiny"
    study = store.db.execute("SELECT * FROM studies").fetchone()
    assert (study["modality"], study["body_part"], study["phi_patient_id"]) == ("CR", "CHEST", "SYNTH-0001")


def test_input_no_model_accepts_is_refused_and_not_stored(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    us = dicomgen.colour_dicom(np.dstack([gradient()] * 3).astype(np.uint8))
    [analysis] = pipeline.analyse_file(write(tmp_path / "us.dcm", dicomgen.to_bytes(us)))
    assert (analysis.ok, analysis.code) == (False, "NO_MODEL_FOR_INPUT")
    assert stored(store) == EMPTY


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("truncated.png", png_bytes(gradient())[:-40], "IMAGE_TRUNCATED"),
        ("notes.png", b"not an image at all", "INPUT_NOT_IMAGE"),
        ("empty.jpg", b"", "INPUT_EMPTY"),
        (
            "sr.dcm",
            dicomgen.to_bytes(dicomgen.base_dataset(dicomgen.BASIC_TEXT_SR, modality="SR")),
            "DICOM_NO_PIXELS",
        ),
    ],
)
def test_bad_inputs_leave_no_rows_only_an_audit_line(
    env: Any, tmp_path: Path, name: str, data: bytes, code: str
) -> None:
    _, store, pipeline = env
    [analysis] = pipeline.analyse_file(write(tmp_path / name, data))
    assert (analysis.ok, analysis.code) == (False, code)
    assert stored(store) == EMPTY
    assert not (store.data_dir / "images").exists() or not any((store.data_dir / "images").rglob("*.*"))
    [audit] = list(store.audit_rows("input.refused"))
    assert code in audit["detail"]
    assert name not in audit["detail"]


def test_missing_file(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    [analysis] = pipeline.analyse_file(tmp_path / "nowhere.png")
    assert analysis.code == "INPUT_NOT_FOUND"
    assert stored(store) == EMPTY


def test_unknown_or_corrupt_model_refuses_before_storing(env: Any, tmp_path: Path) -> None:
    settings, store, pipeline = env
    path = write(tmp_path / "a.png", png_bytes(gradient()))
    assert pipeline.analyse_file(path, model="no-such-model")[0].code == "MODEL_UNKNOWN"
    onnx_file = settings.models.dir / "tiny" / "tiny-fp32.onnx"
    onnx_file.write_bytes(onnx_file.read_bytes() + b"tampered")
    (settings.models.dir / "tiny" / "tiny-int8.onnx").unlink()
    fresh = Pipeline(settings, store)
    assert fresh.analyse_file(path)[0].code in ("MODEL_CHECKSUM_MISMATCH", "MODEL_FILE_MISSING")
    assert stored(store) == EMPTY


def test_store_failure_at_commit_leaves_no_partial_result_and_recovers(
    env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store, pipeline = env
    path = write(tmp_path / "a.png", png_bytes(gradient()))

    def failing(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("injected: power cut before the outbox row")

    monkeypatch.setattr(Writer, "enqueue_outbox", failing)
    [analysis] = pipeline.analyse_file(path)
    assert analysis.code == "STORE_WRITE_FAILED"
    counts = store.counts()
    assert (counts["images"], counts["jobs_queued"], counts["results"], counts["outbox"]) == (1, 1, 0, 0)
    job = store.db.execute("SELECT state, attempts, error_code FROM jobs").fetchone()
    # A failure of the device, not of the job: back in the queue at once, the attempt not counted.
    assert tuple(job) == ("queued", 0, "STORE_WRITE_FAILED")
    monkeypatch.undo()
    again = Pipeline(settings, store)
    [analysis] = again.analyse_file(path)
    assert analysis.ok
    counts = store.counts()
    assert (counts["jobs_done"], counts["results"], counts["outbox"]) == (1, 1, 1)


def test_queued_jobs_are_worked_by_run_once(env: Any, tmp_path: Path) -> None:
    _settings, store, pipeline = env
    from edge.imaging.decode import decode_bytes

    data = png_bytes(gradient())
    decoded = decode_bytes(data)
    store.ingest(Pipeline.new_image(decoded, data, "watch", "x.png"), ["tiny"], actor="test")
    assert pipeline.run_once() is True
    assert pipeline.run_once() is False
    counts = store.counts()
    assert (counts["jobs_done"], counts["results"]) == (1, 1)


def test_stored_image_that_became_unreadable_fails_its_job(env: Any, tmp_path: Path) -> None:
    _, store, pipeline = env
    from edge.imaging.decode import decode_bytes

    data = png_bytes(gradient())
    outcome = store.ingest(Pipeline.new_image(decode_bytes(data), data, "watch", None), ["tiny"], actor="t")
    store.image_file(outcome.image_id).write_bytes(data[:50])  # disk corruption
    assert pipeline.run_once()
    job = store.job(outcome.job_ids[0])
    assert job is not None
    assert (job["state"], job["error_code"]) == ("failed", "IMAGE_TRUNCATED")
