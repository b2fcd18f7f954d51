"""The `edge` command. Every subcommand has --help; refusals print `CODE: sentence`."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from edge import __version__
from edge import log as edge_log
from edge.config import Settings, load_settings
from edge.errors import EdgeError
from edge.store.records import StudyInfo

EXIT_REFUSED = 1
EXIT_USAGE = 2


class Context:
    """Settings are loaded on first use, so `--help` works even with a broken config."""

    def __init__(self, config_file: Path | None, data_dir: Path | None) -> None:
        self.config_file = config_file
        self.data_dir = data_dir
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            overrides: dict[str, Any] = {"data_dir": self.data_dir} if self.data_dir else {}
            try:
                self._settings = load_settings(self.config_file, **overrides)
            except EdgeError as error:
                click.echo(error.one_line(), err=True)
                sys.exit(EXIT_USAGE)
        return self._settings


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Settings file (default: $EDGE_CONFIG, else /etc/edge/edge.toml if present).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the database and images live (default: $STATE_DIRECTORY or per-user).",
)
@click.option("-v", "--verbose", count=True, help="Log more (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, data_dir: Path | None, verbose: int) -> None:
    """Edge inference for clinics: X-ray and ultrasound models on the device, offline first."""
    edge_log.configure([logging.ERROR, logging.INFO, logging.DEBUG][min(verbose, 2)])
    ctx.obj = Context(config_file, data_dir)


# ---------------------------------------------------------------------- infer


def analysis_json(analysis: Any, heatmap: Path | None = None) -> dict[str, Any]:
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
    out.update(
        result_id=r["id"],
        finding=r["finding"],
        positive_label=r["finding_label"],
        probability=round(r["probability"], 6),
        probabilities={k: round(v, 6) for k, v in r["probabilities"].items()},
        threshold=r["threshold"],
        operating_point=r["operating_point"],
        model=r["model_name"],
        model_version=r["model_version"],
        model_sha256=r["model_sha256"],
        variant=r["variant"],
        backend=r["backend"],
        precision=r["precision"],
        latency_ms=round(r["latency_ms"], 3),
        total_ms=round(r["total_ms"], 3),
        heatmap=str(heatmap) if heatmap else None,
    )
    return out


def analysis_line(analysis: Any) -> str:
    if not analysis.ok:
        return f"REFUSED {analysis.input}  {analysis.code}: {analysis.message}"
    r = analysis.result
    again = "  (already analysed)" if analysis.duplicate else ""
    return (
        f"OK      {analysis.input}  {r['finding']}  P({r['finding_label']})={r['probability']:.3f}"
        f"  threshold {r['threshold']:.3f} ({r['operating_point']})  {r['model_name']} {r['model_version']}"
        f"  {r['backend']}/{r['precision']}  {r['latency_ms']:.1f} ms{again}"
    )


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
    version, the backend and precision, and the inference latency. An input that cannot be
    analysed prints `CODE: reason`; the exit status is then 1.
    """
    from edge.pipeline import Pipeline
    from edge.store import Store

    settings = obj.settings
    refused = False
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        pipeline = Pipeline(settings, store)
        try:
            for path in paths:
                for analysis in pipeline.analyse_file(path, model_name):
                    refused |= not analysis.ok
                    heatmap = _heatmap_copy(settings.data_dir, analysis, path, heatmap_dir)
                    if as_json:
                        click.echo(json.dumps(analysis_json(analysis, heatmap), sort_keys=True))
                    else:
                        click.echo(analysis_line(analysis) + (f"  heatmap {heatmap}" if heatmap else ""))
        finally:
            pipeline.close()
    sys.exit(EXIT_REFUSED if refused else 0)


def _heatmap_copy(data_dir: Path, analysis: Any, source: Path, target_dir: Path | None) -> Path | None:
    """The stored heatmap, copied into `target_dir` when asked (else the stored file itself)."""
    stored = analysis.result.get("heatmap_path") if analysis.ok else None
    if not stored:
        return None
    path = data_dir / stored
    if target_dir is None:
        return path
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / f"{source.stem}.{analysis.result['model_name']}.heatmap.png"
    shutil.copyfile(path, target)
    return target


