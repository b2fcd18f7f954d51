"""`edge doctor`: pass / warn / fail lines a field engineer can read over the phone.

Each check returns one line; the exit status is the worst (0 pass, 1 warn, 2 fail).
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import platform
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from edge.clock import clock_plausible
from edge.config import Settings
from edge.errors import EdgeError
from edge.imaging.dicom_video import ffmpeg_available
from edge.inference.pool import parity_refusals
from edge.inference.registry import Registry
from edge.operations import file_modes, health, housekeeping, storage_encryption
from edge.store import Store, database

LEVELS = {"pass": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class Check:
    name: str
    level: str
    message: str


def _python(settings: Settings) -> list[Check]:
    ok = sys.version_info >= (3, 10)
    return [Check("python", "pass" if ok else "fail", f"{platform.python_version()} ({sys.executable})")]


def _packages(settings: Settings) -> list[Check]:
    required = ["numpy", "cv2", "onnxruntime", "pydicom", "pynetdicom", "sqlite_utils", "pydantic"]
    decoders = {
        "pylibjpeg": "JPEG 2000/HTJ2K",
        "openjpeg": "JPEG 2000",
        "rle": "RLE",
        "jpeg_ls": "JPEG-LS",
        "gdcm": "JPEG lossless, 12-bit JPEG",
        "PIL": "JPEG baseline",
    }
    out = []
    missing = [name for name in required if importlib.util.find_spec(name) is None]
    out.append(
        Check(
            "packages",
            "fail" if missing else "pass",
            f"missing: {', '.join(missing)}" if missing else "all runtime packages import",
        )
    )
    absent = [f"{what} ({name})" for name, what in decoders.items() if importlib.util.find_spec(name) is None]
    if not ffmpeg_available():
        absent.append("MPEG-2/H.264/HEVC cines (OpenCV without FFmpeg)")
    out.append(
        Check(
            "dicom decoders",
            "warn" if absent else "pass",
            f"cannot decode: {', '.join(absent)}" if absent else "every common transfer syntax",
        )
    )
    return out


def _backends(settings: Settings) -> list[Check]:
    from edge.runtime.tensorrt import TensorRTRunner

    out = []
    if importlib.util.find_spec("onnxruntime"):
        ort = importlib.import_module("onnxruntime")
        out.append(
            Check(
                "onnxruntime",
                "pass",
                f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}",
            )
        )
    else:
        out.append(Check("onnxruntime", "fail", "not installed: nothing can run a model"))
    wanted = settings.runtime.backend == "tensorrt"
    if not TensorRTRunner.is_available():
        level = "fail" if wanted else "pass"
        out.append(
            Check(
                "tensorrt",
                level,
                f"not available ({TensorRTRunner.unavailable_reason()}); ONNX Runtime serves",
            )
        )
        return out
    try:
        from edge.runtime import device_memory
        from edge.runtime.tensorrt import tensorrt_version

        memory = device_memory.open_device_memory(settings.runtime.device_memory)
        try:
            gpu = memory.gpu_info()
        finally:
            memory.close()
        out.append(
            Check(
                "tensorrt",
                "pass",
                f"{tensorrt_version()} via {memory.name}; GPU {gpu.name}, "
                f"compute {gpu.compute_capability}, {gpu.total_memory // 2**20} MB",
            )
        )
    except EdgeError as error:
        out.append(Check("tensorrt", "fail" if wanted else "warn", error.one_line()))
    return out


def _models(settings: Settings) -> list[Check]:
    registry = Registry(settings.models.dir)
    names = registry.names()
    if not names:
        return [Check("models", "fail", f"no model in {settings.models.dir}")]
    out = []
    refused_here = parity_refusals(settings.data_dir / "cache")
    for name in names:
        try:
            entry = registry.get(name)
            for variant in entry.manifest.variants:
                entry.variant_file(variant)
            gated = [
                v
                for v, spec in entry.manifest.variants.items()
                if spec.precision != "fp32" and not spec.servable
            ]
            message = f"{entry.manifest.version}, {len(entry.manifest.variants)} files verified (sha256)"
            if gated:
                message += f"; not servable (failed gate): {', '.join(gated)}"
            differs = [v["variant"] for v in refused_here if v.get("model") == name]
            if differs:
                message += f"; not served on this machine (VARIANT_PARITY_FAILED): {', '.join(differs)}"
            out.append(Check(f"model {name}", "pass", message))
        except EdgeError as error:
            out.append(Check(f"model {name}", "fail", error.one_line()))
    return out


def _engines(settings: Settings) -> list[Check]:
    from edge.inference.engine_cache import EngineCache

    records = EngineCache(settings.data_dir / "engines").records()
    if not records:
        return [Check("engines", "pass", "no TensorRT engine built on this device")]
    out = []
    for record in records:
        key = record.get("key", {})
        label = f"engine {key.get('model')} {key.get('precision')}"
        parity = record.get("parity")
        if record.get("build") != "ok":
            out.append(Check(label, "warn", f"build failed: {record.get('error')}"))
        elif parity is None:
            out.append(Check(label, "warn", "built, parity not verified yet (edge models verify)"))
        else:
            level = "pass" if parity.get("passed") else "fail"
            out.append(
                Check(
                    label,
                    level,
                    f"parity {'passed' if parity.get('passed') else 'FAILED'}: agreement "
                    f"{parity.get('agreement')}, max |logit diff| {parity.get('max_abs_logit_diff')}",
                )
            )
    return out


def _database(settings: Settings) -> list[Check]:
    """The store's own refusals (edge.store.database) and its one health check, thorough here."""
    if not settings.db_path.exists():
        missing = database.missing_problem(settings.db_path)
        if missing is not None:  # deleted, though images are stored beside it: as `Store` refuses it
            return [Check("database", "fail", database.corrupt(settings.db_path, missing).one_line())]
        return [Check("database", "warn", f"{settings.db_path} does not exist yet (created on first use)")]
    try:
        # As a reader: a newer schema is opened read-only and named below, not refused.
        with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms, reader=True) as store:
            found = store.schema
            problem = database.verify(store.db, thorough=True)
    except EdgeError as error:  # damaged, read-only, unopenable: the code says which
        return [Check("database", "fail", error.one_line())]
    if problem is not None:
        return [Check("database", "fail", database.corrupt(settings.db_path, problem).one_line())]
    if found.newer:  # written by newer software: it must not run here
        return [Check("database", "fail", database.schema_newer(settings.db_path, found).one_line())]
    upgraded = " (upgraded now)" if found.pending else ""
    return [Check("database", "pass", f"integrity ok, schema {found.version}/{found.latest}{upgraded}")]


