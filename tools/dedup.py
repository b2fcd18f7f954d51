"""Near-duplicate images in a labelled data set: find them, group them, keep each group whole.

    python -m tools.dedup --config tools/configs/us-breast.toml            # write the pairs CSV
    python -m tools.dedup --config tools/configs/us-breast.toml --check    # verify it is current

Public sets publish the same frame more than once: re-saved with or without calipers, re-cropped,
re-zoomed, or a neighbouring frame of the same sweep, sometimes under two labels. Left alone,
such copies land on both sides of a split and flatter every estimate. The rule, on grey images:

  two images are near-duplicates when the Pearson correlation of their 16x16 thumbnails
  (cv2.INTER_AREA) is at least 0.97, or when it is at least 0.5 and at least 30 SIFT matches
  (500 keypoints per image, Lowe ratio 0.75) agree on one similarity transform (RANSAC, 3 px,
  OpenCV's RNG seeded per pair).

The thumbnail correlation catches the same scene with fresh speckle (a neighbouring frame); the
keypoint test catches the same frame re-scaled, re-cropped or annotated, which moves pixels too
much for any correlation threshold (on BUSI real copies correlate as low as 0.64 while different
lesions reach 0.94). On BUSI the inlier counts fall into two clusters, >= 36 for copies and
<= 21 otherwise (the high ones of those matching burnt-in text such as 'LT AXILLA'); every one
of the 194,376 pairs was tested once, and none under the 0.5 pre-filter reached 30. Groups are
connected components, so a chain of copies is one group. The scan takes some ten minutes on one
core; the CSV it writes is what training reads.

The pairs are written to a CSV beside the recipe (`[data] near_duplicates`); tools/recipe.py
reads it at load time and makes each connected component of the near-duplicate graph (joined
with the recipe's own `group_column` groups, e.g. patients) one group, so no split or fold
separates them. A component whose members carry different labels cannot be labelled honestly;
with `[data] conflicting_duplicates = "exclude"` all its images are dropped from training and
evaluation. Everything here is deterministic: the same images give the same CSV and groups.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console

console = Console()

THUMBNAIL = 16
CORRELATION = 0.97  # near-duplicate on thumbnail correlation alone
CANDIDATE = 0.5  # below this thumbnail correlation no pair is tested further
INLIERS = 30  # SIFT matches agreeing on one similarity transform
KEYPOINTS = 500
RATIO = 0.75
RANSAC_PX = 3.0
Features = tuple[np.ndarray, np.ndarray | None]  # keypoint positions, SIFT descriptors
COLUMNS = ["path_a", "label_a", "path_b", "label_b", "corr16", "sift_inliers"]


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    correlation: float
    inliers: int


def thumbnail_correlation(images: list[np.ndarray], size: int = THUMBNAIL) -> np.ndarray:
    """N x N Pearson correlations of size x size grey thumbnails (area-averaged)."""
    vectors = []
    for image in images:
        thumb = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        thumb -= thumb.mean()
        vectors.append(thumb / (np.linalg.norm(thumb) + 1e-12))
    matrix = np.stack(vectors)
    return matrix @ matrix.T


def _features(images: list[np.ndarray]) -> list[Features]:
    sift = cv2.SIFT_create(nfeatures=KEYPOINTS)
    out = []
    for image in images:
        keypoints, descriptors = sift.detectAndCompute(image, None)
        out.append((np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors))
    return out


def _inliers(first: Features, second: Features) -> int:
    (points_a, desc_a), (points_b, desc_b) = first, second
    if desc_a is None or desc_b is None or len(desc_a) < 2 or len(desc_b) < 2:
        return 0
    matches = cv2.BFMatcher(cv2.NORM_L2).knnMatch(desc_a, desc_b, k=2)
    good = [m[0] for m in matches if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < 3:
        return 0
    source = points_a[[g.queryIdx for g in good]]
    target = points_b[[g.trainIdx for g in good]]
    cv2.setRNGSeed(0)  # RANSAC draws from OpenCV's RNG: the same pair always gives the same count
    _matrix, mask = cv2.estimateAffinePartial2D(
        source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX
    )
    return int(mask.sum()) if mask is not None else 0


def near_duplicate_pairs(names: list[str], images: list[np.ndarray]) -> list[Pair]:
    """Every near-duplicate pair among grey uint8 images, by the rule in the module docstring,
    in the order of `names` (a before b)."""
    correlation = thumbnail_correlation(images)
    rows, cols = np.nonzero(np.triu(correlation, 1) >= CANDIDATE)
    features = _features(images)
    pairs = []
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        r = float(correlation[i, j])
        inliers = _inliers(features[i], features[j])
        if r >= CORRELATION or inliers >= INLIERS:
            pairs.append(Pair(names[i], names[j], r, inliers))
    return pairs


def components(items: Iterable[str], links: Iterable[tuple[str, str]]) -> dict[str, str]:
    """item -> its connected component, named by the component's smallest item. Links to items
    not in `items` are ignored."""
    parent = {item: item for item in items}

    def root(item: str) -> str:
        while parent[item] != item:
            parent[item] = parent[parent[item]]
            item = parent[item]
        return item

    for a, b in links:
        if a in parent and b in parent:
            ra, rb = root(a), root(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the smaller name wins: order-independent
    return {item: root(item) for item in parent}


def duplicate_groups(
    groups: Mapping[str, str], labels: Mapping[str, str], pairs: Iterable[tuple[str, str]]
) -> tuple[dict[str, str], set[str]]:
    """Join `groups` (path -> group, e.g. patient or the path itself) along near-duplicate pairs.

    Returns path -> joined group (named by its smallest member group) and the paths of every
    near-duplicate component whose images carry more than one label (`labels`: path -> label).
    """
    pairs = [(a, b) for a, b in pairs if a in groups and b in groups]
    duplicates = components(groups, pairs)
    members: dict[str, set[str]] = {}
    for path, component in duplicates.items():
        members.setdefault(component, set()).add(labels[path])
    conflicting = {path for path, component in duplicates.items() if len(members[component]) > 1}
    # Groups (not paths) are the nodes now: a pair joins the two images' whole groups.
    joined = components(set(groups.values()), [(groups[a], groups[b]) for a, b in pairs])
    return {path: joined[group] for path, group in groups.items()}, conflicting


def read_pairs(path: Path) -> list[tuple[str, str]]:
    with path.open(newline="") as handle:
        return [(row["path_a"], row["path_b"]) for row in csv.DictReader(handle)]


def _scan(config: Path) -> tuple[list[dict[str, str]], Path]:
    from tools.recipe import load_recipe

    recipe = load_recipe(config)
    data = recipe.data
    if not data.get("near_duplicates"):
        raise SystemExit(f"{config} names no [data] near_duplicates file")
    with (recipe.data_root / data["labels_csv"]).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    names = [row[data["path_column"]] for row in rows]
    label = {row[data["path_column"]]: row[data["label_column"]] for row in rows}
    images = []
    for name in names:
        image = cv2.imread(str(recipe.data_root / name), cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SystemExit(f"cannot read {name}")
        images.append(image)
    with console.status(f"comparing {len(names)} images..."):
        pairs = near_duplicate_pairs(names, images)
    out = [
        {
            "path_a": p.a,
            "label_a": label[p.a],
            "path_b": p.b,
            "label_b": label[p.b],
            "corr16": f"{p.correlation:.4f}",
            "sift_inliers": str(p.inliers),
        }
        for p in pairs
    ]
    return out, recipe.path.parent / data["near_duplicates"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="fail unless the CSV matches a fresh scan")
    args = parser.parse_args()
    rows, target = _scan(args.config)
    if args.check:
        with target.open(newline="") as handle:
            stored = list(csv.DictReader(handle))
        if stored != rows:
            raise SystemExit(f"{target} is out of date: rerun python -m tools.dedup --config {args.config}")
        console.print(f"[green]{target} is current[/] ({len(rows)} pairs)")
        return
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    conflicts = sum(r["label_a"] != r["label_b"] for r in rows)
    console.print(f"{len(rows)} near-duplicate pairs ({conflicts} across labels) -> {target}")
    console.print(summary(args.config))


def summary(config: Path) -> str:
    """How the recipe's images group under its near-duplicate pairs (for the log and the card)."""
    from collections import Counter

    from tools.recipe import load_recipe, read_samples

    recipe = load_recipe(config)
    data = dict(recipe.raw["data"])
    kept = read_samples(recipe)
    recipe.raw["data"] = {**data, "conflicting_duplicates": "keep"}
    everything = read_samples(recipe)
    recipe.raw["data"] = data
    sizes = Counter(Counter(s.group for s in everything).values())
    dropped = sorted({s.path for s in everything} - {s.path for s in kept})
    return (
        f"{len(everything)} images form {sum(sizes.values())} groups "
        f"({', '.join(f'{n} of {size}' for size, n in sorted(sizes.items(), reverse=True))}); "
        f"{len(dropped)} images in groups with conflicting labels "
        f"({'excluded' if data.get('conflicting_duplicates') == 'exclude' else 'kept'}): "
        + ", ".join(dropped)
    )


if __name__ == "__main__":
    main()
