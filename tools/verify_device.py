"""Verify a device end to end in one command, and write a report a field engineer sends back.

    python -m tools.verify_device [--models DIR] [--out report.json] [--quick] [--budget-s S] [--work DIR]

Sections (each passed, failed with a code, or skipped with the reason; docs/verify-device.md):
versions and GPU facts; the TensorRT version's support; device memory round trips; per model,
ONNX Runtime on the CPU over its samples (always: every report has a baseline) and on CUDA where
onnxruntime has it; then, where TensorRT and a GPU are present, per model: parse, build INT8 /
FP16 / FP32, rebuild with the timing cache, parity vs ONNX Runtime, batches, threads, warm
latency, open/close memory drift, and a corrupted cached engine recovered.

Engines are built in a throw-away folder (`--work` keeps it), never in the device's own cache:
the last section cuts an engine in half on purpose. Exit code: 0 nothing failed, 1 a section
failed, 2 the tool could not run, 130 interrupted (the report holds what was measured).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.text import Text

from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.inference.registry import ModelEntry, Registry
from tools import verify_sections as cpu
from tools.verify_hooks import TensorRTHooks
from tools.verify_report import (
    EXIT_INTERRUPTED,
    EXIT_UNUSABLE,
    FAILED,
    PASSED,
    CheckFailed,
    Report,
    Skip,
    section_line,
)
from tools.verify_tensorrt import ModelChecks

# Ten minutes is the promise on an Orin; past this no new section starts (a build under way
# finishes), and what did not fit is listed as skipped.
DEFAULT_BUDGET_S = 540.0
TENSORRT_SECTIONS = (
    ("tensorrt.parse", "parse"),
    ("tensorrt.build", "build"),
    ("tensorrt.timing_cache", "timing_cache"),
    ("tensorrt.parity", "parity"),
    ("tensorrt.batches", "batches"),
    ("tensorrt.threads", "threads"),
    ("tensorrt.latency", "latency"),
    ("tensorrt.open_close", "open_close"),
    ("tensorrt.corrupt_engine", "corrupt_engine"),
)


def default_report_name() -> str:
    return f"verify-device-{socket.gethostname()}-{time.strftime('%Y%m%dT%H%M%S')}.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.verify_device",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", type=Path, help="models folder (default: the configured one)")
    parser.add_argument("--out", type=Path, help="report file (default: verify-device-HOST-TIME.json)")
    parser.add_argument("--quick", action="store_true", help="few repetitions (CI): seconds, not minutes")
    parser.add_argument(
        "--budget-s", type=float, default=DEFAULT_BUDGET_S, help="start no section after this many seconds"
    )
    parser.add_argument("--work", type=Path, help="keep engines and records here (default: a temp folder)")
    return parser.parse_args(argv)


@contextlib.contextmanager
def work_folder(chosen: Path | None) -> Iterator[Path]:
    if chosen is not None:
        chosen.mkdir(parents=True, exist_ok=True)
        yield chosen
        return
    folder = Path(tempfile.mkdtemp(prefix="verify-device-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run(
    args: argparse.Namespace,
    *,
    hooks: TensorRTHooks | None = None,
    machine: cpu.Machine | None = None,
    console: Console | None = None,
    argv: list[str] | None = None,
) -> int:
    """Every section, in order; the report is on disk after each. Returns the exit code.
    `hooks` and `machine` let the tests run the TensorRT sections against doubles."""
    console = console or Console(stderr=True, highlight=False)
    out = args.out or Path(default_report_name())
    try:
        base = load_settings()
        models_dir = args.models or base.models.dir
    except EdgeError as error:
        console.print(error.one_line(), markup=False)
        return EXIT_UNUSABLE
    registry = Registry(models_dir)
    if not registry.names():
        console.print(f"no models installed in {models_dir}: nothing to verify (see --models)", markup=False)
        return EXIT_UNUSABLE
    entries, broken = _entries(registry)
    reps = cpu.Reps.quick() if args.quick else cpu.Reps()
    report = Report(
        out,
        argv=list(sys.argv[1:] if argv is None else argv),
        quick=args.quick,
        budget_s=args.budget_s,
        on_section=lambda s: console.print(_styled(s)),
    )
    console.print(f"verifying this device; the report goes to {out}", markup=False)
    with work_folder(args.work) as work:
        settings = base.model_copy(
            update={"data_dir": work, "models": base.models.model_copy(update={"dir": models_dir})}
        )
        try:
            _run_sections(report, settings, entries, broken, reps, hooks, machine, console)
        except KeyboardInterrupt:
            report.interrupted = True
            report.write()
            console.print("interrupted: the report holds what was measured until now")
            return EXIT_INTERRUPTED
    _summary(report, console)
    return report.exit_code()


def _entries(registry: Registry) -> tuple[list[ModelEntry], dict[str, EdgeError]]:
    """The models that load, and why each of the others does not (the models section fails)."""
    entries, broken = [], {}
    for name in registry.names():
        try:
            entries.append(registry.get(name))
        except EdgeError as error:
            broken[name] = error
    return entries, broken


def _run_sections(
    report: Report,
    settings: Settings,
    entries: list[ModelEntry],
    broken: dict[str, EdgeError],
    reps: cpu.Reps,
    hooks: TensorRTHooks | None,
    machine: cpu.Machine | None,
    console: Console,
) -> None:
    machine = machine or cpu.probe(settings)
    report.run("versions", None, lambda: cpu.versions(machine))
    report.run("models", None, lambda: _models(entries, broken))
    report.run("tensorrt.version", None, lambda: cpu.tensorrt_support(machine))
    report.run("device_memory", None, lambda: cpu.device_memory_round_trips(machine, settings, reps))
    baselines: dict[str, cpu.Baseline] = {}
    for entry in entries:
        report.run(
            "onnxruntime.cpu", entry.name, lambda e=entry: cpu.onnxruntime_cpu(e, settings, reps, baselines)
        )
        report.run(
            "onnxruntime.cuda", entry.name, lambda e=entry: cpu.onnxruntime_cuda(e, settings, reps, baselines)
        )
    for entry in entries:
        checks = ModelChecks(
            entry, settings, hooks or TensorRTHooks(), reps, console, baselines.get(entry.name)
        )
        for section, method in TENSORRT_SECTIONS:
            report.run(section, entry.name, _tensorrt_check(machine, getattr(checks, method)))


def _tensorrt_check(machine: cpu.Machine, check: Any) -> Any:
    def guarded() -> dict[str, Any]:
        if machine.tensorrt_problem:
            # Named in full once, by tensorrt.version (a failure on a Jetson); here pointed to.
            raise Skip("TensorRT cannot run here (see tensorrt.version)")
        return check()

    return guarded


def _models(entries: list[ModelEntry], broken: dict[str, EdgeError]) -> dict[str, Any]:
    models = {
        e.name: {
            "version": e.manifest.version,
            "variants": {n: v.sha256[:16] for n, v in e.manifest.variants.items()},
            "samples": len(e.samples),
        }
        for e in entries
    }
    if broken:
        lines = {name: error.one_line() for name, error in broken.items()}
        # The section carries a broken model's own code (a checksum, a missing file, a bad
        # manifest...), one that needs repair before one that only needs newer software; every
        # model's line is in the message and the data.
        codes = [error.code for error in broken.values()]
        code = next((c for c in codes if c != Code.MODEL_NEEDS_NEWER_SOFTWARE), codes[0]).value
        raise CheckFailed(code, "; ".join(lines.values())[:500], {"models": models, "broken": lines})
    return {"models": models, "headline": ", ".join(f"{n} {m['version']}" for n, m in models.items())}


def _styled(section: dict[str, Any]) -> Text:
    # Text, not markup: messages hold brackets (lists, shapes) that markup would swallow.
    return Text(
        section_line(section), style={PASSED: "green", FAILED: "bold red"}.get(section["status"], "yellow")
    )


def _summary(report: Report, console: Console) -> None:
    counts = report.counts()
    console.print(
        f"\n{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"in {report.elapsed():.0f} s; report: {report.path}"
    )
    for section in report.sections:
        if section["status"] == FAILED:
            console.print(_styled(section))


def main(argv: list[str] | None = None) -> None:
    console = Console(stderr=True, highlight=False)
    # The product's warnings and errors (a build starting, an engine refused) through the same
    # console as the progress bars, so neither garbles the other.
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", handlers=[handler])
    sys.exit(run(parse_args(argv), console=console, argv=argv))


if __name__ == "__main__":
    main()
