"""An image in the terminal: sixel or kitty graphics where the terminal has them, else half-cell
blocks (textual-image), else characters: where colour or the block glyphs cannot be relied on
(NO_COLOR; the Linux console, whose fonts have no half block and 16 colours), a brightness ramp
of ASCII, with the heatmap's hot cells in reverse video. The renderer is chosen by name so tests
can force one."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image as PILImage
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

# Imported at module load, before the app starts: textual-image asks the terminal what it can draw
# (and its cell size) on import, which is impossible once Textual owns the terminal. A terminal
# that reports no size at all (a bare pty) would make that import divide by zero: assume VT340
# cells then, textual-image's own fallback.
from textual_image import _terminal as textual_image_terminal

from edge.tui.terminal import plain_terminal

try:
    textual_image_terminal.get_cell_size()
except ZeroDivisionError:
    setattr(textual_image_terminal.get_cell_size, "_result", textual_image_terminal.CellSize(10, 20))  # noqa: B010

from textual_image.widget import HalfcellImage, UnicodeImage
from textual_image.widget import Image as BestImage

RAMP = " .:-=+*#%@"  # darkest to brightest, in ASCII: every console's font draws these
HOT = 60  # red minus blue of an overlay cell: the colour map's warm end (grey is 0, cold < 0)
HEAT_WORDS = "reverse video: where the model looked"


def text_cells(image: PILImage.Image, width: int, height: int, heat: bool) -> Text:
    """`image` in at most `width` x `height` character cells (each about twice as tall as wide):
    a character per cell by brightness, and with `heat` the overlay's warm cells reversed."""
    aspect = image.height / max(1, image.width) / 2
    cols = max(1, min(width, round(height / aspect) if aspect else width))
    rows = max(1, min(height, round(cols * aspect)))
    small = image.convert("RGB").resize((cols, rows), PILImage.Resampling.BILINEAR)
    rgb = np.asarray(small, dtype=np.int16)
    level = np.asarray(small.convert("L"), dtype=np.int32) * len(RAMP) // 256
    hot = (rgb[..., 0] - rgb[..., 2] > HOT) if heat else np.zeros(level.shape, bool)
    out = Text(no_wrap=True, overflow="crop")
    for row in range(rows):
        for col in range(cols):
            out.append(RAMP[level[row, col]], style="bold reverse" if hot[row, col] else "")
        if row < rows - 1:
            out.append("\n")
    return out


class TextImage(Widget):
    """The character renderer, with textual-image's `image` to set (and `heat`)."""

    DEFAULT_CSS = "TextImage { height: 1fr; width: 1fr; }"

    def __init__(self, image: PILImage.Image | None = None, *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self._image = image
        self.heat = False

    @property
    def image(self) -> PILImage.Image | None:
        return self._image

    @image.setter
    def image(self, image: PILImage.Image | None) -> None:
        self._image = image
        self.refresh()

    def render(self) -> Text:
        if self._image is None:
            return Text("")
        return text_cells(self._image, self.content_size.width, self.content_size.height, self.heat)


RENDERERS: dict[str, Any] = {
    "auto": BestImage,
    "halfcell": HalfcellImage,
    "unicode": UnicodeImage,
    "text": TextImage,
}


class Picture(Vertical):
    """An image with a caption under it; `show(None, why)` says why there is no image."""

    def __init__(self, graphics: str = "auto", *, id: str | None = None) -> None:
        super().__init__(id=id)
        if graphics == "auto" and plain_terminal():
            graphics = "text"
        self._renderer = RENDERERS.get(graphics, BestImage)

    def compose(self) -> ComposeResult:
        yield self._renderer(None, classes="picture-image")
        yield Static("loading the image…", classes="picture-caption")

    def show(self, image: PILImage.Image | None, caption: str, *, heat: bool = False) -> None:
        """`heat`: the image is the heatmap overlay (the character renderer marks its hot cells)."""
        widget = self.query_one(".picture-image")
        if isinstance(widget, TextImage):
            widget.heat = heat
            caption = f"{caption} · {HEAT_WORDS}" if heat and image is not None else caption
        widget.image = image  # type: ignore[attr-defined]
        widget.display = image is not None
        self.query_one(".picture-caption", Static).update(caption)
