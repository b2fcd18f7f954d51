"""Whether a picture shows a whole film: where its darkest pixels lie. Pure numpy.

A whole projection film has air around the body, the darkest part of the picture, along its
edges; a part of a film (zoomed in, photographed close up, cut from a screen) has its dark
pixels wherever the lungs are. `border_darkness` says how concentrated the darkest pixels are in
the picture's outer band: 1.0 as by chance, more when the edges are dark.
"""

from __future__ import annotations

import cv2
import numpy as np

SIDE = 224
"""Measured at the models' input size, so a film's resolution does not change the figure."""
BAND = 0.08
"""The outer band: this share of each side (18 of 224 pixels)."""
DARKEST = 20.0
"""The darkest pixels: this percentile of the picture's values and below."""


def border_darkness(pixels: np.ndarray) -> float:
    """The share of the darkest pixels that lie in the outer band, over the band's share of the
    picture. uint8 grey HxW or RGB HxWx3."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    small = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA)
    band = np.zeros(small.shape, bool)
    width = round(BAND * SIDE)
    band[:width] = band[-width:] = True
    band[:, :width] = band[:, -width:] = True
    dark = small <= np.percentile(small, DARKEST)
    return float(dark[band].mean() / max(float(dark.mean()), 1e-6))


FRAME_SPREAD = 8
"""A frame's line: its values within this many grey levels of one another (a drawn border, a
black or white mask, an exposure field's collimated edge rendered flat)."""
MAX_FRAME = 0.25
"""A frame is at most this share of each side: more is not a frame but the picture."""
Box = tuple[int, int, int, int]
"""The picture inside its frame: top, bottom, left, right (`frame_box`)."""


FRAME_SHARE = 0.95
"""A frame's line: at least this share of its values within half of `FRAME_SPREAD` of its
median, and none further apart than 4 x `FRAME_SPREAD`. A JPEG's blocks ring into a flat frame
(a few values off by 10-20 levels), which all-within-the-spread missed: a framed film exported as
JPEG was refused (all of 400 development films framed in white by 1%, JPEG quality 75)."""


def flat_line(line: np.ndarray) -> bool:
    """Whether a row or column of a picture is a frame's: one grey, but for JPEG ringing."""
    if line.size == 0 or int(line.max()) - int(line.min()) > 4 * FRAME_SPREAD:
        return False
    near = np.abs(line.astype(np.int16) - float(np.median(line))) <= FRAME_SPREAD / 2 + 0.5
    return bool(near.mean() >= FRAME_SHARE)


JPEG_BLOCK = 8
"""A JPEG's block: the lines next to a frame it rang into, at most this many (and 2% of a side)."""
RUNG = 12
"""A line a JPEG rang into next to its frame: its median within this of the frame's grey, and
`RUNG_SHARE` of its values within twice that."""
RUNG_SHARE = 0.7


def frame_box(pixels: np.ndarray) -> Box | None:
    """The picture inside the uniform lines along its edges (a frame of any grey) as (top,
    bottom, left, right) rows and columns, or None where it has none. The applicability check
    refused most films with a frame of 1% of their size (77 of 100 development films in black,
    100 of 100 in white). A frame's side also takes the few lines next to it that a JPEG's
    block rang into (`_rung`): in a film of 224 pixels the block spans the whole 2-pixel frame
    and the film's edge, and framed films saved as JPEG were refused."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    height, width = grey.shape
    top, bottom, left, right = 0, height, 0, width
    flat = flat_line
    while top < height * MAX_FRAME and flat(grey[top, left:right]):
        top += 1
    while height - bottom < height * MAX_FRAME and flat(grey[bottom - 1, left:right]):
        bottom -= 1
    while left < width * MAX_FRAME and flat(grey[top:bottom, left]):
        left += 1
    while width - right < width * MAX_FRAME and flat(grey[top:bottom, right - 1]):
        right -= 1
    if (top, bottom, left, right) == (0, height, 0, width):
        return None

    def room(used: int, size: int) -> int:  # never past MAX_FRAME of a side
        return max(0, min(JPEG_BLOCK, int(0.02 * size), int(MAX_FRAME * size) - used))

    if top:
        top += _rung(grey[top : top + room(top, height), left:right], grey[0, left:right])
    if bottom < height:
        rows = room(height - bottom, height)
        bottom -= _rung(grey[bottom - rows : bottom, left:right][::-1], grey[height - 1, left:right])
    if left:
        left += _rung(grey[top:bottom, left : left + room(left, width)].T, grey[top:bottom, 0])
    if right < width:
        columns = room(width - right, width)
        right -= _rung(grey[top:bottom, right - columns : right].T[::-1], grey[top:bottom, width - 1])
    return top, bottom, left, right


def _rung(lines: np.ndarray, outermost: np.ndarray) -> int:
    """How many of `lines` (next to a frame, nearest first) a JPEG rang into: each near the
    frame's grey (its `outermost` line's median) but for its ringing."""
    frame = float(np.median(outermost))
    count = 0
    for line in lines:
        off = np.abs(line.astype(np.int16) - frame)
        if float(np.median(off)) > RUNG or float((off <= 2 * RUNG).mean()) < RUNG_SHARE:
            break
        count += 1
    return count


def inside(pixels: np.ndarray, box: Box) -> np.ndarray:
    """The picture inside its frame."""
    top, bottom, left, right = box
    return np.ascontiguousarray(pixels[top:bottom, left:right])


def filled_part(shape: tuple[int, ...], box: Box, most: float) -> Box:
    """The picture within the outer part of its frame (`box`) that is at most `most` of each
    side: the box `filled` fills up to. A side's frame no wider keeps none of itself; a wider
    one keeps its inner part (a film's own dark band under a mask drawn over it)."""
    top, bottom, left, right = box
    height, width = shape[:2]
    rows, columns = int(most * height), int(most * width)
    return (
        min(top, rows),
        height - min(height - bottom, rows),
        min(left, columns),
        width - min(width - right, columns),
    )


def filled(pixels: np.ndarray, box: Box, most: float) -> np.ndarray | None:
    """The picture, its size kept, with the outer part of its frame (`box`), at most `most` of
    each side (`filled_part`), replaced by the picture's own rows and columns repeated outwards;
    None where that is nothing. Its size is kept so whatever is placed on it (a heatmap) stays
    where it was. A frame is filled only so far: a film's own flat band (many films have one
    along a side) and a mask drawn over it make one frame, wider than the mask; filling only
    the mask's width gives back the film as it was without the mask."""
    part = filled_part(pixels.shape, box, most)
    top, bottom, left, right = part
    height, width = pixels.shape[:2]
    if part == (0, height, 0, width):
        return None
    return cv2.copyMakeBorder(
        inside(pixels, part), top, height - bottom, left, width - right, cv2.BORDER_REPLICATE
    )


def frame_share(shape: tuple[int, ...], box: Box) -> float:
    """The widest side of a frame (`box` in a picture of `shape`), as a share of that side."""
    top, bottom, left, right = box
    height, width = shape[:2]
    return max(max(top, height - bottom) / height, max(left, width - right) / width)


def without_frame(pixels: np.ndarray) -> np.ndarray | None:
    """The picture inside its frame, or None where it has none."""
    box = frame_box(pixels)
    return None if box is None else inside(pixels, box)


def frame_filled(pixels: np.ndarray, most: float) -> np.ndarray | None:
    """The picture with its frame filled (`filled`), or None where it has none."""
    box = frame_box(pixels)
    return None if box is None else filled(pixels, box, most)