# ---------------------------------------------------------------------- run


@cli.command()
@click.option("--dicom/--no-dicom", default=None, help="Run the DICOM listener (default: [dicom] enabled).")
@click.option("--port", type=click.IntRange(0, 65535), help="DICOM listener port (0: any free port).")
@click.option("--watch/--no-watch", default=None, help="Watch the drop folder (default: [watch] enabled).")
@click.option("--inbox", type=click.Path(file_okay=False, path_type=Path), help="Drop folder to watch.")
@pass_context
def run(obj: Context, dicom: bool | None, port: int | None, watch: bool | None, inbox: Path | None) -> None:
    """Run the agent: ingest sources and the worker, until SIGTERM or Ctrl-C."""
    from edge.agent import Agent

    settings = obj.settings
    dicom_update: dict[str, Any] = {} if dicom is None else {"enabled": dicom}
    if port is not None:
        dicom_update["port"] = port
    watch_update: dict[str, Any] = {} if watch is None else {"enabled": watch}
    if inbox is not None:
        watch_update["inbox"] = inbox
    settings = settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(update=dicom_update),
            "watch": settings.watch.model_copy(update=watch_update),
        }
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        edge_log.configure(logging.INFO)  # a service logs what it does
    sys.exit(Agent(settings).run())


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_context
def doctor(obj: Context, as_json: bool) -> None:
    """Check this device: packages, backends and GPU, models, engines, database, disk, clock,
    listener, agent. One pass/warn/fail line each; exit status 0, 1 or 2 for the worst."""
    from edge.doctor import run_checks, worst

    checks = run_checks(obj.settings)
    if as_json:
        click.echo(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        colours = {"pass": "green", "warn": "yellow", "fail": "red"}
        console = Console(highlight=False)
        for check in checks:
            console.print(
                f"[{colours[check.level]}]{check.level.upper():4}[/]  {check.name}: {check.message}"
            )
    sys.exit(worst(checks))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="The whole health snapshot as JSON.")
@pass_context
def status(obj: Context, as_json: bool) -> None:
    """Health snapshot: agent, queue depth, last result, errors, disk, versions."""
    from edge.health import snapshot, status_line

    snap = snapshot(obj.settings)
    if as_json:
        click.echo(json.dumps(snap, indent=2, default=str))
        return
    agent = snap["agent"]
    click.echo(f"agent: {'running, pid ' + str(agent['pid']) if agent['running'] else agent.get('reason')}")
    click.echo(status_line(snap))
    for error in snap["recent_errors"]:
        click.echo(f"recent: {error['state']} {error['error_code']}: {error['error_message']}")


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

    from edge.pipeline import Pipeline
    from edge.store import Store
    from edge.video.live import LiveAnalyzer, LiveScore
    from edge.video.source import FrameSource

    settings = obj.settings
    if profile:
        if profile not in settings.video.profiles:
            click.echo(f"CONFIG_INVALID: no [video.profiles.{profile}] in the settings", err=True)
            sys.exit(EXIT_USAGE)
        settings = settings.model_copy(
            update={"video": settings.video.model_copy(update={"profile": profile})}
        )
    chosen = settings.video.profiles.get(settings.video.profile or "")

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
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        pipeline = Pipeline(settings, store, actor="capture")
        try:
            served = pipeline.pool.get(model_name or settings.video.model)
            frames = FrameSource(
                source,
                realtime=realtime,
                width=chosen.width if chosen else None,
                height=chosen.height if chosen else None,
                fps=chosen.fps if chosen else None,
                fourcc=chosen.fourcc if chosen else None,
                reconnect_max_s=settings.video.reconnect_max_s,
                stall_s=settings.video.stall_s,
            )
            analyzer = LiveAnalyzer(settings, served, frames, on_score=show)
            if record:
                analyzer.start_clip()
            with frames:
                try:
                    analyzer.run(stop, max_seconds=seconds)
                except KeyboardInterrupt:
                    stop.set()
            click.echo(_live_summary(analyzer, frames), err=True)
            if record:
                click.echo(_store_live_clip(pipeline, analyzer, served))
        except EdgeError as error:
            click.echo(error.one_line(), err=True)
            sys.exit(EXIT_REFUSED)
        finally:
            pipeline.close()


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


