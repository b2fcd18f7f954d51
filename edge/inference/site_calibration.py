"""`edge models calibrate` and `edge models prior`: a site's cases -> a site profile; a site's
results -> its prevalence.

Cases come from a labelled folder (scored through the served model, the path of `edge models
eval`) or from this device's results that a specialist reviewed (the review's finding is the
label). Stored results keep calibrated probabilities, not logits; `T * log(p)` gives the logits
back up to a constant per row, which softmax ignores, where T is the temperature that made them
(the manifest's, or that of the profile the result records). So a site's history can be
refitted, and re-read under the shipped calibration for the prevalence estimate, exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference import calibration, prior, site_profile
from edge.inference.calibration import RULES, Cases
from edge.inference.evaluate import score_folder
from edge.inference.postprocess import softmax
from edge.inference.registry import ModelEntry, read_manifest, set_aside
from edge.inference.review_label import specialist_label
from edge.inference.site_profile import PointFigures, ProfilePoint, SiteProfile
from edge.store import Store

log = logging.getLogger(__name__)
MIN_PER_CLASS = 30
FLOOR_PER_CLASS = 20
"""The fewest cases of a class `--min-per-class` may ask for. The screening point targets a
sensitivity of 0.95: below 20 positives one case moves a sensitivity by more than the 5% the
target allows, so no threshold can be told to reach it (6 cases took a screening point from
0.13 to 0.68 and showed "sensitivity 1.000 (1.000-1.000)"; it missed 4% of another 392 films'
pneumonias the shipped point found)."""
MIN_RESULTS_FOR_PRIOR = 30
REPEATED = "listed again in labels.csv (counted once)"
EXAMPLE_PROBABILITIES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass
class SiteCases:
    cases: Cases
    description: str
    left_out: dict[str, int] = field(default_factory=dict)
    """Why candidate cases were not used, with counts (codes or reasons; never file names: this
    goes into the audit)."""
    left_out_files: list[dict[str, str]] = field(default_factory=list)
    """A folder's images that were not used (path, code, reason), for the person at the
    command line only: never audited or kept."""


def calibratable_points(entry: ModelEntry) -> list[str]:
    """The model's operating points whose rule is known (the others keep their threshold)."""
    return [name for name in entry.manifest.operating_points if name in RULES]


def cases_from_folder(settings: Settings, entry: ModelEntry, folder: Path) -> SiteCases:
    scored = score_folder(settings, entry.name, folder)
    out = entry.manifest.output
    left_out = Counter(row["code"] for row in scored.refused)
    if scored.repeated:
        left_out[REPEATED] = scored.repeated
    logits = scored.logits if len(scored.kept) else np.zeros((0, len(out.labels)))
    cases = Cases(logits, np.asarray(scored.truth, np.int64), list(out.labels), out.positive)
    # Which table it was (a digest: the folder's path may name a person or a place).
    table = scored.table_digest[:16]
    described = f"{len(scored.kept)} labelled images of a site folder (labels.csv sha256 {table}...)"
    return SiteCases(cases, described, dict(left_out), scored.refused)


class _Temperatures:
    """Which temperature made each stored result: that of the profile it records, else its
    version's shipped one. This version's results count, and those of earlier versions this
    device served with the same weights (a release that chose only its operating points again):
    their logits are the same, read back with their own version's temperature."""

    def __init__(self, settings: Settings, entry: ModelEntry) -> None:
        self.versions = {entry.manifest.version: entry.manifest.output.temperature}
        self.unknown: list[str] = []  # same weights, but no temperature known here
        recorded = site_profile.recorded_temperatures(settings.data_dir, entry.name)
        for version in site_profile.same_weights(settings.data_dir, entry):
            found = recorded.get(version) or _kept_temperature(settings.models.dir, entry.name, version)
            if found is None:
                self.unknown.append(version)
            else:
                self.versions[version] = found
        self.profiles: dict[str, float] = {}
        self._settings, self._model = settings, entry.name

    def all_versions(self) -> list[str]:
        return [*self.versions, *self.unknown]

    def read(self, rows: list[dict[str, Any]]) -> None:
        """Load the temperature of every profile these rows record (unreadable: logged)."""
        for profile_id in {r["profile_id"] for r in rows if r["profile_id"]} - set(self.profiles):
            try:
                profile = site_profile.load(self._settings.data_dir, self._model, profile_id)
            except EdgeError as error:
                log.warning("%s", error.one_line())
            else:
                self.profiles[profile_id] = profile.temperature

    def of(self, row: dict[str, Any]) -> float | None:
        if row["profile_id"]:
            return self.profiles.get(row["profile_id"])
        return self.versions.get(row["model_version"])

    def why_not(self, row: dict[str, Any]) -> str:
        if row["profile_id"]:
            return "made under an unknown profile"
        return f"made by version {row['model_version']}, whose temperature is not known here"

    def description(self, rows: list[dict[str, Any]]) -> str:
        """Which versions the rows come from, when more than one (else nothing)."""
        versions = sorted({r["model_version"] for r in rows}, key=site_profile.version_order)
        if len(versions) < 2:
            return ""
        return f" (versions {', '.join(versions)}: the same weights)"


