"""Reading text in pixels: the small contract an OCR engine fills, and Tesseract behind it.

A backend is `is_available()` plus `words(image)`: the words it read, each with its box and its
confidence. Tesseract (Debian's `tesseract-ocr`) is driven through pytesseract, which runs the
`tesseract` program once per call: nothing to compile on a Jetson, no coupling to the
libtesseract ABI, and a hung or crashing engine is a child process with a timeout, not the sync
agent. Every failure is `OcrUnavailable`, so the caller can fail closed (withhold the pixels).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar, Protocol

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

    def _module(self):  # type: ignore[no-untyped-def]
        try:
            import pytesseract
        except ImportError as exc:
            raise OcrUnavailable("the pytesseract package is not installed") from exc
        # pytesseract keeps the program in a module global: each engine sets its own before use.
        pytesseract.pytesseract.tesseract_cmd = self.command or "tesseract"
        # Debian's Tesseract is built with OpenMP: with no limit, its nested parallel regions
        # start more threads than there are cores, which spin against each other and anything
        # else running (one page took 4x as long on 2 cores; tesseract-ocr/tesseract#3109).
        # One thread per child: `burned_text` reads pages side by side instead. The child
        # inherits this; an operator's own setting wins.
        os.environ.setdefault("OMP_THREAD_LIMIT", "1")
        return pytesseract

    def is_available(self) -> bool:
        # Found once is enough (a later failure is an OcrUnavailable); missing is asked again.
        if self._found:
            return True
        try:
            self._module().get_tesseract_version()
        except Exception:  # noqa: BLE001 - any failure means "cannot check pixels"
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
        pytesseract = self._module()
        try:
            data = pytesseract.image_to_data(
                page,
                lang="eng",
                # psm 11: sparse text, as much as possible in no particular order.
                config="--psm 11 --oem 1",
                output_type=pytesseract.Output.DICT,
                timeout=self.timeout_s,
            )
        except Exception as exc:
            raise OcrUnavailable(f"{type(exc).__name__}: {str(exc)[:160]}") from exc
        words = []
        for index, raw in enumerate(data["text"]):
            text = (raw or "").strip()
            if not text:
                continue
            words.append(
                Word(
                    text=text,
                    confidence=float(data["conf"][index]),
                    box=(
                        int(data["left"][index]),
                        int(data["top"][index]),
                        int(data["width"][index]),
                        int(data["height"][index]),
                    ),
                    line=(
                        int(data["block_num"][index]),
                        int(data["par_num"][index]),
                        int(data["line_num"][index]),
                    ),
                )
            )
        return words


def _digest(page: np.ndarray, command: str | None) -> bytes:
    """What a reading depends on: the pixels, their layout, and which engine program read them."""
    hasher = hashlib.blake2b(digest_size=20)
    hasher.update(f"{page.shape}|{page.dtype.str}|{command}".encode())
    hasher.update(page.data)
    return hasher.digest()
