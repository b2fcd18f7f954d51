"""Site calibration (issue 15): `edge models calibrate` from a labelled folder and from the
specialists' reviews, the minimum per class, `--reset`, the profile applied by serving and
recorded with every result, a profile of another version ignored, and the prevalence EM."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.inference import metrics as m
from edge.inference import prior, site_profile
from edge.inference import site_calibration as sc
from edge.inference.pool import ModelPool
from edge.inference.postprocess import softmax
from edge.inference.registry import ModelEntry, Registry
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, MODELS

# A site whose films come out brighter and a little softer than the training hospital's: gamma
# 0.5 (over-exposed, or a brighter default look-up table), mild blur, faint sensor noise (the
# noise keeps every film above the quality gate's sharpness floor; blur alone is refused as
# BLURRED). Like the external test films of issue 15 it pushes normal films' P(pneumonia) up, so
# the shipped point, though chosen under shift, flags some of them, while every film stays a
# chest film the model answers: stronger blur or noise (sigma 3-4 with 8-12 grey levels), or
# mirrored films, are refused OUT_OF_SCOPE by the applicability check.
SHIFTS = (2.5, 2.65, 2.8, 2.95, 3.1, 3.25)  # blur sigma (pixels), one variant of each film per value
NOISE = 3.0  # sensor noise sd in grey levels
GAMMA = 0.75  # < 1: brighter


def shifted(pixels: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    bright = 255.0 * (pixels / 255.0) ** GAMMA
    soft = cv2.GaussianBlur(bright, (0, 0), sigma)
    noisy = soft + np.random.default_rng(seed).normal(0, NOISE, soft.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_folder(folder: Path, items: list[tuple[str, np.ndarray, str]]) -> Path:
    folder.mkdir(parents=True)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for name, pixels, label in items:
            ok, encoded = cv2.imencode(".png", pixels)
            assert ok
            (folder / name).write_bytes(encoded.tobytes())
            writer.writerow([name, label])
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bundled samples (PNG), shifted: the first 8 films of each class (x6 variants: 48 per
    class) to calibrate on, the other 4 of each class (24 per class) held out."""
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    by_label: dict[str, list[np.ndarray]] = {}
    for path, label in entry.samples:
        if path.suffix == ".png":
            by_label.setdefault(label, []).append(decode_bytes(path.read_bytes(), path.name).pixels)
    root = tmp_path_factory.mktemp("site")
    sets: dict[str, list[tuple[str, np.ndarray, str]]] = {"calibration": [], "held_out": []}
    for label, films in by_label.items():
        for number, pixels in enumerate(films):
            part = "calibration" if number < 8 else "held_out"
            for sigma in SHIFTS:
                name = f"{label[:1]}{number:02d}-{sigma}.png"
                seed = len(sets[part]) + (1000 if part == "held_out" else 0)
                sets[part].append((name, shifted(pixels, sigma, seed), label))
    return {part: write_folder(root / part, items) for part, items in sets.items()}


