"""Training recipes (tools/configs/*.toml) and the labelled data sets they point at."""

from __future__ import annotations

import csv
import os
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.compat import tomllib
from edge.imaging.decode import decode_bytes
from edge.imaging.preprocess import PreprocessSpec, resize, to_colour

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Recipe:
    raw: dict[str, Any]
    path: Path

    @property
    def name(self) -> str:
        return str(self.raw["name"])

    @property
    def data(self) -> dict[str, Any]:
        return dict(self.raw["data"])

    @property
    def labels(self) -> list[str]:
        return list(self.raw["data"]["labels"])

    @property
    def positive(self) -> str:
        return str(self.raw["data"]["positive"])

    @property
    def data_root(self) -> Path:
        return (REPO / self.raw["data"]["root"]).resolve()

    @property
    def spec(self) -> PreprocessSpec:
        i = self.raw["input"]
        return PreprocessSpec(
            height=i["shape"][1],
            width=i["shape"][2],
            colour=i["colour"],
            resize=i["resize"],
            scale=i["scale"],
            mean=tuple(i["mean"]),
            std=tuple(i["std"]),
        )

    def run_dir(self) -> Path:
        """runs/<name> in the repository, or under $EDGE_TOOLS_RUNS (tests, a scratch disk)."""
        return Path(os.environ.get("EDGE_TOOLS_RUNS") or REPO / "runs") / self.name


def load_recipe(path: Path) -> Recipe:
    with path.open("rb") as handle:
        return Recipe(tomllib.load(handle), path)


@dataclass
class Sample:
    path: str  # relative to the data root
    label: int
    group: str
    row: dict[str, str]


NEAR_DUPLICATE_GROUP = "near-duplicate group"
"""A `group_column` computed at load time from `[data] near_duplicates` (see tools/dedup.py)."""


def read_samples(recipe: Recipe) -> list[Sample]:
    """The labelled images a recipe uses, each with its group (what a split keeps whole).

    `[data] exclude` drops named images. `[data] near_duplicates` names a CSV of near-duplicate
    pairs (tools/dedup.py, relative to the recipe) whose connected components, joined with the
    `group_column` groups, become the groups; the joined group is also put in each row as
    `near-duplicate group`, which `group_column` may name. With `conflicting_duplicates =
    "exclude"` every image of a near-duplicate component with more than one label is dropped.
    """
    data = recipe.data
    labels = recipe.labels
    excluded = set(data.get("exclude", []))
    group_column = data.get("group_column") or ""
    out = []
    with (recipe.data_root / data["labels_csv"]).open(newline="") as handle:
        for row in csv.DictReader(handle):
            name = row[data["label_column"]]
            if name not in labels or row[data["path_column"]] in excluded:
                continue  # e.g. the single 'pneumonia' frame in the lung set
            group = row.get(group_column, "") or row[data["path_column"]]
            out.append(Sample(row[data["path_column"]], labels.index(name), group, row))
    if data.get("near_duplicates"):
        return _join_near_duplicates(recipe, out)
    if group_column == NEAR_DUPLICATE_GROUP:
        raise ValueError(f"{recipe.path}: group_column {NEAR_DUPLICATE_GROUP!r} needs [data] near_duplicates")
    return out


def _join_near_duplicates(recipe: Recipe, samples: list[Sample]) -> list[Sample]:
    from tools.dedup import duplicate_groups, read_pairs

    policy = recipe.data.get("conflicting_duplicates", "keep")
    if policy not in ("keep", "exclude"):
        raise ValueError(f"{recipe.path}: conflicting_duplicates must be 'keep' or 'exclude', not {policy!r}")
    pairs = read_pairs(recipe.path.parent / recipe.data["near_duplicates"])
    joined, conflicting = duplicate_groups(
        {s.path: s.group for s in samples}, {s.path: str(s.label) for s in samples}, pairs
    )
    out = []
    for sample in samples:
        if policy == "exclude" and sample.path in conflicting:
            continue
        group = joined[sample.path]
        out.append(Sample(sample.path, sample.label, group, {**sample.row, NEAR_DUPLICATE_GROUP: group}))
    return out