def _file_modes(settings: Settings) -> list[Check]:
    """Tightens as it checks: a world-readable edge.db or hub.db is fixed, and said so."""
    done = file_modes.tighten(file_modes.data_roots(settings))
    if done.refused:
        return [
            Check(
                "file modes",
                "fail",
                f"{len(done.refused)} data file(s) readable by others and not ours to change, e.g."
                f" {done.refused[0]}: run `edge doctor` as their owner (the service user)",
            )
        ]
    if done.changed:
        return [
            Check(
                "file modes",
                "warn",
                f"{len(done.changed)} data file(s) were readable by other users, now owner-only,"
                f" e.g. {done.changed[0].name}",
            )
        ]
    return [Check("file modes", "pass", "data files are readable by their owner only")]


def _disk(settings: Settings) -> list[Check]:
    state = housekeeping.disk_state(settings)
    level = "fail" if not state.accepting else "warn" if state.warning else "pass"
    reserve = housekeeping.reserve_path(settings)
    message = state.reason or f"{state.free_mb} MB free of {state.total_mb} MB"
    if settings.store.reserve_mb and not reserve.exists():
        message += "; emergency reserve not in place"
        level = max(level, "warn", key=LEVELS.__getitem__)
    checks = [Check("disk", level, message)]
    orphaned = housekeeping.orphaned_images(settings.data_dir)
    if orphaned:
        checks.append(
            Check(
                "orphaned images",
                "warn",
                f"{orphaned} stored image(s) no record points at are kept in"
                f" {settings.data_dir / housekeeping.ORPHANS} (a write a crash interrupted, or a"
                " database rolled back): send again any whose result is missing (`edge infer FILE`),"
                " or restore the backup that has them; they are deleted after 30 days",
            )
        )
    return checks


def _encryption(settings: Settings) -> list[Check]:
    """Patient data at rest: on encrypted storage or not (storage_encryption.py)."""
    return [
        Check("encryption", level, message) for level, message in storage_encryption.doctor_lines(settings)
    ]


