"""Inputs that do not say what they are: which model answers them, and which are refused.

    python -m tools.routing_eval                 # 300 images of each model's data set
    python -m tools.routing_eval --per-set 50    # quicker
    python -m tools.routing_eval --json FILE

A PNG or JPEG has no modality, so the device lets every installed model's applicability check
read it and the most applicable one serve (edge/inference/routing.py). Each shipped model's
data set is sampled (seeded), each image offered plain and under one acquisition shift (CLAHE,
blur and JPEG re-compression together, drawn per image, as an unfamiliar site's export may do),
and routed as the device routes. Counted per set: answered by its own model, answered by another
model (the error that matters: a chest film read "covid" by the lung ultrasound model), refused.
Beside the product's rule (edge/inference/routing.py: a sharp check that takes the input decides,
else an in-scope best guess) the same readings under "in scope only" and the previous rule (the
best guess unless out of scope) show what the rule saves and what it costs.

The images come from the models' own data sets, most of them seen in training: the "own model"
figures flatter it. What this measures is the confusion between models, which training on one
modality does not teach.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from edge.config import Settings
from edge.imaging.decode import decode_bytes
from edge.inference import routing
from edge.inference.pool import ModelPool
from edge.inference.registry import Registry
from edge.inference.scope import OUT_OF_SCOPE
from tools import augment as a
from tools.recipe import REPO, load_recipe, read_samples

console = Console(width=130)
CONFIGS = REPO / "tools" / "configs"


def site_shift(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Local contrast, blur and re-compression at once, each drawn per image."""
    image = a.local_contrast(image, float(rng.uniform(2.0, 4.0)))
    image = a.blur(image, float(rng.uniform(0.5, 1.5)))
    return a.jpeg(image, int(rng.integers(40, 81)))


def images_of(model: str, count: int, seed: int) -> list[Path]:
    recipe = load_recipe(CONFIGS / f"{model}.toml")
    samples = read_samples(recipe)
    random.Random(seed).shuffle(samples)
    return [recipe.data_root / s.path for s in samples[:count]]


def route(pool: ModelPool, names: list[str], pixels: np.ndarray) -> list[routing.Reading]:
    readings = [routing.Reading.of(n, pool.get(n).predict([pixels])[0].scope) for n in names]
    return routing.ranked(readings)


def outcome(order: list[routing.Reading], own: str, serves: Any) -> str:
    reading = serves(order)
    if reading is None:
        return "refused"
    return "own model" if reading.model == own else "another model"


def measure(per_set: int, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp))  # the product's defaults, not this machine's
        registry = Registry(REPO / "models")
        settings.models.dir = registry.models_dir
        pool = ModelPool(registry, settings, Path(tmp) / "cache")
        names = registry.names()
        sharp = routing.sharp_checks({n: registry.get(n).manifest for n in names})
        rules = {
            "the product's": lambda order: routing.chosen(order, sharp),
            "in scope only": routing.chosen,
            "unless out of scope (before)": _unless_out,
        }
        rng = np.random.default_rng(seed)
        counts: dict[str, dict[str, dict[str, int]]] = {}
        wrong: list[dict[str, Any]] = []
        for own in names:
            for path in images_of(own, per_set, seed):
                pixels = decode_bytes(path.read_bytes(), path.name).pixels
                for variant, image in (("plain", pixels), ("shifted", site_shift(pixels, rng))):
                    order = route(pool, names, image)
                    for rule, serves in rules.items():
                        kind = outcome(order, own, serves)
                        cell = counts.setdefault(f"{own} {variant}", {}).setdefault(rule, {})
                        cell[kind] = cell.get(kind, 0) + 1
                        if kind == "another model" and rule == "the product's":
                            wrong.append(
                                {
                                    "image": path.name,
                                    "set": own,
                                    "variant": variant,
                                    "readings": routing.said(order),
                                }
                            )
        pool.close()
    return {
        "per_set": per_set,
        "seed": seed,
        "models": names,
        "sharp_checks": sorted(sharp),
        "counts": counts,
        "answered_wrongly": wrong,
    }


def _unless_out(order: list[routing.Reading]) -> routing.Reading | None:
    return order[0] if order[0].state != OUT_OF_SCOPE else None


def print_table(result: dict[str, Any]) -> None:
    title = f"routing by applicability, {result['per_set']} images per set (seed {result['seed']})"
    table = Table(title=title)
    for column in ("set", "rule", "own model", "another model", "refused"):
        table.add_column(column, justify="left" if column in ("set", "rule") else "right")
    for name, by_rule in result["counts"].items():
        for rule, cell in by_rule.items():
            kinds = ("own model", "another model", "refused")
            table.add_row(name, rule, *(str(cell.get(k, 0)) for k in kinds))
    console.print(table)
    for row in result["answered_wrongly"]:
        where = f"{row['set']} {row['variant']} {row['image']}"
        console.print(f"answered by another model: {where}: {row['readings']}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--per-set", type=int, default=300)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = measure(args.per_set, args.seed)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
