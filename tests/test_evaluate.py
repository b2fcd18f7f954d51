"""`edge models eval` on labelled folders built from the shipped samples."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.errors import Code, EdgeError
from edge.inference.labels_table import read_labels
from tests.conftest import DEFAULT_MODEL


def labelled_folder(
    tmp_path: Path, samples: list[tuple[Path, str]], extra: list[tuple[str, str]] = ()
) -> Path:  # type: ignore[assignment]
    folder = tmp_path / "site-images"
    folder.mkdir()
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for path, label in samples:
            shutil.copyfile(path, folder / path.name)
            writer.writerow([path.name, label])
        writer.writerows(extra)
    return folder


def test_eval_reports_metrics_with_intervals_and_writes_plots(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    folder = labelled_folder(tmp_path, samples)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(10))
    with (folder / "labels.csv").open("a", newline="") as handle:
        csv.writer(handle).writerow(["broken.png", "normal"])
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        [
            "--data-dir",
            str(tmp_path / "d"),
            "models",
            "eval",
            DEFAULT_MODEL,
            "--data",
            str(folder),
            "--out",
            str(out),
            "--json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["images"] == len(samples)
    assert [r["code"] for r in report["refused"]] == ["IMAGE_TRUNCATED"]
    for key in ("auc", "sensitivity", "specificity", "accuracy", "ece"):
        metric = report["metrics"][key]
        assert metric["ci95_low"] <= metric["value"] <= metric["ci95_high"], key
    assert report["metrics"]["auc"]["value"] > 0.8
    for name in ("roc.png", "reliability.png", "predictions.csv", "metrics.json"):
        assert (out / name).stat().st_size > 0
    assert not (tmp_path / "d" / "edge.db").exists()  # evaluation never writes clinical records
    text = CliRunner().invoke(
        cli,
        [
            "--data-dir",
            str(tmp_path / "d"),
            "models",
            "eval",
            DEFAULT_MODEL,
            "--data",
            str(folder),
            "--out",
            str(out),
        ],
    )
    assert "95% CI" in text.output


def test_a_spreadsheets_labels_table_reads_as_meant(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    (folder / "NORMAL").mkdir(parents=True)
    for name in ("NORMAL/a.jpeg", "b.jpeg", "c.jpeg"):
        (folder / name).write_bytes(name.encode())  # each its own image (one is known by its bytes)
    # What a spreadsheet writes: a byte-order mark, CRLF, headers in its own case with an
    # extra column first, labels in capitals, a Windows separator, a repeat, a blank last line.
    (folder / "labels.csv").write_bytes(
        "\ufeffPatient, Path ,LABEL\r\n"
        "p1,NORMAL\\a.jpeg,NORMAL\r\n"
        "p2, b.jpeg , Pneumonia\r\n"
        "p3,c.jpeg,pneumonia\r\n"
        "p3,./c.jpeg,pneumonia\r\n"
        ",,\r\n".encode()
    )
    table = read_labels(folder, ["normal", "pneumonia"])
    assert table.repeated == 1
    assert table.rows == [
        (folder / "NORMAL/a.jpeg", "normal"),
        (folder / "b.jpeg", "pneumonia"),
        (folder / "c.jpeg", "pneumonia"),
    ]
    with (folder / "labels.csv").open("a") as handle:
        handle.write("p4,b.jpeg,normal\n")
    with pytest.raises(EdgeError, match=r"line 7: b\.jpeg is normal, line 3 says pneumonia") as caught:
        read_labels(folder, ["normal", "pneumonia"])
    assert caught.value.code is Code.INPUT_UNREADABLE
    # European and "Unicode text" exports: semicolons in the Windows code page, tabs in UTF-16.
    (folder / "\xe9t\xe9.jpeg").write_bytes(b"ete")
    expected = [(folder / "\xe9t\xe9.jpeg", "normal"), (folder / "b.jpeg", "pneumonia")]
    for encoding, text in (
        ("cp1252", "path;label\r\n\xe9t\xe9.jpeg;normal\r\nb.jpeg;pneumonia\r\n"),
        ("utf-16", "path\tlabel\r\n\xe9t\xe9.jpeg\tnormal\r\nb.jpeg\tpneumonia\r\n"),
    ):
        (folder / "labels.csv").write_bytes(text.encode(encoding))
        assert read_labels(folder, ["normal", "pneumonia"]).rows == expected, encoding
    # Excel's separator line, a blank line, a quoted header holding the separator.
    (folder / "labels.csv").write_text('sep=;\n\npath;"label";"note; free"\nb.jpeg;Normal;x\n')
    assert read_labels(folder, ["normal"]).rows == [(folder / "b.jpeg", "normal")]
    (folder / "labels.csv").write_text('path,"a,label"\nb.jpeg,normal\n')
    with pytest.raises(EdgeError, match="needs a header with path and label"):
        read_labels(folder, ["normal"])
    (folder / "labels.csv").write_text("path|label\nb.jpeg|normal\n")
    with pytest.raises(EdgeError, match=r"commas, semicolons or tabs\); its first line is 'path\|label'"):
        read_labels(folder, ["normal"])
    for empty in ("", "path,label\n\n"):
        (folder / "labels.csv").write_text(empty)
        with pytest.raises(EdgeError, match="is empty" if not empty else "lists no images") as caught:
            read_labels(folder, ["normal"])
        assert caught.value.code is Code.INPUT_EMPTY
    # A folder sorted into one folder per class, as data sets are shared, and no table.
    (folder / "labels.csv").unlink()
    with pytest.raises(EdgeError, match=r"folders named after classes \(NORMAL\) are not read as labels"):
        read_labels(folder, ["normal", "pneumonia"])


def test_eval_refuses_bad_labels_and_missing_files(tmp_path: Path, samples: list) -> None:  # type: ignore[type-arg]
    folder = labelled_folder(tmp_path, samples[:3], extra=[("x.png", "tuberculosis"), ("gone.png", "normal")])
    with pytest.raises(EdgeError) as caught:
        read_labels(folder, ["normal", "pneumonia"])
    assert "tuberculosis" in caught.value.message
    assert "line 5" in caught.value.message
    with pytest.raises(EdgeError) as caught:
        read_labels(folder, ["normal", "pneumonia", "tuberculosis"])
    assert caught.value.code is Code.INPUT_NOT_FOUND
    assert "x.png" in caught.value.message
    (folder / "labels.csv").write_text("file,class\na.png,normal\n")
    with pytest.raises(EdgeError, match="path and label"):
        read_labels(folder, ["normal"])
    result = CliRunner().invoke(cli, ["models", "eval", DEFAULT_MODEL, "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert result.stderr.startswith("INPUT_NOT_FOUND")
