"""Burned-in text: find it in the pixels and black it out. Pure numpy in and out; the OCR engine
is passed in (`edge.imaging.ocr`).

A scanner's `BurnedInAnnotation` flag is often absent or wrong, so the pixels decide. Whatever
is about to leave the device is read by OCR (scaled up so that small screen text is big enough
for the engine: text a person can read in a thumbnail must be text the engine can read), and
each word is blacked out, with a margin, when it matches one of the patient's identifiers
(fuzzily: OCR confuses O/0, I/1, S/5 ...) or, under the policy "any", when it is any text at all.
The result is read again: what the second reading still finds is blacked out too. Pixels that
cannot be read (engine missing or failing, too large) raise `PixelsUnchecked`: the caller
withholds them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher

import cv2
import numpy as np

from edge.imaging.ocr import Box, OcrBackend, OcrUnavailable, Word

OCR_TARGET_SIDE = 1600  # the longest side OCR sees: small text scaled up until it is legible
OCR_MAX_UPSCALE = 4.0
MAX_PIXELS = 40_000_000  # larger is not read (time, memory): withheld instead
# Under policy "any", what counts as text: speckle and lung read through the top-hat layers
# come back as short "words" of confidence 40-70 (tools/burned_text_bench.py, clean images).
MIN_CONFIDENCE = 75.0
# With no identifier to match (a PNG from the drop folder, a header without names), confidence
# is all there is: lower, so text over speckle is caught at the cost of more false redactions.
MIN_CONFIDENCE_UNKNOWN_PATIENT = 40.0
MIN_TEXT_CHARS = 2
MATCH_RATIO = 0.78  # similarity of an OCR word to an identifier that counts as the identifier
MIN_TOKEN = 3  # shorter name parts ("LI", "MA") would match half of the screen's labels
PASSES = 2
OCR_MAX_WORKERS = 3  # pages read at once (`ocr_workers`)
# Pixels of the pages read at once: an ultrasound picture's (up to 2.6 MP each at OCR scale) 3
# at a time, a film's (7 MP and more) one at a time (`_read_all`).
IN_FLIGHT_PIXELS = 8_000_000
TOPHAT_KERNEL = 31  # px at OCR scale: strokes thinner than this count as text strokes
COLOURLESS = 12  # grey levels between channels below which a picture is grey (JPEG's chroma noise)
COLOUR_CONTRAST = 32  # a colour-difference plane's range (median of 3) below which it is not read

# OCR reads these for one another; both sides are folded before they are compared.
_CONFUSABLE = str.maketrans({"O": "0", "Q": "0", "D": "0", "I": "1", "L": "1", "|": "1", "S": "5",
                             "B": "8", "Z": "2", "G": "6", "T": "7"})  # fmt: skip


class PixelsUnchecked(Exception):
    """These pixels could not be checked for text; they must not leave the device."""


def fold(text: str) -> str:
    """Upper case, letters and digits only, OCR look-alikes made one."""
    return re.sub(r"[^A-Z0-9]", "", text.upper().translate(_CONFUSABLE))


@dataclass(frozen=True)
class Identifiers:
    """What identifies the patient, as OCR might read it: folded tokens (name parts, IDs,
    accession) and the birth date in the usual ways a screen writes a date."""

    tokens: tuple[str, ...] = ()

    @classmethod
    def from_values(
        cls,
        names: Iterable[str | None] = (),
        ids: Iterable[str | None] = (),
        dates: Iterable[str | None] = (),
    ) -> Identifiers:
        tokens: set[str] = set()
        for name in names:
            for part in re.split(r"[\^\s,.=]+", name or ""):
                if len(fold(part)) >= MIN_TOKEN:
                    tokens.add(fold(part))
        for value in ids:
            if value and len(fold(value)) >= MIN_TOKEN:
                tokens.add(fold(value))
        for value in dates:
            tokens.update(fold(form) for form in _date_forms(value or ""))
        return cls(tuple(sorted(tokens)))

    def __bool__(self) -> bool:
        return bool(self.tokens)

    def match(self, text: str) -> bool:
        """Whether `text` (one word, or words of one line run together) holds an identifier."""
        folded = fold(text)
        if len(folded) < MIN_TOKEN:
            return False
        return any(_similar(token, folded) for token in self.tokens)


def _date_forms(value: str) -> list[str]:
    digits = re.sub(r"\D", "", value)
    if len(digits) != 8:
        return []
    y, m, d = digits[:4], digits[4:6], digits[6:]
    return [digits, f"{d}{m}{y}", f"{m}{d}{y}", f"{d}{m}{y[2:]}", f"{m}{d}{y[2:]}"]


def _similar(token: str, text: str) -> bool:
    # Whole, or a piece of it: OCR splits "40817253" into "408" and "17253" on a speckled
    # background, and each piece is part of the number.
    if token in text or (len(text) >= 4 and text in token):
        return True
    # The token inside a longer word ("NAME:DOE"), or the word a cut-off token: compare each
    # window of the token's length, so a label glued to the value still matches.
    width = len(token)
    if len(text) <= width:
        return SequenceMatcher(None, token, text).ratio() >= MATCH_RATIO
    return any(
        SequenceMatcher(None, token, text[i : i + width]).ratio() >= MATCH_RATIO
        for i in range(len(text) - width + 1)
    )


@dataclass(frozen=True)
class TextPolicy:
    redact_all: bool  # "any": every word found; else only words matching an identifier
    min_confidence: float = MIN_CONFIDENCE
    sideways: bool = True  # also read each page turned a quarter either way (`_turned_back`)


@dataclass
class Findings:
    """What the readings found: boxes (in the image's pixels) to black out, and how many words
    of each kind; counts only, never the text (it may be a name)."""

    boxes: list[Box] = field(default_factory=list)
    identifiers: int = 0
    other_text: int = 0
    words_read: int = 0

    def add(self, other: Findings) -> None:
        self.boxes += other.boxes
        self.identifiers += other.identifiers
        self.other_text += other.other_text
        self.words_read += other.words_read


def mask_outside(image: np.ndarray, box: Box) -> np.ndarray:
    """Black everywhere except inside `box` (the imaging sector); a copy."""
    x, y, w, h = box
    out = np.zeros_like(image)
    out[y : y + h, x : x + w] = image[y : y + h, x : x + w]
    return out


def grow_boxes(boxes: Sequence[Box], shape: tuple[int, ...]) -> list[Box]:
    """Each box grown by a third of its height (at least 3 px) up and down, so antialiased
    edges, accents and descenders go too, and by its height sideways: a character or two OCR
    left out of the word (read as noise) goes with it. Clipped to the image."""
    height, width = shape[:2]
    grown = []
    for x, y, w, h in boxes:
        grow_y, grow_x = max(3, h // 3), max(3, h)
        x0, y0 = max(0, x - grow_x), max(0, y - grow_y)
        x1, y1 = min(width, x + w + grow_x), min(height, y + h + grow_y)
        if x1 > x0 and y1 > y0:
            grown.append((x0, y0, x1 - x0, y1 - y0))
    return grown


def black_out(image: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """Black rectangles over `boxes`, exactly (grow them first); a copy."""
    out = image.copy()
    for x, y, w, h in boxes:
        out[max(0, y) : y + h, max(0, x) : x + w] = 0
    return out


def scale_boxes(boxes: Sequence[Box], sx: float, sy: float) -> list[Box]:
    """Boxes of one image in another of the same picture, sized by (sx, sy); rounded outwards."""
    scaled = []
    for x, y, w, h in boxes:
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = int(np.ceil((x + w) * sx)), int(np.ceil((y + h) * sy))
        scaled.append((x0, y0, max(1, x1 - x0), max(1, y1 - y0)))
    return scaled


def read_text(image: np.ndarray, ocr: OcrBackend, identifiers: Identifiers, policy: TextPolicy) -> Findings:
    """One reading: the words to black out, as boxes in `image`'s own pixels."""
    height, width = image.shape[:2]
    if height * width > MAX_PIXELS:
        raise PixelsUnchecked(f"{width}x{height} is too large to read for text")
    scale = min(OCR_MAX_UPSCALE, max(1.0, OCR_TARGET_SIDE / max(height, width)))
    turns = _TURNS if policy.sideways else ()
    page_pixels = round(height * scale) * round(width * scale)
    try:
        readings = _read_all(_sheets(image, scale, turns), ocr, page_pixels)
    except OcrUnavailable as exc:
        raise PixelsUnchecked(f"OCR failed: {exc}") from exc
    # Upright words first, then turned ones, each in page order (as `_identifier_words` expects).
    upright = [word for _, turn, words in readings if turn is None for word in words]
    turned = [
        word
        for shape, turn, words in readings
        if turn is not None
        for word in _turned_back(words, shape, turn)
    ]
    words = upright + turned
    findings = Findings(words_read=len(words))
    flagged: set[int] = set()
    for index in _identifier_words(words, identifiers):
        flagged.add(index)
        findings.identifiers += 1
    if policy.redact_all:
        for index, word in enumerate(words):
            if index in flagged or not _is_text(word, policy):
                continue
            # A turned page's other words count only when shaped like an ID or a name: speckle
            # and anatomy read sideways give confident short words ("at", "if", "oO": 0-7 on each
            # of 12 clean bench images); counted, they blacked out 10 of the 12, against 5.
            if index >= len(upright) and not _looks_like_an_identifier(re.sub(r"[\W_]", "", word.text)):
                continue
            flagged.add(index)
            findings.other_text += 1
    findings.boxes = scale_boxes([words[i].box for i in sorted(flagged)], 1 / scale, 1 / scale)
    return findings


_TURNS = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE)


