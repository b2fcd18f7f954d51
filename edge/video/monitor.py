"""Is the picture alive? Frozen and black video, detected from the frames themselves. Pure.

A frozen screen (the operator pressed freeze, the capture card repeats its last frame, the
stream stalled upstream) shows identical frames; a black one (probe unplugged, the scanner
asleep) shows nearly nothing. Both are reported, and neither is analysed or aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.video.roi import to_grey

FROZEN_DIFF = 0.5  # mean absolute grey-level difference below which two frames are "the same"
BLACK_MEAN = 8.0
BLACK_STD = 4.0


def is_black(image: np.ndarray) -> bool:
    grey = to_grey(image)
    return float(grey.mean()) < BLACK_MEAN and float(grey.std()) < BLACK_STD


@dataclass
class FreezeDetector:
    """Reports frozen once frames have not changed for `seconds` (by their capture times)."""

    seconds: float = 3.0
    _previous: np.ndarray | None = None
    _same_since: float | None = None

    def update(self, image: np.ndarray, at: float) -> bool:
        grey = to_grey(image)[::4, ::4].astype(np.int16)  # a quarter resolution is plenty
        if self._previous is not None and self._previous.shape == grey.shape:
            same = float(np.abs(grey - self._previous).mean()) < FROZEN_DIFF
        else:
            same = False
        self._previous = grey
        if not same:
            self._same_since = None
            return False
        if self._same_since is None:
            self._same_since = at
        return at - self._same_since >= self.seconds
