"""Reading text in pixels: the small contract an OCR engine fills, and Tesseract behind it.

A backend is `is_available()` plus `words(image)`: the words it read, each with its box and its
confidence. Tesseract (Debian's `tesseract-ocr`) runs as a child process per page, the page
handed over as PNG on its standard input and its words read back as TSV from its standard
output: nothing to compile on a Jetson, no coupling to the libtesseract ABI, no page of patient
pixels in a temporary file, and a hung or crashing engine is a child with a timeout, not the
sync agent. (pytesseract, used before, writes each page to a temporary file and gives its
child this process's environment, with no way to set the child's thread limit alone.) Every
failure is `OcrUnavailable`, so the caller can fail closed (withhold the pixels).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Protocol

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x, y, width, height


@dataclass(frozen=True)
class Word:
    text: str
    confidence: float  # 0..100, as the engine reports it
    box: Box
    line: tuple[int, int, int]  # block, paragraph, line: words on one line may form one identifier


class OcrUnavailable(Exception):
    """The engine is missing, timed out or failed: these pixels were not checked."""


class OcrBackend(Protocol):
    name: str

    def is_available(self) -> bool: ...

    def words(self, image: np.ndarray) -> list[Word]: ...


class TesseractOcr:
    """Tesseract 4/5 (LSTM) in sparse-text mode: screen text is scattered labels, not a page."""

    name = "tesseract"
    # Readings kept by the pixels' digest: the engine is deterministic, and the same pixels come
    # back often (a thumbnail re-sent after a cut link, the heatmap read beside its image, every
    # pass of a re-read after black-out that changed nothing). A reading is a few hundred bytes.
    # Shared by every engine in the process; the key names the program that read.
    MEMO_SIZE = 256
    _memo: ClassVar[OrderedDict[bytes, list[Word]]] = OrderedDict()
    _memo_lock = threading.Lock()

    def __init__(self, timeout_s: float = 20.0, command: str | None = None) -> None:
        self.timeout_s = timeout_s
        self.command = command
        self._found = False

    def _run(self, arguments: list[str], page: bytes = b"") -> bytes:
        """The program's standard output; `OcrUnavailable` on any failure."""
        # Debian's Tesseract is built with OpenMP: with no limit, its nested parallel regions
        # start more threads than there are cores, which spin against each other and anything
        # else running (one page took 4x as long on 2 cores; tesseract-ocr/tesseract#3109).
        # One thread per child (`burned_text` reads pages side by side instead); an operator's
        # own OMP_THREAD_LIMIT wins. Set for the child only: nothing else this process starts
        # is limited.
        environment = {**os.environ}
        environment.setdefault("OMP_THREAD_LIMIT", "1")
        command = [self.command or "tesseract", *arguments]
        try:
            done = subprocess.run(
                command, input=page, capture_output=True, timeout=self.timeout_s, env=environment, check=False
            )
        except (OSError, subprocess.SubprocessError) as exc:  # missing, not executable, timed out
            raise OcrUnavailable(f"{type(exc).__name__}: {str(exc)[:160]}") from exc
        if done.returncode != 0:
            said = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise OcrUnavailable(f"tesseract exited {done.returncode}: {(said or [''])[-1][:160]}")
        return done.stdout

    def is_available(self) -> bool:
        # Found once is enough (a later failure is an OcrUnavailable); missing is asked again.
        if self._found:
            return True
        try:
            self._run(["--version"])
        except OcrUnavailable:
            return False
        self._found = True
        return True

    def words(self, image: np.ndarray) -> list[Word]:
        page = np.ascontiguousarray(image)
        key = _digest(page, self.command)
        with self._memo_lock:
            if key in self._memo:
                self._memo.move_to_end(key)
                return list(self._memo[key])
        words = self._read(page)
        with self._memo_lock:
            self._memo[key] = words
            while len(self._memo) > self.MEMO_SIZE:
                self._memo.popitem(last=False)
        return list(words)

    def _read(self, page: np.ndarray) -> list[Word]:
        # OpenCV writes three channels as BGR; ours are RGB.
        image = page if page.ndim == 2 else np.ascontiguousarray(page[..., 2::-1])
        encoded, png = cv2.imencode(".png", image)
        if not encoded:
            raise OcrUnavailable(f"a page of shape {page.shape} could not be encoded for the engine")
        # psm 11: sparse text, as much as possible in no particular order.
        arguments = ["stdin", "stdout", "-l", "eng", "--psm", "11", "--oem", "1", "tsv"]
        return parse_tsv(self._run(arguments, png.tobytes()).decode("utf-8", "replace"))


def parse_tsv(tsv: str) -> list[Word]:
    """The words of Tesseract's TSV output (one row per page, block, paragraph, line and word;
    only word rows carry text)."""
    rows = tsv.splitlines()
    if not rows:
        return []
    header = rows[0].split("\t")
    if header[-1] != "text":
        raise OcrUnavailable(f"unexpected output from the engine: {rows[0][:80]!r}")
    words = []
    for row in rows[1:]:
        values = (row.split("\t") + [""] * len(header))[: len(header)]  # a word row may end early
        fields = dict(zip(header, values, strict=True))
        text = fields["text"].strip()
        if not text:
            continue
        try:
            left, top, width, height = (int(fields[key]) for key in ("left", "top", "width", "height"))
            block, paragraph, line = (int(fields[key]) for key in ("block_num", "par_num", "line_num"))
            confidence = float(fields["conf"])
        except (KeyError, ValueError) as exc:
            raise OcrUnavailable(f"unexpected output from the engine: {row[:80]!r}") from exc
        words.append(Word(text, confidence, (left, top, width, height), (block, paragraph, line)))
    return words


def _digest(page: np.ndarray, command: str | None) -> bytes:
    """What a reading depends on: the pixels, their layout, and which engine program read them."""
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(f"{page.shape}|{page.dtype.str}|{command}".encode())
    hasher.update(page.data)
    return hasher.digest()