def _store_live_clip(pipeline: Any, analyzer: Any, served: Any) -> str:
    from edge.video.analysis import store_clip

    summary = analyzer.stop_clip()
    study = StudyInfo(modality="US", description="live capture")
    result_id = store_clip(
        pipeline,
        summary,
        served,
        analyzer,
        source="capture",
        source_sha256=None,
        study=study,
        elapsed_s=summary.duration_s,
    )
    result = pipeline.store.result(result_id) or {}
    return (
        f"clip stored: {result.get('finding')} P({result.get('finding_label')})="
        f"{result.get('probability', 0):.3f} over {summary.frames_analysed} frames; result {result_id}"
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
    from edge.demo import run_demo

    sys.exit(run_demo(obj.settings, fresh=fresh, explicit_data_dir=obj.data_dir is not None))


# ---------------------------------------------------------------------- models


@cli.group()
def models() -> None:
    """Installed models: list, show, eval, build and verify TensorRT engines."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_list(obj: Context, as_json: bool) -> None:
    """The models installed on this device."""
    from edge.registry import Registry

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
    from edge.registry import Registry

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
    from edge.reports import print_model

    print_model(Console(), entry, checks)
    sys.exit(0 if all(v == "ok" for v in checks.values()) else EXIT_REFUSED)


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
@click.option("--json", "as_json", is_flag=True)
@pass_context
def models_eval(
    obj: Context,
    name: str,
    data_dir: Path,
    out_dir: Path | None,
    variant: str | None,
    operating_point: str | None,
    as_json: bool,
) -> None:
    """Measure a model on a labelled folder with the product's own decode, preprocess and backend.

    Prints AUC, accuracy, sensitivity, specificity and ECE with 95% bootstrap intervals, and
    writes ROC and reliability plots. Use it to validate a model on local images before use.
    """
    from edge.evaluate import evaluate
    from edge.reports import print_evaluation

    target = out_dir or Path(f"eval-{name}")
    try:
        result = evaluate(
            obj.settings, name, data_dir, target, variant=variant, operating_point=operating_point
        )
    except EdgeError as error:
        click.echo(error.one_line(), err=True)
        sys.exit(EXIT_REFUSED)
    if as_json:
        click.echo(json.dumps(result.__dict__, indent=2))
    else:
        print_evaluation(Console(), result)


def _engine_manager(obj: Context) -> Any:
    """The TensorRT engine manager, or a clear refusal where TensorRT cannot run."""
    from edge.runtime.engine_manager import EngineManager
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
    recorded and the next one tried. Engines are cached per model file, TensorRT version and
    GPU, with a persisted timing cache. Needs TensorRT (JetPack) and a GPU.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edge.registry import Registry
    from edge.runtime.engines import build_plan

    manager = _engine_manager(obj)
    registry = Registry(obj.settings.models.dir)
    failed = False
    for name in names or tuple(registry.names()):
        try:
            entry = registry.get(name)
            plan = build_plan(entry, "auto" if force else obj.settings.runtime.precision)
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
    from edge.registry import Registry
    from edge.runtime.engines import build_plan
    from edge.serving import tensor_names

    manager = _engine_manager(obj)
    try:
        entry = Registry(obj.settings.models.dir).get(name)
        plan = build_plan(entry, obj.settings.runtime.precision)
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
    from edge.bench import print_report, run_bench

    report = run_bench(obj.settings, model_name or obj.settings.models.default, runs)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        print_report(Console(), report)


def main() -> None:
    cli(prog_name="edge")
