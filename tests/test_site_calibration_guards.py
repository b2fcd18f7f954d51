"""What keeps a site calibration from putting an unsafe point in force, each found by an outside
check: too few cases (6 moved the screening point from 0.13 to 0.68), films the device refuses
(a blurred site's), one image counted twice under two names, thresholds left at another
temperature (a lung model's clip thresholds), intervals that claimed certainty, a date not read."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import click
import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.cli.site import models_calibrate
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.inference import metrics as m
from edge.inference import site_calibration as sc
from edge.inference.calibration import KEPT, Cases, carried_threshold, fit_site
from edge.inference.labels_table import read_labels
from edge.inference.registry import Registry
from tests.conftest import DEFAULT_MODEL, MODELS


def run(settings: Settings, *args: str) -> object:
    return CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), *args], catch_exceptions=False)


def test_no_calibration_below_the_floor_of_cases_per_class(settings: Settings, tmp_path: Path) -> None:
    [option] = [p for p in models_calibrate.params if p.name == "min_per_class"]
    assert isinstance(option.type, click.IntRange)
    assert option.type.min == sc.FLOOR_PER_CLASS  # the CLI's floor is the module's
    for asked in ("5", "0", "-5"):
        result = run(
            settings, "models", "calibrate", DEFAULT_MODEL, "--data", str(tmp_path), "--min-per-class", asked
        )
        assert result.exit_code == 2, result.output  # a usage error: nothing read, nothing written
        assert "20" in result.output
    assert not (settings.data_dir / "profiles").exists()


def _cases(per_class: int, seed: int = 5) -> Cases:
    rng = np.random.default_rng(seed)
    truth = np.r_[np.zeros(per_class, np.int64), np.ones(per_class, np.int64)]
    margin = np.where(truth == 1, 1.5, -1.5) + rng.normal(0, 1.5, len(truth))
    return Cases(np.stack([np.zeros(len(truth)), margin], axis=1), truth, ["normal", "finding"], "finding")


def test_without_an_out_of_fold_reading_the_screening_point_stays_the_shipped_one() -> None:
    """Below 5 cases of a class no point can be read out of fold: nothing shows the site's
    screening point better, so the shipped one stays (it was refitted on 1 positive)."""
    cases = _cases(4)
    shipped = {"balanced": 0.5, "screening": 0.38}
    fit = fit_site(cases, 2.0, shipped, {"balanced": 0.95, "screening": 0.95}, "test", rounds=20)
    screening = fit.points["screening"]
    assert screening.description.startswith(KEPT), screening.description
    assert screening.threshold == carried_threshold(cases, 0.38, 2.0, fit.temperature)


def test_points_not_refitted_and_clip_thresholds_are_carried_to_the_site_temperature() -> None:
    """The profile serves every point at its temperature: a point not refitted, and a clip
    threshold (chosen at the shipped temperature), flag what they flagged as shipped."""
    cases = _cases(40)
    shipped = {"balanced": 0.5, "screening": 0.38}
    fit = fit_site(
        cases,
        2.0,
        shipped,
        {"balanced": 0.95},
        "test",
        rounds=20,
        shipped_clip_thresholds={"screening": 0.17},
    )
    assert fit.temperature != 2.0
    screening = fit.points["screening"]
    assert screening.description.startswith(KEPT)
    assert ((cases.prob(fit.temperature) >= screening.threshold) == (cases.prob(2.0) >= 0.38)).all()
    assert screening.clip_threshold == carried_threshold(cases, 0.17, 2.0, fit.temperature)
    assert fit.points["balanced"].clip_threshold is None  # none shipped
    assert fit.after["screening"] == fit.before["screening"]  # read at the carried threshold


def test_a_proportion_of_one_or_none_has_an_interval_that_is_not_a_point() -> None:
    right = np.ones(43, bool)
    low, high = m.widened_at_bounds((1.0, 1.0), right)
    assert (round(low, 3), high) == (0.918, 1.0)  # Clopper-Pearson for 43 of 43
    assert m.widened_at_bounds((0.0, 0.0), ~right)[1] == pytest.approx(0.082, abs=1e-3)
    some_missed = np.arange(42) > 0  # 41 of 42: the bootstrap's interval stands
    assert m.widened_at_bounds((0.85, 1.0), some_missed) == (0.85, 1.0)
    fit = fit_site(_cases(40, seed=9), 2.0, {"balanced": 0.5}, {"balanced": 0.95}, "test", rounds=50)
    point = fit.points["balanced"]
    for value, (low, high) in (
        (point.sensitivity, point.sensitivity_ci95),
        (point.specificity, point.specificity_ci95),
    ):
        assert low < high or 0.0 < value < 1.0


def _samples() -> list[tuple[Path, str]]:
    return [
        (path, label) for path, label in Registry(MODELS).get(DEFAULT_MODEL).samples if path.suffix == ".png"
    ]


def test_calibrate_leaves_out_the_films_the_device_would_refuse(settings: Settings, tmp_path: Path) -> None:
    """The gate (metadata and quality) refuses a blurred film in service: it gets no result, so
    a site's threshold must not be fitted on it. It is left out and named, as eval does."""
    folder = tmp_path / "site"
    folder.mkdir()
    rows = []
    for path, label in _samples():
        shutil.copy(path, folder / path.name)
        rows.append([path.name, label])
    film = decode_bytes(_samples()[0][0].read_bytes(), "film").pixels
    cv2.imwrite(str(folder / "blurred.png"), cv2.GaussianBlur(film, (0, 0), 6))
    rows.append(["blurred.png", _samples()[0][1]])
    with (folder / "labels.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([["path", "label"], *rows])
    result = run(settings, "models", "calibrate", DEFAULT_MODEL, "--data", str(folder))
    said = " ".join(result.output.split())
    assert result.exit_code == 1  # too few cases: the samples are 12 of each
    assert f"left out {folder / 'blurred.png'} BLURRED:" in said, said
    assert "(1 BLURRED left out first)" in said
    shown = run(
        settings, "models", "eval", DEFAULT_MODEL, "--data", str(folder), "--out", str(tmp_path / "e")
    )
    assert "1 image(s) left out as the device would refuse them" in " ".join(shown.output.split())


def test_one_image_under_two_names_is_one_image(tmp_path: Path) -> None:
    (path, label), *_ = _samples()
    other = "pneumonia" if label == "normal" else "normal"
    shutil.copy(path, tmp_path / "a.png")
    shutil.copy(path, tmp_path / "copy-of-a.png")
    (tmp_path / "labels.csv").write_text(f"path,label\na.png,{label}\ncopy-of-a.png,{other}\n")
    with pytest.raises(EdgeError) as refused:
        read_labels(tmp_path, ["normal", "pneumonia"])
    assert refused.value.code is Code.INPUT_UNREADABLE
    assert "line 3: copy-of-a.png is" in refused.value.message
    assert "(a.png, the same image)" in refused.value.message
    (tmp_path / "labels.csv").write_text(f"path,label\na.png,{label}\ncopy-of-a.png,{label}\n")
    table = read_labels(tmp_path, ["normal", "pneumonia"])
    assert (len(table.rows), table.repeated) == (1, 1)


def test_the_prior_refuses_a_date_it_cannot_read(settings: Settings) -> None:
    result = run(settings, "models", "prior", DEFAULT_MODEL, "--since", "12/31/2026")
    assert result.exit_code == 2
    assert "YYYY-MM-DD" in result.output or "%Y-%m-%d" in result.output
