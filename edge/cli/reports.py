"""Human-readable renderings (rich) shared by the CLI commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from edge.inference.calibration import (
    CROSS_VALIDATED,
    KEPT,
    PairedGain,
    screening_target,
    site_point_better,
)
from edge.inference.registry import Manifest, ModelEntry, Robustness
from edge.inference.site_profile import PointFigures, SiteProfile


def print_model(console: Console, entry: ModelEntry, checks: dict[str, str]) -> None:
    m = entry.manifest
    console.print(f"[bold]{m.name}[/] {m.version}: {m.title}")
    if m.description:
        console.print(m.description)
    a = m.accepts
    console.print(
        f"accepts: modalities {', '.join(a.modalities) or 'any'}; body parts "
        f"{', '.join(a.body_parts) or 'any'}; views {', '.join(a.views) or 'any'}; ages "
        f"{f'{a.age_years[0]:g}-{a.age_years[1]:g} y' if a.age_years else 'any'}; PNG/JPEG "
        f"{'yes' if a.unlabelled else 'no'}"
    )
    i = m.input
    console.print(
        f"input: {i.name} {list(i.shape)} {i.colour} {i.layout} {i.dtype}, resize {i.resize}, "
        f"scale {i.scale:.6g}, mean {list(i.mean)}, std {list(i.std)}"
    )
    o = m.output
    console.print(
        f"output: {o.logits} over {o.labels}"
        + (f", heatmap {o.cam}" if o.cam else "")
        + f"; positive {o.positive}; temperature {o.temperature:.3f} (as shipped)"
    )
    clips = any(op.clip_threshold is not None for op in m.operating_points.values())
    points = Table(
        "operating point",
        "threshold",
        "sensitivity",
        "specificity",
        *(("clip threshold", "clip sens / spec") if clips else ()),
        "use",
        title="operating points as shipped (a site profile in force, below, replaces their thresholds)",
    )

    def figure(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    for name, op in m.operating_points.items():
        marker = " (default)" if name == m.default_operating_point else ""
        clip_cells = (
            (
                f"{op.threshold_for_clips:.4f}",
                f"{figure(op.clip_sensitivity)} / {figure(op.clip_specificity)}",
            )
            if clips
            else ()
        )
        points.add_row(
            name + marker,
            f"{op.threshold:.4f}",
            figure(op.sensitivity),
            figure(op.specificity),
            *clip_cells,
            op.description,
        )
    console.print(points)
    variants = Table("variant", "precision", "format", "backends", "file", "gate", "check")
    for name, v in m.variants.items():
        gate = (
            "reference"
            if v.precision == "fp32"
            else (
                "missing"
                if v.gate is None
                else f"{'passed' if v.servable else 'FAILED'} (dAUC {v.gate.auc_delta:+.4f}, "
                f"agree {v.gate.agreement:.3%}"
                + (
                    f"; unseen images: dAUC {v.gate.out_of_fold.auc_delta:+.4f}, "
                    f"agree {v.gate.out_of_fold.agreement:.3%}"
                    if v.gate.out_of_fold
                    else ""
                )
                + ")"
            )
        )
        check = checks.get(name, "?")
        variants.add_row(
            name,
            v.precision,
            v.quantization,
            ", ".join(v.backends),
            v.file,
            gate,
            "[green]ok[/]" if check == "ok" else f"[red]{check}[/]",
        )
    console.print(variants)
    for split, values in m.metrics.items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        console.print(f"metrics ({split}): {shown}")
    for line in robustness_lines(m.robustness):
        console.print(line)


def robustness_lines(robustness: Robustness | None) -> list[str]:
    """One line per check measured at release (the card has the tables)."""
    if robustness is None:
        return []
    lines = []
    if robustness.by_shift is not None:
        shifts = robustness.by_shift.shifts
        worst_auc = min(shifts, key=lambda k: shifts[k].auc)
        worst_spec = min(shifts, key=lambda k: shifts[k].specificity)
        lines.append(
            f"under {len(shifts)} acquisition shifts ({robustness.by_shift.measured_on}): lowest AUC "
            f"{shifts[worst_auc].auc:.3f} ({worst_auc}); lowest specificity at "
            f"{robustness.by_shift.operating_point} {shifts[worst_spec].specificity:.3f} ({worst_spec})"
        )
    for variant, s in robustness.clip_scale.items():
        lines.append(
            f"clip findings across input size ({variant}): {s.flipping_half_to_4x} of {s.clips} clips "
            f"change between 0.5x and 4x; stretched to 4K {s.flipping_stretched}, with the profile "
            f"{s.flipping_stretched_with_profile}; largest spread of P {s.largest_spread:.3f}"
        )
    return lines


def print_evaluation(console: Console, result: Any) -> None:
    console.print(
        f"[bold]{result.model}[/] {result.version} ({result.variant} on {result.backend}), "
        f"{result.images} images; operating point {result.operating_point} "
        f"(threshold {result.threshold:.3f}, temperature {result.temperature:.3f}, "
        + (f"site profile {result.profile_id})" if result.profile_id else "as shipped)")
    )
    table = Table("metric", "value", "95% CI")
    for key, value in result.metrics.items():
        if isinstance(value, dict):
            table.add_row(key, f"{value['value']:.4f}", f"{value['ci95_low']:.4f} - {value['ci95_high']:.4f}")
        else:
            table.add_row(key, str(value), "")
    console.print(table)
    for item in result.refused:
        console.print(f"[yellow]refused[/] {item['path']}  {item['code']}: {item['reason']}")
    if result.repeated:
        console.print(f"labels.csv listed {result.repeated} image(s) again under one label: counted once")
    gated = sum(item.get("by") == "gate" for item in result.refused)
    if gated and not result.every_image:
        console.print(
            f"{gated} image(s) left out as the device would refuse them (no result in "
            "service); --every-image scores them too, as a model card counts them"
        )
    for kind, path in result.files.items():
        console.print(f"{kind}: {path}")


def print_profile(
    console: Console,
    profile: SiteProfile,
    manifest: Manifest,
    *,
    active: bool,
    gains: dict[str, PairedGain] | None = None,
) -> None:
    """A site profile: what it changes against the shipped calibration, and the figures on the
    site's cases before (shipped) and after (profile; fitted on those cases: optimistic; and
    cross-validated, each case read by a point chosen on the others), with what it is worth
    (`gains`: the paired intervals, known only when the profile has just been fitted)."""
    state = "in force" if active else "not in force"
    console.print(
        f"[bold]site profile {profile.id}[/] ({state}): {profile.source}, {profile.description}; "
        f"{profile.cases} cases ({', '.join(f'{k} {v}' for k, v in profile.cases_per_class.items())}); "
        f"created {profile.created_at}"
    )
    console.print(f"temperature {manifest.output.temperature:.4f} (shipped) -> {profile.temperature:.4f}")
    points = Table(
        "operating point", "threshold shipped -> site", "sensitivity (95% CI)", "specificity (95% CI)"
    )

    def with_ci(value: float | None, ci: tuple[float, float] | None) -> str:
        if value is None:
            return "-"
        return f"{value:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    for name, point in profile.operating_points.items():
        shipped = manifest.operating_points.get(name)
        points.add_row(
            name,
            f"{shipped.threshold:.4f} -> {point.threshold:.4f}" if shipped else f"{point.threshold:.4f}",
            with_ci(point.sensitivity, point.sensitivity_ci95),
            with_ci(point.specificity, point.specificity_ci95),
        )
    console.print(points)
    figures = Table("on the site's cases", "accuracy", "sensitivity", "specificity")
    for side, values in (("before (shipped)", profile.before), ("after (profile)", profile.after)):
        for name, value in values.items():
            if isinstance(value, PointFigures):
                point_name = name.removesuffix(CROSS_VALIDATED)
                label = f"{side}, {name}" if point_name == name else f"cross-validated, {point_name}"
                figures.add_row(
                    label,
                    f"{value.accuracy:.3f}",
                    f"{value.sensitivity:.3f}",
                    f"{value.specificity:.3f}",
                )
    console.print(figures)
    for line in gain_lines(profile, gains or {}):
        console.print(line)
    auc = profile.before.get("auc")
    if isinstance(auc, float):
        console.print(f"AUC on these cases {auc:.3f} (a temperature does not change the ranking)")


def gain_lines(profile: SiteProfile, gains: dict[str, PairedGain] | None = None) -> list[str]:
    """Per refitted point, the shipped point on the site's cases beside the site point read
    cross-validated, judged by what the point is for (`calibration.site_point_better`, the rule
    that decided whether the profile keeps the site's point or the shipped one): `balanced` by
    sensitivity + specificity (Youden's J, its rule), `screening` by reaching its sensitivity
    target first, then by specificity. With a point's paired gain (`gains`), the word follows
    its sign and the line says how sure that is: an interval that holds 0 says these cases
    cannot tell the two points apart. Profiles made before the cross-validated figures existed
    say nothing."""
    gains = gains or {}
    lines = []
    for name, point in profile.operating_points.items():
        before, cv = profile.before.get(name), profile.after.get(name + CROSS_VALIDATED)
        if not (isinstance(before, PointFigures) and isinstance(cv, PointFigures)):
            continue
        compared = (
            f"sensitivity / specificity {before.sensitivity:.3f} / {before.specificity:.3f} shipped, "
            f"{cv.sensitivity:.3f} / {cv.specificity:.3f} with the site's point on cases it was not chosen on"
        )
        gain = gains.get(name)
        sure = _how_sure(gain)
        better, measure = site_point_better(
            name, screening_target(point.description), before.model_dump(), cv.model_dump(), gain
        )
        by = f" ({measure})" if measure else ""
        if point.description.startswith(KEPT):
            lines.append(
                f"[yellow]{name}[/]: {compared}: no gain{by}{sure}, so the profile keeps the shipped "
                "point (carried to the site's temperature)"
            )
        elif better:
            lines.append(f"[green]{name}[/]: {compared}: a gain{by}{sure}")
        else:  # a profile made before points without a gain were kept
            lines.append(
                f"[yellow]{name}[/]: {compared}: no gain{by}{sure}, the shipped point already suits "
                f"these cases (edge models calibrate {profile.model} --reset goes back)"
            )
    return lines


def _how_sure(gain: PairedGain | None) -> str:
    if gain is None:
        return ""
    low, high = gain.ci95
    said = f" (Youden's J {gain.youden_j:+.3f}, 95% CI {low:+.3f} to {high:+.3f}"
    if low <= 0.0 <= high:
        return said + ": within what these cases can tell apart)"
    return said + ")"
