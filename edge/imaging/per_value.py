"""An image function applied once per distinct stored value and looked up, not to every pixel.

A film's stored values are integers of at most 16 bits, and every step from a stored value to a
display grey (modality LUT, VOI, a palette, scaling to 8 bits) maps one value to one output. A
step that needs a range from the image itself (the extremes of a film with no VOI, a palette's
brightest entry, the ranks of its levels) gets it from the values present, which are what the
function is given, so it sees the same range. Applied to the whole image instead, pydicom's steps
and the scaling made float64 copies of it: 516 MB at the peak for a 15 MP 12-bit film whose
display is 15 MB (`display_pixels`), 545 MB for the views of its stored values. Pure numpy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def per_value(stored: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`function` of each pixel of `stored`, as uint8, computed on its distinct values only.

    `function` takes values shaped (1, n), the distinct ones ascending, and returns uint8 shaped
    (1, n) or (1, n, channels). Float pixels and integers over 16 bits are given to it whole
    (too many distinct values for a table), so it must also take any shape."""
    if stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2:
        return function(stored)
    if not stored.dtype.isnative:  # big-endian syntaxes: the view below reads native words
        stored = stored.astype(stored.dtype.newbyteorder("="))
    bits = 8 * stored.dtype.itemsize
    offset = 1 << (bits - 1) if stored.dtype.kind == "i" else 0
    # Signed values as offset binary (their order kept), so that every value is an index from 0.
    index = stored.view(f"u{stored.dtype.itemsize}") ^ offset if offset else stored
    present = np.zeros(1 << bits, bool)
    present[index] = True
    keys = np.flatnonzero(present)
    shown = function((keys - offset).astype(stored.dtype).reshape(1, -1))[0]
    table = np.zeros((1 << bits, *shown.shape[1:]), np.uint8)
    table[keys] = shown
    return table[index]
