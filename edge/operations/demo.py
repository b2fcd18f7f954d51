"""`edge demo`: a fresh install shows what it does, on bundled sample images, with no config."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from edge.config import DEMO_MODEL, Settings
from edge.device import Device
from edge.errors import EdgeError
from edge.inference.registry import Registry
from edge.results import Analysis


def demo_inputs(settings: Settings) -> list[tuple[Path, str]]:
    """The default model's sample images marked for the demo, as (file, true label)."""
    entry = Registry(settings.models.dir).get(settings.models.default or DEMO_MODEL)
    return [(path, label) for path, label in entry.samples if path.parent.name == "demo"] or entry.samples


def run_demo(settings: Settings, *, fresh: bool = False, explicit_data_dir: bool = False) -> int:
    console = Console()
    if not explicit_data_dir:
        # Keep sample images out of the clinic's own database.
        settings = settings.model_copy(update={"data_dir": settings.data_dir / "demo"})
    if fresh and settings.data_dir.exists():
        shutil.rmtree(settings.data_dir)
    try:
        inputs = demo_inputs(settings)
    except EdgeError as error:
        console.print(f"[red]{error.one_line()}[/]")
        return 1
    console.print(
        f"[bold]edge demo[/]: analysing {len(inputs)} bundled sample images on this machine (no GPU needed)."
    )
    started = time.perf_counter()
    rows: list[tuple[Path, str, Analysis]] = []
    with Device(settings, actor="demo") as device:
        for path, truth in inputs:
            for analysis in device.analyse_file(path, source="demo"):
                rows.append((path, truth, analysis))
        counts = device.store.counts()
        db_path = device.store.db_path
    elapsed = time.perf_counter() - started
    console.print(_table(rows))
    scored = [(truth, a) for _, truth, a in rows if a.ok and a.result]
    agree = sum(1 for truth, a in scored if a.result and a.result.finding == truth)
    refused = len(rows) - len(scored)
    console.print(
        f"{len(scored)} analysed, {refused} refused; the model agrees with the published label on "
        f"{agree} of {len(scored)} (samples, not a validation: see `edge models show`). "
        f"{elapsed:.1f} s in all."
    )
    console.print(f"database: [bold]{db_path}[/] ({counts['results']} results stored)")
    console.print(f"images:   {settings.data_dir / 'images'}")
    sample = inputs[0][0] if inputs else "IMAGE"
    model = settings.models.default or DEMO_MODEL
    console.print(f"next:     edge infer {sample} --json    |    edge models show {model}")
    return 0 if refused == 0 else 1


def _table(rows: list[tuple[Path, str, Analysis]]) -> Table:
    """Sized for an 80-column terminal: what every row shares goes into the title."""
    first = next((a.result for _, _, a in rows if a.ok and a.result), None)
    title = "results"
    positive = "positive"
    if first:
        positive = first.finding_label
        title = (
            f"{first.model_name} {first.model_version} on {first.backend}/{first.variant}, "
            f"threshold {first.threshold:.3f} ({first.operating_point})"
        )
    table = Table(title=title)
    for header in ("sample", "label", "finding", f"P({positive})", "ms"):
        table.add_column(header, no_wrap=True)
    for path, truth, analysis in rows:
        if not analysis.ok or analysis.result is None:
            table.add_row(path.name, truth, f"[red]{analysis.code}[/]", "", "")
            continue
        r = analysis.result
        colour = "green" if r.finding == truth else "yellow"
        table.add_row(
            path.name,
            truth,
            f"[{colour}]{r.finding}[/]",
            f"{r.probability:.3f}",
            f"{r.latency_ms:.1f}",
        )
    return table
