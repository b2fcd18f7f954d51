"""`edge infer`, `edge capture`, `edge demo`, `edge bench`: analysing images and video."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from edge.cli.base import EXIT_REFUSED, EXIT_USAGE, Context, cli, pass_context
from edge.config import DEMO_MODEL
from edge.errors import Code, EdgeError

if TYPE_CHECKING:  # the analysis modules load models: only when a command runs
    from edge.results import Analysis

# ---------------------------------------------------------------------- infer


def analysis_json(analysis: Analysis, heatmap: Path | None = None) -> dict[str, Any]:
    """The stable JSON shape of one analysis (one input, one model)."""
    out: dict[str, Any] = {
        "input": analysis.input,
        "status": "ok" if analysis.ok else "refused",
        "study_id": analysis.study_id,
        "image_id": analysis.image_id,
        "job_id": analysis.job_id,
        "duplicate": analysis.duplicate,
    }
    if not analysis.ok:
        out.update(code=analysis.code, reason=analysis.message)
        return out
    r = analysis.result
    assert r is not None
    out.update(
        result_id=r.id,
        finding=r.finding,
        positive_label=r.finding_label,
        probability=round(r.probability, 6),
        probabilities={k: round(v, 6) for k, v in r.probabilities.items()},
        threshold=r.threshold,
        operating_point=r.operating_point,
        # The site profile whose temperature and threshold decided; null: the shipped ones.
        profile_id=r.profile_id,
        model=r.model_name,
        model_version=r.model_version,
        model_sha256=r.model_sha256,
        variant=r.variant,
        backend=r.backend,
        precision=r.precision,
        latency_ms=round(r.latency_ms, 3),
        total_ms=round(r.total_ms, 3),
        heatmap=str(heatmap) if heatmap else None,
        # The applicability check (edge/inference/scope.py): state "in scope" or "borderline",
        # distance, p_value, threshold; null for a model released without the check.
        applicability=r.applicability,
    )
    return out


def analysis_line(analysis: Analysis, heatmap: Path | None = None) -> str:
    """One line per analysis; a result of a model with an applicability check adds a second,
    indented line with its word, number and meaning."""
    if not analysis.ok:
        return f"REFUSED {analysis.input}  {analysis.code}: {analysis.message}"
    r = analysis.result
    assert r is not None
    again = "  (already analysed)" if analysis.duplicate else ""
    line = (
        f"OK      {analysis.input}  {r.finding}  P({r.finding_label})={r.probability:.3f}"
        f"  threshold {r.threshold:.3f} ({r.operating_point}"
        + (f", site profile {r.profile_id}" if r.profile_id else "")
        + f")  {r.model_name} {r.model_version}"
        f"  {r.backend}/{r.precision}  {r.latency_ms:.1f} ms{again}"
        + (f"  heatmap {heatmap}" if heatmap else "")
    )
    from edge.inference.scope import plain_words  # numpy: only when a command runs

    words = plain_words(r.applicability)
    return line + (f"\n        applicability: {words}" if words else "")


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", "-m", "model_name", help="Model to use (default: routed by modality).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, per input and model.")
@click.option(
    "--heatmap",
    "heatmap_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Also write each result's heatmap overlay (PNG) into this folder.",
)
@pass_context
def infer(
    obj: Context, paths: tuple[Path, ...], model_name: str | None, as_json: bool, heatmap_dir: Path | None
) -> None:
    """Analyse image files now and store the results.

    PATHS are DICOM, PNG or JPEG files. Each input prints one line (or one JSON object): the
    finding, its calibrated probability, the threshold and operating point, the model and
    version, the backend and precision, and the inference latency; where the model has an
    applicability check, an indented line says whether the image is in scope or borderline
    (near the edge of what the model was trained on) with its p-value. An input that cannot
    be analysed prints `CODE: reason` (OUT_OF_SCOPE: the image is unlike the model's training
    images); the exit status is then 1.
    """
    from edge.device import Device

    settings = obj.settings
    refused = False
    with Device(settings, guarded=True) as device:  # decoded as the agent decodes: bounded
        for path in paths:
            for analysis in device.analyse_file(path, model_name):
                refused |= not analysis.ok
                heatmap = _heatmap_copy(settings.data_dir, analysis, path, heatmap_dir)
                if as_json:
                    click.echo(json.dumps(analysis_json(analysis, heatmap), sort_keys=True))
                else:
                    click.echo(analysis_line(analysis, heatmap) + _calibration_since(settings, analysis))
    sys.exit(EXIT_REFUSED if refused else 0)


def _calibration_since(settings: Any, analysis: Analysis) -> str:
    """For an image analysed before, whose stored result was decided by another calibration
    than the one in force now (a site profile made or reset since): say so, or whoever compares
    before and after calibrating reads the old decision as the new one."""
    from edge.inference import site_profile
    from edge.inference.registry import Registry

    r = analysis.result
    if not analysis.duplicate or r is None:
        return ""
    try:  # what serving applies: a profile fitted to other weights is ignored there too
        entry = Registry(settings.models.dir).get(r.model_name)
        profile = site_profile.ActiveProfiles(settings.data_dir).get(entry)
    except EdgeError:
        return ""  # the model or its profile unreadable: the stored result's line says enough
    now = profile.id if profile else None
    if now == r.profile_id:
        return ""
    in_force = f"site profile {now}" if now else "the shipped calibration"
    return (
        f"\n        stored as first analysed; {in_force} is in force now and decides new images"
        f" (edge models eval reads a labelled folder with it)"
    )


def _heatmap_copy(data_dir: Path, analysis: Analysis, source: Path, target_dir: Path | None) -> Path | None:
    """The stored heatmap, copied into `target_dir` when asked (else the stored file itself)."""
    result = analysis.result
    stored = result.heatmap_path if result else None
    if result is None or not stored:
        return None
    path = data_dir / stored
    if target_dir is None:
        return path
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{source.stem}.{result.model_name}.heatmap.png"
    shutil.copyfile(path, target)
    return target


# ---------------------------------------------------------------------- capture


@cli.command()
@click.option(
    "--source",
    "-s",
    required=True,
    help="/dev/videoN (or its number), a video file, or an rtsp:// or http:// stream.",
)
@click.option("--model", "-m", "model_name", help="Model (default: [video] model).")
@click.option("--seconds", type=float, help="Stop after this long (default: until Ctrl-C or the file ends).")
@click.option("--record", is_flag=True, help="Record a clip from start to stop and store its result.")
@click.option("--profile", help="Device profile from [video.profiles] (a fixed sector, capture settings).")
@click.option(
    "--realtime/--no-realtime",
    default=True,
    show_default=True,
    help="Play files at their own frame rate, as a live device would deliver them.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per analysed frame.")
@pass_context
def capture(
    obj: Context,
    source: str,
    model_name: str | None,
    seconds: float | None,
    record: bool,
    profile: str | None,
    realtime: bool,
    as_json: bool,
) -> None:
    """Live ultrasound, headless: the smoothed live score while scanning, and a clip on request.

    Analyses the newest frame at [video] target_fps (older frames are dropped, never queued),
    inside the imaging sector only (found from the moving picture, or the profile's box). With
    --record, the clip's result (mean of its frames' calibrated probabilities), key frames and
    sector-only video are stored like any other result.
    """
    import threading

    from edge.device import Device, capture_clip
    from edge.video.live import LiveScore

    settings = obj.settings
    if profile:
        if profile not in settings.video.profiles:
            click.echo(f"CONFIG_INVALID: no [video.profiles.{profile}] in the settings", err=True)
            sys.exit(EXIT_USAGE)
        settings = settings.model_copy(
            update={"video": settings.video.model_copy(update={"profile": profile})}
        )

    def show(score: LiveScore) -> None:
        if as_json:
            click.echo(json.dumps(score.__dict__))
        elif score.status != "ok":
            click.echo(f"t={score.position_s:7.2f}s  {score.status}")
        else:
            click.echo(
                f"t={score.position_s:7.2f}s  P={score.probability:.3f}  smoothed {score.smoothed:.3f}  "
                f"{score.finding}  {score.latency_ms:.0f} ms"
            )

    stop = threading.Event()
    with Device(settings, actor="capture") as device:
        try:
            live = device.live(source, model_name, realtime=realtime, on_score=show)
            if record:
                live.analyzer.start_clip()
            with live.frames:
                try:
                    live.analyzer.run(stop, max_seconds=seconds)
                except KeyboardInterrupt:
                    stop.set()
            if not live.frames.stats.read and not stop.is_set():
                # No frame at all: a source that is not there or gives nothing (a cable, a
                # capture card, a wrong /dev/videoN). It said "nothing analysed" and exited 0.
                raise EdgeError(
                    Code.VIDEO_UNREADABLE,
                    f"no frame could be read from {source} ({live.frames.stats.end_reason}): check that"
                    " the device exists (ls /dev/video*), its cable and capture card, or the file's path",
                )
            click.echo(_live_summary(live.analyzer, live.frames), err=True)
            if record:
                click.echo(capture_clip(settings, device.store, live))
        except EdgeError as error:
            click.echo(error.one_line(), err=True)
            sys.exit(EXIT_REFUSED)


def _live_summary(analyzer: Any, frames: Any) -> str:
    latencies = sorted(analyzer.stats.latencies_ms)
    if not latencies:
        return f"nothing analysed ({analyzer.stats.status_counts}); {frames.stats.end_reason}"
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    return (
        f"analysed {analyzer.stats.frames_analysed} of {frames.stats.read} frames "
        f"(dropped {frames.stats.dropped}); "
        f"capture-to-result p50 {latencies[len(latencies) // 2]:.0f} ms, p95 {p95:.0f} ms; "
        f"sector {analyzer.stats.roi}"
    )


# ---------------------------------------------------------------------- demo


@cli.command()
@click.option("--fresh", is_flag=True, help="Start from an empty demo database.")
@pass_context
def demo(obj: Context, fresh: bool) -> None:
    """Analyse the bundled sample images on the CPU and show the results.

    Uses a separate demo database (under the data directory, in demo/) so that sample images
    never mix with a clinic's own studies.
    """
    from edge.operations.demo import run_demo

    sys.exit(run_demo(obj.settings, fresh=fresh, explicit_data_dir=obj.data_dir is not None))


# ---------------------------------------------------------------------- bench


@cli.command()
@click.option("--model", "-m", "model_name", help="Model to measure (default: the site default).")
@click.option(
    "--runs",
    default=200,
    show_default=True,
    type=click.IntRange(5, 100_000),
    help="Timed runs per measurement (the median is reported).",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def bench(obj: Context, model_name: str | None, runs: int, as_json: bool) -> None:
    """Per-image latency: raw session.run vs the full path, FP32 vs INT8, ours vs OpenCV DNN.

    Every figure is a median over RUNS measured in this one run; compare the printed ratios,
    not absolute times, across machines.
    """
    from edge.operations.bench import print_report, run_bench

    try:
        report = run_bench(obj.settings, model_name or obj.settings.models.default or DEMO_MODEL, runs)
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(Console(), report)
