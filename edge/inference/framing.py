"""A part of a film is refused, not read: IMAGE_CROPPED.

A chest film zoomed in, photographed close up or cut out of a screen keeps the anatomy the
applicability check (`scope.py`) knows, so many such parts were answered, and normal films so
cut came out "pneumonia": of 113 normal development films cut to their central 70%, 43 answered
"pneumonia"; at 60%, 58 (every one answered). A whole film has the air around the body, the
darkest part of the picture, along its edges; a part does not (`imaging.framing.border_darkness`).
So a film model (`orientation.reads_films`) refuses a picture whose darkest pixels are not
concentrated at its edges: `border_darkness` under `MIN_BORDER_DARKNESS`.

The limit was chosen on 400 chest X-ray development films (seed 1, among 12 band and
percentile settings) and read on 400 films of other patients (`python -m tools.crop_eval`, seed
2; Wilson 95%): normal films cut to their central 70% and answered "pneumonia" 38% [30, 47] ->
0% [0, 3], central 60% 51% [42, 60] -> 0% [0, 3], central 80% 8% -> 1%, central 50% 63% -> 26%;
whole films refused 1.5% [0.7, 3.2] -> 2.25% [1.2, 4.2] as given, and 0.5 to 1.25 points more
when resized, turned 5 degrees or recompressed (JPEG quality 60). Cost: 0.3 ms a film on this
project's CPU, beside 2.5 ms for the model and the orientation check. What it does not catch:
a top or bottom half of a film (its other edges are still dark: of normal bottom halves, 95%
answered "pneumonia"), and a quarter of normal films cut to their central half. The films are the model's
development set (children with air around them): a site whose whole films are collimated
tightly will see more of its films refused, most of them pneumonia films.
"""

from __future__ import annotations

import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.framing import border_darkness
from edge.inference.pool import ServedModel

MIN_BORDER_DARKNESS = 1.44
"""A whole film's darkest pixels are at least this much more frequent in its outer band than by chance."""


def judged_cropped(darkness: float, limit: float = MIN_BORDER_DARKNESS) -> bool:
    """Whether a film's `border_darkness` says it is a part of a film. Pure."""
    return darkness < limit


def cropped(served: ServedModel, pixels: np.ndarray, enforce: bool, films: bool) -> EdgeError | None:
    """IMAGE_CROPPED for a part of a film given to a film model (`films`), where the site
    enforces applicability (`enforce`, as `ServedModel.out_of_scope`); else None."""
    if not enforce or not films:
        return None
    darkness = border_darkness(pixels)
    if not judged_cropped(darkness):
        return None
    spec = served.entry.manifest.applicability
    kind = spec.looks_like if spec is not None else served.name
    return EdgeError(
        Code.IMAGE_CROPPED,
        f"this looks like part of {kind}, not the whole film (its edges lack the dark background"
        f" of a whole film: {darkness:.2f} against at least {MIN_BORDER_DARKNESS}): not analysed;"
        " send the whole film as exported, not a zoomed-in part or a close-up photograph",
    )
