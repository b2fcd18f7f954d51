"""How pages go to the OCR engine: several at a time, each Tesseract child on one thread, and the
findings the same as when read one after another (edge/imaging/burned_text.py `_read_all`,
edge/imaging/ocr.py)."""

from __future__ import annotations

import os
import shutil
import stat
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.imaging import burned_text
from edge.imaging.burned_text import Identifiers, TextPolicy, read_text
from edge.imaging.ocr import OcrUnavailable, TesseractOcr, Word, parse_tsv


class _CountingOcr:
    """Reads a word whose text says which page it was shown (its mean grey and shape) and how
    many readings were under way at once, taking a moment over each as an engine would."""

    name = "counting"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = self.most = 0

    def is_available(self) -> bool:
        return True

    def words(self, image: np.ndarray) -> list[Word]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        # What is read, where, and on which line all follow from the page shown.
        mean, (height, width) = int(image.mean()), image.shape[:2]
        box = (mean % 50, height % 37, 5 + width % 11, 6 + mean % 5)
        return [Word(f"P{mean}X{height}X{width}", 95.0, box, (mean, height % 7, width % 5))]


def _picture(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    colour = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    colour[..., 0] = 255 - colour[..., 1]  # colour contrast: all three planes are read
    return colour


def test_pages_are_read_side_by_side_and_found_as_one_after_another(monkeypatch) -> None:
    picture = _picture(120, 160)
    policy = TextPolicy(redact_all=True)
    monkeypatch.setattr(burned_text, "ocr_workers", lambda: 1)
    alone = _CountingOcr()
    one_by_one = read_text(picture, alone, Identifiers(), policy)
    monkeypatch.setattr(burned_text, "ocr_workers", lambda: 3)
    together = _CountingOcr()
    side_by_side = read_text(picture, together, Identifiers(), policy)
    assert alone.most == 1
    assert together.most == 3
    assert one_by_one.words_read == 18  # 3 planes, 2 layers, upright and turned both ways
    assert len(set(one_by_one.boxes)) > 6  # the pages' words differ, so their order shows
    assert side_by_side == one_by_one  # the same words, boxes and counts, in the same order
    # Each page's reading comes back against its own page and turn.
    sheets = list(burned_text._sheets(picture, 4.0, burned_text._TURNS))  # as read_text scales it
    serial = [
        (page.shape, turn, together.words(page if turn is None else cv2.rotate(page, turn)))
        for page, turn in sheets
    ]
    assert burned_text._read_all(sheets, _CountingOcr(), page_pixels=1) == serial


def test_a_large_films_pages_are_read_fewer_at_a_time(monkeypatch) -> None:
    """The sync service's memory cap counts its Tesseract children: at most IN_FLIGHT_PIXELS of
    pages are read at once."""
    monkeypatch.setattr(burned_text, "ocr_workers", lambda: 3)
    side = int((burned_text.IN_FLIGHT_PIXELS // 2) ** 0.5) + 1  # two such pages are too many
    film = np.zeros((side, side), np.uint8)
    ocr = _CountingOcr()
    read_text(film, ocr, Identifiers(), TextPolicy(redact_all=True))
    assert ocr.most == 1
    small = _CountingOcr()
    read_text(film[:400, :400], small, Identifiers(), TextPolicy(redact_all=True))
    assert small.most == 3


@pytest.mark.parametrize(("cores", "workers"), [(1, 1), (2, 2), (8, 3)])
def test_the_cores_this_process_may_use_bound_the_readings_at_once(
    monkeypatch, cores: int, workers: int
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert burned_text.ocr_workers() == workers


@pytest.mark.skipif(
    shutil.which("tesseract") is None and not os.environ.get("CI"), reason="tesseract-ocr not installed"
)
def test_each_tesseract_child_runs_on_one_thread_unless_set(tmp_path: Path, monkeypatch) -> None:
    """Debian's Tesseract is built with OpenMP, whose spinning threads slow readings side by side
    (and the agent's inference beside them) several times over: the child gets
    OMP_THREAD_LIMIT=1, and an operator's own value is kept."""
    log = tmp_path / "threads.log"
    wrapper = tmp_path / "tesseract"
    wrapper.write_text(f'#!/bin/sh\necho "${{OMP_THREAD_LIMIT:-unset}}" >> {log}\nexec tesseract "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    page = np.full((60, 240), 255, np.uint8)
    cv2.putText(page, "THREAD 42", (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 2)

    monkeypatch.delenv("OMP_THREAD_LIMIT", raising=False)
    words = TesseractOcr(command=str(wrapper)).words(page)
    assert "42" in " ".join(word.text for word in words)
    assert log.read_text().split() == ["1"]
    assert "OMP_THREAD_LIMIT" not in os.environ  # the child's alone: nothing else is limited
    monkeypatch.setenv("OMP_THREAD_LIMIT", "2")
    page[0, 0] = 0  # other pixels: not answered from the memo
    TesseractOcr(command=str(wrapper)).words(page)
    assert log.read_text().split() == ["1", "2"]


def _program(folder: Path, script: str) -> str:
    program = folder / "engine"
    program.write_text(f"#!/bin/sh\n{script}\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return str(program)


@pytest.mark.parametrize(
    ("script", "timeout_s", "says"),
    [
        ("echo 'Error, cannot read input file' >&2; exit 1", 30, "exited 1: Error, cannot read input file"),
        ("exec sleep 60", 1, "TimeoutExpired"),
        ("echo 'not a table'", 30, "unexpected output"),
        ("printf 'level\\tleft\\ttext\\n5\\tx\\tWORD\\n'", 30, "unexpected output"),
    ],
)
def test_an_engine_that_fails_hangs_or_talks_nonsense_is_unavailable(
    tmp_path: Path, script: str, timeout_s: float, says: str
) -> None:
    """Every failure is OcrUnavailable, which withholds the pixels (never sends them unread).
    Only the hanging engine meets a short timeout: the others may start slowly."""
    engine = TesseractOcr(timeout_s=timeout_s, command=_program(tmp_path, script))
    with pytest.raises(OcrUnavailable, match=says):
        engine.words(np.random.default_rng().integers(0, 256, (20, 30), dtype=np.uint8))
    assert not TesseractOcr(command=str(tmp_path / "missing")).is_available()


def test_tesseract_tsv_rows_become_words() -> None:
    tsv = (
        "level\tpage_num\tblock_num\tpar_num\tline_num\tword_num\tleft\ttop\twidth\theight\tconf\ttext\n"
        "1\t1\t0\t0\t0\t0\t0\t0\t640\t480\t-1\t\n"
        "5\t1\t2\t1\t3\t1\t10\t20\t30\t12\t91.5\tDOE\n"
        "5\t1\t2\t1\t3\t2\t44\t20\t30\t12\t88\t 4711 \n"
        "5\t1\t2\t1\t3\t3\t80\t20\t5\t12\t95\n"  # a word row cut short: no text
    )
    assert parse_tsv(tsv) == [
        Word("DOE", 91.5, (10, 20, 30, 12), (2, 1, 3)),
        Word("4711", 88.0, (44, 20, 30, 12), (2, 1, 3)),
    ]
    assert parse_tsv("") == []
