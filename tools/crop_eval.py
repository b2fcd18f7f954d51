"""Parts of films: how many the crop check (edge/inference/framing.py) refuses, and what it
costs on whole films.

    python -m tools.crop_eval                       # 400 films (seed 2) of patients seed 1's draw lacks
    python -m tools.crop_eval --seed 1 --apart-from -1 --limits 1.44,1.6,1.8,2.0 --nearness 0,0.5,0.6,0.7,0.8
                                                    # how the rule was chosen

Each film of a seeded sample of the chest X-ray development set (`orientation_eval.sample`) is
offered as given and altered: mirrored, resized, turned 5 degrees, JPEG-compressed, framed by a
flat border of 1-4% of its size or masked by one drawn over its edges (1-2%; whole films: the
cost), and cut to its central 90% to 50%, its
top or bottom half (parts: what the check is for). Each goes through the served model, its
applicability check and the orientation check (refused "today": without the crop rule nor a
frame read through), and the crop rule is applied to it as if it were the film given. Counted
per kind: refused today, refused with the rule, and normal films answered "pneumonia" without
the rule and with it; and as shipped (`orientation.judged`: every check, a thin frame read
through): refused, and the films answered that got the finding of the film as given. Wilson
95% intervals. The films are the model's development set, most seen in training: the figures
show the mechanism, not the rate on another site's films.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.imaging.framing import border_darkness
from edge.inference import framing, orientation
from tools.orientation_eval import add_draw_arguments, chest_model, draw, film, rate, report


def _central(keep: float) -> Callable[[np.ndarray], np.ndarray]:
    def cut(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        top, left = round(height * (1 - keep) / 2), round(width * (1 - keep) / 2)
        return pixels[top : height - top, left : width - left]

    return cut


def _turned(degrees: float) -> Callable[[np.ndarray], np.ndarray]:
    def turn(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
        return cv2.warpAffine(pixels, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)

    return turn


def _scaled(factor: float) -> Callable[[np.ndarray], np.ndarray]:
    def scale(pixels: np.ndarray) -> np.ndarray:
        height, width = pixels.shape[:2]
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)

    return scale


def _jpeg(pixels: np.ndarray, quality: int = 60) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    decoded = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED) if ok else None
    assert decoded is not None
    return np.asarray(decoded)


WHOLE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "as given": lambda p: p,
    "mirrored": lambda p: p[:, ::-1],
    "resized x2": _scaled(2.0),
    "resized x0.7": _scaled(0.7),
    "turned +5 degrees": _turned(5),
    "turned -5 degrees": _turned(-5),
    "JPEG quality 60": _jpeg,
}


def _framed(share: float, value: int) -> Callable[[np.ndarray], np.ndarray]:
    def frame(pixels: np.ndarray) -> np.ndarray:
        border = max(1, round(share * max(pixels.shape[:2])))
        return cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT, value=value)

    return frame


def _masked(share: float, value: int) -> Callable[[np.ndarray], np.ndarray]:
    """A flat mask drawn over the film's own edges (a shutter, a mask line), its size kept."""

    def mask(pixels: np.ndarray) -> np.ndarray:
        border = max(1, round(share * max(pixels.shape[:2])))
        masked = pixels.copy()
        masked[:border], masked[-border:] = value, value
        masked[:, :border], masked[:, -border:] = value, value
        return masked

    return mask


FRAMED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{
        f"framed in {colour} {round(share * 100)}%": _framed(share, value)
        for share in (0.01, 0.02, 0.04)
        for colour, value in (("black", 0), ("white", 255))
    },
    **{
        f"masked in {colour} {round(share * 100)}%": _masked(share, value)
        for share in (0.01, 0.02)
        for colour, value in (("black", 0), ("white", 255))
    },
    **{  # a framed film exported as JPEG: the blocks ring into the frame
        f"framed in {colour} 1%, JPEG q75": (lambda p, v=value: _jpeg(_framed(0.01, v)(p), 75))
        for colour, value in (("black", 0), ("white", 255))
    },
}
PARTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    **{f"central {round(k * 100)}%": _central(k) for k in (0.9, 0.8, 0.7, 0.6, 0.5)},
    "top half": lambda p: p[: p.shape[0] // 2],
    "bottom half": lambda p: p[p.shape[0] // 2 :],
}


KINDS = {**WHOLE, **FRAMED, **PARTS}


def read(models: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per film and kind: refused today (out of scope or upside down), its border darkness, and
    whether it would be answered "pneumonia"."""
    out = []
    with chest_model(models) as served:
        for row in rows:
            pixels = film(row)
            kinds: dict[str, Any] = {}
            for name, make in KINDS.items():
                view = np.ascontiguousarray(make(pixels))
                [found] = served.predict([view])
                refused = served.out_of_scope(found.scope, True) or orientation.upside_down(
                    served, view, found.scope, True
                )
                assert found.scope is not None
                served_now, refused_now = orientation.judged(served, view, found, True)
                kinds[name] = {
                    "refused": refused is not None,
                    "refused now": refused_now is not None,
                    "finding now": served_now.finding.finding,
                    "darkness": border_darkness(view),
                    "nearness": found.scope.distance / found.scope.threshold,
                    "pneumonia": found.finding.finding == "pneumonia",
                }
            out.append({"label": row["class_name"], "kinds": kinds})
    return out


def summary(films: list[dict[str, Any]], limit: float, nearness: float) -> dict[str, Any]:
    def judged(kind: dict[str, Any]) -> bool:
        return kind["darkness"] < limit and kind["nearness"] > nearness

    out: dict[str, Any] = {"limit": limit, "nearness": nearness, "films": len(films)}
    normals = [f for f in films if f["label"] == "normal"]
    for name in KINDS:
        today = sum(f["kinds"][name]["refused"] for f in films)
        cut = [judged(f["kinds"][name]) for f in films]
        with_rule = sum(f["kinds"][name]["refused"] or c for f, c in zip(films, cut, strict=True))
        wrong = [f["kinds"][name] for f in normals if not f["kinds"][name]["refused"]]
        wrong = [k for k in wrong if k["pneumonia"]]
        kept = [k for k in wrong if not judged(k)]
        out[f"{name}: refused today"] = rate(today, len(films))
        now = [f for f in films if not f["kinds"][name]["refused now"]]
        same = sum(f["kinds"][name]["finding now"] == f["kinds"]["as given"]["finding now"] for f in now)
        out[f"{name}: refused by every check as shipped"] = rate(len(films) - len(now), len(films))
        out[f"{name}: answered as the film as given was"] = rate(same, len(now))
        out[f"{name}: refused with the rule"] = rate(with_rule, len(films))
        out[f"{name}: normals answered pneumonia, without the rule"] = rate(len(wrong), len(normals))
        out[f"{name}: normals answered pneumonia, with it"] = rate(len(kept), len(normals))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(parser)
    parser.add_argument("--limits", default=str(framing.MIN_BORDER_DARKNESS), help="border darkness limits")
    parser.add_argument("--nearness", default=str(framing.MIN_NEARNESS), help="distance/threshold floors")
    args = parser.parse_args()
    films = read(args.models, draw(args))
    results = [
        summary(films, float(limit), float(near))
        for limit in args.limits.split(",")
        for near in args.nearness.split(",")
    ]
    for result in results:
        rule = f"limit {result['limit']}, nearness {result['nearness']}"
        report(f"{rule} ({result['films']} films, seed {args.seed})", result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
