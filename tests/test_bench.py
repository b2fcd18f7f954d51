"""`edge bench` runs end to end (timings themselves are reported, never asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from edge.cli import cli
from edge.imaging.decode import decode_bytes
from edge.operations.bench import dicom_variants, jpeg_variants, png_variants
from tests.conftest import gradient, png_bytes
from tools import dicomgen


def test_bench_reports_every_measurement_and_ratio(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(
        cli, ["--data-dir", str(tmp_path), "bench", "--runs", "5", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "fp32" in report["raw"]
    assert set(report["full_path"]) == {"png", "dicom"}
    assert report["opencv_dnn"]["fp32"]
    assert any(k.startswith("pipeline png/raw") for k in report["ratios"])
    assert report["auto_choice"] in report["raw"]
    assert not (tmp_path / "edge.db").exists()  # the bench never touches the real store


def test_bench_inputs_are_distinct_but_decode_the_same() -> None:
    png = png_bytes(gradient())
    variants = png_variants(png, 3)
    assert len(set(variants)) == 3
    for data in variants:
        assert (decode_bytes(data).pixels == gradient()).all()
    dcm = dicomgen.to_bytes(
        dicomgen.grey_dicom(dicomgen.twelve_bit(gradient()), bits_stored=12, window=(2048, 4096))
    )
    uids = {decode_bytes(d).sop_instance_uid for d in dicom_variants(dcm, 3)}
    assert len(uids) == 3


def test_jpeg_variants_are_distinct_but_decode_the_same() -> None:
    import cv2

    ok, encoded = cv2.imencode(".jpg", gradient())
    assert ok
    variants = jpeg_variants(encoded.tobytes(), 3, "t")
    assert len(set(variants)) == 3
    reference = decode_bytes(encoded.tobytes()).pixels
    for data in variants:
        assert (decode_bytes(data).pixels == reference).all()


def test_bench_measures_a_model_that_ships_jpeg_samples_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """us-lung ships JPEG frames and no DICOM: the bench measures what it has."""
    result = CliRunner().invoke(
        cli,
        ["--data-dir", str(tmp_path), "bench", "--model", "us-lung", "--runs", "5", "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["full_path"]) == {"jpeg"}


def test_bench_refuses_an_unknown_model_in_one_coded_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path), "bench", "--model", "nope", "--runs", "5"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("MODEL_UNKNOWN")
    assert "Traceback" not in result.output