def group_split(samples: list[Sample], recipe: Recipe) -> dict[str, str]:
    """path -> train | val | holdout, whole groups at a time, stratified by the group's label.

    Groups are dealt round-robin per label after a seeded shuffle, so each split gets about its
    fraction of every class and no group (patient, source video) is on two sides.
    """
    rng = random.Random(recipe.raw["seed"])
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_group[sample.group].append(sample)
    by_label: dict[int, list[str]] = defaultdict(list)
    for group, members in sorted(by_group.items()):
        majority = Counter(s.label for s in members).most_common(1)[0][0]
        by_label[majority].append(group)
    val_f = float(recipe.data["val_fraction"])
    hold_f = float(recipe.data.get("holdout_fraction", 0.0))
    assignment: dict[str, str] = {}
    for label in sorted(by_label):
        groups = by_label[label]
        rng.shuffle(groups)
        total = sum(len(by_group[g]) for g in groups)
        counts = {"val": 0, "holdout": 0}
        for group in groups:
            size = len(by_group[group])
            if counts["val"] + size / 2 <= val_f * total:
                split = "val"
            elif counts["holdout"] + size / 2 <= hold_f * total:
                split = "holdout"
            else:
                split = "train"
            counts[split] = counts.get(split, 0) + size
            for sample in by_group[group]:
                assignment[sample.path] = split
    return assignment


def group_folds(samples: list[Sample], recipe: Recipe, folds: int) -> dict[str, int]:
    """path -> fold (0..folds-1) for cross-validation, whole groups at a time.

    Groups are taken largest first (after a seeded shuffle) and each goes to the fold holding the
    fewest images of its majority label, so folds are balanced in size and class mix.
    """
    rng = random.Random(recipe.raw["seed"])
    by_group: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_group[sample.group].append(sample)
    groups = sorted(by_group)
    rng.shuffle(groups)
    groups.sort(key=lambda g: -len(by_group[g]))
    load = [[0] * len(recipe.labels) for _ in range(folds)]
    assignment: dict[str, int] = {}
    for group in groups:
        members = by_group[group]
        majority = Counter(s.label for s in members).most_common(1)[0][0]
        fold = min(range(folds), key=lambda f: (load[f][majority], sum(load[f])))
        load[fold][majority] += len(members)
        for sample in members:
            assignment[sample.path] = fold
    return assignment


def load_pixels(recipe: Recipe, samples: list[Sample]) -> np.ndarray:
    """Decode with the product's own decoder, colour-convert and resize to the model input.

    Returns uint8 N x H x W (grey) or N x H x W x 3; augmentation and normalisation follow.
    """
    spec = recipe.spec
    out = []
    for sample in samples:
        decoded = decode_bytes((recipe.data_root / sample.path).read_bytes(), sample.path)
        image = resize(to_colour(decoded.pixels, spec.colour), spec.height, spec.width, spec.resize)
        out.append(image)
    return np.stack(out)


def read_split(recipe: Recipe) -> dict[str, str]:
    """path -> split, as train.py wrote it (every later tool must use the same split)."""
    with (recipe.run_dir() / "split.csv").open(newline="") as handle:
        return {row["path"]: row["split"] for row in csv.DictReader(handle)}


def split_samples(recipe: Recipe, name: str) -> list[Sample]:
    split = read_split(recipe)
    return [s for s in read_samples(recipe) if split.get(s.path) == name]


def model_inputs(recipe: Recipe, samples: list[Sample]) -> np.ndarray:
    """float32 NCHW exactly as the product feeds the model."""
    from edge.imaging.preprocess import normalise

    spec = recipe.spec
    return np.stack([normalise(image, spec) for image in load_pixels(recipe, samples)])


def run_onnx(path: Path, inputs: np.ndarray, batch: int = 64) -> np.ndarray:
    """Logits from an ONNX file on ONNX Runtime's CPU provider."""
    return run_onnx_outputs(path, inputs, ("logits",), batch)[0]


def run_onnx_outputs(
    path: Path, inputs: np.ndarray, names: tuple[str, ...], batch: int = 64
) -> list[np.ndarray]:
    """The named outputs (e.g. logits and cam) of an ONNX file, batch by batch on the CPU."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outs = [session.run(list(names), {"image": inputs[i : i + batch]}) for i in range(0, len(inputs), batch)]
    return [np.concatenate([out[k] for out in outs]) for k in range(len(names))]


def read_oof(path: Path) -> dict[str, np.ndarray]:
    """image path -> out-of-fold logits, from an oof.npz (tools/train.py per fold, crossval.py for all)."""
    with np.load(path) as data:
        return dict(zip((str(p) for p in data["paths"]), data["logits"], strict=True))


def check_oof(path: Path, paths: list[str], logits: np.ndarray) -> None:
    """ONNX logits must reproduce those training recorded in `path` for exactly these images:
    otherwise a fold, the split or an export is not the one the released figures came from."""
    recorded = read_oof(path)
    if set(recorded) != set(paths):
        raise SystemExit(f"{path}: its images differ from split.csv: retrain the folds")
    worst = float(np.abs(np.stack([recorded[p] for p in paths]) - logits).max())
    if worst > 1e-3:
        raise SystemExit(f"{path}: ONNX logits differ from training's by {worst:.2e}: re-export the folds")
