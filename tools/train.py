"""Train a small CNN from scratch on the CPU, then export it to ONNX.

    python -m tools.train --config tools/configs/cxr-pneumonia.toml [--resume] [--epochs N]
    python -m tools.train --config ... --member K    # an ensemble member: same split, other seed

Writes runs/<name>/: split.csv (every image's split), last.pt / best.pt (resumable
checkpoints), history.json, <name>-fp32.onnx (checked against torch on real images before it
is kept) and summary.json. tools/release.py later saves torch's logits for the shipped sample
images beside the model, so the tests can hold the ONNX file to them.
No pre-trained weights: nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from edge.imaging.preprocess import normalise
from edge.inference.metrics import roc_auc
from tools.augment import augment
from tools.nets import CamNet
from tools.recipe import (
    Recipe,
    Sample,
    group_folds,
    group_split,
    load_pixels,
    load_recipe,
    read_samples,
    run_onnx,
)

console = Console()
MEMBER_SEED_STRIDE = 7919  # a prime well past any fold count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_net(recipe: Recipe) -> CamNet:
    net = recipe.raw["net"]
    channels = recipe.raw["input"]["shape"][0]
    return CamNet(channels, len(recipe.labels), net["widths"], net["blocks"])


def to_tensor(images: np.ndarray, recipe: Recipe) -> torch.Tensor:
    spec = recipe.spec
    return torch.from_numpy(np.stack([normalise(image, spec) for image in images]))


def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, recipe: Recipe) -> dict[str, Any]:
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            batch = to_tensor(images[start : start + 128], recipe)
            logits.append(model(batch)[0].numpy())
    all_logits = np.concatenate(logits)
    probs = torch.softmax(torch.from_numpy(all_logits), 1).numpy()
    positive = recipe.labels.index(recipe.positive)
    truth = labels == positive
    loss = float(nn.functional.cross_entropy(torch.from_numpy(all_logits), torch.from_numpy(labels)))
    return {
        "auc": roc_auc(truth, probs[:, positive]),
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "loss": loss,
        "logits": all_logits,
    }


def class_weights(labels: np.ndarray, classes: int, mode: str) -> torch.Tensor:
    if mode != "balanced":
        return torch.ones(classes)
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    return torch.tensor(len(labels) / (classes * np.maximum(counts, 1)), dtype=torch.float32)


def count_flops(model: nn.Module, shape: list[int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, *shape))
    return counter.get_total_flops() / 1e9


def export_onnx(model: nn.Module, recipe: Recipe, path: Path) -> None:
    """FP32 ONNX with a dynamic batch and named tensors (image -> logits, cam, features: the
    pooled penultimate activations the applicability check scores, tools/graph_edits.py)."""
    model.eval()
    example = torch.zeros(1, *recipe.raw["input"]["shape"])
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        input_names=["image"],
        output_names=["logits", "cam"],
        dynamic_shapes=({0: batch},),
        opset_version=18,
        external_data=False,
    )
    assert program is not None
    program.save(str(path))
    import onnx

    from tools.graph_edits import add_features_output, feature_taps

    exported = onnx.load(str(path))
    onnx.save(add_features_output(exported, feature_taps(exported)), str(path))


def fold_fp32(recipe: Recipe, fold_dir: Path) -> Path:
    """A cross-validation fold's model as FP32 ONNX, exported once from its checkpoint (training
    exports only the final model; the INT8 gate and the failure analysis need the folds')."""
    path = fold_dir / f"{recipe.name}-fp32.onnx"
    if not path.exists():
        net = build_net(recipe)
        net.load_state_dict(torch.load(fold_dir / "best.pt"))
        export_onnx(net, recipe, path)
    return path


def write_split(run: Path, samples: list[Sample], split: dict[str, str], recipe: Recipe) -> None:
    with (run / "split.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group", "split"])
        for s in samples:
            writer.writerow([s.path, recipe.labels[s.label], s.group, split[s.path]])


