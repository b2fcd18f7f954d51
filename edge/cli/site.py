"""`edge models calibrate`, `edge models profiles`, `edge models prior`: calibrating a model to
this site (edge/inference/site_calibration.py) and seeing what is in force."""

from __future__ import annotations

import dataclasses
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from edge.cli.base import EXIT_REFUSED, Context, pass_context, refuse
from edge.cli.models import models
from edge.errors import EdgeError


@models.command("calibrate")
@click.argument("name")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the site's images and a labels.csv (columns path,label), as for eval.",
)
@click.option(
    "--from-reviews",
    is_flag=True,
    help="The results the specialists reviewed (this version's, and earlier ones' with the same weights).",
)
@click.option("--reset", is_flag=True, help="Serve the shipped calibration again (profiles are kept).")
@click.option(
    "--min-per-class",
    type=click.IntRange(min=20),  # site_calibration.FLOOR_PER_CLASS (not imported: a slow import)
    default=30,
    show_default=True,
    help="Refuse below this many cases of a class (20 at least).",
)
@click.option(
    "--operating-point",
    "points",
    multiple=True,
    help="Refit only these points (repeatable; default every point with a known rule).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_calibrate(
    obj: Context,
    name: str,
    data_dir: Path | None,
    from_reviews: bool,
    reset: bool,
    min_per_class: int,
    points: tuple[str, ...],
    as_json: bool,
) -> None:
    """Refit the temperature and thresholds on this site's cases into a site profile and put
    it in force (never editing the shipped model); --reset goes back to the shipped calibration.

    The rules are the release tool's: temperature by likelihood (held near the shipped one by a
    prior, as a site has few cases), balanced by Youden's J (bagged), screening at the released
    sensitivity target; sensitivity and specificity with 95% bootstrap intervals. Prints the
    figures before and after on the same cases, and cross-validated on them."""
    from edge.cli.reports import print_profile
    from edge.inference import site_calibration as sc
    from edge.inference.registry import Registry
    from edge.store import Store

    if sum((data_dir is not None, from_reviews, reset)) != 1:
        raise click.UsageError("give exactly one of --data DIR, --from-reviews, --reset")
    settings = obj.settings
    site: sc.SiteCases | None = None
    try:
        entry = Registry(settings.models.dir).get(name)
        known = sc.calibratable_points(entry)
        unknown = [p for p in points if p not in known]
        if unknown:
            raise click.UsageError(
                f"{name} has no operating point {', '.join(unknown)} with a known rule ({', '.join(known)})"
            )
        with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
            if reset:
                sc.activate(settings, store, name, None)
                click.echo(f"{name}: the shipped calibration serves now (site profiles kept)")
                return
            if from_reviews:
                site = sc.cases_from_reviews(settings, store, entry)
            else:
                assert data_dir is not None
                site = sc.cases_from_folder(settings, entry, data_dir)
            profile, gains = sc.calibrate(
                settings,
                store,
                entry,
                site,
                "reviews" if from_reviews else "data",
                min_per_class=min_per_class,
                points=list(points) or None,
            )
    except EdgeError as error:
        if not as_json and site is not None:
            _name_left_out(site, err=True)
        refuse(error, as_json)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "profile": profile.model_dump(mode="json"),
                    "left_out": site.left_out,
                    "gains": {name: dataclasses.asdict(gain) for name, gain in gains.items()},
                },
                indent=2,
            )
        )
        return
    console = Console()
    print_profile(console, profile, entry.manifest, active=True, gains=gains)
    _name_left_out(site)
    if site.left_out:
        console.print("left out: " + ", ".join(f"{n} {why}" for why, n in site.left_out.items()))
    console.print(
        f"[green]site profile {profile.id} is in force[/] (edge models calibrate {name} --reset to undo)"
    )


def _name_left_out(site: Any, err: bool = False) -> None:
    """A folder's images that were not used, each with why, as `edge models eval` lists them."""
    for item in site.left_out_files:
        click.echo(f"left out {item['path']}  {item['code']}: {item['reason']}", err=err)


@models.command("profiles")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_profiles(obj: Context, name: str, as_json: bool) -> None:
    """The site profiles of a model, oldest first, and which is in force."""
    from edge.inference import site_profile
    from edge.inference.registry import Registry

    settings = obj.settings
    try:
        entry = Registry(settings.models.dir).get(name)
        active = site_profile.active_id(settings.data_dir, name)
        profiles = site_profile.history(settings.data_dir, name)
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    rows: list[dict[str, Any]] = [
        {
            "id": p.id,
            "active": p.id == active,
            "applies": site_profile.serves(settings.data_dir, p, entry),
            "source": p.source,
            "cases": p.cases,
            "temperature": p.temperature,
            "thresholds": {k: v.threshold for k, v in p.operating_points.items()},
        }
        for p in profiles
    ]
    if as_json:
        click.echo(json.dumps({"active": active, "profiles": rows}, indent=2))
        return
    if not rows:
        click.echo(f"{name}: no site profiles; the shipped calibration serves")
        return
    for row in rows:
        mark = "*" if row["active"] else " "
        note = "" if row["applies"] else f"  (for other weights: not applied to {entry.manifest.version})"
        thresholds = ", ".join(f"{k} {v:.4f}" for k, v in row["thresholds"].items())
        click.echo(
            f"{mark} {row['id']}  {row['source']}, {row['cases']} cases, "
            f"T {row['temperature']:.4f}, {thresholds}{note}"
        )
    click.echo("in force: " + (active or "the shipped calibration"))


@models.command("prior")
@click.argument("name")
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    help="Only results from this date (YYYY-MM-DD, UTC) on.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_prior(obj: Context, name: str, since: datetime | None, as_json: bool) -> None:
    """Estimate this site's prevalence of the model's finding from its own results (Saerens,
    Latinne and Decaestecker 2002: EM on the calibrated posteriors), against the training
    prevalence, and show what posteriors would become under it. Shown only: never applied."""
    from edge.inference import site_calibration as sc
    from edge.inference.registry import Registry
    from edge.store import Store

    settings = obj.settings
    try:
        entry = Registry(settings.models.dir).get(name)
        with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
            report = sc.prior_report(settings, store, entry, since.date().isoformat() if since else None)
    except EdgeError as error:
        refuse(error, as_json)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    low, high = report["estimated_prevalence_ci95"]
    pooled = report["versions"] if len(report["versions"]) > 1 else []
    click.echo(
        f"{name} {report['version']}: {report['results']} results "
        f"({report['first'][:10]} to {report['last'][:10]}"
        + (f", asked for since {report['since']}" if report["since"] else "")
        + (f"; of versions {', '.join(pooled)}, the same weights" if pooled else "")
        + ")"
    )
    click.echo(
        f"estimated prevalence of {report['positive']} here: {report['estimated_prevalence']:.3f} "
        f"(95% bootstrap interval {low:.3f}-{high:.3f}); mean posterior {report['mean_posterior']:.3f}"
    )
    click.echo(
        f"training prevalence: {report['training_prevalence']:.3f} ({report['training_prevalence_from']})"
    )
    click.echo(f"P({report['positive']}) under the shipped calibration -> adjusted to this prevalence:")
    for example in report["examples"]:
        click.echo(f"  {example['posterior']:.2f} -> {example['adjusted']:.3f}")
    click.echo(
        "Not applied: results and thresholds are unchanged. To act on it, calibrate on labelled "
        "cases (edge models calibrate)."
    )
