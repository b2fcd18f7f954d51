"""The `edge` command through click's CliRunner, against the shipped model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge import __version__
from edge.cli import cli
from edge.inference.pool import ServedModel
from edge.inference.scope import Scope
from edge.inference.scope import refusal as scope_refusal
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, gradient, png_bytes

ANALYSIS_FIELDS = {
    "input",
    "status",
    "result_id",
    "finding",
    "probability",
    "probabilities",
    "threshold",
    "operating_point",
    "model",
    "model_version",
    "model_sha256",
    "backend",
    "precision",
    "latency_ms",
    "total_ms",
    "study_id",
    "image_id",
    "job_id",
    "duplicate",
}


def run(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_version_and_help_everywhere() -> None:
    runner = CliRunner()
    assert __version__ in runner.invoke(cli, ["--version"]).output
    for command in ([], ["infer"], ["demo"], ["models"], ["models", "list"], ["models", "show"], ["bench"]):
        result = runner.invoke(cli, [*command, "--help"])
        assert result.exit_code == 0, command
        assert "Usage:" in result.output


def test_infer_dicom_json_has_every_field(tmp_path: Path, sample_dcm: Path) -> None:
    code, out, _ = run(tmp_path, "infer", str(sample_dcm), "--json")
    assert code == 0
    [line] = out.strip().splitlines()
    record = json.loads(line)
    assert set(record) >= ANALYSIS_FIELDS
    assert record["status"] == "ok"
    assert record["model"] == DEFAULT_MODEL
    assert record["finding"] in ("normal", "pneumonia")
    assert 0.0 <= record["probability"] <= 1.0
    assert record["backend"] == "onnxruntime"
    with Store(tmp_path / "data") as store:
        stored = store.result_for_job(record["job_id"])
        assert stored is not None
        assert stored.id == record["result_id"]


def test_infer_text_output_and_idempotence(tmp_path: Path, sample_png: Path) -> None:
    code, out, _ = run(tmp_path, "infer", str(sample_png))
    assert code == 0
    assert out.startswith("OK ")
    assert "onnxruntime/" in out
    assert "threshold" in out
    code, again, _ = run(tmp_path, "infer", str(sample_png))
    assert code == 0
    assert "already analysed" in again


def test_bad_inputs_one_coded_line_each_and_nonzero_exit(tmp_path: Path, sample_png: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "truncated.png").write_bytes(png_bytes(gradient())[:-30])
    (bad / "notes.txt").write_text("not an image")
    from tools import dicomgen

    sr = dicomgen.base_dataset(dicomgen.BASIC_TEXT_SR, modality="SR")
    (bad / "report.dcm").write_bytes(dicomgen.to_bytes(sr))
    inputs = [
        str(bad / "missing.png"),
        str(bad / "notes.txt"),
        str(bad / "truncated.png"),
        str(bad / "report.dcm"),
        str(sample_png),
    ]
    code, out, _ = run(tmp_path, "infer", *inputs)
    lines = out.strip().splitlines()
    assert code == 1
    lines = [
        line for line in lines if not line.startswith(" ")
    ]  # an applicability line continues its input's
    assert len(lines) == 5
    codes = [line.split()[2].rstrip(":") if line.startswith("REFUSED") else "OK" for line in lines]
    assert codes == ["INPUT_NOT_FOUND", "INPUT_NOT_IMAGE", "IMAGE_TRUNCATED", "DICOM_NO_PIXELS", "OK"]
    with Store(tmp_path / "data") as store:
        counts = store.counts()
    # Only the good input left rows behind.
    assert (counts["images"], counts["jobs"], counts["results"], counts["outbox"]) == (1, 1, 1, 1)


def test_unknown_model_refuses_every_input(tmp_path: Path, sample_png: Path) -> None:
    code, out, _ = run(tmp_path, "infer", str(sample_png), "--model", "no-such-model", "--json")
    assert code == 1
    record = json.loads(out)
    assert (record["status"], record["code"]) == ("refused", "MODEL_UNKNOWN")
    with Store(tmp_path / "data") as store:
        assert store.counts()["images"] == 0


def test_bad_config_is_a_usage_error(tmp_path: Path, sample_png: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text("[runtime]\nthreds = 2\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "infer", str(sample_png)])
    assert result.exit_code == 2
    assert result.stderr.startswith("CONFIG_INVALID: ")


def test_models_list_and_show(tmp_path: Path) -> None:
    code, out, _ = run(tmp_path, "models", "list", "--json")
    assert code == 0
    assert DEFAULT_MODEL in [row["name"] for row in json.loads(out)]
    code, out, _ = run(tmp_path, "models", "show", DEFAULT_MODEL)
    assert code == 0
    assert "operating point" in out
    assert "balanced" in out
    assert "ok" in out
    code, out, _ = run(tmp_path, "models", "show", DEFAULT_MODEL, "--json")
    shown = json.loads(out)
    assert shown["manifest"]["name"] == DEFAULT_MODEL
    assert set(shown["file_checks"].values()) == {"ok"}
    code, _, err = run(tmp_path, "models", "show", "nope")
    assert code == 1
    assert err.startswith("MODEL_UNKNOWN")


def test_operating_point_from_config(tmp_path: Path, sample_png: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('[models]\noperating_point = "screening"\n')
    result = CliRunner().invoke(
        cli, ["--config", str(config), "--data-dir", str(tmp_path / "d"), "infer", str(sample_png), "--json"]
    )
    assert json.loads(result.stdout)["operating_point"] == "screening"


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_forced_precision_is_recorded(
    tmp_path: Path,
    sample_png: Path,
    monkeypatch: pytest.MonkeyPatch,
    precision: str,
) -> None:
    monkeypatch.setenv("EDGE_RUNTIME__PRECISION", precision)
    code, out, _ = run(tmp_path, "infer", str(sample_png), "--json")
    assert code == 0
    answer = json.loads(out)
    recorded = answer["precision"]
    assert answer["model"] == DEFAULT_MODEL  # routed by applicability: the X-ray model's own sample
    # INT8 unless it computes something else on this machine than FP32 (local parity): then FP32,
    # and the refusal of both of the model's INT8 variants is recorded for `edge doctor` (an
    # AVX2-only x86 CPU without VNNI is such a machine). Routing an unlabelled PNG loads every
    # shipped model, so the cache holds the other models' verdicts too: only this model's count.
    from edge.inference.pool import parity_refusals

    refused = [r for r in parity_refusals(tmp_path / "data" / "cache") if r["model"] == DEFAULT_MODEL]
    assert recorded == precision or (recorded == "fp32" and len(refused) == 2)


BORDERLINE = Scope(distance=31.4, p_value=0.0312, threshold=40.2, state="borderline")


def _judged(monkeypatch: pytest.MonkeyPatch, scope: Scope, refuse: bool = False) -> None:
    """Every prediction carries this applicability verdict (the check's own numbers are
    tested with the models; here only how a verdict is shown)."""
    original = ServedModel.predict

    def predict(self: ServedModel, images: list[Any], operating_point: str | None = None) -> list[Any]:
        return [replace(p, scope=scope) for p in original(self, images, operating_point)]

    monkeypatch.setattr(ServedModel, "predict", predict)
    if refuse:
        monkeypatch.setattr(
            ServedModel,
            "out_of_scope",
            lambda self, scope, enforce: scope_refusal(self.name, "a paediatric chest X-ray", scope),
        )


def test_infer_shows_the_applicability_of_a_stored_result(
    tmp_path: Path, sample_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _judged(monkeypatch, BORDERLINE)  # named: a routing guess is answered only in scope
    code, out, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png), "--json")
    assert code == 0
    record = json.loads(out)
    assert record["applicability"] == BORDERLINE.as_dict()
    with Store(tmp_path / "data") as store:
        stored = store.result(record["result_id"])
        assert stored is not None
        assert stored.applicability == record["applicability"]  # what is stored is what is shown
    # The stored result, as text.
    code, again, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png))
    assert code == 0
    first, second = again.splitlines()
    assert first.startswith("OK ")
    assert "already analysed" in first
    assert second == (
        "        applicability: borderline (p = 0.03): near the edge of what the model was trained on;"
        " read the result with extra care"
    )


def test_infer_json_applicability_is_null_without_a_check(
    tmp_path: Path, sample_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ServedModel, "_scopes", lambda self, outputs, count: [None] * count)
    code, out, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png), "--json")
    assert code == 0
    assert json.loads(out)["applicability"] is None
    code, text, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png))
    assert len(text.splitlines()) == 1  # no applicability line to print


def test_an_out_of_scope_input_is_refused_like_any_other(
    tmp_path: Path, sample_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _judged(monkeypatch, Scope(distance=95.0, p_value=0.001, threshold=40.2, state="out of scope"), True)
    code, out, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png))
    assert code == 1
    assert out.startswith(
        f"REFUSED {sample_png}  OUT_OF_SCOPE: this does not look like a paediatric chest X-ray"
    )
    code, out, _ = run(tmp_path, "infer", "--model", DEFAULT_MODEL, str(sample_png), "--json")
    record = json.loads(out)
    assert (record["status"], record["code"]) == ("refused", "OUT_OF_SCOPE")
    assert "applicability" not in record  # a refusal has no result, so no verdict of one


def test_an_unlabelled_picture_no_sharp_check_takes_is_not_guessed(
    tmp_path: Path, sample_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PNG says nothing of what it is. Where the chest check (the one sharp check) finds it
    out of scope and the others only borderline, the device will not pick a model (a chest film
    read by the lung model would say "covid"): refused, every model's reading named, nothing
    stored. Named, a model answers; with the check off, the best guess serves as before."""
    out_of_scope = Scope(distance=95.0, p_value=0.001, threshold=40.2, state="out of scope")
    original = ServedModel.predict

    def predict(self: ServedModel, images: list[Any], operating_point: str | None = None) -> list[Any]:
        scope = out_of_scope if self.name == DEFAULT_MODEL else BORDERLINE
        return [replace(p, scope=scope) for p in original(self, images, operating_point)]

    monkeypatch.setattr(ServedModel, "predict", predict)
    code, out, _ = run(tmp_path, "infer", str(sample_png), "--json")
    assert code == 1
    refused = json.loads(out)
    assert (refused["status"], refused["code"]) == ("refused", "NO_MODEL_FOR_INPUT")
    assert "no model finds it clearly like its own images" in refused["reason"]
    assert "us-lung p=0.031 borderline" in refused["reason"]
    with Store(tmp_path / "data") as store:
        assert store.counts()["images"] == 0
    code, out, _ = run(tmp_path, "infer", "--model", "us-lung", str(sample_png), "--json")
    assert code == 0
    assert json.loads(out)["applicability"]["state"] == "borderline"
    config = tmp_path / "gate-off.toml"
    config.write_text("[gate]\napplicability = false\n")
    code, out, _ = run(tmp_path / "other", "--config", str(config), "infer", str(sample_png), "--json")
    assert code == 0, out


