"""TensorRT: everything that needs no GPU runs everywhere (keys, plans, binding, fallback and
parity bookkeeping, the CLI without TensorRT); the rest is marked `tensorrt` and runs where
`tensorrt` imports and a GPU answers (a Jetson, via `pytest -m tensorrt`)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from edge import runtime
from edge.cli import cli
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.inference.engine_cache import Attempt, EngineKey, build_plan
from edge.inference.engine_manager import EngineManager
from edge.inference.pool import ModelPool, tensor_names
from edge.inference.registry import Registry
from edge.runtime.base import TensorNames, TensorSpec, bind, concrete_shape
from edge.runtime.device_memory import open_device_memory
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from tests.conftest import DEFAULT_MODEL, MODELS
from tests.engine_doubles import ORIN_NANO, Doubles, manager
from tests.tinymodel import make_model_dir

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def key(**changes: Any) -> EngineKey:
    base = EngineKey(
        model="m",
        version="1.0.0",
        onnx_sha256="a" * 64,
        precision="int8",
        tensorrt="10.3.0",
        gpu="Orin (nvgpu)",
        compute_capability="8.7",
        max_batch=8,
        workspace_mb=512,
        cuda_runtime="12.6",
        cuda_driver="12.6",
        l4t="R36.4.3",
        module="NVIDIA Jetson Orin Nano Developer Kit",
    )
    return replace(base, **changes)


def test_engine_key_changes_with_everything_that_invalidates_an_engine() -> None:
    reference = key()
    assert reference.stem == key().stem  # stable
    assert reference.stem.startswith("m-int8-trt10.3.0-sm87-orin-nvgpu-")
    for field, value in [
        ("onnx_sha256", "b" * 64),
        ("precision", "fp16"),
        ("tensorrt", "10.4.0"),
        ("gpu", "NVIDIA H200"),
        ("compute_capability", "9.0"),
        ("max_batch", 4),
        ("version", "1.0.1"),
        ("workspace_mb", 1024),
        ("cuda_runtime", "12.8"),
        ("cuda_driver", "13.0"),
        ("l4t", "R36.4.4"),
        ("module", "NVIDIA Jetson AGX Orin Developer Kit"),
    ]:
        assert key(**{field: value}).stem != reference.stem, field


def test_build_plan_orders_precisions_and_skips_failed_gates() -> None:
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    plan = build_plan(entry, "auto")
    assert plan == [Attempt("int8", "int8-qdq"), Attempt("fp16", "fp32"), Attempt("fp32", "fp32")]
    assert build_plan(entry, "fp16") == [Attempt("fp16", "fp32")]
    assert build_plan(entry, "int8") == [Attempt("int8", "int8-qdq")]  # QOperator is not for TensorRT


def test_build_plan_without_a_passed_qdq_variant(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path)
    text = (folder / "model.toml").read_text().replace("passed = true", "passed = false")
    (folder / "model.toml").write_text(text)
    entry = Registry(tmp_path).get("tiny")
    assert [a.precision for a in build_plan(entry, "auto")] == ["fp16", "fp32"]
    with pytest.raises(EdgeError) as caught:
        build_plan(entry, "int8")
    assert caught.value.code is Code.MODEL_VARIANT_UNAVAILABLE


def specs(*extra: TensorSpec) -> list[TensorSpec]:
    f32 = np.dtype(np.float32)
    return [
        TensorSpec("image", True, f32, (-1, 1, 8, 8)),
        TensorSpec("logits", False, f32, (-1, 2)),
        TensorSpec("cam", False, f32, (-1, 2, 8, 8)),
        *extra,
    ]


def test_binding_uses_manifest_names_not_positions() -> None:
    shuffled = list(reversed(specs()))
    inp, outs = bind(shuffled, TensorNames("image", ("logits", "cam")))
    assert inp.name == "image"
    assert [o.name for o in outs] == ["logits", "cam"]
    assert concrete_shape(outs[1], 4) == (4, 2, 8, 8)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (TensorNames("input", ("logits",)), "no input tensor 'input'"),
        (TensorNames("image", ("probabilities",)), "no output tensor 'probabilities'"),
        (TensorNames("logits", ("cam",)), "no input tensor 'logits'"),
    ],
)
def test_binding_mismatch_is_a_manifest_error(names: TensorNames, message: str) -> None:
    with pytest.raises(EdgeError) as caught:
        bind(specs(), names)
    assert caught.value.code is Code.MODEL_MANIFEST_INVALID
    assert message in caught.value.message


def test_binding_refuses_an_unexpected_second_input() -> None:
    with pytest.raises(EdgeError, match="extra inputs"):
        bind(
            specs(TensorSpec("mask", True, np.dtype(np.float32), (-1, 1))), TensorNames("image", ("logits",))
        )


def test_only_the_batch_may_be_dynamic() -> None:
    with pytest.raises(EdgeError, match="dynamic"):
        concrete_shape(TensorSpec("image", True, np.dtype(np.float32), (-1, 1, -1, -1)), 2)


# ------------------------------------------------------------------ the manager, with doubles
# (tests/engine_doubles.py): the cache, fallback, records and parity logic run for real.


@pytest.fixture
def cxr_settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", models={"dir": MODELS})


def test_serve_prefers_int8_builds_once_and_records_the_parity_verdict(cxr_settings: Settings) -> None:
    doubles = Doubles()
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    first = manager(cxr_settings, doubles)
    runner, attempt = first.serve(entry, tensor_names(entry))
    runner.close()
    assert attempt == Attempt("int8", "int8-qdq")
    [record] = first.describe()
    assert record["build"] == "ok"
    assert record["parity"]["passed"]
    assert record["parity"]["images"] == len(entry.samples)
    assert record["key"]["gpu"] == "Orin (nvgpu)"
    second = manager(cxr_settings, doubles)  # a restart: nothing rebuilt, nothing re-verified
    second.serve(entry, tensor_names(entry))[0].close()
    assert doubles.builds == ["int8"]


def test_failed_build_falls_back_and_is_not_retried_until_forced(cxr_settings: Settings) -> None:
    doubles = Doubles(fail={"int8"})
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    runner, attempt = manager(cxr_settings, doubles).serve(entry, tensor_names(entry))
    runner.close()
    assert attempt.precision == "fp16"
    manager(cxr_settings, doubles).serve(entry, tensor_names(entry))[0].close()
    assert doubles.builds == ["int8", "fp16"]  # the recorded failure is not rebuilt at every start
    doubles.fail = set()
    manager(cxr_settings, doubles).ensure(entry, Attempt("int8", "int8-qdq"), force=True)
    assert doubles.builds[-1] == "int8"


def test_an_engine_that_fails_parity_never_serves(cxr_settings: Settings) -> None:
    doubles = Doubles(noisy={"int8"})
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    the_manager = manager(cxr_settings, doubles)
    runner, attempt = the_manager.serve(entry, tensor_names(entry))
    runner.close()
    assert attempt.precision == "fp16"
    verdicts = {r["key"]["precision"]: r["parity"]["passed"] for r in the_manager.describe()}
    assert verdicts == {"int8": False, "fp16": True}


def test_nothing_usable_is_a_coded_refusal(cxr_settings: Settings) -> None:
    doubles = Doubles(fail={"int8", "fp16", "fp32"})
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    with pytest.raises(EdgeError) as caught:
        manager(cxr_settings, doubles).serve(entry, tensor_names(entry))
    assert caught.value.code is Code.ENGINE_BUILD_FAILED
    assert "int8" in caught.value.message
    assert "fp32" in caught.value.message


def test_an_upgrade_rebuilds_instead_of_failing_to_deserialize(cxr_settings: Settings) -> None:
    doubles = Doubles()
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    manager(cxr_settings, doubles).serve(entry, tensor_names(entry))[0].close()
    upgraded = EngineManager(
        cxr_settings,
        builder=doubles.builder,
        runner_factory=doubles.runner,
        identity=lambda: ORIN_NANO,
    )
    upgraded.settings = cxr_settings.model_copy(
        update={"runtime": cxr_settings.runtime.model_copy(update={"max_batch": 4})}
    )
    upgraded.serve(entry, tensor_names(entry))[0].close()
    assert doubles.builds == ["int8", "int8"]


def test_model_pool_falls_back_to_onnxruntime_loudly(
    cxr_settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    class PretendTensorRT(OnnxRuntimeRunner):
        backend = "tensorrt"  # type: ignore[assignment]

    monkeypatch.setattr(runtime, "resolve_backend", lambda requested: PretendTensorRT)
    pool = ModelPool(Registry(MODELS), cxr_settings, cxr_settings.data_dir / "cache")
    pool.engine_manager = manager(cxr_settings, Doubles(fail={"int8", "fp16", "fp32"}))
    served = pool.get(DEFAULT_MODEL)
    assert served.backend == "onnxruntime"
    assert "falling back to ONNX Runtime" in caplog.text
    pool.close()
    fresh = cxr_settings.model_copy(update={"data_dir": cxr_settings.data_dir.parent / "another-device"})
    pool = ModelPool(Registry(MODELS), fresh, fresh.data_dir / "cache")
    pool.engine_manager = manager(fresh, Doubles(fail={"int8"}))
    served = pool.get(DEFAULT_MODEL)
    assert (served.variant_name, served.precision) == ("fp32", "fp16")  # FP16 engine from the FP32 file
    pool.close()


def test_cli_build_and_verify_say_clearly_that_tensorrt_is_missing() -> None:
    if HAS_TENSORRT:
        pytest.skip("TensorRT is installed here")
    for command in (["models", "build"], ["models", "verify", DEFAULT_MODEL]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == 1
        assert result.stderr.startswith("BACKEND_UNAVAILABLE: TensorRT is not installed")
        assert "docs/jetson.md" in result.stderr


def test_device_memory_refusals() -> None:
    with pytest.raises(EdgeError) as caught:
        open_device_memory("cupy-magic")
    assert caught.value.code is Code.CONFIG_INVALID
    if not importlib.util.find_spec("cuda") and not importlib.util.find_spec("pycuda"):
        with pytest.raises(EdgeError) as caught:
            open_device_memory("auto")
        assert caught.value.code is Code.BACKEND_UNAVAILABLE
        assert "cuda-python is not installed" in caught.value.message


# ------------------------------------------------------------------ the real thing (Jetson / GPU)


def _gpu_or_skip() -> None:
    if not HAS_TENSORRT:
        pytest.skip("tensorrt is not installed")
    try:
        open_device_memory("auto")
    except EdgeError as error:
        pytest.skip(error.message)


@pytest.mark.tensorrt
@pytest.mark.parametrize("name", ["cxr-pneumonia", "us-breast", "us-lung"])
def test_real_engines_build_run_and_pass_parity(tmp_path: Path, name: str) -> None:
    _gpu_or_skip()
    if name not in Registry(MODELS).names():
        pytest.skip(f"{name} is not shipped yet")
    settings = load_settings(data_dir=tmp_path, models={"dir": MODELS})
    entry = Registry(MODELS).get(name)
    real = EngineManager(settings)
    for attempt in build_plan(entry, "auto"):
        engine = real.ensure(entry, attempt)
        report = real.verify(entry, attempt, engine, tensor_names(entry))
        assert report.passed, (attempt, report)


@pytest.mark.tensorrt
def test_real_runner_batches_and_matches_onnxruntime(tmp_path: Path) -> None:
    _gpu_or_skip()
    settings = load_settings(data_dir=tmp_path, models={"dir": MODELS})
    entry = Registry(MODELS).get(DEFAULT_MODEL)
    real = EngineManager(settings)
    engine = real.ensure(entry, Attempt("fp32", "fp32"))
    from edge.runtime.tensorrt import TensorRTRunner

    names = tensor_names(entry)
    batch = np.random.default_rng(0).standard_normal((11, 1, 224, 224)).astype(np.float32)  # > max_batch
    with TensorRTRunner(engine, names, settings.runtime) as trt_runner:
        got = trt_runner.infer(batch)
    with OnnxRuntimeRunner(entry.variant_file("fp32"), names, settings.runtime) as ort_runner:
        want = ort_runner.infer(batch)
    for name in names.outputs:
        np.testing.assert_allclose(got[name], want[name], atol=1e-2)
