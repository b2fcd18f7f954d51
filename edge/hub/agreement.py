"""How a model agrees with the specialists, per site and model weights, from the reviewed
results; and the site's suggested temperature and thresholds. No HTTP.

Versions with the same weights (every variant's sha256, as the releases published here say: a
release that chose only its operating points again) are pooled under the newest of them, so a
re-release does not start a site's reviewed count again; a version the hub knows no release of
stands alone.

A site is a device's programme and site as it enrolled (`devices.programme`, `devices.site`):
every device of that site counts, and a profile made here is offered to all of them.

The specialist's label of a result is its latest review: "agree" keeps the model's finding, a
"disagree" that names a finding gives that finding; "uncertain" and a disagreement without a
finding give no label and are only counted. The model's probabilities are what the device
reported (calibrated); for the refit its logits are recovered up to a constant per case
(`T * log p`, T the temperature that produced p: its own version's shipped one, or that of a
profile this hub published), the temperature refitted by `calibration.site_temperature` (NLL
with a prior at the shipped temperature, as `edge models calibrate` fits) and the thresholds
chosen by `calibration.fit_site` (Youden's J; the sensitivity target the release chose its
screening point for, 0.99 where the manifest does not say), as `edge models calibrate` does: a point
whose site rule reads no better out of fold than the shipped one keeps the shipped point.
Below `MIN_CASES_PER_CLASS` labelled cases of any class no suggestion is made, and it says so.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy import Engine, and_, select

from edge.compat import tomllib
from edge.errors import EdgeError
from edge.hub import db
from edge.inference import calibration, metrics
from edge.inference.postprocess import softmax
from edge.inference.registry import Manifest, Registry
from edge.inference.review_label import specialist_label
from edge.inference.site_profile import manifest_weights_id, version_order

log = logging.getLogger(__name__)

MIN_CASES_PER_CLASS = 30
# Of figure work per page: the bootstraps and the cross-validation take about 1 s per 2,000-case
# site, so a hub of many sites, cold after a restart, would keep the page (and a proxy in front of
# it, 60 s by default in nginx) waiting for minutes. Beyond it, the rest are computed in the
# background and shown in part meanwhile.
PENDING = "the interval and the site's suggestion are being computed: reload in a minute"
SCREENING_SENSITIVITY = 0.99
BOOTSTRAP_ROUNDS = 1000
BOOTSTRAP_SEED = 0
DECIMALS = calibration.DECIMALS  # the temperature and thresholds, as in a manifest
CROSS_VALIDATED = calibration.CROSS_VALIDATED  # the suffix of a point's cross-validated reading
_FLOOR = 1e-6  # probabilities are sent rounded to 5 decimals: a 0 would be log(0)


@dataclass(frozen=True)
class SiteModel:
    programme: str
    site: str
    model: str
    version: str  # the newest version of the weights pooled


@dataclass
class Case:
    finding: str  # the model's
    label: str  # the specialist's
    probability: float  # calibrated P(positive), as reported
    probabilities: dict[str, float]
    temperature: float | None  # of the profile that produced them; None: its version's shipped one
    unknown_profile: bool = False  # made under a profile this hub did not publish
    version: str = ""  # of the model that made it


@dataclass
class CaseSet:
    key: SiteModel
    positive: str = ""
    labels: list[str] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    unlabelled: int = 0  # reviews that name no label (edge.inference.review_label says which)
    versions: list[str] = field(default_factory=list)  # pooled (the same weights), oldest first
    shipped_temperatures: dict[str, float] = field(default_factory=dict)  # by version, where known
    manifest: Manifest | None = None  # the newest version's, as `shipped_manifest` found it


def reviewed_cases(engine: Engine, models_dir: Path | None = None) -> dict[SiteModel, CaseSet]:
    """Every reviewed result, by site and model weights (the versions that share them pooled
    under the newest), labelled by its latest review."""
    pooled: dict[tuple[str, str, str, str], CaseSet] = {}
    manifests: dict[tuple[str, str], Manifest | None] = {}  # each version looked up once
    for key, group in _by_version(engine).items():
        if (key.model, key.version) not in manifests:
            manifests[(key.model, key.version)] = shipped_manifest(engine, models_dir, key.model, key.version)
        manifest = manifests[(key.model, key.version)]
        weights = manifest_weights_id(manifest) if manifest is not None else f"version {key.version}"
        if manifest is not None:
            group.shipped_temperatures[key.version] = manifest.output.temperature
        into = pooled.setdefault((key.programme, key.site, key.model, weights), group)
        if into is not group:
            into.cases.extend(group.cases)
            into.unlabelled += group.unlabelled
            into.versions.extend(group.versions)
            into.shipped_temperatures.update(group.shipped_temperatures)
    out = {}
    for group in pooled.values():
        group.versions.sort(key=version_order)
        group.key = replace(group.key, version=group.versions[-1])
        group.manifest = manifests[(group.key.model, group.key.version)]
        out[group.key] = group
    return dict(sorted(out.items(), key=lambda item: _sort_key(item[0])))


def _by_version(engine: Engine) -> dict[SiteModel, CaseSet]:
    """Every reviewed result, by site and model version, labelled by its latest review."""
    temperatures = _published_temperatures(engine)
    payload = db.records.c.payload

    def of_result(name: str) -> Any:
        return payload[("result", name)]

    # Only the fields read here, each extracted by the database: decoding every result whole
    # was most of the page at 200,000 results (its quality, applicability, timings...).
    query = (
        select(
            db.records.c.device_id,
            db.records.c.uuid,
            of_result("model").as_string().label("model"),
            of_result("version").as_string().label("version"),
            of_result("positive_label").as_string().label("positive"),
            of_result("finding").as_string().label("model_finding"),
            of_result("probability").as_string().label("probability"),  # a number, read below
            of_result("profile_id").as_string().label("profile"),
            of_result("probabilities").label("probabilities"),
            db.devices.c.programme,
            db.devices.c.site,
            db.reviews.c.verdict,
            db.reviews.c.finding,
        )
        .join(db.devices, db.devices.c.id == db.records.c.device_id)
        .join(
            db.reviews,
            and_(
                db.reviews.c.device_id == db.records.c.device_id,
                db.reviews.c.result_uuid == db.records.c.uuid,
            ),
        )
        .where(db.records.c.kind == "result", db.records.c.deleted_at.is_(None))
        .order_by(db.reviews.c.seq)
    )
    latest: dict[tuple[str, str], tuple[Any, ...]] = {}
    with engine.connect() as conn:
        for found in conn.execute(query):
            latest[(found[0], found[1])] = tuple(found[2:])  # ordered by seq: the last one wins
    groups: dict[SiteModel, CaseSet] = {}
    for row in latest.values():
        model, version, positive, finding, probability, profile, probabilities = row[:7]
        programme, site, verdict, review_finding = row[7:]
        if not (
            isinstance(probabilities, dict) and model and version and finding and positive in probabilities
        ):
            continue  # an older or odd payload: nothing to measure
        try:
            reported = float(probabilities[positive] if probability is None else probability)
            scores = {k: float(v) for k, v in probabilities.items()}
        except (TypeError, ValueError):
            continue  # as odd
        key = SiteModel(programme, site or "", str(model), str(version))
        group = groups.get(key)
        if group is None:
            group = groups[key] = CaseSet(key, str(positive), sorted(probabilities), versions=[key.version])
        label, _ = specialist_label(verdict, review_finding, str(finding), group.labels)
        if label is None:
            group.unlabelled += 1
            continue
        profile = str(profile or "")
        published = (programme, site or "", profile)
        group.cases.append(
            Case(
                finding=str(finding),
                label=label,
                probability=reported,
                probabilities=scores,
                temperature=temperatures.get(published) if profile else None,
                unknown_profile=bool(profile) and published not in temperatures,
                version=key.version,
            )
        )
    return groups


def _sort_key(key: SiteModel) -> tuple[str, str, str, tuple[int, Any]]:
    return (key.programme, key.site, key.model, version_order(key.version))


def _published_temperatures(engine: Engine) -> dict[tuple[str, str, str], float]:
    """Each published profile's temperature by (programme, site, id): an id names a model,
    version and second, not a site, so two sites' profiles drafted in one second share it."""
    columns = db.site_profiles.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(columns.programme, columns.site, columns.profile_id, columns.temperature)
        ).all()
    return {(row.programme, row.site or "", row.profile_id): float(row.temperature) for row in rows}


