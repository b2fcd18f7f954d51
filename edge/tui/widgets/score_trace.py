"""The live score over time on a fixed 0-1 scale, with the threshold marked.

Textual's Sparkline scales to the data's own range, which would make a flat 0.50-0.52 look like
a swing; a probability needs the same scale on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widget import Widget

from edge.tui.terminal import CONSOLE_FONT_CLASS

BLOCKS = " ▁▂▃▄▅▆▇█"
CONSOLE_BLOCKS = " ░▒█"  # the Linux console's fonts have no eighth blocks, but these


class ScoreTrace(Widget):
    """The newest values (one column each), `height` rows tall, above-threshold columns in the
    warning colour."""

    DEFAULT_CSS = """
    ScoreTrace { height: 4; }
    """

    def __init__(self, *, threshold: float | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.values: list[float] = []
        self.threshold = threshold

    def update_values(self, values: Sequence[float], threshold: float | None = None) -> None:
        self.values = list(values)
        if threshold is not None:
            self.threshold = threshold
        self.refresh()

    def render(self) -> Text:
        width, rows = max(1, self.size.width), max(1, self.size.height)
        shown = self.values[-width:]
        blocks = CONSOLE_BLOCKS if self.app.has_class(CONSOLE_FONT_CLASS) else BLOCKS
        steps = len(blocks) - 1  # levels within one row
        levels = rows * steps
        # The row the threshold falls in shows a dotted line where the trace is below it.
        threshold_row = None
        if self.threshold is not None:
            threshold_row = rows - 1 - min(rows - 1, int(self.threshold * levels) // steps)
        lines = []
        for row in range(rows):  # top row first
            floor = (rows - 1 - row) * steps
            line = Text()
            for value in shown:
                filled = round(min(max(value, 0.0), 1.0) * levels) - floor
                above = self.threshold is not None and value >= self.threshold
                if filled <= 0 and row == threshold_row:
                    line.append("·", style="dim")
                    continue
                line.append(blocks[min(max(filled, 0), steps)], style="bold red" if above else "green")
            if row == threshold_row and len(shown) < width:
                line.append("·" * (width - len(shown)), style="dim")
            lines.append(line)
        return Text("\n").join(lines)
