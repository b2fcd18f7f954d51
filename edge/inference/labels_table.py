"""A site's `labels.csv` (columns path,label), as `edge models eval` and `calibrate` read it.

The table is made by people, often in a spreadsheet, so what a spreadsheet adds is read as meant:
a UTF-8 byte-order mark, CRLF line ends, header names in another case or with spaces, extra
columns, a label in another case ("NORMAL" for `normal`), Windows separators in a relative path.
Anything that would change a figure is refused with every offending line named: an unknown
label, a missing image, an empty table, the same image listed under two labels. The same image
listed twice under one label counts once (twice would weigh it double in every figure).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path, PureWindowsPath

from edge.errors import Code, EdgeError

log = logging.getLogger(__name__)

SHOWN = 10  # offending lines named in a refusal; the rest counted


def read_labels(folder: Path, labels: list[str]) -> list[tuple[Path, str]]:
    """`folder/labels.csv` -> (image path, the model's label) per image, in the table's order."""
    table = folder / "labels.csv"
    if not table.is_file():
        raise EdgeError(Code.INPUT_NOT_FOUND, f"{table} does not exist (expected columns path,label)")
    try:
        with table.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            header = [name.strip().lower() for name in next(reader, [])]
            lines = list(enumerate(reader, start=2))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise EdgeError(Code.INPUT_UNREADABLE, f"{table} is not a UTF-8 CSV table: {exc}") from exc
    if not {"path", "label"} <= set(header):
        raise EdgeError(Code.INPUT_UNREADABLE, f"{table} needs a header with path and label columns")
    path_at, label_at = header.index("path"), header.index("label")
    by_lower = {label.lower(): label for label in labels}
    bad_labels, missing, rows = [], [], []
    for number, cells in lines:
        if not any(cell.strip() for cell in cells):
            continue  # a blank line, as spreadsheets leave at the end
        raw_path = cells[path_at].strip() if path_at < len(cells) else ""
        raw_label = cells[label_at].strip() if label_at < len(cells) else ""
        label = by_lower.get(raw_label.lower())
        if label is None:
            bad_labels.append(f"line {number}: {raw_label!r}")
        path = folder / _relative(raw_path)
        if not raw_path or not path.is_file():
            missing.append(f"line {number}: {raw_path}")
        if label is not None and raw_path:
            rows.append((number, path, label))
    if bad_labels:
        raise EdgeError(
            Code.INPUT_UNREADABLE,
            f"unknown labels (the model knows {', '.join(labels)}): {_listed(bad_labels)}",
        )
    if missing:
        raise EdgeError(Code.INPUT_NOT_FOUND, f"missing images: {_listed(missing)}")
    if not rows:
        raise EdgeError(Code.INPUT_EMPTY, f"{table} lists no images")
    return _once_each(rows)


def _relative(raw: str) -> str:
    """A path as written; one with only Windows separators (`NORMAL\\IM-1.jpeg`) read as such."""
    return PureWindowsPath(raw).as_posix() if "\\" in raw and "/" not in raw else raw


def _once_each(rows: list[tuple[int, Path, str]]) -> list[tuple[Path, str]]:
    first: dict[Path, tuple[int, str]] = {}
    conflicts, repeats, kept = [], 0, []
    for number, path, label in rows:
        key = path.resolve()
        if key not in first:
            first[key] = (number, label)
            kept.append((path, label))
        elif first[key][1] != label:
            earlier, said = first[key]
            conflicts.append(f"line {number}: {path.name} is {label}, line {earlier} says {said}")
        else:
            repeats += 1
    if conflicts:
        raise EdgeError(Code.INPUT_UNREADABLE, f"images listed under two labels: {_listed(conflicts)}")
    if repeats:
        log.warning("labels.csv lists %d image(s) more than once under the same label: counted once", repeats)
    return kept


def _listed(items: list[str]) -> str:
    more = f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more