def _clock(settings: Settings) -> list[Check]:
    """The clock: a plausible year, as the hub saw it at the last sync, and not behind what the
    store already holds. Retention, backfill windows, leases and the worklist's order read it."""
    from edge.sync.credential import Credential
    from edge.sync.protocol import MAX_SKEW_S

    now = datetime.now(timezone.utc)
    if not clock_plausible():
        return [
            Check(
                "clock",
                "fail",
                f"system time {now.isoformat(timespec='seconds')} is implausible (no RTC battery?):"
                " set it (timedatectl, NTP); no image is deleted by retention until it is right",
            )
        ]
    credential = Credential.load(settings)
    offset = credential.clock_offset if credential is not None else 0.0
    if abs(offset) > MAX_SKEW_S:
        way = "behind" if offset > 0 else "ahead of"
        return [
            Check(
                "clock",
                "warn",
                f"the clock was {_duration(abs(offset))} {way} the hub's at the last sync: set it"
                " (timedatectl, NTP); sync corrects for it, retention waits for it",
            )
        ]
    if settings.db_path.exists():
        try:
            with Store(settings.data_dir, reader=True) as store:
                row = store.db.execute("SELECT max(at) FROM audit").fetchone()[0]
                # A sync went through today: the hub took the clock as it is now, so records
                # ahead of it were stamped by a clock that was ahead (the warning stayed for years).
                confirmed = housekeeping.clock_unconfirmed(store, offset) is None
        except EdgeError:  # the database check names it
            row, confirmed = None, False
        if row and row > now.isoformat() and not confirmed:
            # Without a hub nothing confirms the time: the warning ends when the clock passes it.
            then = (
                "a sync that goes through confirms the time now"
                if credential is not None
                else f"if {now.isoformat(timespec='seconds')} is the time, this ends when it passes {row}"
            )
            return [
                Check(
                    "clock",
                    "warn",
                    f"the clock is behind the newest record ({row}): time went back, or the clock"
                    f" was ahead when it was made; {then}",
                )
            ]
    return [Check("clock", "pass", now.isoformat(timespec="seconds"))]


def _retention(settings: Settings) -> list[Check]:
    """Image files past `retention_days` kept because the clock cannot be trusted to tell their
    age: a device whose hub stays out of reach keeps every image, and said so only in its log."""
    if not settings.db_path.exists():
        return []
    days = settings.store.retention_days
    try:
        with Store(settings.data_dir, reader=True) as store:
            waiting = housekeeping.retention_waiting(store, days, **housekeeping.retention_args(settings))
    except EdgeError:  # the database check names it
        return []
    if waiting is None:
        message = f"image files past {days:g} days go once the hub has their results"
        return [Check("retention", "pass", message)]
    why, held = waiting
    return [
        Check(
            "retention",
            "warn",
            f"{held} image file(s) past {days:g} days are kept: retention waits, since {why};"
            " a sync that goes through with the clock right lets it run (the disk fills meanwhile)",
        )
    ]


def _duration(seconds: float) -> str:
    """'7 min', '5 h', '3 days', '56 years': a clock's error in one figure."""
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds / 60:.0f} min"


def _listener(settings: Settings) -> list[Check]:
    config = settings.dicom
    agent = health.read_agent(settings)
    problem = (agent.get("problems") or {}).get("dicom") if agent.get("running") else None
    if problem:  # the agent runs (`edge run --dicom` too), but its listener could not open the port
        return [Check("dicom listener", "fail", problem)]
    if not config.enabled:
        return [Check("dicom listener", "pass", "disabled")]
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.bind, config.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if agent.get("running"):
                    return [
                        Check("dicom listener", "pass", f"{config.ae_title} listening on port {config.port}")
                    ]
                return [Check("dicom listener", "fail", f"port {config.port} is taken by another program")]
            return [Check("dicom listener", "fail", f"cannot bind port {config.port}: {exc.strerror}")]
    if agent.get("running"):
        return [Check("dicom listener", "warn", f"the agent runs but nothing listens on port {config.port}")]
    return [Check("dicom listener", "warn", f"port {config.port} is free: the agent is not running")]


def _dicom_callers(settings: Settings) -> list[Check]:
    """Who the listener refused for their calling AE title, and the line that would allow them
    (a fresh install refuses everyone until the modalities are listed); the TUI shows the same."""
    if not settings.dicom.enabled:
        return []
    from edge.ingest.dicom_access import callers_verdict

    level, message = callers_verdict(settings)
    return [Check("dicom callers", level, message)]