def select_data(recipe: Recipe, fold: int | None) -> tuple[Path, list[Sample], list[Sample], list[Sample]]:
    """(run folder, train, validation, holdout) for this run.

    Recipes with `[data] cv_folds` train one model per fold (`--fold k`: validation = fold k,
    whose predictions are the out-of-fold set the release tool calibrates and reports on) and a
    final model on everything (no `--fold`). Others use a fixed train / val / holdout split.
    """
    samples = read_samples(recipe)
    root = recipe.run_dir()
    root.mkdir(parents=True, exist_ok=True)
    folds = int(recipe.data.get("cv_folds", 0))
    if folds:
        assignment = group_folds(samples, recipe, folds)
        write_split(root, samples, {p: f"fold-{k}" for p, k in assignment.items()}, recipe)
        if fold is None:
            return root, samples, [], []
        run = root / f"fold-{fold}"
        run.mkdir(exist_ok=True)
        train = [s for s in samples if assignment[s.path] != fold]
        val = [s for s in samples if assignment[s.path] == fold]
        return run, train, val, []
    split = group_split(samples, recipe)
    write_split(root, samples, split, recipe)
    pick = {name: [s for s in samples if split[s.path] == name] for name in ("train", "val", "holdout")}
    return root, pick["train"], pick["val"], pick["holdout"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--fold", type=int, help="cross-validation recipes: train the model for this fold")
    parser.add_argument(
        "--member",
        type=int,
        default=0,
        help="ensemble member K >= 1: the same split and recipe, another initialisation and "
        "augmentation draw, in runs/<name>/member-K (0, the default, is the ordinary run; for a "
        "cross-validated recipe, a member of the final fit on all the data)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run's last.pt")
    parser.add_argument("--epochs", type=int, help="override the recipe's epoch count")
    parser.add_argument("--limit", type=int, help="use only N training images (smoke tests)")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()

    recipe = load_recipe(args.config)
    if args.member < 0 or (args.member and args.fold is not None):
        parser.error("--member is K >= 1, and not with --fold")
    # A member's offset is far from the folds' (0..K-1) so no member repeats a fold's draw; the
    # split keeps the recipe's own seed, so every member is judged on the same holdout.
    seed_offset = (args.fold or 0) + MEMBER_SEED_STRIDE * args.member
    seed_everything(recipe.raw["seed"] + seed_offset)
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = dict(recipe.raw["train"])
    if args.epochs:
        hp["epochs"] = args.epochs
    run, train_s, val_s, hold_s = select_data(recipe, args.fold)
    if args.member:
        run = run / f"member-{args.member}"
        run.mkdir(exist_ok=True)
    if args.limit:  # a seeded random subset keeps both classes in a smoke run
        pick = random.Random(0)
        train_s = pick.sample(train_s, min(args.limit, len(train_s)))
        val_s = pick.sample(val_s, min(args.limit // 2, len(val_s)))
    early_stopping = bool(val_s) and "patience" in hp
    schedule = "early stopping on validation AUC" if early_stopping else f"{hp['epochs']} fixed epochs"
    console.print(
        f"[bold]{recipe.name}[/] {run.name}: {len(train_s)} train, {len(val_s)} val, "
        f"{len(hold_s)} holdout images; {schedule}"
    )
    with console.status("decoding images with the product's decoder..."):
        train_x, val_x = load_pixels(recipe, train_s), load_pixels(recipe, val_s) if val_s else None
    train_y = np.array([s.label for s in train_s])
    val_y = np.array([s.label for s in val_s])

    model = build_net(recipe)
    gflops = count_flops(model, recipe.raw["input"]["shape"])
    params = sum(p.numel() for p in model.parameters())
    console.print(f"net: {params / 1e6:.2f} M parameters, {gflops:.3f} GFLOP per image")
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    steps_per_epoch = math.ceil(len(train_x) / hp["batch_size"])
    total_steps = hp["epochs"] * steps_per_epoch
    warmup = hp.get("warmup_epochs", 1) * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    loss_fn = nn.CrossEntropyLoss(
        weight=class_weights(train_y, len(recipe.labels), hp.get("class_weighting", ""))
    )
    state: dict[str, Any] = {"epoch": 0, "best_auc": -1.0, "best_epoch": -1, "history": [], "seconds": 0.0}
    if args.resume and (run / "last.pt").exists():
        checkpoint = torch.load(run / "last.pt", weights_only=False)
        model.load_state_dict(checkpoint["model"])
        optimiser.load_state_dict(checkpoint["optimiser"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = checkpoint["state"]
        np.random.set_state(checkpoint["numpy_rng"])
        torch.set_rng_state(checkpoint["torch_rng"])
        console.print(f"resumed after epoch {state['epoch']} (best AUC {state['best_auc']:.4f})")

    rng = np.random.default_rng(recipe.raw["seed"] + seed_offset * 1000 + state["epoch"])
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    ]
    with Progress(*columns, console=console) as progress:
        while state["epoch"] < hp["epochs"]:
            epoch = state["epoch"] + 1
            epoch_started = time.time()
            task = progress.add_task(f"epoch {epoch}/{hp['epochs']}", total=steps_per_epoch, info="")
            model.train()
            order = rng.permutation(len(train_x))
            running = 0.0
            for step in range(steps_per_epoch):
                index = order[step * hp["batch_size"] : (step + 1) * hp["batch_size"]]
                images = np.stack([augment(train_x[i], recipe.raw["augment"], rng) for i in index])
                logits, _ = model(to_tensor(images, recipe))
                loss = loss_fn(logits, torch.from_numpy(train_y[index]))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                scheduler.step()
                value = float(loss.detach())
                running = 0.9 * running + 0.1 * value if step else value
                progress.update(task, advance=1, info=f"loss {running:.3f}")
            row: dict[str, Any] = {"epoch": epoch, "train_loss": running}
            if val_x is not None:
                metrics = evaluate(model, val_x, val_y, recipe)
                row.update(val_auc=metrics["auc"], val_accuracy=metrics["accuracy"], val_loss=metrics["loss"])
            state["seconds"] += time.time() - epoch_started
            row["seconds"] = round(state["seconds"], 1)
            state["history"].append(row)
            state["epoch"] = epoch
            if early_stopping:
                improved = not metrics["auc"] <= state["best_auc"]  # also true for a NaN AUC
                if improved:
                    state["best_auc"], state["best_epoch"] = metrics["auc"], epoch
                    torch.save(model.state_dict(), run / "best.pt")
            else:  # fixed schedule: the model is the last epoch's
                improved = True
                state["best_epoch"] = epoch
                torch.save(model.state_dict(), run / "best.pt")
            info = f"val AUC {row['val_auc']:.4f} acc {row['val_accuracy']:.3f}" if "val_auc" in row else ""
            progress.update(task, info=info + (" *" if improved and early_stopping else ""))
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimiser": optimiser.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "state": state,
                    "numpy_rng": np.random.get_state(),
                    "torch_rng": torch.get_rng_state(),
                },
                run / "last.pt",
            )
            (run / "history.json").write_text(json.dumps(state["history"], indent=1))
            if early_stopping and epoch - state["best_epoch"] >= hp["patience"]:
                console.print(f"early stop: no better validation AUC for {hp['patience']} epochs")
                break

    model.load_state_dict(torch.load(run / "best.pt"))
    model.eval()
    summary: dict[str, Any] = {
        "name": recipe.name,
        "run": run.name,
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "train_images": len(train_s),
        "val_images": len(val_s),
        "holdout_images": len(hold_s),
        "params": params,
        "gflops": gflops,
        "train_seconds": round(state["seconds"], 1),
        "torch": torch.__version__,
        "recipe": str(args.config),
    }
    if val_x is not None:
        final = evaluate(model, val_x, val_y, recipe)
        summary.update(val_auc=final["auc"], val_accuracy_argmax=final["accuracy"])
        if args.fold is not None:  # this fold's out-of-fold predictions
            np.savez(run / "oof.npz", paths=np.array([s.path for s in val_s]), logits=final["logits"])
    if args.fold is None:
        onnx_path = run / f"{recipe.name}-fp32.onnx"
        export_onnx(model, recipe, onnx_path)
        # The exported file must compute what the network computes: check it on real images now.
        check_x = to_tensor((val_x if val_x is not None else train_x)[:16], recipe)
        with torch.no_grad():
            expected = model(check_x)[0].numpy()
        export_diff = float(np.abs(run_onnx(onnx_path, check_x.numpy()) - expected).max())
        if export_diff > 1e-3:
            raise SystemExit(f"ONNX export differs from torch by {export_diff:.2e}: not exporting")
        summary["export_max_abs_diff"] = export_diff
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"[green]done[/]: {json.dumps({k: summary[k] for k in summary if 'val' in k})}")


if __name__ == "__main__":
    main()
