"""The applicability and quality gate, on real images (the shipped samples) and degraded copies."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Settings
from edge.errors import Code
from edge.imaging.decode import DecodedImage, decode_bytes
from edge.inference import gate
from edge.inference.registry import Registry
from edge.pipeline import Pipeline
from edge.store import Store
from edge.study import StudyInfo
from tests.conftest import DEFAULT_MODEL, MODELS, png_bytes
from tools import dicomgen


@pytest.fixture(scope="module")
def real() -> DecodedImage:
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    path = next(p for p, _ in entry.samples if p.suffix == ".png")
    return decode_bytes(path.read_bytes(), path.name)


def codes(decoded: DecodedImage, model: str = DEFAULT_MODEL) -> list[str]:
    return [r.code.value for r in gate.check(decoded, Registry(MODELS).get(model).manifest).refusals]


def test_every_shipped_sample_passes_its_own_model() -> None:
    for entry in Registry(MODELS).entries():
        for path, _ in entry.samples:
            decoded = decode_bytes(path.read_bytes(), path.name)
            verdict = gate.check(decoded, entry.manifest)
            assert verdict.passed, (entry.name, path.name, [r.one_line() for r in verdict.refusals])


@pytest.mark.parametrize(
    ("degrade", "code"),
    [
        (lambda px: cv2.GaussianBlur(px, (0, 0), 4), "BLURRED"),
        (lambda px: np.clip(px.astype(int) - 170, 0, 255).astype(np.uint8), "OVEREXPOSED"),
        (lambda px: np.clip(px.astype(int) + 200, 0, 255).astype(np.uint8), "UNDEREXPOSED"),
        (lambda px: (px * 0.1 + 120).astype(np.uint8), "LOW_CONTRAST"),
        (lambda px: np.full_like(px, 128), "MOSTLY_BLANK"),
        (lambda px: cv2.resize(px, (40, 40), interpolation=cv2.INTER_AREA), "IMAGE_TOO_SMALL"),
    ],
)
def test_degraded_real_images_are_refused(real: DecodedImage, degrade: object, code: str) -> None:
    assert callable(degrade)
    assert code in codes(replace(real, pixels=degrade(real.pixels)))


@pytest.mark.parametrize(
    ("study", "meta", "code"),
    [
        ({"modality": "CT"}, {}, "MODALITY_NOT_ACCEPTED"),
        ({"modality": "CR", "body_part": "KNEE"}, {}, "BODY_PART_NOT_ACCEPTED"),
        ({"modality": "DX", "body_part": "CHEST"}, {"view_position": "LL"}, "VIEW_NOT_ACCEPTED"),
        ({"modality": "CR", "patient_age_years": 45.0}, {}, "AGE_OUT_OF_RANGE"),
    ],
)
def test_applicability_from_dicom_metadata(real: DecodedImage, study: dict, meta: dict, code: str) -> None:
    decoded = replace(real, study=StudyInfo(**study), meta=meta)
    found = codes(decoded)
    assert found == [code]
    assert gate.check(decoded, Registry(MODELS).get(DEFAULT_MODEL).manifest).first().code is Code(code)


def test_a_chest_film_sent_as_thorax_is_a_chest_film(real: DecodedImage) -> None:
    """THORAX is what some scanners send for the defined term CHEST: such a film found no model."""
    decoded = replace(real, study=StudyInfo(modality="CR", body_part="Thorax"))
    assert codes(decoded) == []
    assert DEFAULT_MODEL in Registry(MODELS).route("CR", "THORAX")
    assert Registry(MODELS).route("CR", "KNEE") == []


def test_frontal_adult_and_paediatric_boundaries(real: DecodedImage) -> None:
    ok = replace(
        real,
        study=StudyInfo(modality="CR", body_part="CHEST", patient_age_years=17.0),
        meta={"view_position": "PA"},
    )
    assert codes(ok) == []


def test_several_refusals_are_named_in_one_line(real: DecodedImage) -> None:
    decoded = replace(real, pixels=np.full_like(real.pixels, 128), study=StudyInfo(modality="CT"))
    verdict = gate.check(decoded, Registry(MODELS).get(DEFAULT_MODEL).manifest)
    first = verdict.first()
    assert first.code is Code.MODALITY_NOT_ACCEPTED
    assert "MOSTLY_BLANK" in first.message


def test_a_gate_refusal_is_stored_as_a_refused_job(settings: Settings, store: Store, tmp_path: Path) -> None:
    lateral = dicomgen.grey_dicom(
        dicomgen.twelve_bit(
            decode_bytes(next(p for p, _ in Registry(MODELS).get(DEFAULT_MODEL).samples).read_bytes()).pixels
        ),
        bits_stored=12,
        window=(2048, 4096),
        extra={"ViewPosition": "LL"},
    )
    path = tmp_path / "lateral.dcm"
    path.write_bytes(dicomgen.to_bytes(lateral))
    pipeline = Pipeline(settings, store)
    [analysis] = pipeline.analyse_file(path)
    pipeline.close()
    assert (analysis.ok, analysis.code) == (False, "VIEW_NOT_ACCEPTED")
    counts = store.counts()
    assert (counts["images"], counts["jobs_refused"], counts["results"], counts["outbox"]) == (1, 1, 0, 0)
    job = store.job(analysis.job_id)
    assert job is not None
    assert job["error_code"] == "VIEW_NOT_ACCEPTED"
    # The same file again is a duplicate with the same refusal, not a new job.
    pipeline = Pipeline(settings, store)
    [again] = pipeline.analyse_file(path)
    pipeline.close()
    assert (again.code, again.duplicate) == ("VIEW_NOT_ACCEPTED", True)
    assert store.counts()["jobs"] == 1


def test_the_gate_can_be_switched_off_by_a_site(settings: Settings, store: Store, tmp_path: Path) -> None:
    blank = tmp_path / "blank.png"
    blank.write_bytes(png_bytes(np.full((300, 300), 128, np.uint8)))
    off = settings.model_copy(update={"gate": settings.gate.model_copy(update={"enabled": False})})
    pipeline = Pipeline(off, store)
    [analysis] = pipeline.analyse_file(blank)
    pipeline.close()
    assert analysis.ok
    assert analysis.result.quality["uniform_fraction"] == 1.0  # measured and stored all the same
