"""Cross-validate a recipe, then train its final model: the fold runs, then the run on all data.

    python -m tools.crossval --config tools/configs/us-breast.toml

Each fold's model predicts the images it never saw (out-of-fold); together they cover every
image once, which is what tools/release.py calibrates and reports on for small data sets (one
fixed validation split of a few dozen images would say little). Finished runs are skipped, so an
interrupted cross-validation resumes where it stopped. Writes runs/<name>/oof.npz.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
from rich.console import Console

from tools.recipe import load_recipe, read_oof

console = Console()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    recipe = load_recipe(args.config)
    folds = int(recipe.data.get("cv_folds", 0))
    if folds < 2:
        raise SystemExit(f"{args.config} has no [data] cv_folds: use tools.train")
    root = recipe.run_dir()
    runs: list[tuple[str, list[str]]] = [(f"fold-{k}", ["--fold", str(k)]) for k in range(folds)]
    runs.append(("final", []))
    for name, extra in runs:
        done = (root / name / "summary.json") if name != "final" else (root / "summary.json")
        if done.exists():
            console.print(f"{name}: done already")
            continue
        console.print(f"[bold]{name}[/]")
        resume = ["--resume"] if ((done.parent / "last.pt").exists()) else []
        command = [sys.executable, "-m", "tools.train", "--config", str(args.config), *extra, *resume]
        subprocess.run(command, check=True)
    paths, logits = [], []
    for k in range(folds):
        recorded = read_oof(root / f"fold-{k}" / "oof.npz")
        paths.extend(recorded)
        logits.extend(recorded.values())
    np.savez(root / "oof.npz", paths=np.array(paths), logits=np.stack(logits))
    console.print(f"[green]out-of-fold predictions for {len(paths)} images[/] -> {root / 'oof.npz'}")


if __name__ == "__main__":
    main()
