"""Quality measures over a recipe's real images, and the gate thresholds they suggest.

    python -m tools.quality_stats --config tools/configs/cxr-pneumonia.toml

A threshold should refuse what no real image of the training distribution looks like: each
suggested limit sits beyond the worst real image by a margin (a fraction of the range), so that
the gate's false refusals on real images are about zero while a blank, black, flat or smeared
image is caught. Prints the percentiles and the suggestion as a [quality] table for the recipe.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track

from edge.imaging.decode import decode_bytes
from edge.imaging.quality import measure
from tools.recipe import load_recipe, read_samples

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    rows = []
    for sample in track(read_samples(recipe), description="measuring", console=console):
        pixels = decode_bytes((recipe.data_root / sample.path).read_bytes(), sample.path).pixels
        rows.append(measure(pixels).as_dict())
    names = list(rows[0])
    values = {name: np.array([r[name] for r in rows]) for name in names}
    console.print(f"{len(rows)} images")
    for name in names:
        p = np.percentile(values[name], [0, 0.1, 1, 50, 99, 99.9, 100])
        console.print(
            f"{name:18s} min {p[0]:9.3f}  p0.1 {p[1]:9.3f}  p1 {p[2]:9.3f}  median {p[3]:9.3f}  "
            f"p99 {p[4]:9.3f}  p99.9 {p[5]:9.3f}  max {p[6]:9.3f}"
        )
    worst_black, worst_white = values["black_fraction"].max(), values["white_fraction"].max()
    suggestion = {
        "min_side": int(min(64, values["min_side"].min())),
        "max_black_fraction": round(min(0.98, worst_black + 0.5 * (1 - worst_black)), 3),
        "max_white_fraction": round(min(0.98, worst_white + 0.5 * (1 - worst_white)), 3),
        "min_dynamic_range": round(float(values["dynamic_range"].min()) * 0.5, 1),
        "min_sharpness": round(float(values["sharpness"].min()) * 0.4, 1),
        "max_uniform_fraction": round(
            min(0.98, values["uniform_fraction"].max() + 0.5 * (1 - values["uniform_fraction"].max())), 3
        ),
    }
    console.print("[quality]")
    for key, value in suggestion.items():
        console.print(f"{key} = {value}")


if __name__ == "__main__":
    main()
