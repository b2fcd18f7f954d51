"""An image in the terminal: sixel or kitty graphics where the terminal has them, else half-cell
blocks (textual-image). The renderer is chosen by name so tests can force the half-cell one."""

from __future__ import annotations

from typing import Any

from PIL import Image as PILImage
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

# Imported at module load, before the app starts: textual-image asks the terminal what it can draw
# (and its cell size) on import, which is impossible once Textual owns the terminal. A terminal
# that reports no size at all (a bare pty) would make that import divide by zero: assume VT340
# cells then, textual-image's own fallback.
from textual_image import _terminal as textual_image_terminal

try:
    textual_image_terminal.get_cell_size()
except ZeroDivisionError:
    setattr(textual_image_terminal.get_cell_size, "_result", textual_image_terminal.CellSize(10, 20))  # noqa: B010

from textual_image.widget import HalfcellImage, UnicodeImage
from textual_image.widget import Image as BestImage

RENDERERS: dict[str, Any] = {"auto": BestImage, "halfcell": HalfcellImage, "unicode": UnicodeImage}


class Picture(Vertical):
    """An image with a caption under it; `show(None, why)` says why there is no image."""

    def __init__(self, graphics: str = "auto", *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._renderer = RENDERERS.get(graphics, BestImage)

    def compose(self) -> ComposeResult:
        yield self._renderer(None, classes="picture-image")
        yield Static("loading the image…", classes="picture-caption")

    def show(self, image: PILImage.Image | None, caption: str) -> None:
        widget = self.query_one(".picture-image")
        widget.image = image  # type: ignore[attr-defined]
        widget.display = image is not None
        self.query_one(".picture-caption", Static).update(caption)
