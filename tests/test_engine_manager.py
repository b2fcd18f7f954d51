"""The engine manager's self-healing, with the doubles of tests/engine_doubles.py: the version
gate before any build, recorded failures retried when their inputs change or with --force,
out-of-memory retried later, corrupt engines moved aside and rebuilt once, and a cache key that
follows the machine (workspace, CUDA, driver, L4T, module)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.inference import engine_manager
from edge.inference.engine_cache import TRANSIENT_ATTEMPTS, TRANSIENT_RETRY_S, Attempt, BuildHost
from edge.inference.engine_manager import EngineManager
from edge.inference.pool import tensor_names
from edge.inference.registry import ModelEntry, Registry
from edge.runtime.tensorrt import TensorRTRunner
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.engine_doubles import ORIN_NANO, Doubles, manager

INT8 = Attempt("int8", "int8-qdq")


@pytest.fixture
def cxr_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", models={"dir": MODELS})


@pytest.fixture
def entry() -> ModelEntry:
    return Registry(MODELS).get(DEFAULT_MODEL)


def serve(the_manager: EngineManager, entry: ModelEntry) -> Attempt:
    runner, attempt = the_manager.serve(entry, tensor_names(entry))
    runner.close()
    return attempt


def int8_record(the_manager: EngineManager, entry: ModelEntry) -> dict[str, Any]:
    return the_manager.cache.record(the_manager.key(entry, INT8)) or {}


class Clock:
    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------ the version gate


@pytest.mark.parametrize("tensorrt", ["8.5.2.2", "10.1.0"])
def test_an_unsupported_tensorrt_is_refused_by_name_before_any_build(
    cxr_settings: Settings, entry: ModelEntry, tensorrt: str
) -> None:
    doubles = Doubles()
    the_manager = manager(cxr_settings, doubles, host=replace(ORIN_NANO, tensorrt=tensorrt))
    for attempt_it in (
        lambda: the_manager.serve(entry, tensor_names(entry)),
        lambda: the_manager.ensure(entry, INT8),
    ):
        with pytest.raises(EdgeError) as caught:
            attempt_it()
        assert caught.value.code is Code.BACKEND_UNAVAILABLE
        assert f"TensorRT {tensorrt}" in caught.value.message
        assert "10.3" in caught.value.message
    assert doubles.builds == []
    assert the_manager.describe() == []  # nothing recorded against the engines either


def test_jetpack_6_0s_tensorrt_builds_int8_first(cxr_settings: Settings, entry: ModelEntry) -> None:
    doubles = Doubles()
    assert serve(manager(cxr_settings, doubles, host=replace(ORIN_NANO, tensorrt="8.6.2.3")), entry) == INT8
    assert doubles.builds == ["int8"]


def test_tensorrt_11_builds_fp16_only_from_an_fp16_model(cxr_settings: Settings, entry: ModelEntry) -> None:
    eleven = manager(cxr_settings, Doubles(), host=replace(ORIN_NANO, tensorrt="11.4.0.106"))
    assert [a.precision for a in eleven.plan(entry, "auto")] == ["int8", "fp32"]
    with pytest.raises(EdgeError) as caught:
        eleven.plan(entry, "fp16")
    assert caught.value.code is Code.MODEL_VARIANT_UNAVAILABLE
    assert "FP16 ONNX" in caught.value.message
    ten = manager(cxr_settings, Doubles())
    assert [a.precision for a in ten.plan(entry, "auto")] == ["int8", "fp16", "fp32"]


# ------------------------------------------------------------------ recorded failures


def test_a_failure_records_its_inputs(cxr_settings: Settings, entry: ModelEntry) -> None:
    the_manager = manager(cxr_settings, Doubles(fail={"int8"}))
    assert serve(the_manager, entry).precision == "fp16"
    record = int8_record(the_manager, entry)
    assert (record["build"], record["transient"]) == ("failed", False)
    inputs = record["inputs"]
    assert inputs["tensorrt"] == "10.3.0"
    assert inputs["workspace_mb"] == cxr_settings.runtime.workspace_mb
    assert inputs["onnx_sha256"] == entry.manifest.variants["int8-qdq"].sha256
    assert inputs["precision"] == "int8"
    assert (inputs["cuda_runtime"], inputs["cuda_driver"], inputs["l4t"]) == ("12.6", "12.6", "R36.4.3")
    assert inputs["software"] == engine_manager.__version__


def test_a_failure_is_retried_when_this_software_changes(
    cxr_settings: Settings,
    entry: ModelEntry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    doubles = Doubles(fail={"int8"})
    serve(manager(cxr_settings, doubles), entry)
    serve(manager(cxr_settings, doubles), entry)
    assert doubles.builds == ["int8", "fp16"]  # not rebuilt at every start
    doubles.fail = set()
    monkeypatch.setattr(engine_manager, "__version__", "0.2.0")  # the fix shipped
    with caplog.at_level(logging.WARNING):
        assert serve(manager(cxr_settings, doubles), entry) == INT8
    assert doubles.builds == ["int8", "fp16", "int8"]
    assert "software '0.1.0' -> '0.2.0'" in caplog.text


def test_a_failure_recorded_without_its_inputs_is_retried(cxr_settings: Settings, entry: ModelEntry) -> None:
    doubles = Doubles()
    the_manager = manager(cxr_settings, doubles)
    key = the_manager.key(entry, INT8)
    the_manager.cache.write_record(key, {"build": "failed", "error": "an older release", "at": "2025"})
    assert serve(the_manager, entry) == INT8
    assert doubles.builds == ["int8"]


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("workspace_mb", 1024),
        ("cuda_runtime", "12.8"),
        ("cuda_driver", "13.0"),
        ("l4t", "R36.4.4"),
        ("module", "NVIDIA Jetson AGX Orin Developer Kit"),
        ("tensorrt", "10.3.1"),
    ],
)
def test_the_engine_follows_the_machine(
    cxr_settings: Settings, entry: ModelEntry, change: str, value: Any
) -> None:
    doubles = Doubles(fail={"int8"})
    serve(manager(cxr_settings, doubles), entry)
    settings, host = cxr_settings, ORIN_NANO
    if change == "workspace_mb":
        settings = cxr_settings.model_copy(
            update={"runtime": cxr_settings.runtime.model_copy(update={"workspace_mb": value})}
        )
    else:
        host = replace(ORIN_NANO, **{change: value})
    doubles.fail = set()
    assert serve(manager(settings, doubles, host=host), entry) == INT8  # a new key: built, not refused
    assert doubles.builds == ["int8", "fp16", "int8"]
    if change == "workspace_mb":
        assert doubles.workspaces[-1] == 1024


def test_force_on_the_command_line_rebuilds_a_recorded_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doubles = Doubles(fail={"int8"})

    def with_doubles(settings: Settings) -> EngineManager:
        return manager(settings, doubles)

    monkeypatch.setattr(TensorRTRunner, "is_available", classmethod(lambda cls: True))
    monkeypatch.setattr(engine_manager, "EngineManager", with_doubles)
    base = ["--data-dir", str(tmp_path / "data"), "models", "build", DEFAULT_MODEL]
    first = CliRunner().invoke(cli, base)
    assert first.exit_code == 1  # int8 failed (fp16, fp32 built)
    assert "int8: ENGINE_BUILD_FAILED" in first.stdout
    again = CliRunner().invoke(cli, base)
    assert "--force" in again.stdout
    assert doubles.builds.count("int8") == 1
    doubles.fail = set()
    forced = CliRunner().invoke(cli, [*base, "--force"])
    assert forced.exit_code == 0, forced.stdout
    assert doubles.builds.count("int8") == 2


# ------------------------------------------------------------------ out of memory


def test_out_of_memory_is_retried_later_not_recorded_forever(
    cxr_settings: Settings, entry: ModelEntry
) -> None:
    clock = Clock()
    doubles = Doubles(
        fail={"int8"}, failure="Requested amount of GPU memory (536870912 bytes) could not be allocated"
    )
    assert serve(manager(cxr_settings, doubles, clock=clock), entry).precision == "fp16"
    record = int8_record(manager(cxr_settings, doubles, clock=clock), entry)
    assert (record["transient"], record["attempts"]) == (True, 1)
    clock.now += 60
    serve(manager(cxr_settings, doubles, clock=clock), entry)
    assert doubles.builds.count("int8") == 1  # not yet: memory may still be taken
    clock.now += TRANSIENT_RETRY_S
    doubles.fail = set()
    assert serve(manager(cxr_settings, doubles, clock=clock), entry) == INT8
    assert doubles.builds.count("int8") == 2


def test_a_clock_stepped_back_does_not_postpone_the_retry(cxr_settings: Settings, entry: ModelEntry) -> None:
    clock = Clock()
    doubles = Doubles(fail={"int8"}, failure="MemoryError: std::bad_alloc")
    serve(manager(cxr_settings, doubles, clock=clock), entry)
    clock.now -= 86_400  # an RTC-less box booted before NTP answered
    doubles.fail = set()
    assert serve(manager(cxr_settings, doubles, clock=clock), entry) == INT8


def test_out_of_memory_every_time_is_recorded_after_a_few_tries(
    cxr_settings: Settings, entry: ModelEntry
) -> None:
    clock = Clock()
    doubles = Doubles(fail={"int8"}, failure="Error Code 1: Cuda Runtime (out of memory)")
    for _ in range(TRANSIENT_ATTEMPTS):
        serve(manager(cxr_settings, doubles, clock=clock), entry)
        clock.now += TRANSIENT_RETRY_S + 1
    assert doubles.builds.count("int8") == TRANSIENT_ATTEMPTS
    serve(manager(cxr_settings, doubles, clock=clock), entry)
    assert doubles.builds.count("int8") == TRANSIENT_ATTEMPTS
    with pytest.raises(EdgeError, match="workspace_mb"):
        manager(cxr_settings, doubles, clock=clock).ensure(entry, INT8)


# ------------------------------------------------------------------ engines that do not load


def test_a_corrupt_cached_engine_is_moved_aside_and_rebuilt(
    cxr_settings: Settings, entry: ModelEntry, caplog: pytest.LogCaptureFixture
) -> None:
    doubles = Doubles()
    first = manager(cxr_settings, doubles)
    serve(first, entry)
    engine = first.cache.engine_path(first.key(entry, INT8))
    engine.write_bytes(engine.read_bytes()[:3])  # truncated by a power cut
    with caplog.at_level(logging.ERROR):
        assert serve(manager(cxr_settings, doubles), entry) == INT8
    assert doubles.builds == ["int8", "int8"]
    assert engine.with_name(engine.name + ".bad").read_bytes() == b"int"
    assert "moved aside" in caplog.text
    record = int8_record(first, entry)
    assert record["build"] == "ok"
    assert record["parity"]["passed"]  # the rebuilt engine was judged again before serving


def test_an_engine_that_never_loads_is_rebuilt_once_then_recorded(
    cxr_settings: Settings, entry: ModelEntry
) -> None:
    doubles = Doubles(corrupt={"int8"})
    the_manager = manager(cxr_settings, doubles)
    assert serve(the_manager, entry).precision == "fp16"
    assert doubles.builds == ["int8", "int8", "fp16"]  # built, rebuilt once, then the next precision
    record = int8_record(the_manager, entry)
    assert record["build"] == "failed"
    assert "does not load either" in record["error"]
    serve(manager(cxr_settings, doubles), entry)
    assert doubles.builds == ["int8", "int8", "fp16"]  # not rebuilt at every start


def test_verify_heals_a_corrupt_engine_too(cxr_settings: Settings, entry: ModelEntry) -> None:
    doubles = Doubles()
    the_manager = manager(cxr_settings, doubles)
    engine = the_manager.ensure(entry, INT8)
    engine.write_bytes(b"")
    report = the_manager.verify(entry, INT8, engine, tensor_names(entry))
    assert report.passed
    assert doubles.builds == ["int8", "int8"]
    assert json.loads(the_manager.cache.record_path(the_manager.key(entry, INT8)).read_text())["parity"][
        "passed"
    ]


def test_the_build_host_is_asked_once(cxr_settings: Settings, entry: ModelEntry) -> None:
    asked: list[BuildHost] = []

    def identity() -> BuildHost:
        asked.append(ORIN_NANO)
        return ORIN_NANO

    doubles = Doubles()
    the_manager = EngineManager(
        cxr_settings, builder=doubles.builder, runner_factory=doubles.runner, identity=identity
    )
    serve(the_manager, entry)
    assert len(asked) == 1


def test_an_int8_engine_is_judged_for_applicability_as_it_computes(
    cxr_settings: Settings, entry: ModelEntry
) -> None:
    """The engine's parity run also measures its applicability distances against FP32's on ONNX
    Runtime (`scope_ratio`, kept with the verdict); the pool then judges the engine by FP32's
    limit scaled by it where that is stricter than the manifest's INT8 limit (scope.localised),
    never looser. A verdict recorded before the ratio existed is measured again."""
    from edge.inference.pool import ModelPool

    the_manager = manager(cxr_settings, Doubles())
    assert serve(the_manager, entry) == INT8
    verdict = int8_record(the_manager, entry)["parity"]
    ratio = verdict["scope_ratio"]
    assert 0.5 < ratio < 2.0
    pool = ModelPool(Registry(MODELS), cxr_settings, cxr_settings.data_dir / "cache")
    pool.engine_manager = the_manager
    served = pool._load_tensorrt(entry)
    try:
        fp32, manifest = entry.scope_check("fp32"), entry.scope_check("int8-qdq")
        assert fp32 is not None
        assert manifest is not None
        assert served.precision == "int8"
        assert served.scope_check is not None
        assert served.scope_check.threshold == pytest.approx(min(manifest.threshold, fp32.threshold * ratio))
    finally:
        served.close()
    key = the_manager.key(entry, INT8)
    record = the_manager.cache.record(key) or {}
    old = {k: v for k, v in record["parity"].items() if k != "scope_ratio"}
    the_manager.cache.write_record(key, {**{k: v for k, v in record.items() if k != "key"}, "parity": old})
    serve(the_manager, entry)
    assert int8_record(the_manager, entry)["parity"]["scope_ratio"] == pytest.approx(ratio)
