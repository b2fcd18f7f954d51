"""Which way up a film is: a chest film shown upside down is refused, not read.

A projection radiograph has one way up (a frontal chest film: the neck at the top). One shown
upside down (a cassette read the wrong way, a film scanned or photographed turned, a DICOM
whose orientation a converter lost) stays close enough to the training films for the
applicability check (`scope.py`): an outside check found 93% of 150 normal films turned 180
degrees answered, 63% of them as pneumonia, 23% "in scope". Rotations of 90 degrees were
caught; a left-right mirror changes little (the model was trained with it).

So a model that reads films (`ORIENTED_MODALITIES` among what it accepts) also reads the film
turned 180 degrees and flipped top to bottom, through the same check, and when either turned
version is clearly more typical of its training images than the film as given (its distance
under `MARGIN` times the film's), the film is taken to be upside down (IMAGE_UPSIDE_DOWN).
Two more images through the model: on this project's 2-core CPU, 12-15 ms a film instead of
4-5 (the INT8 chest model, measured beside a test run).

The margin was chosen on 400 of the chest X-ray development films (seed 1: 0.85 of the
film's distance, against 0.8-0.95) and read on 400 others of patients that draw lacks
(`python -m tools.orientation_eval`: seed 2, apart from seed 1; Wilson 95% intervals): films as
given refused 0.5% [0.1, 1.8], mirrored left to right 2.3% [1.2, 4.2]; turned 180 degrees
refused 95% [93, 97], flipped top to bottom 97% [94, 98]. Normal films turned 180 degrees and
answered "pneumonia" fell from 62% [53, 70] to 7% [4, 13], flipped top to bottom from 19% [13,
28] to 3% [1, 8]. These are the model's own development films (most seen in training), so the
figures show the mechanism, not the rate on another site's films.
"""

from __future__ import annotations

import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.framing import frame_box, inside, without_frame
from edge.inference import framing
from edge.inference.pool import Prediction, ServedModel
from edge.inference.scope import IN_SCOPE, Scope

ORIENTED_MODALITIES = frozenset({"CR", "DX", "RG"})
"""Projection radiography: films with one way up."""
MARGIN = 0.85
"""A turned film's distance must be under this share of the film's own to say "upside down"."""


def reads_films(served: ServedModel) -> bool:
    accepts = set(served.entry.manifest.accepts.modalities)
    return bool(accepts & ORIENTED_MODALITIES) and served.scope_check is not None


def turned(pixels: np.ndarray) -> list[np.ndarray]:
    """The film turned 180 degrees, and flipped top to bottom."""
    return [np.ascontiguousarray(pixels[::-1, ::-1]), np.ascontiguousarray(pixels[::-1])]


def refusal(served: ServedModel, pixels: np.ndarray, scope: Scope | None, enforce: bool) -> EdgeError | None:
    """Why the model does not read this picture as given, or None: out of scope (said with what
    it looks like altered, `explained`), else upside down (`upside_down`), else a part of a film
    (`framing.cropped`). One rule for serving and for `edge models eval` / `calibrate`."""
    found = served.out_of_scope(scope, enforce)
    if found is not None:
        return explained(served, pixels, found)
    return upside_down(served, pixels, scope, enforce) or framing.cropped(
        served, pixels, scope, enforce, reads_films(served)
    )


def judged(
    served: ServedModel,
    pixels: np.ndarray,
    prediction: Prediction,
    enforce: bool,
    operating_point: str | None = None,
) -> tuple[Prediction, EdgeError | None]:
    """The prediction to serve for a picture and why it is refused (`refusal`), or None. One
    rule for serving and for `edge models eval` / `calibrate`.

    A film in a flat frame is also judged by the film inside the frame: a frame weakened the
    orientation and crop checks (an outside-style check: films upside down in a 2% black frame
    were answered twice as often, 8 of 75 normal ones "pneumonia"). One refused as unlike the
    model's films only for a thin frame is read with the frame filled (`framing.
    read_through_frame`) where the film inside passes every check itself (judging only the
    filled film answered parts of films and films upside down)."""
    refused = refusal(served, pixels, prediction.scope, enforce)
    if not enforce or not reads_films(served):
        return prediction, refused
    if refused is not None and refused.code is not Code.OUT_OF_SCOPE:
        return prediction, refused
    box = frame_box(pixels)
    if box is None:
        return prediction, refused
    film = inside(pixels, box)
    [alone] = served.predict([film], operating_point)
    refused_alone = refusal(served, film, alone.scope, enforce)
    if refused_alone is not None and refused_alone.code is not Code.OUT_OF_SCOPE:
        return prediction, refused_alone  # what is wrong with the film itself
    if refused is None or refused_alone is not None:
        return prediction, refused
    read = framing.read_through_frame(served, pixels, box, operating_point)
    if read is None:
        return prediction, refused
    filled, again = read
    return again, refusal(served, filled, again.scope, enforce)


