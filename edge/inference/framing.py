"""A part of a film is refused, not read: IMAGE_CROPPED.

A chest film zoomed in, photographed close up or cut out of a screen keeps the anatomy the
applicability check (`scope.py`) knows, so many such parts were answered, and normal films so
cut came out "pneumonia": of 113 normal development films cut to their central 70%, 43 answered
"pneumonia"; at 60%, 58 (every one answered). A whole film has the air around the body, the
darkest part of the picture, along its edges; a part does not (`imaging.framing.border_darkness`).
So a film model (`orientation.reads_films`) refuses a picture whose darkest pixels are not
concentrated at its edges (`border_darkness` under `MIN_BORDER_DARKNESS`) and which its check
finds less than very typical (distance over `MIN_NEARNESS` of the threshold).

The rule was chosen on 400 chest X-ray development films (seed 1: band and percentile among 12
settings by an outside-style check, then limit and nearness among 1.44-2.0 and 0-0.8) and read
on 400 films of other patients (`python -m tools.crop_eval`, seed 2; Wilson 95%): normal films
cut to their central 70% and answered "pneumonia" 38% [30, 47] -> 1% [0, 5], central 60% 51%
[42, 60] -> 2% [0, 6], central 80% 8% -> 2%, central 50% 63% -> 27%; whole films refused 1.5%
[0.7, 3.2] -> 2.25% [1.2, 4.2] as given, 0.25 to 1.25 points more when mirrored, resized,
turned 5 degrees or recompressed (JPEG quality 60); films cut to their central 90% (read as
well as whole ones) 2.5% -> 13%. An outside-style check on 900 of the set's films as JPEG
found 9 whole films refused by the limit alone (1.0% [0.5, 1.9], tightly collimated); 2 of
the 4 named still are. Cost: 0.3 ms a film on this project's CPU, beside 2.5 ms for the model
and the orientation check. What it does not catch: a top or bottom half of a film (its other
edges are still dark: of normal bottom halves, 95% answered "pneumonia"), and a quarter of
normal films cut to their central half. The films are the model's development set (children
with air around them): a site whose whole films are collimated tightly will see more of its
films refused, most of them pneumonia films.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.framing import Box, border_darkness, filled, filled_part, frame_share
from edge.inference.pool import Prediction, ServedModel
from edge.inference.scope import Scope

MIN_BORDER_DARKNESS = 1.44
"""A whole film's darkest pixels are at least this much more frequent in its outer band than by chance."""
MIN_NEARNESS = 0.6
"""...and only a film this far towards the check's limit (its distance over the threshold) is
judged: a film the check finds very typical is read as it is (a film cut to its central 90%,
which the model reads as the whole, or one collimated tightly)."""


def judged_cropped(darkness: float, nearness: float) -> bool:
    """Whether a film is a part of a film: its `border_darkness`, and its applicability
    distance over the check's threshold (`nearness`). Pure."""
    return darkness < MIN_BORDER_DARKNESS and nearness > MIN_NEARNESS


def cropped(
    served: ServedModel, pixels: np.ndarray, scope: Scope | None, enforce: bool, films: bool
) -> EdgeError | None:
    """IMAGE_CROPPED for a part of a film given to a film model (`films`: `orientation.
    reads_films`), where the site enforces applicability (`enforce`, as `ServedModel.
    out_of_scope`); else None."""
    if not enforce or scope is None or not films:
        return None
    darkness = border_darkness(pixels)
    if not judged_cropped(darkness, scope.distance / scope.threshold):
        return None
    spec = served.entry.manifest.applicability
    kind = spec.looks_like if spec is not None else served.name
    return EdgeError(
        Code.IMAGE_CROPPED,
        f"this looks like part of {kind}, not the whole film (its edges lack the dark background"
        f" of a whole film: {darkness:.2f} against at least {MIN_BORDER_DARKNESS}): not analysed;"
        " send the whole film as exported, not a zoomed-in part or a close-up photograph",
    )


MAX_FILLED_FRAME = 0.02
"""A frame at most this share of each side is read through (`read_through_frame`)."""


def read_through_frame(
    served: ServedModel, pixels: np.ndarray, box: Box, operating_point: str | None
) -> tuple[np.ndarray, Prediction] | None:
    """A film its check refused, read again with its flat frame (`box`: a drawn border, a mask
    line) filled from the film's own edge, at most `MAX_FILLED_FRAME` of each side (`filled`:
    the inner part of a wider frame stays); the film so filled and its prediction where the
    check takes it, else None. A frame of 1% of a film's size made the check refuse most films
    (77 of 100 development films in black, all in white), and the film inside was the same
    film: on 300 development films (seed 1) framed by 2% and read so, 254 of 255 (black) and
    293 of 294 (white) got the finding of the film without the frame; 3% would have been 98.6%.
    Many films have a flat band of their own along a side, which a frame or a mask joins: the
    frame so found was wider than 2% and the film was refused (an outside-style check: 15-23%
    of films masked by 1-2%, and DICOM films so masked 19-22%); now its outer 2% is filled and
    the film's band stays, as it was read without the mask (and a frame a JPEG rang into is
    found: `imaging.framing.frame_box`). `python -m tools.crop_eval` (seed 2, 400 films, every
    check as shipped), refused before -> now: framed by 1-2% 5.5-12.5% -> 2.75-3.75%, masked by
    1-2% 10-17.5% -> 3.5-4.25%, framed by 1% and saved as JPEG q75 67% -> 8.25% (black), 100% ->
    22.5% (white); of those answered, 98.7-100% got the finding of the film as given; a 4% frame
    stays refused (98-100%). The prediction's scope records the width filled
    (`Scope.frame_filled`), so every result says it was so read."""
    film = filled(pixels, box, MAX_FILLED_FRAME)
    if film is None:
        return None
    [prediction] = served.predict([film], operating_point)
    if prediction.scope is None or served.out_of_scope(prediction.scope, True) is not None:
        return None
    scope = replace(
        prediction.scope,
        frame_filled=frame_share(pixels.shape, filled_part(pixels.shape, box, MAX_FILLED_FRAME)),
    )
    return film, replace(prediction, scope=scope)
