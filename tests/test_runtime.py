"""The runtime contract, the ONNX Runtime backend and variant choice, on a tiny real model."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from edge import runtime
from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.inference.pool import ModelPool, candidate_variants, choose_by_speed
from edge.inference.registry import Registry
from edge.runtime.base import TensorNames
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from tests.tinymodel import make_model_dir, manifest


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Registry, Settings]:
    make_model_dir(tmp_path / "models")
    settings = load_settings(
        data_dir=tmp_path / "data", models={"dir": tmp_path / "models", "default": "tiny"}
    )
    return Registry(tmp_path / "models"), settings


def test_auto_backend_is_onnxruntime_without_tensorrt() -> None:
    assert runtime.resolve_backend("auto") is OnnxRuntimeRunner
    assert "onnxruntime" in runtime.available_backends()


def test_named_unavailable_backend_is_a_clear_refusal() -> None:
    if runtime.backend_class("tensorrt") is not None and runtime.backend_class("tensorrt").is_available():  # type: ignore[union-attr]
        pytest.skip("TensorRT is available here")
    with pytest.raises(EdgeError) as caught:
        runtime.resolve_backend("tensorrt")
    assert caught.value.code is Code.BACKEND_UNAVAILABLE
    with pytest.raises(EdgeError):
        runtime.resolve_backend("cuda-magic")


def test_onnxruntime_runner_infers_a_batch(tiny: tuple[Registry, Settings]) -> None:
    registry, settings = tiny
    path = registry.get("tiny").variant_file("fp32")
    with OnnxRuntimeRunner(path, TensorNames("image", ("logits", "cam")), settings.runtime) as runner:
        batch = np.stack([np.full((1, 8, 8), v, np.float32) for v in (-1.0, 0.0, 2.0)])
        out = runner.infer(batch)
    assert out["logits"].shape == (3, 2)
    assert out["cam"].shape == (3, 2, 8, 8)
    np.testing.assert_allclose(out["logits"][:, 1], [-1.0, 0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(out["cam"].mean(axis=(2, 3)), out["logits"], atol=1e-6)
    with pytest.raises(EdgeError) as caught:
        runner.infer(batch)  # closed
    assert caught.value.code is Code.INFERENCE_FAILED


def test_runner_refuses_tensor_names_the_file_lacks(tiny: tuple[Registry, Settings]) -> None:
    registry, settings = tiny
    path = registry.get("tiny").variant_file("fp32")
    with pytest.raises(EdgeError) as caught:
        OnnxRuntimeRunner(path, TensorNames("image", ("probabilities",)), settings.runtime)
    assert caught.value.code is Code.MODEL_MANIFEST_INVALID
    assert "probabilities" in caught.value.message


def test_wrong_input_shape_is_an_inference_refusal(tiny: tuple[Registry, Settings]) -> None:
    registry, settings = tiny
    path = registry.get("tiny").variant_file("fp32")
    runner = OnnxRuntimeRunner(path, TensorNames("image", ("logits",)), settings.runtime)
    with pytest.raises(EdgeError) as caught:
        runner.infer(np.zeros((1, 3, 8, 8), np.float32))
    runner.close()
    assert caught.value.code is Code.INFERENCE_FAILED


def test_not_an_onnx_file(tmp_path: Path, tiny: tuple[Registry, Settings]) -> None:
    _, settings = tiny
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(EdgeError) as caught:
        OnnxRuntimeRunner(bad, TensorNames("image", ("logits",)), settings.runtime)
    assert caught.value.code is Code.MODEL_MANIFEST_INVALID


def test_failed_gate_is_never_served(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    data = manifest(folder)
    data["variants"]["int8"]["gate"]["passed"] = False
    import tomli_w

    (folder / "model.toml").write_text(tomli_w.dumps(data))
    entry = Registry(tmp_path / "models").get("tiny")
    assert candidate_variants(entry, "onnxruntime", "auto") == ["fp32"]
    with pytest.raises(EdgeError) as caught:
        candidate_variants(entry, "onnxruntime", "int8")
    assert caught.value.code is Code.MODEL_VARIANT_UNAVAILABLE
    settings = load_settings(data_dir=tmp_path / "d", models={"dir": tmp_path / "models"})
    pool = ModelPool(Registry(tmp_path / "models"), settings, tmp_path / "cache")
    with pytest.raises(EdgeError):
        pool.load_variant("tiny", "int8")


def test_variant_without_a_gate_record_is_not_servable(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    data = manifest(folder)
    del data["variants"]["int8"]["gate"]
    import tomli_w

    (folder / "model.toml").write_text(tomli_w.dumps(data))
    entry = Registry(tmp_path / "models").get("tiny")
    assert candidate_variants(entry, "onnxruntime", "auto") == ["fp32"]


def test_choose_by_speed_needs_a_clear_win(tiny: tuple[Registry, Settings]) -> None:
    registry, _ = tiny
    entry = registry.get("tiny")
    assert choose_by_speed(entry, {"fp32": 10.0, "int8": 5.0}) == "int8"
    assert choose_by_speed(entry, {"fp32": 10.0, "int8": 9.5}) == "fp32"  # within noise
    assert choose_by_speed(entry, {"fp32": 5.0, "int8": 10.0}) == "fp32"  # INT8 slower: say no


def test_auto_precision_measures_once_then_remembers(
    tiny: tuple[Registry, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry, settings = tiny
    calls: list[str] = []

    def fake_timing(runner: OnnxRuntimeRunner, spec: object) -> float:
        calls.append(runner.model_file.name)
        return {"tiny-fp32.onnx": 4.0, "tiny-int8.onnx": 2.0}[runner.model_file.name]

    monkeypatch.setattr("edge.inference.pool._time_runner", fake_timing)
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    assert pool.get("tiny").variant_name == "int8"
    assert pool.get("tiny") is pool.get("tiny")
    assert len(calls) == 2
    pool.close()
    again = ModelPool(registry, settings, settings.data_dir / "cache")
    assert again.get("tiny").variant_name == "int8"
    assert len(calls) == 2  # read from the cache, not measured again
    again.close()


def test_a_variant_whose_file_is_damaged_is_left_out_and_the_others_served(
    tiny: tuple[Registry, Settings], caplog: pytest.LogCaptureFixture
) -> None:
    """One truncated INT8 file made the whole model refuse every input (each dropped picture
    quarantined MODEL_CHECKSUM_MISMATCH): the others are served; none whole is still refused."""
    registry, settings = tiny
    folder = registry.get("tiny").folder
    (folder / "tiny-int8.onnx").write_bytes(b"truncated")
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    with caplog.at_level(logging.ERROR, logger="edge.inference.pool"):
        assert pool.get("tiny").variant_name == "fp32"
    assert "variant int8 not served" in caplog.text
    assert "MODEL_CHECKSUM_MISMATCH" in caplog.text
    pool.close()
    (folder / "tiny-fp32.onnx").unlink()
    again = ModelPool(registry, settings, settings.data_dir / "cache")
    with pytest.raises(EdgeError) as refused:
        again.get("tiny")
    assert refused.value.code in (Code.MODEL_FILE_MISSING, Code.MODEL_CHECKSUM_MISMATCH)
    again.close()


def test_a_damaged_reference_is_not_remembered_against_the_variants_it_checks(
    tiny: tuple[Registry, Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """FP32 damaged: INT8 cannot be checked against it here, so the model is refused; that
    verdict was cached, and INT8 stayed unserved (twice as slow) after FP32 was reinstalled."""
    registry, settings = tiny
    monkeypatch.setattr(
        "edge.inference.pool._time_runner",
        lambda runner, spec: {"tiny-fp32.onnx": 4.0, "tiny-int8.onnx": 2.0}[runner.model_file.name],
    )
    reference = registry.get("tiny").folder / "tiny-fp32.onnx"
    saved = reference.read_bytes()
    reference.write_bytes(b"damaged")
    pool = ModelPool(registry, settings, settings.data_dir / "cache")
    with pytest.raises(EdgeError) as refused:
        pool.get("tiny")
    assert refused.value.code is Code.MODEL_CHECKSUM_MISMATCH
    pool.close()
    reference.write_bytes(saved)
    again = ModelPool(registry, settings, settings.data_dir / "cache")
    assert again.get("tiny").variant_name == "int8"
    again.close()


def test_an_int8_variant_that_computes_something_else_here_is_not_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The manifest's gate was measured elsewhere; on this machine the variant must still match
    FP32 on the model's samples (ONNX Runtime's x86 INT8 kernels without VNNI do not)."""
    from edge.inference.pool import parity_refusals
    from edge.operations.doctor import _models

    make_model_dir(tmp_path / "models", int8_weight=-3.0)  # "INT8" that flips the answer
    settings = load_settings(data_dir=tmp_path / "data", models={"dir": tmp_path / "models"})
    # Found on "auto": a warning (the answers stay right); asked for INT8 by name: FP32 too, as
    # an error; read back from the cache at a later start: a note.
    for precision, level, cache in (
        ("auto", logging.WARNING, "cache"),
        ("int8", logging.ERROR, "cache-b"),
        ("auto", logging.INFO, "cache-b"),
    ):
        chosen = settings.model_copy(
            update={"runtime": settings.runtime.model_copy(update={"precision": precision})}
        )
        caplog.clear()
        caplog.set_level(logging.INFO)
        pool = ModelPool(Registry(tmp_path / "models"), chosen, settings.data_dir / cache)
        assert pool.get("tiny").variant_name == "fp32"
        pool.close()
        [line] = [r for r in caplog.records if "VARIANT_PARITY_FAILED" in r.getMessage()]
        assert line.levelno == level, precision
        assert "VARIANT_PARITY_FAILED: tiny int8 differs from fp32 on this machine" in line.getMessage()
        assert line.getMessage().endswith("not served here; served instead: fp32")
    [refused] = parity_refusals(settings.data_dir / "cache")
    assert (refused["variant"], refused["passed"], refused["agreement"]) == ("int8", False, 0.0)
    [check] = _models(settings)
    assert "not served on this machine (VARIANT_PARITY_FAILED): int8" in check.message


def test_explicit_precision(tiny: tuple[Registry, Settings]) -> None:
    registry, settings = tiny
    fp32_only = settings.model_copy(
        update={"runtime": settings.runtime.model_copy(update={"precision": "fp32"})}
    )
    pool = ModelPool(registry, fp32_only, settings.data_dir / "cache")
    served = pool.get("tiny")
    assert (served.variant_name, served.precision, served.backend) == ("fp32", "fp32", "onnxruntime")
    predictions = served.predict([np.full((8, 8), 255, np.uint8), np.zeros((20, 10), np.uint8)])
    assert [p.finding.finding for p in predictions] == ["finding", "normal"]
    assert predictions[0].outputs["cam"].shape == (2, 8, 8)
    pool.close()


def test_real_timing_runs(tiny: tuple[Registry, Settings]) -> None:
    from edge.inference.pool import _time_runner

    registry, settings = tiny
    path = registry.get("tiny").variant_file("fp32")
    with OnnxRuntimeRunner(path, TensorNames("image", ("logits",)), settings.runtime) as runner:
        assert _time_runner(runner, registry.get("tiny").manifest.input.preprocess_spec()) > 0