def test_ctrl_c_ends_with_status_130_and_keeps_what_was_stored(
    tmp_path: Path, sample_png: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.device import Device

    second = tmp_path / "second.png"
    second.write_bytes(png_bytes(gradient()[::-1].copy()))
    analyse = Device.analyse_file

    def interrupted_on_the_second(self: Device, path: Path, *args: Any, **kwargs: Any) -> Any:
        if Path(path) == second:
            raise KeyboardInterrupt
        return analyse(self, path, *args, **kwargs)

    monkeypatch.setattr(Device, "analyse_file", interrupted_on_the_second)
    code, out, err = run(tmp_path, "infer", str(sample_png), str(second))
    assert code == 130
    assert out.startswith("OK ")
    assert "Aborted" not in err
    assert "interrupted (Ctrl-C)" in err
    with Store(tmp_path / "data") as store:
        assert store.counts()["results"] == 1


@pytest.mark.parametrize("source", ["/dev/video97", "missing-clip.mp4"])
def test_capture_from_a_source_that_gives_no_frame_is_refused(tmp_path: Path, source: str) -> None:
    """`edge capture` from a capture device that is not there (or a file that is not) said
    "nothing analysed" and exited 0; with --record, VIDEO_TOO_SHORT."""
    for extra in ([], ["--record"]):
        code, _, err = run(tmp_path, "capture", "--source", str(tmp_path / source), "--seconds", "1", *extra)
        assert code == 1, err
        assert "VIDEO_UNREADABLE" in err
        assert "VIDEO_TOO_SHORT" not in err
