"""A site's `labels.csv` (columns path,label), as `edge models eval` and `calibrate` read it.

The table is made by people, often in a spreadsheet, so what a spreadsheet writes is read as
meant: a UTF-8 byte-order mark, UTF-16 ("Unicode text"), a Windows code page, semicolons or tabs
between the columns (European and "text" exports), CRLF line ends, header names in another case
or with spaces, extra columns, a label in another case ("NORMAL" for `normal`), Windows
separators in a relative path. Anything that would change a figure is refused with every
offending line named: an unknown label, a missing image, an empty table, the same image listed
under two labels. The same image listed twice under one label counts once (twice would weigh it
double in every figure), and the caller says so.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath

from edge.errors import Code, EdgeError

SHOWN = 10  # offending lines named in a refusal; the rest counted
DELIMITERS = (",", ";", "\t")  # tried in this order on the header line


@dataclass(frozen=True)
class LabelledImages:
    rows: list[tuple[Path, str]]
    """(image path, the model's label) per image, in the table's order, each image once."""
    repeated: int = 0
    """Lines that listed an image again under the same label (counted once)."""
    digest: str = ""
    """sha256 of the table as read: which table it was, without its folder's name."""


def read_labels(folder: Path, labels: list[str]) -> LabelledImages:
    """`folder/labels.csv` read as the module docstring says, or a coded refusal."""
    table = folder / "labels.csv"
    if not table.is_file():
        classes = sorted(p.name for p in folder.glob("*") if p.is_dir() and p.name.lower() in labels)
        hint = (
            f"; folders named after classes ({', '.join(classes)}) are not read as labels" if classes else ""
        )
        raise EdgeError(Code.INPUT_NOT_FOUND, f"{table} does not exist (expected columns path,label{hint})")
    data = table.read_bytes()
    text = _text(table, data)
    if not text.strip():
        raise EdgeError(Code.INPUT_EMPTY, f"{table} is empty (expected columns path,label)")
    lines, header = _header(table, text)
    path_at, label_at = header.index("path"), header.index("label")
    by_lower = {label.lower(): label for label in labels}
    bad_labels, missing, rows = [], [], []
    for number, cells in lines:  # blank lines, as spreadsheets leave at the end, are gone
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
    return replace(_once_each(rows), digest=hashlib.sha256(data).hexdigest())


def _text(table: Path, data: bytes) -> str:
    """The table's text: UTF-16 by its byte-order mark, else UTF-8 (with or without a mark),
    else the Windows code page a spreadsheet saves "CSV" in. A wrong guess can only misname a
    path or a label, which is then refused with its line."""
    if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        encodings = ["utf-16"]
    else:
        encodings = ["utf-8-sig", "cp1252"]
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise EdgeError(Code.INPUT_UNREADABLE, f"{table} is not text in a known encoding: save it as CSV UTF-8")


def _header(table: Path, text: str) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """The numbered rows after the header, and the header's names: the first delimiter whose
    reading of the first row (after blank lines and Excel's `sep=` line) names path and label."""
    for delimiter in DELIMITERS:
        read = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
        rows = [(n, c) for n, c in enumerate(read, start=1) if any(cell.strip() for cell in c)]
        if rows and delimiter.join(rows[0][1]).strip().lower().startswith("sep="):
            rows = rows[1:]
        header = [name.strip().lower() for name in rows[0][1]] if rows else []
        if {"path", "label"} <= set(header):
            return rows[1:], header
    first = next((line for line in text.splitlines() if line.strip()), "")
    raise EdgeError(
        Code.INPUT_UNREADABLE,
        f"{table} needs a header with path and label columns (separated by commas, semicolons "
        f"or tabs); its first line is {first[:80]!r}",
    )


def _relative(raw: str) -> str:
    """A path as written; one with only Windows separators (`NORMAL\\IM-1.jpeg`) read as such."""
    return PureWindowsPath(raw).as_posix() if "\\" in raw and "/" not in raw else raw


def _once_each(rows: list[tuple[int, Path, str]]) -> LabelledImages:
    """Each image once, by its content: the same file under two names (a copy, a link) counted
    twice, and under two labels it was fitted on both (one mislabelled copy moved a site's
    temperature from 1.30 to 1.76)."""
    first: dict[str, tuple[int, Path, str]] = {}
    conflicts, repeats, kept = [], 0, []
    for number, path, label in rows:
        key = _content(path)
        if key not in first:
            first[key] = (number, path, label)
            kept.append((path, label))
            continue
        earlier, was, said = first[key]
        if said != label:
            same = "" if was.resolve() == path.resolve() else f" ({was.name}, the same image)"
            conflicts.append(f"line {number}: {path.name} is {label}, line {earlier}{same} says {said}")
        else:
            repeats += 1
    if conflicts:
        raise EdgeError(Code.INPUT_UNREADABLE, f"images listed under two labels: {_listed(conflicts)}")
    return LabelledImages(kept, repeats)


def _content(path: Path) -> str:
    """The file's sha256; its resolved path where it cannot be read (refused when it is)."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    except OSError:
        return f"path:{path.resolve()}"
    return digest.hexdigest()


def _listed(items: list[str]) -> str:
    more = f"; and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "; ".join(items[:SHOWN]) + more
