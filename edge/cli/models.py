"""`edge models ...`: list, show, evaluate, build engines, verify parity."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from edge.cli.base import EXIT_REFUSED, Context, cli, pass_context, refuse
from edge.errors import EdgeError

if TYPE_CHECKING:
    from edge.inference.registry import ModelEntry

# ---------------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """Installed models: list, show, eval, build and verify TensorRT engines."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_list(obj: Context, as_json: bool) -> None:
    """The models installed on this device."""
    from edge.inference.registry import Registry

    registry = Registry(obj.settings.models.dir)
    rows: list[dict[str, Any]] = []
    for name in registry.names():
        try:
            m = registry.get(name).manifest
            rows.append(
                {
                    "name": name,
                    "version": m.version,
                    "title": m.title,
                    "variants": sorted(m.variants),
                    "status": "ok",
                }
            )
        except EdgeError as error:
            rows.append({"name": name, "status": error.one_line()})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("model", "version", "variants", "title", title=f"models in {registry.models_dir}")
    for row in rows:
        if row["status"] != "ok":
            table.add_row(row["name"], "-", "-", f"[red]{row['status']}[/]")
        else:
            table.add_row(row["name"], row["version"], ", ".join(row["variants"]), row["title"])
    Console().print(table)


@models.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="The whole manifest as JSON.")
@pass_context
def models_show(obj: Context, name: str, as_json: bool) -> None:
    """One model's manifest, with each file checked against its sha256."""
    from edge.inference.registry import Registry

    try:
        entry = Registry(obj.settings.models.dir).get(name)
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    checks = {}
    for variant in entry.manifest.variants:
        try:
            entry.variant_file(variant)
            checks[variant] = "ok"
        except EdgeError as error:
            checks[variant] = error.one_line()
    if as_json:
        click.echo(
            json.dumps({"manifest": entry.manifest.model_dump(mode="json"), "file_checks": checks}, indent=2)
        )
        sys.exit(0 if all(v == "ok" for v in checks.values()) else EXIT_REFUSED)
    from edge.cli.reports import print_model, print_profile
    from edge.inference import site_profile

    console = Console()
    print_model(console, entry, checks)
    try:  # the site's calibration in force, with its before/after figures
        active = site_profile.active_id(obj.settings.data_dir, name)
        profile = site_profile.load(obj.settings.data_dir, name, active) if active else None
    except EdgeError as error:
        console.print(f"[red]site profile[/]: {error.one_line()} (the shipped calibration serves)")
    else:
        if profile is None:
            console.print("calibration in force: shipped (no site profile; edge models calibrate)")
        elif not site_profile.serves(obj.settings.data_dir, profile, entry):
            console.print(
                f"[yellow]site profile {profile.id} is for version {profile.model_version}[/] "
                "(other weights): ignored, the shipped calibration serves"
            )
        else:
            if profile.model_version != entry.manifest.version:
                console.print(
                    f"site profile {profile.id} was fitted for {profile.model_version}; it serves "
                    f"{entry.manifest.version}, which has the same weights"
                )
            print_profile(console, profile, entry.manifest, active=True)
    reviewed = _reviewed_line(obj, entry)
    if reviewed:
        console.print(reviewed)
    sys.exit(0 if all(v == "ok" for v in checks.values()) else EXIT_REFUSED)


def _reviewed_line(obj: Context, entry: ModelEntry) -> str:
    """How many of this site's results the specialists labelled, against what `calibrate
    --from-reviews` needs; "" on a device with no store yet (none is created to say so)."""
    from edge.inference import site_calibration as sc
    from edge.store import Store
    from edge.store.database import DB_NAME

    settings = obj.settings
    if not (settings.data_dir / DB_NAME).is_file():
        return ""
    try:
        with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms, reader=True) as store:
            per_class = sc.cases_from_reviews(settings, store, entry).cases.per_class()
    except EdgeError as error:
        return f"[yellow]reviewed results[/]: cannot be read: {error.one_line()}"
    except (sqlite3.Error, KeyError, ValueError) as error:  # a busy or odd store: still show the rest
        return f"[yellow]reviewed results[/]: cannot be read: {type(error).__name__}: {error}"
    counts = ", ".join(f"{n} {label}" for label, n in per_class.items())
    short = {label: sc.MIN_PER_CLASS - n for label, n in per_class.items() if n < sc.MIN_PER_CLASS}
    if short:
        needed = ", ".join(f"{n} more {label}" for label, n in short.items())
        verdict = f"{needed} needed before edge models calibrate {entry.name} --from-reviews"
    else:
        verdict = f"enough for edge models calibrate {entry.name} --from-reviews"
    return f"reviewed by the specialists, labelled: {counts} ({verdict}; {sc.MIN_PER_CLASS} of each)"