def _agent(settings: Settings) -> list[Check]:
    agent = health.read_agent(settings)
    if agent.get("starting"):
        started = f"pid {agent['pid']}, started {agent['started_at']}"
        return [Check("agent", "pass", f"{started}, opening its models")]
    if agent.get("running"):
        problems = [Check("agent", "warn", problem) for problem in (agent.get("problems") or {}).values()]
        return problems or [
            Check(
                "agent",
                "pass",
                f"pid {agent['pid']}, up since {agent['started_at']}, "
                f"worker heartbeat {agent.get('worker_heartbeat_age_s')} s ago",
            )
        ]
    return [Check("agent", "warn", agent.get("reason", "not running"))]


def _hub(settings: Settings) -> list[Check]:
    from edge.sync import sync_agent
    from edge.sync.runner import NEEDS_ACTION, refused_updates, sync_status

    try:
        with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms, reader=True) as store:
            status = sync_status(settings, store)
    except EdgeError as error:  # the database check says what is wrong and what to do
        return [Check("hub", "fail", f"the sync state cannot be read ({error.code.value})")]
    waiting = f"{status['pending']['results']} result(s), {status['pending']['files']} file(s) waiting"
    if status["hub"] is None:
        return [
            Check(
                "hub",
                "pass",
                "no hub enrolled: results stay on this device, and retention never deletes analysed"
                " images (`edge sync enroll URL CODE` to connect one)",
            )
        ]
    checks = []
    running = sync_agent(settings)
    if running is None:
        checks.append(Check("sync agent", "warn", "not running: nothing is sent (systemctl start edge-sync)"))
    else:
        since_start = f"pid {running.get('pid')}, since {running.get('started')}"
        checks.append(Check("sync agent", "pass", since_start))
    since = f"last success {status['last_success'] or 'never'}"
    if status["state"] in NEEDS_ACTION:  # failed, revoked, upgrade required
        checks.append(Check("hub", "fail", f"{status['hub']}: {status['last_error']}; {waiting}"))
    elif status["state"] == "offline":
        checks.append(
            Check("hub", "warn", f"{status['hub']} unreachable ({since}); {waiting}; it retries by itself")
        )
    else:
        checks.append(Check("hub", "pass", f"{status['hub']}: {status['state']}, {since}; {waiting}"))
    checks += [
        Check("model update" if line.startswith("model release") else "site profile", "warn", line)
        for line in refused_updates(status)
    ]
    return checks


def _pacs(settings: Settings) -> list[Check]:
    """The PACS results go back to: answers C-ECHO or not, what waits, what it refused."""
    from edge.interop import cstore
    from edge.interop.pacs_export import pacs_status

    config = settings.pacs
    if not config.enabled:
        return [Check("pacs", "pass", "disabled")]
    with Store(settings.data_dir, busy_timeout_ms=settings.store.busy_timeout_ms) as store:
        status = pacs_status(settings, store)
    counts = status["counts"]
    waiting = f"{counts['pending']} object(s) waiting, {counts['failed']} refused"
    dead = cstore.echo(config.model_copy(update={"timeout_s": min(config.timeout_s, 5.0)}))
    if dead is not None:
        return [Check("pacs", "fail", f"{dead}; {waiting}; results wait on this device until it answers")]
    if counts["failed"] or status["exporter"] is None:
        running = "" if status["exporter"] else "; exporter not running (systemctl start edge-pacs)"
        return [Check("pacs", "warn", f"{cstore.destination(config)} answers C-ECHO; {waiting}{running}")]
    return [Check("pacs", "pass", f"{cstore.destination(config)} answers C-ECHO; {waiting}")]


CHECKS: list[Callable[[Settings], list[Check]]] = [
    _python,
    _packages,
    _backends,
    _models,
    _engines,
    _database,
    _file_modes,
    _disk,
    _encryption,
    _clock,
    _retention,
    _listener,
    _dicom_callers,
    _agent,
    _hub,
    _pacs,
]


def run_checks(settings: Settings) -> list[Check]:
    out = []
    for check in CHECKS:
        try:
            out.extend(check(settings))
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
            out.append(
                Check(check.__name__.strip("_"), "fail", f"check crashed: {type(exc).__name__}: {exc}")
            )
    return out


def worst(checks: list[Check]) -> int:
    return max((LEVELS[c.level] for c in checks), default=0)