def _kept_temperature(models_dir: Path, model: str, version: str) -> float | None:
    """The shipped temperature of `version` from the folder a model update kept it in
    (`models/.previous/<model>-<time>`): for versions replaced before their temperature was
    recorded."""
    for kept in set_aside(models_dir, model):
        try:
            manifest = read_manifest(kept / "model.toml")
        except EdgeError as error:
            log.debug("%s", error.one_line())
            continue
        if manifest.version == version:
            return manifest.output.temperature
    return None


def _logits(rows: list[dict[str, Any]], labels: list[str], temperatures: _Temperatures) -> np.ndarray:
    out = np.zeros((len(rows), len(labels)))
    for index, row in enumerate(rows):
        probabilities = json.loads(row["probabilities"])
        p = np.array([probabilities[label] for label in labels], np.float64)
        temperature = temperatures.of(row)
        assert temperature is not None  # the caller kept only rows whose temperature is known
        out[index] = temperature * np.log(np.clip(p, 1e-12, 1.0))
    return out


def cases_from_reviews(settings: Settings, store: Store, entry: ModelEntry) -> SiteCases:
    out = entry.manifest.output
    temperatures = _Temperatures(settings, entry)
    rows = store.image_results(entry.name, temperatures.all_versions(), reviewed_only=True)
    temperatures.read(rows)
    left_out: Counter[str] = Counter()
    kept, truth = [], []
    for row in rows:
        label, why = specialist_label(row["verdict"], row["review_finding"], row["finding"], list(out.labels))
        if label is None:
            left_out[why] += 1
        elif temperatures.of(row) is None:
            left_out[temperatures.why_not(row)] += 1
        else:
            kept.append(row)
            truth.append(out.labels.index(label))
    logits = _logits(kept, list(out.labels), temperatures)
    cases = Cases(logits, np.asarray(truth, np.int64), list(out.labels), out.positive)
    described = f"{len(kept)} results reviewed by specialists on this device{temperatures.description(kept)}"
    return SiteCases(cases, described, dict(left_out))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def calibrate(
    settings: Settings,
    store: Store,
    entry: ModelEntry,
    site: SiteCases,
    source: str,
    *,
    min_per_class: int = MIN_PER_CLASS,
    points: list[str] | None = None,
    actor: str = "cli",
) -> tuple[SiteProfile, dict[str, calibration.PairedGain]]:
    """Fit, write and activate a profile; refused (nothing written) below `min_per_class`.
    Returned with the balanced point's paired gain over the shipped one (`calibration.paired_gain`),
    which the profile does not keep."""
    if min_per_class < FLOOR_PER_CLASS:
        raise ValueError(f"min_per_class {min_per_class} is under the floor of {FLOOR_PER_CLASS}")
    cases = site.cases
    per_class = cases.per_class()
    short = {label: n for label, n in per_class.items() if n < min_per_class}
    if short:
        counts = ", ".join(f"{label} {n}" for label, n in per_class.items())
        lost = [f"{n} {why}" for why, n in site.left_out.items() if why != REPEATED]
        before = f" ({', '.join(lost)} left out first)" if lost else ""
        refusal = EdgeError(
            Code.CALIBRATION_TOO_FEW_CASES,
            f"{entry.name} {entry.manifest.version}: {counts} usable cases{before}; at least "
            f"{min_per_class} of each class are needed ({', '.join(short)} short). Nothing was changed",
        )
        detail = {"model": entry.name, "source": source, "code": refusal.code.value, "cases": per_class}
        store.audit(actor, "calibration.refused", None, {**detail, "left_out": site.left_out})
        raise refusal
    manifest = entry.manifest
    chosen = points or calibratable_points(entry)
    targets = calibration.targets_for({name: manifest.operating_points[name].description for name in chosen})
    shipped = {name: op.threshold for name, op in manifest.operating_points.items()}
    clips = {
        name: op.clip_threshold
        for name, op in manifest.operating_points.items()
        if op.clip_threshold is not None
    }
    fit = calibration.fit_site(
        cases, manifest.output.temperature, shipped, targets, "the site's cases", seed=0,
        shipped_clip_thresholds=clips,
    )  # fmt: skip
    created = _now()
    while True:
        stamp = created.strftime("%Y-%m-%dT%H:%M:%SZ")
        profile_id = site_profile.new_id(entry.name, manifest.version, stamp)
        profile = _profile(profile_id, stamp, entry, site, fit, source)
        try:
            site_profile.write_profile(settings.data_dir, profile)
            break
        except site_profile.ProfileExists:
            created += dt.timedelta(seconds=1)  # ids are unique: two in one second take the next
    site_profile.remember_weights(settings.data_dir, entry)
    gains = {name: asdict(gain) for name, gain in fit.gains.items()}
    store.audit(
        actor, "profile.created", profile.id, {"source": source, "cases": profile.cases, "gains": gains}
    )
    activate(settings, store, entry.name, profile.id, actor=actor)
    return profile, fit.gains


