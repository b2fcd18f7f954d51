"""What the terminal can draw, from its environment: colour, and the glyphs of its font.

The Linux console (TERM=linux, also what SSH passes on from one) draws with console-setup's
fonts (Lat15, Uni2, Terminus...), which have box lines (─│┌┐ ═║) but none of the block elements
Textual draws with (▀▄▊▎▔▏ and the eighths of a scrollbar's ends) nor emoji: each showed as a
replacement box (found by checking every glyph on the screens against the fonts' unicode
tables).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import ClassVar

from textual.scrollbar import ScrollBarRender

CONSOLE_FONT_CLASS = "-console-font"
"""The app's class on such a console: app.tcss draws borders with lines there."""


def console_font(environ: Mapping[str, str] = os.environ) -> bool:
    """The font has no block elements: the Linux console."""
    return environ.get("TERM") == "linux"


def plain_terminal(environ: Mapping[str, str] = os.environ) -> bool:
    """Colour or the half-block glyph cannot be relied on here: NO_COLOR (no-color.org), under
    which the heatmap's colours became grey like the anatomy, or the Linux console, whose fonts
    have no half block, so the whole picture was replacement glyphs (found by a TUI audit)."""
    return bool(environ.get("NO_COLOR")) or console_font(environ)


class WholeCellScrollBar(ScrollBarRender):
    """A scrollbar whose thumb starts and ends on whole cells (no eighth-block ends)."""

    VERTICAL_BARS: ClassVar[list[str]] = [" "]
    HORIZONTAL_BARS: ClassVar[list[str]] = [" "]