def shipped_manifest(engine: Engine, models_dir: Path | None, model: str, version: str) -> Manifest | None:
    """The manifest of a model version: from a release published on this hub, else from the
    hub's own models folder when it holds that very version; None when the hub knows neither."""
    with engine.connect() as conn:
        row = conn.execute(
            select(db.releases.c.release).where(db.releases.c.name == model, db.releases.c.version == version)
        ).first()
    if row is not None:
        try:
            return Manifest(**tomllib.loads(row.release["manifest"]))
        except (tomllib.TOMLDecodeError, ValidationError, KeyError, TypeError):
            pass
    if models_dir is not None:
        try:
            manifest = Registry(models_dir).get(model).manifest
        except EdgeError:
            return None
        if manifest.version == version:
            return manifest
    return None


# ------------------------------------------------------------------ the figures


def figures(group: CaseSet, manifest: Manifest | None, *, full: bool = True) -> dict[str, Any]:
    """Agreement, AUC and (enough cases and a known shipped temperature permitting) the
    suggested temperature and thresholds, as plain JSON-able values. Not `full`: only what is
    quick (counts, agreement, AUC), with `pending` saying the rest is on its way."""
    labels, positive, cases = group.labels, group.positive, group.cases
    per_class = Counter(case.label for case in cases)
    matrix = [[sum(1 for c in cases if c.label == t and c.finding == f) for f in labels] for t in labels]
    truth = np.array([case.label == positive for case in cases], bool)
    score = _one_scale(group, manifest)
    auc = metrics.roc_auc(truth, score) if len(cases) else math.nan
    out: dict[str, Any] = {
        "programme": group.key.programme,
        "site": group.key.site,
        "model": group.key.model,
        "model_version": group.key.version,
        "model_versions": group.versions,
        "positive": positive,
        "labels": labels,
        "cases": len(cases),
        "unlabelled": group.unlabelled,
        "cases_per_class": {label: per_class.get(label, 0) for label in labels},
        "confusion": {"rows": "specialist", "columns": "model", "matrix": matrix},
        "agreement": _round(sum(1 for c in cases if c.label == c.finding) / len(cases)) if cases else None,
        "auc": _round(auc),
        "auc_ci95": _interval(metrics.roc_auc, truth, score) if full else None,
        "suggestion": None,
        "refusal": None,
        "pending": None if full else PENDING,
    }
    if not full:
        return out
    short = {label: n for label, n in out["cases_per_class"].items() if n < MIN_CASES_PER_CLASS}
    if short:
        named = ", ".join(f"{n} {label}" for label, n in short.items())
        out["refusal"] = (
            f"too few reviewed cases for site thresholds: {named}; at least {MIN_CASES_PER_CLASS} "
            "of each class are needed"
        )
        return out
    if manifest is None:
        out["refusal"] = (
            f"the hub knows no release of {group.key.model} {group.key.version}, so not the temperature "
            "its probabilities were made with: publish that release on this hub first"
        )
        return out
    # The refit reads only the cases it can: enough of each class must remain among them.
    remaining = Counter(c.label for c in _usable(group, manifest))
    if any(remaining.get(label, 0) < MIN_CASES_PER_CLASS for label in manifest.output.labels):
        unknown = sum(1 for case in cases if case.unknown_profile)
        other = len(cases) - unknown - sum(remaining.values())
        reasons = []
        if unknown:
            reasons.append(
                f"{unknown} cases were made under a site profile this hub did not publish (its "
                "temperature is unknown)"
            )
        if other:
            reasons.append(
                f"{other} cases do not give the probabilities of {', '.join(manifest.output.labels)}"
            )
        named = ", ".join(f"{remaining.get(label, 0)} {label}" for label in manifest.output.labels)
        out["refusal"] = (
            "; ".join([*reasons, f"{named} usable cases remain"])
            + f"; at least {MIN_CASES_PER_CLASS} of each class are needed"
        )
        return out
    out["suggestion"] = suggest(group, manifest)
    return out