def run(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(
        cli,
        ["--data-dir", str(settings.data_dir), *args],
        catch_exceptions=False,
    )


def calibrate(settings: Settings, *args: str) -> Any:
    return run(settings, "models", "calibrate", DEFAULT_MODEL, *args)


def accuracy_on(settings: Settings, folder: Path) -> float:
    """Accuracy at the balanced point as this device serves now (profile or shipped)."""
    registry = Registry(MODELS)
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    images = [decode_bytes((folder / r["path"]).read_bytes(), r["path"]).pixels for r in rows]
    try:
        found = [p.finding.finding for p in pool.get(DEFAULT_MODEL).predict(images, "balanced")]
    finally:
        pool.close()
    return float(np.mean([f == r["label"] for f, r in zip(found, rows, strict=True)]))


def test_calibrate_on_a_folder_moves_the_threshold_and_helps_held_out_cases(
    settings: Settings, site: dict[str, Path]
) -> None:
    shipped = Registry(MODELS).get(DEFAULT_MODEL).manifest
    before = accuracy_on(settings, site["held_out"])
    result = calibrate(settings, "--data", str(site["calibration"]), "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert "OUT_OF_SCOPE" not in out["left_out"]  # the shifted films stay in scope
    profile = site_profile.SiteProfile(**out["profile"])
    assert profile.source == "data"
    assert "labels.csv sha256 " in profile.description  # which table, without its folder's name
    assert profile.cases == 96
    assert profile.cases_per_class == {"normal": 48, "pneumonia": 48}
    assert profile.model_version == shipped.version
    balanced = profile.operating_points["balanced"]
    assert balanced.threshold > shipped.operating_points["balanced"].threshold + 0.1
    assert balanced.sensitivity_ci95 is not None
    assert balanced.specificity_ci95 is not None
    assert balanced.specificity_ci95[0] <= balanced.specificity <= balanced.specificity_ci95[1]
    after_balanced, before_balanced = profile.after["balanced"], profile.before["balanced"]
    assert isinstance(after_balanced, site_profile.PointFigures)
    assert isinstance(before_balanced, site_profile.PointFigures)
    assert after_balanced.accuracy > before_balanced.accuracy
    # Read on cases it was not chosen on, the site's point still beats the shipped one here.
    cross_validated = profile.after["balanced (cross-validated)"]
    assert isinstance(cross_validated, site_profile.PointFigures)
    assert before_balanced.accuracy < cross_validated.accuracy <= after_balanced.accuracy + 0.02
    gain = out["gains"]["balanced"]  # paired, on the same cases: clearly above 0 here
    assert 0.0 < gain["ci95"][0] <= gain["youden_j"] <= gain["ci95"][1]
    # On disk, in force, audited; the held-out films of the same site are read better.
    assert site_profile.active_id(settings.data_dir, DEFAULT_MODEL) == profile.id
    path = settings.data_dir / "profiles" / DEFAULT_MODEL / f"{profile.id}.toml"
    assert site_profile.read_profile(path) == profile
    after = accuracy_on(settings, site["held_out"])
    assert after > before, (before, after)
    with Store(settings.data_dir) as store:
        actions = [row["action"] for row in store.audit_rows() if row["action"].startswith("profile.")]
    assert actions == ["profile.created", "profile.activated"]
    shown = run(settings, "models", "show", DEFAULT_MODEL)
    assert profile.id in shown.output
    assert "before (shipped), balanced" in shown.output
    assert "cross-validated, balanced" in shown.output
    assert "with the site's point on cases it was not chosen on: a gain" in " ".join(shown.output.split())
    # Printed when calibrating (a profile does not keep it): the same again, a new profile.
    again = " ".join(calibrate(settings, "--data", str(site["calibration"])).output.split())
    assert f"a gain (Youden's J {gain['youden_j']:+.3f}, 95% CI {gain['ci95'][0]:+.3f} to" in again


def test_below_the_minimum_per_class_is_refused_with_its_code(
    settings: Settings, site: dict[str, Path]
) -> None:
    result = calibrate(settings, "--data", str(site["held_out"]))  # default 30 per class, 24 here
    assert result.exit_code == 1
    assert "CALIBRATION_TOO_FEW_CASES" in result.output
    assert "normal 24, pneumonia 24" in result.output
    assert not (settings.data_dir / "profiles" / DEFAULT_MODEL).exists()
    with Store(settings.data_dir) as store:
        [refused] = store.audit_rows("calibration.refused")
    assert json.loads(refused["detail"])["code"] == "CALIBRATION_TOO_FEW_CASES"
    as_json = calibrate(settings, "--data", str(site["held_out"]), "--json")  # a script reads JSON
    assert as_json.exit_code == 1
    refusal = json.loads(as_json.stdout)
    assert refusal["status"] == "refused"
    assert refusal["code"] == "CALIBRATION_TOO_FEW_CASES"
    assert "normal 24, pneumonia 24" in refusal["reason"]


def test_calibrate_and_eval_count_a_folder_alike_and_name_what_they_leave_out(
    settings: Settings, site: dict[str, Path], tmp_path: Path
) -> None:
    """An image the device would refuse (out of scope) is left out of both, named by both, and
    the refusal for too few cases says how many went before counting; eval says which
    calibration it read with (--every-image scores the refused ones too, as a card counts)."""
    folder = tmp_path / "site"
    shutil.copytree(site["held_out"], folder)
    noise = np.random.default_rng(3).integers(0, 256, (300, 300), dtype=np.uint8)
    cv2.imwrite(str(folder / "static.png"), noise)
    with (folder / "labels.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows([["static.png", "normal"], ["./n08-2.5.png", "normal"]])
    result = calibrate(settings, "--data", str(folder), "--min-per-class", "25")
    assert result.exit_code == 1
    said = " ".join(result.output.split())
    assert f"left out {folder / 'static.png'} OUT_OF_SCOPE:" in said
    assert "normal 24, pneumonia 24 usable cases (1 OUT_OF_SCOPE left out first)" in said

    def evaluated(*extra: str) -> dict[str, Any]:
        out = str(tmp_path / "e")
        shown = run(settings, "models", "eval", DEFAULT_MODEL, "--data", str(folder), "--out", out, *extra)
        assert shown.exit_code == 0, shown.output
        return json.loads(shown.stdout) if "--json" in extra else {"text": " ".join(shown.output.split())}

    as_served = evaluated("--json")
    assert as_served["images"] == 48
    assert as_served["repeated"] == 1
    refused = [(Path(r["path"]).name, r["code"]) for r in as_served["refused"]]
    assert refused == [("static.png", "OUT_OF_SCOPE")]
    assert as_served["profile_id"] is None
    assert evaluated("--json", "--every-image")["images"] == 49
    assert calibrate(settings, "--data", str(site["calibration"])).exit_code == 0
    text = evaluated()["text"]
    active = site_profile.active_id(settings.data_dir, DEFAULT_MODEL)
    assert f"site profile {active})" in text
    assert "1 image(s) left out as the device would refuse them" in text
    assert "listed 1 image(s) again under one label: counted once" in text


def test_profile_applied_recorded_and_reset(settings: Settings, site: dict[str, Path]) -> None:
    assert calibrate(settings, "--data", str(site["calibration"])).exit_code == 0
    active = site_profile.active_id(settings.data_dir, DEFAULT_MODEL)
    assert active is not None
    profile = site_profile.load(settings.data_dir, DEFAULT_MODEL, active)
    films = sorted(site["held_out"].glob("*.png"))
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        try:
            [first] = pipeline.analyse_file(films[0], model=DEFAULT_MODEL)
            assert first.result is not None
            assert first.result.profile_id == profile.id
            assert first.result.threshold == profile.operating_points["balanced"].threshold
            stored = store.result(first.result.id)
            assert stored is not None
            assert stored.profile_id == profile.id
            # --reset: the shipped calibration, in the same running pipeline, history kept.
            assert calibrate(settings, "--reset").exit_code == 0
            [second] = pipeline.analyse_file(films[1], model=DEFAULT_MODEL)
            assert second.result is not None
            assert second.result.profile_id is None
            shipped = Registry(MODELS).get(DEFAULT_MODEL).manifest.operating_points["balanced"]
            assert second.result.threshold == shipped.threshold
        finally:
            pipeline.close()
        assert [r["action"] for r in store.audit_rows() if r["action"] == "profile.reset"]
    listed = run(settings, "models", "profiles", DEFAULT_MODEL)
    assert profile.id in listed.output
    assert "in force: the shipped calibration" in listed.output
    # The first film again: its stored result (the profile's) is shown, and said to be so.
    again = " ".join(run(settings, "infer", "--model", DEFAULT_MODEL, str(films[0])).output.split())
    assert f"site profile {profile.id})" in again
    assert "(already analysed)" in again
    assert "stored as first analysed; the shipped calibration is in force now" in again
    second = " ".join(run(settings, "infer", "--model", DEFAULT_MODEL, str(films[1])).output.split())
    assert "(already analysed)" in second
    assert "stored as first analysed" not in second  # decided by what is in force


def in_force_for(settings: Settings, version: str, source: Any) -> site_profile.SiteProfile:
    """A profile made for `version` (temperature 5, balanced 0.99: unmistakable), in force."""
    stamp = "2026-12-02T16:05:01Z"
    profile = site_profile.SiteProfile(
        id=site_profile.new_id(DEFAULT_MODEL, version, stamp),
        model=DEFAULT_MODEL,
        model_version=version,
        created_at=stamp,
        source=source,
        temperature=5.0,
        cases=100,
        operating_points={"balanced": site_profile.ProfilePoint(threshold=0.99)},
    )
    site_profile.write_profile(settings.data_dir, profile)
    site_profile.activate(settings.data_dir, DEFAULT_MODEL, profile.id)
    return profile


def test_a_profile_for_another_model_version_is_ignored_with_a_warning(
    settings: Settings, sample_png: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = Registry(MODELS).get(DEFAULT_MODEL).manifest
    in_force_for(settings, "0.9.0", "hub")
    pool = ModelPool(Registry(MODELS), settings, settings.data_dir / "cache")
    pixels = decode_bytes(sample_png.read_bytes(), sample_png.name).pixels
    with caplog.at_level(logging.WARNING):
        try:
            served = pool.get(DEFAULT_MODEL)
            [prediction] = served.predict([pixels], "balanced")
            served.predict([pixels], "balanced")
        finally:
            pool.close()
    assert prediction.finding.profile_id is None
    assert prediction.finding.threshold == manifest.operating_points["balanced"].threshold
    warnings = [r for r in caplog.records if "is for version 0.9.0" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per image


def test_a_profile_follows_a_later_version_with_the_same_weights_only(
    settings: Settings, sample_png: Path, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A release that chose only its operating points again (tools/rerelease.py) keeps the
    site's calibration: the profile was fitted to the weights. Other weights: ignored."""
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    old = in_force_for(settings, "0.9.0", "data")
    # This device served 0.9.0 with these very files (serving and calibrate record it).
    earlier = ModelEntry(entry.manifest.model_copy(update={"version": "0.9.0"}), entry.folder)
    site_profile.remember_weights(settings.data_dir, earlier)
    assert site_profile.recorded_weights(settings.data_dir, DEFAULT_MODEL) == {
        "0.9.0": site_profile.weights_id(entry)
    }
    assert site_profile.history(settings.data_dir, DEFAULT_MODEL) == [old]  # the record is no profile
    # A disk that cannot take the record is logged; serving goes on.
    from edge.errors import Code, EdgeError

    def full(path: Path, data: bytes) -> None:
        raise EdgeError(Code.DISK_FULL, f"no space left to store {path.name}")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(site_profile, "write_atomically", full)
        site_profile.remember_weights(tmp_path, earlier)
    assert site_profile.recorded_weights(tmp_path, DEFAULT_MODEL) == {}
    pixels = decode_bytes(sample_png.read_bytes(), sample_png.name).pixels

    def served() -> Any:
        pool = ModelPool(Registry(MODELS), settings, settings.data_dir / "cache")
        try:
            return pool.get(DEFAULT_MODEL).predict([pixels], "balanced")[0]
        finally:
            pool.close()

    with caplog.at_level(logging.INFO):
        prediction = served()
    assert prediction.finding.profile_id == old.id
    assert prediction.finding.threshold == 0.99
    assert any("serves" in r.getMessage() and "the same weights" in r.getMessage() for r in caplog.records)
    shown = " ".join(run(settings, "models", "show", DEFAULT_MODEL).output.split())  # unwrapped
    assert f"it serves {entry.manifest.version}, which has the same weights" in shown

    # Version 0.9.0 had other weights (one variant differs): the shipped calibration serves.
    other = entry.manifest.model_copy(
        update={
            "version": "0.9.0",
            "variants": {
                name: spec.model_copy(update={"sha256": "0" * 64}) if name == "fp32" else spec
                for name, spec in entry.manifest.variants.items()
            },
        }
    )
    site_profile.remember_weights(settings.data_dir, ModelEntry(other, entry.folder))
    prediction = served()
    assert prediction.finding.profile_id is None
    assert prediction.finding.threshold == entry.manifest.operating_points["balanced"].threshold
    assert "(other weights): ignored" in " ".join(
        run(settings, "models", "show", DEFAULT_MODEL).output.split()
    )


def test_calibrate_from_reviews_and_the_prior_estimate(settings: Settings, site: dict[str, Path]) -> None:
    """The device's results of the calibration films, reviewed as a specialist would (agree
    where the model was right, disagree naming the finding where not, some uncertain)."""
    films = sorted(site["calibration"].glob("*.png"))
    truth = {r["path"]: r["label"] for r in csv.DictReader((site["calibration"] / "labels.csv").open())}
    results = []
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        try:
            for film in films:
                [analysis] = pipeline.analyse_file(film, model=DEFAULT_MODEL)
                assert analysis.result is not None, analysis.code
                results.append((analysis.result, truth[film.name]))
        finally:
            pipeline.close()
        too_few = calibrate(settings, "--from-reviews")  # nothing reviewed yet
        assert too_few.exit_code == 1
        assert "CALIBRATION_TOO_FEW_CASES" in too_few.output
        shown = " ".join(run(settings, "models", "show", DEFAULT_MODEL).output.split())
        assert "labelled: 0 normal, 0 pneumonia (30 more normal, 30 more pneumonia needed" in shown
        reviews = []
        for number, (result, label) in enumerate(results):
            verdict = "uncertain" if number % 12 == 0 else "agree" if result.finding == label else "disagree"
            reviews.append(
                {
                    "id": f"review-{number}",
                    "result_uuid": result.id,
                    "verdict": verdict,
                    "finding": label if verdict == "disagree" else None,
                    "reviewed_at": "2026-12-02T10:00:00Z",
                }
            )
        store.outbox.apply_reviews(reviews[1:], cursor=len(reviews) - 1)
        version = [results[0][0].model_version]
        reviewed = store.image_results(DEFAULT_MODEL, version, reviewed_only=True)
        assert [r["id"] for r in reviewed] == [r.id for r, _ in results[1:]]  # the database filters
        assert len(store.image_results(DEFAULT_MODEL, version)) == len(results)
        store.outbox.apply_reviews(reviews[:1], cursor=len(reviews))
    uncertain = sum(1 for r in reviews if r["verdict"] == "uncertain")
    shown = " ".join(run(settings, "models", "show", DEFAULT_MODEL).output.split())
    assert f"enough for edge models calibrate {DEFAULT_MODEL} --from-reviews" in shown
    result = calibrate(settings, "--from-reviews", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["left_out"] == {"uncertain": uncertain}
    profile = site_profile.SiteProfile(**out["profile"])
    assert profile.source == "reviews"
    assert profile.cases == len(films) - uncertain
    # The same films through a folder: the stored probabilities give back the same fit.
    from_data = calibrate(settings, "--data", str(site["calibration"]), "--json")
    direct = site_profile.SiteProfile(**json.loads(from_data.stdout)["profile"])
    assert direct.operating_points["balanced"].threshold > 0.3
    assert abs(profile.temperature - direct.temperature) < 0.5
    # The prevalence of this device's results (half pneumonia) against the training split's.
    shown = run(settings, "models", "prior", DEFAULT_MODEL, "--json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["results"] == len(films)
    assert report["applied"] is False
    assert report["training_prevalence"] == pytest.approx(581 / 782, abs=1e-3)
    assert 0.3 < report["estimated_prevalence"] < 0.75
    text = run(settings, "models", "prior", DEFAULT_MODEL).output
    assert "Not applied" in text
    assert "training prevalence" in text
    # A release that chose only its thresholds again does not start the count again: results of
    # an earlier version with these weights count, read back with that version's temperature.
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    labels, t_now, t_old = list(entry.manifest.output.labels), entry.manifest.output.temperature, 2.6
    output = entry.manifest.output.model_copy(update={"temperature": t_old})
    earlier = ModelEntry(
        entry.manifest.model_copy(update={"version": "0.9.0", "output": output}), entry.folder
    )
    site_profile.remember_weights(settings.data_dir, earlier)  # as a model update records it
    with Store(settings.data_dir) as store:
        before = sc.cases_from_reviews(settings, store, entry)
        rows = store.db.execute(
            "SELECT id, probabilities FROM results WHERE model_name = ? ORDER BY id", [DEFAULT_MODEL]
        ).fetchall()
        for row in rows[::2]:  # half of them, as 0.9.0 (twice the temperature) reported them
            p = json.loads(row["probabilities"])
            logits = t_now * np.log(np.array([p[label] for label in labels]))
            q = dict(zip(labels, softmax(logits[None], t_old)[0].tolist(), strict=True))
            store.db.execute(
                "UPDATE results SET model_version = '0.9.0', probabilities = ? WHERE id = ?",
                [json.dumps(q), row["id"]],
            )
        pooled = sc.cases_from_reviews(settings, store, entry)
        assert f"(versions 0.9.0, {entry.manifest.version}: the same weights)" in pooled.description
        assert pooled.left_out == before.left_out
        np.testing.assert_array_equal(pooled.cases.truth, before.cases.truth)
        # The logits come back up to a constant per case: the same posteriors at any temperature.
        np.testing.assert_allclose(
            softmax(pooled.cases.logits, t_now), softmax(before.cases.logits, t_now), atol=1e-5
        )
        report = sc.prior_report(settings, store, entry)
        assert (report["results"], report["versions"]) == (len(rows), ["0.9.0", entry.manifest.version])
        # Without that version's temperature its results cannot be read back: left out, said why.
        (site_profile.folder(settings.data_dir, DEFAULT_MODEL) / site_profile.TEMPERATURES).unlink()
        unknown = sc.cases_from_reviews(settings, store, entry)
        why = "made by version 0.9.0, whose temperature is not known here"
        assert unknown.left_out[why] + len(unknown.cases.truth) == len(before.cases.truth)
        assert unknown.left_out[why] > 0
        assert sc.prior_report(settings, store, entry)["results"] == len(rows) - len(rows[::2])
    # ... and one of other weights never counts.
    variants = entry.manifest.variants
    other = ModelEntry(
        earlier.manifest.model_copy(
            update={"variants": {k: v.model_copy(update={"sha256": "0" * 64}) for k, v in variants.items()}}
        ),
        entry.folder,
    )
    site_profile.remember_weights(settings.data_dir, other)
    assert site_profile.same_weights(settings.data_dir, entry) == []


def test_prior_em_recovers_a_known_prevalence() -> None:
    """Synthetic: scores from two Gaussians, posteriors exact under the training prior 0.74;
    a site with prevalence 0.3 (and one with 0.6) is recovered within a few points."""
    rng = np.random.default_rng(7)
    training = 0.74

    def posteriors(prevalence: float, n: int = 3000) -> np.ndarray:
        positive = rng.random(n) < prevalence
        score = rng.normal(np.where(positive, 1.2, -1.2), 1.0)
        # log-likelihood ratio of N(1.2, 1) vs N(-1.2, 1) is 2.4 * score
        logits = np.stack([np.zeros(n), 2.4 * score + np.log(training / (1 - training))], axis=1)
        return softmax(logits)[:, 1]

    for prevalence in (0.3, 0.6):
        found = prior.estimate(posteriors(prevalence), training, rounds=100)
        assert abs(found.prior - prevalence) < 0.04, found
        assert found.ci95[0] <= found.prior <= found.ci95[1]
    # Adjusting to the training prior itself changes nothing; to a lower one, lowers.
    assert prior.adjust(0.5, training, training) == pytest.approx(0.5)
    assert float(prior.adjust(0.5, training, 0.3)) < 0.5


def test_release_and_site_share_the_threshold_rules() -> None:
    from edge.inference.calibration import choose_thresholds, screening_target

    truth = np.array([0, 0, 0, 1, 1, 1], bool)
    prob = np.array([0.1, 0.2, 0.6, 0.55, 0.8, 0.9])
    chosen = choose_thresholds(truth, prob, 0.95)
    assert chosen["screening"] <= chosen["balanced"]
    assert m.at_threshold(truth, prob, chosen["screening"]).sensitivity >= 0.95
    assert screening_target("sensitivity >= 0.99 on the validation predictions") == 0.99
    assert screening_target("hand-picked") == 0.95


def test_the_cross_validated_reading_tells_a_site_that_needs_its_point_from_one_that_does_not() -> None:
    """In-sample, a refitted point looks better than it is; read on cases it was not chosen on,
    it beats the shipped point only where the site differs. The paired interval of that gain
    clears 0 only there."""
    from edge.inference.calibration import CROSS_VALIDATED, Cases, fit_site, out_of_fold, readings

    def cross_validated(cases: Cases, temperature: float, targets: dict[str, float]) -> dict[str, Any]:
        return readings(out_of_fold(cases, temperature, targets), cases.is_positive)

    rng = np.random.default_rng(3)
    truth = np.r_[np.zeros(40, np.int64), np.ones(60, np.int64)]
    targets = {"balanced": 0.95, "screening": 0.95}
    shipped = {"balanced": 0.5, "screening": 0.2}
    gains, intervals = {}, {}
    for normals in (-3.0, 1.0):  # as trained; normals scored up (P ~0.73: flagged at 0.5)
        margin = np.where(truth == 1, 3.0, normals) + rng.normal(0, 1.0, len(truth))
        cases = Cases(
            np.stack([np.zeros(len(truth)), margin], axis=1), truth, ["normal", "finding"], "finding"
        )
        fit = fit_site(cases, 1.0, shipped, targets, "test", rounds=20)
        before, inside = fit.before["balanced"], fit.after["balanced"]
        outside = fit.after["balanced" + CROSS_VALIDATED]
        assert outside == cross_validated(cases, 1.0, targets)["balanced"]  # seeded: the same again
        assert outside["accuracy"] <= inside["accuracy"]
        gains[normals] = outside["accuracy"] - before["accuracy"]
        paired = fit.gains["balanced"]
        j = outside["sensitivity"] + outside["specificity"] - before["sensitivity"] - before["specificity"]
        assert paired.youden_j == pytest.approx(j, abs=2e-4)  # the same readings, paired
        assert paired.ci95[0] <= paired.youden_j <= paired.ci95[1]
        intervals[normals] = paired.ci95
    assert gains[-3.0] <= 0.01
    assert intervals[-3.0][0] <= 0.0 <= intervals[-3.0][1]  # these cases cannot tell the two apart
    assert gains[1.0] > 0.1
    assert intervals[1.0][0] > 0.1  # clearly better
    assert set(fit_site(cases, 1.0, shipped, targets, "test", rounds=20, cross_validate=False).gains) == set()
    few = Cases(
        np.zeros((8, 2)), np.r_[np.zeros(4, np.int64), np.ones(4, np.int64)], ["normal", "finding"], "finding"
    )
    assert cross_validated(few, 1.0, targets) == {}


def test_a_screening_point_that_gains_nothing_out_of_fold_stays_the_shipped_one() -> None:
    """A site like the training data: its own screening point reads no better on cases it was
    not chosen on, so the profile keeps the shipped one, carried to the site's temperature (for
    two labels: the very cases flagged before are flagged after). The balanced point is always
    the site's. A site whose positives score lower gets its own screening point."""
    from edge.cli.reports import gain_lines
    from edge.inference.calibration import KEPT, Cases, fit_site

    rng = np.random.default_rng(11)
    truth = np.r_[np.zeros(40, np.int64), np.ones(60, np.int64)]
    targets = {"balanced": 0.95, "screening": 0.95}
    # The shipped points are the right ones for this site: the classes' midpoint (margin 0), and
    # where 95% of its positives lie above (margin 1.5 - 1.645 x 1.5; P at T = 2: 0.38).
    margin = np.where(truth == 1, 1.5, -1.5) + rng.normal(0, 1.5, len(truth))
    cases = Cases(np.stack([np.zeros(len(truth)), margin], axis=1), truth, ["normal", "finding"], "finding")
    shipped = {"balanced": 0.5, "screening": 0.38}
    fit = fit_site(cases, 2.0, shipped, targets, "test", rounds=20)
    assert fit.temperature != 2.0  # the temperature is the site's
    screening = fit.points["screening"]
    assert screening.description.startswith(KEPT), screening.description
    before = cases.prob(2.0) >= shipped["screening"]
    assert ((cases.prob(fit.temperature) >= screening.threshold) == before).all()
    assert fit.after["screening"] == fit.before["screening"]  # the same readings on these cases
    assert not fit.points["balanced"].description.startswith(KEPT)
    # Without the cross-validated reading nothing can be judged: the site's points, as before.
    plain = fit_site(cases, 2.0, shipped, targets, "test", rounds=20, cross_validate=False)
    assert not any(p.description.startswith(KEPT) for p in plain.points.values())
    # A site whose positives score lower: the shipped screening point misses many; its own is taken.
    moved = np.where(truth == 1, 0.0, -3.0) + rng.normal(0, 1.5, len(truth))
    shifted = Cases(np.stack([np.zeros(len(truth)), moved], axis=1), truth, ["normal", "finding"], "finding")
    refit = fit_site(shifted, 2.0, shipped, targets, "test", rounds=20)
    assert not refit.points["screening"].description.startswith(KEPT)
    assert refit.points["screening"].threshold < shipped["screening"]
    assert refit.points["screening"].threshold <= refit.points["balanced"].threshold
    # What the technician reads: the kept point says so.
    profile = tiny_profile(
        cases=100,
        operating_points={
            name: site_profile.ProfilePoint(threshold=p.threshold, description=p.description)
            for name, p in fit.points.items()
        },
        before=_point_figures(fit.before),
        after=_point_figures(fit.after),
    )
    lines = {line.split("[/]")[0].split("]")[-1]: line for line in gain_lines(profile, fit.gains)}
    assert "so the profile keeps the shipped point" in lines["screening"]
    assert "so the profile keeps" not in lines["balanced"]


def _point_figures(raw: dict[str, Any]) -> dict[str, site_profile.PointFigures]:
    return {k: site_profile.PointFigures(**v) for k, v in raw.items() if k != "auc"}


def test_a_kept_point_of_three_labels_flags_the_site_cases_as_the_shipped_one_did() -> None:
    """With three labels P(positive) at the site's temperature is no function of P at the
    shipped one: the carried threshold is the one that flags the site's cases most alike."""
    from edge.inference.calibration import Cases, carried_threshold

    rng = np.random.default_rng(4)
    logits = rng.normal(0, 2.0, (300, 3))
    truth = rng.integers(0, 3, 300)
    cases = Cases(logits, truth, ["benign", "malignant", "normal"], "malignant")
    shipped = cases.prob(1.0) >= 0.3
    carried = carried_threshold(cases, 0.3, 1.0, 0.6)
    agreement = ((cases.prob(0.6) >= carried) == shipped).mean()
    # No threshold on the site's probabilities does better (each distinct value tried).
    best = max(((cases.prob(0.6) >= t) == shipped).mean() for t in np.unique(cases.prob(0.6)))
    assert agreement == best
    assert agreement > 0.9
    assert carried_threshold(cases, 0.3, 1.0, 1.0) == 0.3  # the same temperature: unchanged


def test_a_site_the_model_separates_keeps_a_temperature_near_the_shipped_one() -> None:
    """Plain NLL on perfectly separated cases has no minimum: T falls to its floor and every P
    shown becomes 0 or 1. The site's fit keeps the shipped temperature's neighbourhood there,
    and still follows clear evidence (logits twice as confident as they should be)."""
    from edge.inference import metrics as m
    from edge.inference.calibration import site_temperature

    rng = np.random.default_rng(5)
    truth = np.r_[np.zeros(38, np.int64), np.ones(62, np.int64)]
    separated = np.stack([np.zeros(100), np.where(truth == 1, 4.0, -4.0) + rng.normal(0, 1, 100)], axis=1)
    assert m.fit_temperature(separated, truth) < 0.06
    assert 0.5 < site_temperature(separated, truth, 1.3) <= 1.3
    # Overlapping classes whose logits are twice what their frequencies say: T near 2 wins.
    margin = rng.normal(0, 1.5, 2000)
    labels = (rng.random(2000) < 1 / (1 + np.exp(-margin))).astype(np.int64)
    doubled = np.stack([np.zeros(2000), 2 * margin], axis=1)
    assert 1.7 < site_temperature(doubled, labels, 1.0) < 2.3


def tiny_profile(**fields: Any) -> site_profile.SiteProfile:
    """A profile of the tests' tiny model, made on 2026-12-03 from a folder, temperature 1."""
    made = {
        "id": "tiny-0.0.1-site-20261203T000000Z",
        "model": "tiny",
        "model_version": "0.0.1",
        "created_at": "2026-12-03T00:00:00Z",
        "source": "data",
        "temperature": 1.0,
    }
    return site_profile.SiteProfile(**{**made, **fields})


def test_the_gain_line_judges_each_point_by_what_it_is_for() -> None:
    """Screening by its sensitivity target first (a site point that reaches it where the shipped
    one misses positives is a gain even at lower accuracy); balanced by sensitivity +
    specificity."""
    from edge.cli.reports import gain_lines
    from edge.inference.calibration import PairedGain
    from edge.inference.site_profile import PointFigures, ProfilePoint

    def figures(sensitivity: float, specificity: float) -> PointFigures:
        return PointFigures(accuracy=0.5, sensitivity=sensitivity, specificity=specificity)

    profile = tiny_profile(
        cases=100,
        operating_points={
            "screening": ProfilePoint(threshold=0.1, description="sensitivity >= 0.95 on the site's cases"),
            "balanced": ProfilePoint(threshold=0.5, description="Youden's J on the site's cases"),
        },
        before={"screening": figures(0.375, 0.99), "balanced": figures(0.9, 0.9)},
        after={
            "screening (cross-validated)": figures(0.975, 0.40),
            "balanced (cross-validated)": figures(0.92, 0.85),
        },
    )
    screening, balanced = gain_lines(profile)
    assert screening.startswith("[green]screening")
    assert screening.endswith("a gain (only one reaches sensitivity 0.950)")
    # Both under the target with the same sensitivity: the one with more specificity is better.
    level = profile.model_copy(
        update={
            "before": {**profile.before, "screening": figures(0.9, 0.80)},
            "after": {**profile.after, "screening (cross-validated)": figures(0.9, 0.85)},
        }
    )
    assert gain_lines(level)[0].endswith("a gain (the same sensitivity, under 0.950: by specificity)")
    assert balanced.startswith("[yellow]balanced")
    assert "no gain" in balanced
    unsure = PairedGain(youden_j=-0.03, ci95=(-0.08, 0.02))
    _, balanced = gain_lines(profile, {"balanced": unsure})
    sure = "(Youden's J -0.030, 95% CI -0.080 to +0.020: within what these cases can tell apart)"
    assert f"no gain {sure}" in balanced
    # The paired gain decides where the rounded figures cannot: a hair's gain in J reads as one.
    hair = PairedGain(youden_j=0.00004, ci95=(-0.05, 0.05))
    _, balanced = gain_lines(profile, {"balanced": hair})
    assert "a gain (Youden's J +0.000" in balanced


def test_an_earlier_versions_temperature_is_read_from_the_folder_an_update_kept(tmp_path: Path) -> None:
    """Versions replaced before their temperature was recorded: the manifest in models/.previous."""
    manifest = (MODELS / DEFAULT_MODEL / "model.toml").read_text()
    version = Registry(MODELS).get(DEFAULT_MODEL).manifest.version
    for folder, kept_version, temperature in (
        (f"{DEFAULT_MODEL}-100", "0.8.0", "1.5"),
        (f"{DEFAULT_MODEL}-200", "0.9.0", "2.25"),
        (f"{DEFAULT_MODEL}-extra-300", "0.9.0", "9.0"),  # another model's name that begins alike
        (f"{DEFAULT_MODEL}-400", "0.9.1", None),  # unreadable
    ):
        kept = tmp_path / ".previous" / folder
        kept.mkdir(parents=True)
        text = manifest.replace(f'version = "{version}"', f'version = "{kept_version}"', 1)
        if temperature is None:
            text = text[: len(text) // 2]
        else:
            text = re.sub(r"(?m)^temperature = .*$", f"temperature = {temperature}", text, count=1)
        (kept / "model.toml").write_text(text)
    assert sc._kept_temperature(tmp_path, DEFAULT_MODEL, "0.9.0") == 2.25
    assert sc._kept_temperature(tmp_path, DEFAULT_MODEL, "0.8.0") == 1.5
    assert sc._kept_temperature(tmp_path, DEFAULT_MODEL, "0.9.1") is None
    assert sc._kept_temperature(tmp_path / "nowhere", DEFAULT_MODEL, "0.9.0") is None


def test_recorded_temperatures_and_version_order_refuse_what_cannot_be_right(tmp_path: Path) -> None:
    folder = site_profile.folder(tmp_path, DEFAULT_MODEL)
    folder.mkdir(parents=True)
    lines = ("0.9.0 nan", "0.8.0 0", "0.7.0 1.5", "0.6.0 x", "0.5.0 inf", "odd")
    (folder / site_profile.TEMPERATURES).write_text("\n".join(lines) + "\n")
    assert site_profile.recorded_temperatures(tmp_path, DEFAULT_MODEL) == {"0.7.0": 1.5}
    versions = ["1.10.0", "1.9.0", "1.2-hotfix!", "1.2.0"]
    assert sorted(versions, key=site_profile.version_order) == ["1.2-hotfix!", "1.2.0", "1.9.0", "1.10.0"]


def test_one_rule_reads_a_review_as_a_label_on_the_device_and_the_hub() -> None:
    """The device's calibration and the hub's agreement page call the same function: a finding
    in another case is the label; one the model has no label for is left out, not guessed."""
    from edge.hub import agreement
    from edge.inference import review_label as rl

    assert agreement.specialist_label is rl.specialist_label
    assert sc.specialist_label is rl.specialist_label
    binary = ["normal", "pneumonia"]
    cases = {
        ("agree", None, "normal"): ("normal", ""),
        ("disagree", "Pneumonia ", "normal"): ("pneumonia", ""),
        ("disagree", "", "normal"): ("pneumonia", ""),  # two labels: disagreeing says which
        ("disagree", None, "pneumonia"): ("normal", ""),
        ("disagree", "pneumonia (bacterial)", "normal"): (None, rl.UNKNOWN_FINDING),
        ("disagree", "NORMAL", "normal"): (None, rl.SELF_CONTRADICTING),
        ("uncertain", "pneumonia", "normal"): (None, rl.UNCERTAIN),
    }
    for (verdict, finding, model_finding), expected in cases.items():
        assert rl.specialist_label(verdict, finding, model_finding, binary) == expected, (verdict, finding)
    three = ["normal", "benign", "malignant"]
    assert rl.specialist_label("disagree", None, "benign", three) == (None, rl.NO_FINDING)
    assert rl.specialist_label("disagree", "Malignant", "benign", three) == ("malignant", "")


def test_a_profile_is_never_written_over_another(settings: Settings) -> None:
    """Two calibrations in one second: the second id is taken at the moment of writing (a link
    that fails when the name exists), so neither overwrites the other."""
    profile = tiny_profile(cases=60)
    path = site_profile.write_profile(settings.data_dir, profile)
    with pytest.raises(site_profile.ProfileExists):
        site_profile.write_profile(settings.data_dir, profile.model_copy(update={"temperature": 2.0}))
    assert site_profile.read_profile(path).temperature == 1.0
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # nothing staged left behind
