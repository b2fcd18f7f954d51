"""The shipped chest X-ray model: export fidelity, precision parity, and PNG/DICOM agreement."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.uid import RLELossless

from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.inference.pool import ModelPool
from edge.inference.registry import ModelEntry, Registry
from tests.conftest import DEFAULT_MODEL
from tools import dicomgen


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    from tests.conftest import MODELS

    return Registry(MODELS).get(DEFAULT_MODEL)


@pytest.fixture
def pool(settings: Settings) -> ModelPool:
    pool = ModelPool(Registry(settings.models.dir), settings, settings.data_dir / "cache")
    yield pool  # type: ignore[misc]
    pool.close()


def test_onnx_reproduces_the_training_framework_logits(entry: ModelEntry, pool: ModelPool) -> None:
    """tools/release.py saved torch's logits for each sample; the shipped FP32 ONNX must match."""
    check = json.loads((entry.folder / "export_check.json").read_text())["logits"]
    assert len(check) >= 10
    served = pool.load_variant(entry.name, "fp32")
    samples = entry.folder / "samples"
    for name, expected in check.items():
        pixels = decode_bytes((samples / name).read_bytes(), name).pixels
        logits = served.predict([pixels])[0].outputs["logits"]
        np.testing.assert_allclose(logits, expected, atol=1e-3, rtol=1e-4, err_msg=name)


def test_validation_figures_meet_the_foundation_bar(entry: ModelEntry) -> None:
    validation = entry.manifest.metrics["validation"]
    assert validation["auc"] >= 0.90
    assert entry.manifest.output.temperature > 0
    for name, variant in entry.manifest.variants.items():
        if variant.precision == "int8":
            assert variant.gate is not None
            assert variant.gate.passed, name
            assert abs(variant.gate.auc_delta) <= 0.005
            assert variant.gate.agreement >= 0.99


def _agrees(reference: list[Any], other: list[Any]) -> bool:
    agree = np.mean([a.finding.finding == b.finding.finding for a, b in zip(reference, other, strict=True)])
    diffs = [
        abs(a.finding.probability - b.finding.probability) for a, b in zip(reference, other, strict=True)
    ]
    return bool(agree >= 0.9 and max(diffs) < 0.15)


def test_the_variant_served_on_this_machine_agrees_with_fp32_on_the_samples(
    entry: ModelEntry, pool: ModelPool, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever this machine serves must compute what FP32 computes. An INT8 variant that does
    not here (ONNX Runtime's x86 INT8 kernels without VNNI saturate: seen on an AVX2-only AMD
    EPYC, P off by 0.65) is refused with VARIANT_PARITY_FAILED and FP32 is served instead."""
    images = [decode_bytes(p.read_bytes(), p.name).pixels for p, _ in entry.samples]
    reference = pool.load_variant(entry.name, "fp32").predict(images)
    served = pool.get(entry.name)
    assert _agrees(reference, served.predict(images)), served.variant_name
    for name, variant in entry.manifest.variants.items():
        if name == "fp32" or not variant.servable:
            continue
        if not _agrees(reference, pool.load_variant(entry.name, name).predict(images)):
            assert served.variant_name != name
            assert f"VARIANT_PARITY_FAILED: {entry.name} {name} differs" in caplog.text


def test_the_served_variant_is_judged_for_applicability_as_this_machine_computes(
    entry: ModelEntry, pool: ModelPool
) -> None:
    """An INT8 variant served here is judged by FP32's limit scaled by its distance ratio
    measured here (scope.localised) wherever that is stricter than the manifest's own, and the
    model's samples, on which the ratio was measured, are all still answered."""
    served = pool.get(entry.name)
    assert served.scope_check is not None
    manifest_check = entry.scope_check(served.variant_name)
    assert manifest_check is not None
    if served.variant.precision != "fp32":
        fp32 = entry.scope_check("fp32")
        assert fp32 is not None
        ratio = pool._scope_ratios[(entry.name, served.variant_name)]
        assert ratio is not None
        assert 0.5 < ratio < 2.0
        expected = min(manifest_check.threshold, fp32.threshold * ratio)
        assert served.scope_check.threshold == pytest.approx(expected)
    images = [decode_bytes(p.read_bytes(), p.name).pixels for p, _ in entry.samples]
    scopes = [prediction.scope for prediction in served.predict(images)]
    assert all(scope is not None and not scope.refused for scope in scopes)


def test_samples_are_mostly_right(entry: ModelEntry, pool: ModelPool) -> None:
    images, labels = [], []
    for path, label in entry.samples:
        images.append(decode_bytes(path.read_bytes(), path.name).pixels)
        labels.append(label)
    predictions = pool.load_variant(entry.name, "fp32").predict(images)
    accuracy = np.mean([p.finding.finding == label for p, label in zip(predictions, labels, strict=True)])
    assert accuracy >= 0.8


@pytest.mark.parametrize(
    "style",
    [
        {"photometric": "MONOCHROME2", "window": (2048, 4096)},
        {"photometric": "MONOCHROME1", "window": (2048, 4096), "transfer_syntax": RLELossless},
        {"photometric": "MONOCHROME2", "signed": True, "window": (2048, 4096), "rescale": (1.0, 1024.0)},
        {"photometric": "MONOCHROME2", "voi": True},
    ],
)
def test_a_png_and_its_dicom_give_the_same_answer(entry: ModelEntry, pool: ModelPool, style: dict) -> None:
    png = next(p for p, _ in entry.samples if p.suffix == ".png")
    display = decode_bytes(png.read_bytes()).pixels
    stored = dicomgen.twelve_bit(display)
    kwargs: dict = {"bits_stored": 12, "photometric": style["photometric"]}
    if style["photometric"] == "MONOCHROME1":
        stored = (4095 - stored).astype(np.uint16)
    if style.get("signed"):
        stored = (stored.astype(np.int32) - 1024).astype(np.int16)
        kwargs["bits_stored"] = 16
    if style.get("voi"):
        kwargs["voi_lut"] = ([4096, 0, 8], (np.arange(4096) // 16).astype(np.uint16))
    for key in ("window", "rescale", "transfer_syntax"):
        if key in style:
            kwargs[key] = style[key]
    dicom = decode_bytes(dicomgen.to_bytes(dicomgen.grey_dicom(stored, **kwargs)))
    assert np.array_equal(dicom.pixels, display)
    served = pool.load_variant(entry.name, "fp32")
    a, b = served.predict([display, dicom.pixels])
    assert a.finding.probability == pytest.approx(b.finding.probability, abs=1e-6)


def test_shipped_files_are_small(entry: ModelEntry) -> None:
    total = sum(p.stat().st_size for p in entry.folder.rglob("*") if p.is_file())
    assert total < 10 * 1024 * 1024
    for variant in entry.manifest.variants.values():
        assert (entry.folder / variant.file).stat().st_size <= 5 * 1024 * 1024
    assert Path(entry.folder / "MODEL_CARD.md").read_text().count("Not for clinical use") >= 1
