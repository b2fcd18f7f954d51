"""Films the wrong way up: how many the orientation check (edge/inference/orientation.py) refuses,
and what it costs on films the right way up.

    python -m tools.orientation_eval          # 400 films (seed 2) of patients seed 1's draw lacks
    python -m tools.orientation_eval --seed 1 --margins 0.8,0.85,0.9,0.95   # how the margin was chosen

Each film of a seeded sample of the chest X-ray development set is read by the served model as
given, turned 180 degrees, flipped top to bottom and mirrored left to right, through its
applicability check; the rule is applied to each as if it were the film given. Counted: films
the right way up refused (the cost); films turned or flipped refused; normal films turned or
flipped that would be answered "pneumonia" without the rule and with it. Wilson 95% intervals.
Then films inverted, turned a quarter turn, or framed by a flat border of 1% of their size
(refused as unlike a chest film): how many of those refusals say what the film looks like
altered (`orientation.explained`).
The films are the model's own development set, most seen in training: the figures show the
mechanism, not the rate on another site's films.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import random
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.config import load_settings
from edge.imaging.decode import decode_bytes
from edge.inference import metrics, orientation
from edge.inference.pool import ModelPool, ServedModel
from edge.inference.registry import Registry

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cxr-pneumonia"
TUNED_ON = 400  # films of seed 1's draw the margin was chosen on
VIEWS = ("as given", "turned 180", "flipped top-bottom", "mirrored")


def views(pixels: np.ndarray) -> list[np.ndarray]:
    return [pixels, *orientation.turned(pixels), np.ascontiguousarray(pixels[:, ::-1])]


def sample(count: int, seed: int, apart_from: int | None = None) -> list[dict[str, str]]:
    """`count` films drawn with `seed`; with `apart_from`, none of a patient among the films
    that seed draws (the margin was chosen on seed 1's: read on patients it never saw)."""
    rows = list(csv.DictReader((DATA / "labels.csv").open()))
    shuffled = rows[:]
    random.Random(seed).shuffle(shuffled)
    if apart_from is None:
        return shuffled[:count]
    tuned = rows[:]
    random.Random(apart_from).shuffle(tuned)
    seen = {row["patient"] for row in tuned[:TUNED_ON]}
    return [row for row in shuffled if row["patient"] not in seen][:count]


@contextlib.contextmanager
def chest_model(models: Path) -> Iterator[ServedModel]:
    """The chest film model as served, from `models`, in a scratch data folder."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = load_settings(data_dir=Path(scratch), models={"dir": models})
        pool = ModelPool(Registry(models), settings, Path(scratch) / "cache")
        try:
            yield pool.get("cxr-pneumonia")
        finally:
            pool.close()


def film(row: dict[str, str]) -> np.ndarray:
    return decode_bytes((DATA / row["path"]).read_bytes(), row["path"]).pixels


def read(models: Path, rows: list[dict[str, str]]) -> list[dict[str, Any]]:
    """Per film: its label, and per view the check's distance and the model's finding."""
    out = []
    with chest_model(models) as served:
        for row in rows:
            found = served.predict(views(film(row)))
            assert all(p.scope is not None for p in found)
            out.append(
                {
                    "label": row["class_name"],
                    "distance": [p.scope.distance for p in found if p.scope is not None],
                    "finding": [p.finding.finding for p in found],
                    "threshold": found[0].scope.threshold if found[0].scope is not None else 0.0,
                }
            )
    return out


def _framed(value: int) -> Callable[[np.ndarray], np.ndarray]:
    def frame(pixels: np.ndarray) -> np.ndarray:
        border = max(1, round(0.01 * max(pixels.shape[:2])))
        return cv2.copyMakeBorder(pixels, border, border, border, border, cv2.BORDER_CONSTANT, value=value)

    return frame


ALTERED: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverted": lambda p: 255 - p,
    "quarter turn": np.rot90,
    "framed in black (1% of its size)": _framed(0),
    "framed in white (1% of its size)": _framed(255),
}


def explained_share(models: Path, count: int, seed: int) -> dict[str, Any]:
    """Films inverted, turned a quarter turn or framed: refused OUT_OF_SCOPE, and how many
    refusals say what the film looks like altered (`orientation.explained`)."""
    rows = list(csv.DictReader((DATA / "labels.csv").open()))
    random.Random(seed).shuffle(rows)
    tally = {how: [0, 0, 0] for how in ALTERED}  # films, refused, explained
    with chest_model(models) as served:
        for row in rows[:count]:
            pixels = film(row)
            for how, alter in ALTERED.items():
                altered = np.ascontiguousarray(alter(pixels))
                refusal = served.out_of_scope(served.predict([altered])[0].scope, True)
                counts = tally[how]
                counts[0] += 1
                if refusal is not None:
                    counts[1] += 1
                    counts[2] += orientation.explained(served, altered, refusal).message != refusal.message
    return {how: {"films": f, "refused": r, "explained": e} for how, (f, r, e) in tally.items()}


def turned_of(view: int) -> list[int]:
    """Which views are `orientation.turned` of view `view` (0 given, 1 turned, 2 flipped, 3 mirrored)."""
    return {0: [1, 2], 1: [0, 3], 2: [3, 0], 3: [2, 1]}[view]


def rate(hits: int, n: int) -> dict[str, Any]:
    """A share with its Wilson 95% interval, as these tools report it."""
    low, high = metrics.wilson_interval(hits, n)
    return {"n": n, "share": round(hits / n, 4) if n else None, "ci95": [round(low, 4), round(high, 4)]}


def add_draw_arguments(parser: argparse.ArgumentParser) -> None:
    """The films drawn (`draw`) and where the figures go, shared by the film checks' tools."""
    parser.add_argument("--films", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument(
        "--apart-from", type=int, default=1, help="no patient of this seed's draw (the tuning draw); -1: none"
    )
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[1] / "models")
    parser.add_argument("--json", type=Path)


def draw(args: argparse.Namespace) -> list[dict[str, str]]:
    apart = None if args.apart_from < 0 or args.apart_from == args.seed else args.apart_from
    return sample(args.films, args.seed, apart)


def report(title: str, result: dict[str, Any]) -> None:
    print(title)
    for key, value in result.items():
        if isinstance(value, dict):
            print(f"  {key}: {value['share']} [{value['ci95'][0]}, {value['ci95'][1]}] of {value['n']}")


def summary(films: list[dict[str, Any]], margin: float) -> dict[str, Any]:
    out: dict[str, Any] = {"margin": margin, "films": len(films)}
    normals = sum(f["label"] == "normal" for f in films)
    for view, name in enumerate(VIEWS):
        refused, wrong, wrong_kept = 0, 0, 0
        for film in films:
            distances = film["distance"]
            judged = orientation.judged_upside_down(
                distances[view], [distances[t] for t in turned_of(view)], margin
            )
            refused += judged
            answered = distances[view] <= film["threshold"] and film["finding"][view] == "pneumonia"
            if film["label"] == "normal" and answered:
                wrong += 1
                wrong_kept += not judged
        out[f"{name}: refused as upside down"] = rate(refused, len(films))
        out[f"{name}: normals answered pneumonia, without the rule"] = rate(wrong, normals)
        out[f"{name}: normals answered pneumonia, with it"] = rate(wrong_kept, normals)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_draw_arguments(parser)
    parser.add_argument("--margins", default=str(orientation.MARGIN))
    parser.add_argument("--explained", type=int, default=200, help="films altered (ALTERED)")
    args = parser.parse_args()
    films = read(args.models, draw(args))
    margins = args.margins.split(",") if films else []
    results: list[dict[str, Any]] = [summary(films, float(m)) for m in margins]
    if args.explained:
        said = explained_share(args.models, args.explained, args.seed)
        results.append({"explained": said})
        for how, counts in said.items():
            refused, explained = counts["refused"], counts["explained"]
            print(f"{how}: {refused} of {counts['films']} refused OUT_OF_SCOPE, {explained} saying so")
    for result in results[: len(margins)]:
        report(f"margin {result['margin']} ({result['films']} films, seed {args.seed})", result)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