def judged_upside_down(distance: float, turned_distances: list[float], margin: float = MARGIN) -> bool:
    """Whether a turned version (`turned_distances`, of `turned`) is clearly more typical of the
    model's films than the film as given (`distance`). Pure."""
    return bool(turned_distances) and min(turned_distances) < margin * distance


def upside_down(
    served: ServedModel, pixels: np.ndarray, scope: Scope | None, enforce: bool
) -> EdgeError | None:
    """IMAGE_UPSIDE_DOWN when a turned version of the film is clearly more typical of the
    model's films than the film as given (None: the right way up, or not a film model, or the
    site does not enforce applicability: `enforce`, as `ServedModel.out_of_scope`)."""
    if not enforce or scope is None or not reads_films(served):
        return None
    distances = [p.scope.distance for p in served.predict(turned(pixels)) if p.scope is not None]
    if not judged_upside_down(scope.distance, distances):
        return None
    nearest, given = min(distances), scope.distance
    why = f"turned, it reads as {nearest:.2f} from the model's films against {given:.2f} as given"
    return _upside_down(served, why)


def taken_turned(served: ServedModel, pixels: np.ndarray) -> EdgeError | None:
    """IMAGE_UPSIDE_DOWN for a picture a film model's check refused as given (routing chose a
    model of another kind) where it takes it turned the right way up: a film upside down that
    a sharp film check refuses may still pass a weak check, which then answered (an outside
    check: 6 of 300 chest films upside down read by the lung ultrasound model, 5 "covid")."""
    if not reads_films(served):
        return None
    for prediction in served.predict(turned(pixels)):
        scope = prediction.scope
        if scope is not None and not scope.refused:
            why = f"{served.name}'s check on it turned the right way up: p={scope.p_value:.3f}, {scope.state}"
            return _upside_down(served, why)
    return None


def _upside_down(served: ServedModel, why: str) -> EdgeError:
    spec = served.entry.manifest.applicability
    kind = spec.looks_like if spec is not None else served.name
    return EdgeError(
        Code.IMAGE_UPSIDE_DOWN,
        f"this looks like {kind} shown upside down ({why}): not analysed; check the film's"
        " orientation on the scanner or the viewer that exported it",
    )


_LOOKS = (
    ("inverted, black for white (its photometric interpretation, MONOCHROME1 or 2, may be wrong)", 0),
    ("turned a quarter turn clockwise", 1),
    ("turned a quarter turn anticlockwise", -1),
)


FRAMED = "without the flat border along its edges (a frame, a mask or a collimated edge drawn flat)"


def _altered(pixels: np.ndarray, turn: int) -> np.ndarray:
    if turn == 0:
        return np.ascontiguousarray(255 - pixels) if pixels.dtype == np.uint8 else pixels
    return np.ascontiguousarray(np.rot90(pixels, turn))


def explained(served: ServedModel, pixels: np.ndarray, refusal: EdgeError) -> EdgeError:
    """An OUT_OF_SCOPE refusal of a film, with what the film looks like when the check finds it
    in scope altered: without a flat border along its edges (`FRAMED`), inverted, or turned a
    quarter turn. A technician told only "this does not look like a chest film" about a chest
    film cannot see what to mend. Asked only of refused films. `python -m tools.orientation_eval
    --films 0` (200 development films each): inverted, 200 refused and 188 refusals say so;
    turned a quarter turn, 198 and 186; framed by a flat border of 1% of the film's size, in
    black 154 and 143, in white 200 and 187. Of 300 lung and breast ultrasound images forced to
    the chest model none is "explained" (2 were when borderline counted too; the frame counted
    none)."""
    if refusal.code is not Code.OUT_OF_SCOPE or not reads_films(served):
        return refusal
    looks = [(how, _altered(pixels, turn)) for how, turn in _LOOKS]
    frameless = without_frame(pixels)
    if frameless is not None:
        looks.insert(0, (FRAMED, frameless))
    found = served.predict([picture for _, picture in looks])
    for (how, _), prediction in zip(looks, found, strict=True):
        if prediction.scope is not None and prediction.scope.state == IN_SCOPE:
            return EdgeError(
                refusal.code, f"{refusal.message}; it does look like one {how}: check the export"
            )
    return refusal