def suggest(group: CaseSet, manifest: Manifest) -> dict[str, Any]:
    """The refitted temperature, the thresholds at it, and before/after figures on these cases:
    `calibration.fit_site`, as `edge models calibrate` fits (a point whose site rule reads no
    better out of fold than the shipped one keeps the shipped point)."""
    shipped_t = manifest.output.temperature
    labels = manifest.output.labels
    usable = _usable(group, manifest)
    y = np.array([labels.index(c.label) for c in usable], np.int64)
    cases = calibration.Cases(case_logits(usable, group, labels, shipped_t), y, list(labels), group.positive)
    # The screening target the release chose its point for (0.95 for some models), as
    # `edge models calibrate` reads it; SCREENING_SENSITIVITY where the manifest does not say.
    descriptions = {name: point.description for name, point in manifest.operating_points.items()}
    target = calibration.targets_for(descriptions, SCREENING_SENSITIVITY).get(
        "screening", SCREENING_SENSITIVITY
    )
    shipped = {name: point.threshold for name, point in manifest.operating_points.items()}
    clips = {
        name: op.clip_threshold
        for name, op in manifest.operating_points.items()
        if op.clip_threshold is not None
    }
    where = f"{len(usable)} cases reviewed by this site's specialists"
    fit = calibration.fit_site(
        cases,
        shipped_t,
        shipped,
        dict.fromkeys(calibration.RULES, target),
        where,
        seed=BOOTSTRAP_SEED,
        rounds=BOOTSTRAP_ROUNDS,
        shipped_clip_thresholds=clips,
    )
    # fit_site's figures on these cases, each point with the threshold it was read at.
    before: dict[str, Any] = {"auc": fit.before["auc"]}
    before.update({name: {"threshold": shipped[name], **fit.before[name]} for name in shipped})
    after: dict[str, Any] = {"auc": fit.after["auc"]}
    points: dict[str, Any] = {}
    for name, point in fit.points.items():
        after[name] = {"threshold": point.threshold, **fit.after[name]}
        points[name] = {
            "threshold": point.threshold,
            "description": point.description,
            "sensitivity": point.sensitivity,
            "specificity": point.specificity,
            "sensitivity_ci95": _finite(point.sensitivity_ci95),
            "specificity_ci95": _finite(point.specificity_ci95),
            "clip_threshold": point.clip_threshold,
        }
    # What the site's rules are worth on cases they were not chosen on (the figures above are
    # read on the cases the points were chosen on).
    after.update({name: reading for name, reading in fit.after.items() if name.endswith(CROSS_VALIDATED)})
    return {
        "shipped_temperature": shipped_t,
        "temperature": fit.temperature,
        "cases": len(usable),
        "cases_per_class": {label: int((y == i).sum()) for i, label in enumerate(labels)},
        "operating_points": points,
        "before": before,
        "after": after,
        # How sure the balanced point's gain is: paired, as `edge models calibrate` prints it.
        "gains": {name: asdict(gain) for name, gain in fit.gains.items()},
    }