Sheet = tuple[np.ndarray, int | None]  # a page and the turn to read it at (None: upright)


def _sheets(image: np.ndarray, scale: float, turns: Sequence[int]) -> Iterator[Sheet]:
    """The pages to read, made as they are asked for: each plane scaled by `scale`, its two
    text layers, each upright and then at each of `turns`."""
    for plane in planes(image):
        read = plane
        if scale > 1.0:
            read = cv2.resize(plane, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        for page in text_layers(read):
            yield page, None
            for turn in turns:
                yield page, turn


def _read_all(
    sheets: Iterable[Sheet], ocr: OcrBackend, page_pixels: int
) -> list[tuple[tuple[int, ...], int | None, list[Word]]]:
    """Each sheet's page shape, turn and words, in order. The engine is a child process per
    page (Tesseract, one thread each), so up to `ocr_workers()` pages are read at once. Fewer
    when they are large: the sync service's memory cap counts its children, and one holds a
    page of 2.6 MP in 44 MB, 10 MP in 70 MB. One at a time, each page is made only when its
    turn comes (a large film's pages are not all held at once)."""

    def read(sheet: Sheet) -> tuple[tuple[int, ...], int | None, list[Word]]:
        page, turn = sheet
        return page.shape, turn, ocr.words(page if turn is None else cv2.rotate(page, turn))

    workers = min(ocr_workers(), max(1, IN_FLIGHT_PIXELS // max(1, page_pixels)))
    if workers <= 1:
        return [read(sheet) for sheet in sheets]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocr") as pool:
        return list(pool.map(read, sheets))


def ocr_workers() -> int:
    """Pages read at once: the cores this process may use, at most `OCR_MAX_WORKERS` (the sync
    agent runs at Nice 10: the agent's inference keeps its cores first)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(OCR_MAX_WORKERS, cores))


def _turned_back(words: Sequence[Word], shape: tuple[int, ...], turn: int) -> list[Word]:
    """The words read on a page turned by `turn` (one of `_TURNS`: text running up or down the
    picture: a film's vertical label, a name along its edge), with their boxes turned back into
    the upright page of `shape`. Tesseract reads only upright lines; a page turned the wrong
    way reads upside down and gives nothing, hence both turns."""
    height, width = shape[:2]
    found = []
    for word in words:
        x, y, w, h = word.box
        # Clockwise, (px, py) went to (height - 1 - py, px); the other way, to (py, width - 1 - px).
        box = (y, height - x - w, h, w) if turn == cv2.ROTATE_90_CLOCKWISE else (width - y - h, x, h, w)
        # Its own line numbers, so no upright word is taken for part of a turned line.
        line = (word.line[0] - 1000 * (_TURNS.index(turn) + 1), word.line[1], word.line[2])
        found.append(replace(word, box=box, line=line))
    return found


def planes(image: np.ndarray) -> list[np.ndarray]:
    """The greyscale pictures to read: the luminance, and for a picture in colour its two colour
    differences (YCrCb's Cr and Cb) too. Text as bright as its background in another hue (magenta
    on grey, red on a green Doppler flow) vanishes in the luminance a greyscale reading sees, but
    not from the colour image that leaves; it cannot match its background in all three planes."""
    if image.ndim != 3:
        return [image]
    channels = np.ascontiguousarray(image[..., :3])
    grey = cv2.cvtColor(channels, cv2.COLOR_RGB2GRAY)
    if int(np.abs(channels.astype(np.int16) - channels[..., :1]).max()) <= COLOURLESS:
        return [grey]
    ycrcb = cv2.cvtColor(channels, cv2.COLOR_RGB2YCrCb)
    # A plane is read only where it holds a colour contrast: a tinted grey picture (a lung clip
    # exported in sepia) has flat planes whose noise, read, blacks out speckle for nothing.
    read = [grey]
    for plane in (ycrcb[..., 1], ycrcb[..., 2]):
        steady = cv2.medianBlur(plane, 3)  # JPEG's chroma noise is not a contrast
        if int(steady.max()) - int(steady.min()) > COLOUR_CONTRAST:
            read.append(plane)
    return read


def text_layers(grey: np.ndarray) -> list[np.ndarray]:
    """The picture as two black-on-white pages for OCR: bright strokes (a white top-hat: text
    narrower than the kernel, lifted off the speckle or the lung behind it) and dark strokes (a
    black top-hat), each binarised by Otsu. Read plain, Tesseract misses most text drawn over
    an ultrasound sector; read this way it finds it (tools/burned_text_bench.py)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (TOPHAT_KERNEL, TOPHAT_KERNEL))
    pages = []
    for operation in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        strokes = cv2.morphologyEx(grey, operation, kernel)
        _, binary = cv2.threshold(strokes, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        pages.append(255 - binary)
    return pages


def _is_text(word: Word, policy: TextPolicy) -> bool:
    characters = re.sub(r"[\W_]", "", word.text)
    if word.confidence < policy.min_confidence or len(characters) < MIN_TEXT_CHARS:
        return False
    if word.confidence >= MIN_CONFIDENCE:
        return True
    return _looks_like_an_identifier(characters)


def _looks_like_an_identifier(characters: str) -> bool:
    """A low-confidence reading (only with no identifier known) counts when it is shaped like
    what a screen prints about a patient: three or more characters with a digit (an ID, a date)
    or mostly capitals (a name). Speckle and lung read through the top-hat layers come back as
    short lower-case "words" ("we", "ae", "wee", "Peed": 11-57 boxes on a clean ultrasound still
    or clip), which blacked out up to a third of a lung clip's picture before this rule."""
    if len(characters) < 3:
        return False
    capitals = sum(character.isupper() for character in characters)
    return any(character.isdigit() for character in characters) or capitals >= 0.6 * len(characters)


def _identifier_words(words: Sequence[Word], identifiers: Identifiers) -> set[int]:
    """Words that are, or with up to two neighbours on their line make, an identifier (OCR may
    split "123 456 78" or "DOE JOHN" where the header has one value)."""
    if not identifiers:
        return set()
    found: set[int] = set()
    for index, word in enumerate(words):
        run = [index]
        for following in (index + 1, index + 2):
            if following < len(words) and words[following].line == word.line:
                run.append(following)
            else:
                break
        for end in range(1, len(run) + 1):
            if identifiers.match("".join(words[i].text for i in run[:end])):
                found.update(run[:end])
                break
    return found


def redact_text(
    image: np.ndarray, ocr: OcrBackend, identifiers: Identifiers, policy: TextPolicy
) -> tuple[np.ndarray, Findings]:
    """Black out the text the policy names, reading again after each pass; `PixelsUnchecked`
    when the pixels cannot be read."""
    total = Findings()
    for _ in range(PASSES):
        found = read_text(image, ocr, identifiers, policy)
        total.words_read += found.words_read
        if not found.boxes:
            break
        grown = grow_boxes(found.boxes, image.shape)
        image = black_out(image, grown)
        total.add(Findings(grown, found.identifiers, found.other_text))
    return image, total