@models.command("eval")
@click.argument("name")
@click.option(
    "--data",
    "data_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder with the images and a labels.csv (columns path,label).",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write roc.png, reliability.png, predictions.csv, metrics.json.",
)
@click.option("--variant", help="Evaluate this variant (default: the one the device would serve).")
@click.option("--operating-point", help="Threshold to report at (default: the site's, else the model's).")
@click.option(
    "--every-image",
    is_flag=True,
    help="Score the images the applicability check refuses too (a model card counts every image; "
    "by default they are left out and listed, as the device refuses them).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_eval(
    obj: Context,
    name: str,
    data_dir: Path,
    out_dir: Path | None,
    variant: str | None,
    operating_point: str | None,
    every_image: bool,
    as_json: bool,
) -> None:
    """Measure a model on a labelled folder with the product's own decode, preprocess and backend.

    Prints AUC, accuracy, sensitivity, specificity and ECE with 95% bootstrap intervals, and
    writes ROC and reliability plots. Use it to validate a model on local images before use.
    """
    from edge.cli.reports import print_evaluation
    from edge.inference.evaluate import evaluate

    target = out_dir or Path(f"eval-{name}")
    try:
        result = evaluate(
            obj.settings,
            name,
            data_dir,
            target,
            variant=variant,
            operating_point=operating_point,
            every_image=every_image,
        )
    except EdgeError as error:
        refuse(error, as_json)
    if as_json:
        click.echo(json.dumps(result.__dict__, indent=2))
    else:
        print_evaluation(Console(), result)


def _engine_manager(obj: Context) -> Any:
    """The TensorRT engine manager, or a clear refusal where TensorRT cannot run."""
    from edge.inference.engine_manager import EngineManager
    from edge.runtime.tensorrt import TensorRTRunner

    if not TensorRTRunner.is_available():
        click.echo(f"BACKEND_UNAVAILABLE: {TensorRTRunner.unavailable_reason()}", err=True)
        sys.exit(EXIT_REFUSED)
    return EngineManager(obj.settings)


@models.command("build")
@click.argument("names", nargs=-1)
@click.option(
    "--force", is_flag=True, help="Rebuild even if a matching engine (or a recorded failure) exists."
)
@pass_context
def models_build(obj: Context, names: tuple[str, ...], force: bool) -> None:
    """Build TensorRT engines on this device (all models, or NAMES), each precision in turn.

    INT8 from the QDQ graph, then FP16 and FP32 from the FP32 graph; a failed precision is
    recorded and the next one tried. A recorded failure is built again when what it was built
    from changes (TensorRT, CUDA, workspace, model file), later for out of memory, or now with
    --force. Engines are cached per model file, TensorRT, CUDA, GPU and workspace, with a
    persisted timing cache. Needs a supported TensorRT (docs/jetson.md) and a GPU.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edge.inference.registry import Registry

    manager = _engine_manager(obj)
    registry = Registry(obj.settings.models.dir)
    failed = False
    for name in names or tuple(registry.names()):
        try:
            entry = registry.get(name)
            plan = manager.plan(entry, "auto" if force else obj.settings.runtime.precision)
        except EdgeError as error:
            click.echo(f"{name}: {error.one_line()}")
            failed = True
            continue
        for attempt in plan:
            columns = [
                TextColumn(f"{name} {attempt.precision}"),
                BarColumn(),
                TextColumn("{task.fields[phase]}"),
                TimeElapsedColumn(),
            ]
            with Progress(*columns) as progress:
                task = progress.add_task("build", total=1.0, phase="starting")

                def report(phase: str, fraction: float, task_id: Any = task, bar: Any = progress) -> None:
                    bar.update(task_id, completed=fraction, phase=phase)

                try:
                    engine = manager.ensure(entry, attempt, force=force, progress=report)
                    click.echo(f"{name}: {attempt.precision} engine ready: {engine}")
                except EdgeError as error:
                    click.echo(f"{name}: {attempt.precision}: {error.one_line()}")
                    failed = True
    sys.exit(EXIT_REFUSED if failed else 0)


@models.command("verify")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_verify(obj: Context, name: str, as_json: bool) -> None:
    """Parity gate: each TensorRT engine against ONNX Runtime on the model's sample images.

    Reports max logit difference, top-1 agreement and AUC difference, records the verdict (an
    engine serves only if it passed) and exits 1 if the engine the device would serve failed.
    """
    from edge.inference.pool import tensor_names
    from edge.inference.registry import Registry

    manager = _engine_manager(obj)
    try:
        entry = Registry(obj.settings.models.dir).get(name)
        plan = manager.plan(entry, obj.settings.runtime.precision)
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    reports = {}
    for attempt in plan:
        try:
            engine = manager.ensure(entry, attempt)
            reports[attempt.precision] = manager.verify(entry, attempt, engine, tensor_names(entry)).as_dict()
        except EdgeError as error:
            reports[attempt.precision] = {"passed": False, "error": error.one_line()}
    if as_json:
        click.echo(json.dumps(reports, indent=2))
    else:
        for precision, report in reports.items():
            if "error" in report:
                click.echo(f"{name} {precision}: {report['error']}")
                continue
            click.echo(
                f"{name} {precision}: {'PASSED' if report['passed'] else 'FAILED'}  max |logit diff| "
                f"{report['max_abs_logit_diff']:.4f}, agreement {report['agreement']:.2%}, AUC "
                f"{report['auc']:.4f} vs {report['auc_reference']:.4f} "
                f"({report['images']} images; {report['rule']})"
            )
    sys.exit(0 if any(r.get("passed") for r in reports.values()) else EXIT_REFUSED)