def _finite(interval: tuple[float, float]) -> list[float] | None:
    return None if any(math.isnan(v) for v in interval) else [float(v) for v in interval]


def _one_scale(group: CaseSet, manifest: Manifest | None) -> np.ndarray:
    """P(positive) of every case on one scale, for the AUC: as the newest version's shipped
    temperature would give it (cases of other versions, or made under a profile, were reported
    at other temperatures, which would rank them on mixed scales); as reported where the
    manifest is unknown or a case lacks one of its labels."""
    reported = np.array([case.probability for case in group.cases], np.float64)
    if manifest is None or not group.cases:
        return reported
    if any(set(c.probabilities) != set(manifest.output.labels) for c in group.cases):
        return reported
    labels, temperature = list(manifest.output.labels), manifest.output.temperature
    logits = case_logits(group.cases, group, labels, temperature)
    return softmax(logits, temperature)[:, labels.index(group.positive)]


def case_logits(cases: list[Case], group: CaseSet, labels: list[str], shipped_t: float) -> np.ndarray:
    """Each case's logits, up to a constant: `T * log p` with the temperature that made p (its
    profile's, else its own version's shipped one; `shipped_t` where the group does not say)."""
    rows = []
    for case in cases:
        temperature = case.temperature or group.shipped_temperatures.get(case.version, shipped_t)
        rows.append([temperature * math.log(max(case.probabilities[label], _FLOOR)) for label in labels])
    return np.array(rows, np.float64).reshape(len(cases), len(labels))


def _usable(group: CaseSet, manifest: Manifest) -> list[Case]:
    """The cases the refit can read: a known temperature and the manifest's labels."""
    labels = set(manifest.output.labels)
    return [c for c in group.cases if not c.unknown_profile and set(c.probabilities) == labels]


def _interval(statistic: Any, truth: np.ndarray, score: np.ndarray) -> list[float] | None:
    if len(truth) == 0 or truth.all() or not truth.any():
        return None
    low, high = metrics.bootstrap_interval(
        statistic, truth, score, rounds=BOOTSTRAP_ROUNDS, seed=BOOTSTRAP_SEED
    )
    return None if math.isnan(low) else [round(low, 4), round(high, 4)]


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)