def _profile(
    profile_id: str, stamp: str, entry: ModelEntry, site: SiteCases, fit: calibration.SiteFit, source: str
) -> SiteProfile:
    cases = site.cases
    return SiteProfile(
        id=profile_id,
        model=entry.name,
        model_version=entry.manifest.version,
        created_at=stamp,
        source=source,
        description=site.description,
        temperature=fit.temperature,
        cases=len(cases.truth),
        cases_per_class=cases.per_class(),
        operating_points={
            name: ProfilePoint(
                threshold=p.threshold,
                description=p.description,
                sensitivity=p.sensitivity,
                specificity=p.specificity,
                sensitivity_ci95=p.sensitivity_ci95,
                specificity_ci95=p.specificity_ci95,
                clip_threshold=p.clip_threshold,
            )
            for name, p in fit.points.items()
        },
        before=_figures(fit.before),
        after=_figures(fit.after),
    )


def _figures(raw: dict[str, Any]) -> dict[str, float | PointFigures]:
    return {k: (float(v) if k == "auc" else PointFigures(**v)) for k, v in raw.items()}


def activate(
    settings: Settings, store: Store, model: str, profile_id: str | None, *, actor: str = "cli"
) -> None:
    """Make a profile (or, None, the shipped calibration) the one in force; audited."""
    previous = site_profile.active_id(settings.data_dir, model)
    site_profile.activate(settings.data_dir, model, profile_id)
    action = "profile.activated" if profile_id else "profile.reset"
    store.audit(actor, action, profile_id, {"model": model, "previous": previous})


# ---------------------------------------------------------------------- prevalence


def training_prior(entry: ModelEntry) -> tuple[float | None, str]:
    """The positive label's prevalence the calibration was fitted under, and where it is read:
    the manifest's validation split (drawn from the training distribution), else nothing."""
    for key in ("validation", "holdout"):
        figures = entry.manifest.metrics.get(key) or {}
        images, positives = figures.get("images"), figures.get("positives")
        if images and positives is not None:
            return positives / images, f"the manifest's {figures.get('kind') or key}: {positives} of {images}"
    return None, "the manifest states no class counts"


def prior_report(
    settings: Settings, store: Store, entry: ModelEntry, since: str | None = None
) -> dict[str, Any]:
    """The site's estimated prevalence of the positive label from its stored results, with the
    training prevalence and what a few posteriors would become. Shown, never applied."""
    out = entry.manifest.output
    pi_t, where = training_prior(entry)
    if pi_t is None:
        raise EdgeError(
            Code.PRIOR_TOO_FEW_RESULTS,
            f"{entry.name} {entry.manifest.version}: {where}, so no prevalence can be compared",
        )
    temperatures = _Temperatures(settings, entry)
    rows = store.image_results(entry.name, temperatures.all_versions(), since)
    temperatures.read(rows)
    rows = [r for r in rows if temperatures.of(r) is not None]
    if len(rows) < MIN_RESULTS_FOR_PRIOR:
        raise EdgeError(
            Code.PRIOR_TOO_FEW_RESULTS,
            f"{entry.name} {entry.manifest.version}: {len(rows)} results"
            + (f" since {since}" if since else "")
            + f"; at least {MIN_RESULTS_FOR_PRIOR} are needed",
        )
    # Under the shipped temperature: the posteriors the training prevalence is the prior of.
    logits = _logits(rows, list(out.labels), temperatures)
    posterior = softmax(logits, out.temperature)[:, out.labels.index(out.positive)]
    found = prior.estimate(posterior, pi_t)
    return {
        "model": entry.name,
        "version": entry.manifest.version,
        "positive": out.positive,
        "results": found.results,
        "versions": sorted({r["model_version"] for r in rows}, key=site_profile.version_order),
        "since": since,
        "first": rows[0]["created_at"],
        "last": rows[-1]["created_at"],
        "estimated_prevalence": found.prior,
        "estimated_prevalence_ci95": list(found.ci95),
        "training_prevalence": round(pi_t, 4),
        "training_prevalence_from": where,
        "mean_posterior": round(float(posterior.mean()), 4),
        "examples": [
            {"posterior": p, "adjusted": round(float(prior.adjust(p, pi_t, found.prior)), 4)}
            for p in EXAMPLE_PROBABILITIES
        ],
        "applied": False,
    }
