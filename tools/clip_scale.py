"""Does a clip's finding survive a change of input resolution? The lung clips through the product.

    python -m tools.clip_scale                      # the shipped us-lung, every lung clip
    python -m tools.clip_scale --models-dir DIR     # a staged release instead
    python -m tools.clip_scale --onnx FILE          # candidate FP32 weights, the shipped calibration

An outside check found the same 3 s lung clip read `regular` at its native 322 px and `covid`
when the screen delivered it at 2x, 4x or stretched to 4K. A capture card, a different scanner
monitor or an export setting changes nothing clinical, so the finding must not change either.
Each clip (the data set's lung clips and the shipped sample) is decoded once and offered to the
real clip path (`LiveAnalyzer`: sector detection, crop, the served variant, the clip mean and its
threshold) at 0.5x, 1x, 2x and 4x of its size, and stretched to 3840x2160, with and without a
device profile's `horizontal_stretch` saying so. Frames are scaled in memory (area when
shrinking, cubic when enlarging), so no codec differs between scales.

Reported per clip: the clip probability at each scale, whether the finding at any scale differs
from 1x (a flip), and the spread (largest minus smallest probability, 0.5x to 4x). The lung clips are built
from frames the shipped model was trained on, so their findings flatter it; stability across
scale is what this measures, not accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from edge.config import load_settings
from edge.inference.pool import ModelPool, ServedModel
from edge.inference.postprocess import decide_from_probabilities
from edge.inference.registry import Registry, sha256_file
from edge.video.live import LiveAnalyzer
from edge.video.source import FrameSource
from tools.recipe import REPO

console = Console(width=130)
CLIPS = REPO.parent / "shared" / "data" / "ultrasound-video" / "lung-clips"
SAMPLE = REPO / "samples" / "video" / "lung-regular-alines.mp4"
STRETCHED = "4K stretched"
PROFILED = "4K, profile unstretches"
SCALES: dict[str, float | tuple[int, int]] = {
    "0.5x": 0.5,
    "1x": 1.0,
    "2x": 2.0,
    "4x": 4.0,
    "4K stretched": (3840, 2160),
}


def read_clip(path: Path) -> list[tuple[float, np.ndarray]]:
    """(seconds, RGB frame) of a video file."""
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append((len(frames) / fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
    capture.release()
    return frames


def rescaled(
    frames: list[tuple[float, np.ndarray]], scale: float | tuple[int, int]
) -> Iterator[tuple[float, np.ndarray]]:
    """The frames at `scale` of their size (or at a fixed width x height), one at a time: 30
    frames at 4K would hold 750 MB."""
    height, width = frames[0][1].shape[:2]
    size = (
        scale if isinstance(scale, tuple) else (max(8, round(width * scale)), max(8, round(height * scale)))
    )
    shrinking = size[0] < width or size[1] < height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    for t, image in frames:
        yield t, image if size == (width, height) else cv2.resize(image, size, interpolation=interpolation)


def clip_probability(
    settings: Any,
    served: ServedModel,
    frames: Iterable[tuple[float, np.ndarray]],
    horizontal_stretch: float | None = None,
) -> tuple[float, str]:
    """The clip's probability and finding, exactly as `edge infer clip.mp4` computes them; with
    `horizontal_stretch`, as a live capture under a profile saying so."""
    source = FrameSource("clip", lossless=True, frames=frames)
    analyzer = LiveAnalyzer(settings, served, source, horizontal_stretch=horizontal_stretch)
    analyzer.start_clip()
    with source:
        analyzer.run(threading.Event())
    summary = analyzer.stop_clip()
    _, op_name, op, profile_id = served.calibration(settings.models.operating_point)
    positive = served.entry.manifest.output.positive
    finding = decide_from_probabilities(
        summary.probabilities, positive, op.threshold_for_clips, op_name, profile_id
    )
    return summary.probability, finding.finding


def clips(limit: int | None) -> list[Path]:
    found = []
    if (CLIPS / "clips.csv").is_file():
        with (CLIPS / "clips.csv").open(newline="") as handle:
            found = [CLIPS / row["file"] for row in csv.DictReader(handle)]
    # The shipped sample is one of the data set's clips: count each recording once.
    digests = {sha256_file(path) for path in found}
    return ([SAMPLE] * (sha256_file(SAMPLE) not in digests) + found)[: limit or None]


def sweep(settings: Any, served: ServedModel, paths: list[Path]) -> dict[str, Any]:
    rows = []
    same_aspect = [k for k in SCALES if not isinstance(SCALES[k], tuple)]
    for path in paths:
        frames = read_clip(path)
        by_scale = {
            name: clip_probability(settings, served, rescaled(frames, s)) for name, s in SCALES.items()
        }
        # The same stretched capture under a device profile saying how much it is stretched.
        height, width = frames[0][1].shape[:2]
        factor = (3840 / width) / (2160 / height)
        by_scale[PROFILED] = clip_probability(
            settings, served, rescaled(frames, SCALES[STRETCHED]), horizontal_stretch=round(factor, 3)
        )
        native = by_scale["1x"][1]
        probabilities = [by_scale[k][0] for k in same_aspect]
        rows.append(
            {
                "clip": path.name,
                "size": list(frames[0][1].shape[1::-1]),
                "probability": {k: round(p, 4) for k, (p, _) in by_scale.items()},
                "finding": {k: f for k, (_, f) in by_scale.items()},
                "flips": [k for k, (_, f) in by_scale.items() if f != native],
                "spread": round(max(probabilities) - min(probabilities), 4),
            }
        )
    return {
        "model": served.name,
        "version": served.entry.manifest.version,
        "variant": served.variant_name,
        "clips": rows,
        # Under the names of the manifest's [robustness.clip_scale.<variant>] (ClipStability).
        "flipping_half_to_4x": sum(any(k in same_aspect for k in r["flips"]) for r in rows),
        "flipping_stretched": sum(STRETCHED in r["flips"] for r in rows),
        "flipping_stretched_with_profile": sum(PROFILED in r["flips"] for r in rows),
        "largest_spread": max(r["spread"] for r in rows),
        "mean_spread": round(float(np.mean([r["spread"] for r in rows])), 4),
        "spread_is_over": "0.5x to 4x, the same aspect",
    }


def print_table(result: dict[str, Any]) -> None:
    table = Table(
        title=f"{result['model']} {result['version']} ({result['variant']}): clip P(covid) by input size"
    )
    table.add_column("clip")
    columns = [*SCALES, PROFILED]
    for name in columns:
        table.add_column(name, justify="right")
    table.add_column("flips")
    for row in result["clips"]:
        cells = [f"{row['probability'][k]:.3f} {row['finding'][k][:3]}" for k in columns]
        table.add_row(row["clip"], *cells, ", ".join(row["flips"]) or "-")
    console.print(table)
    console.print(
        f"clips whose finding changes between 0.5x and 4x: {result['flipping_half_to_4x']} of "
        f"{len(result['clips'])}; stretched to 4K: {result['flipping_stretched']}, with the "
        f"device profile's horizontal_stretch: {result['flipping_stretched_with_profile']}; "
        f"spread of P(covid) across sizes: largest {result['largest_spread']:.3f}, "
        f"mean {result['mean_spread']:.3f}"
    )


def staged_candidate(models_dir: Path, model: str, onnx: Path, into: Path) -> Path:
    """A copy of the released model folder whose FP32 file is `onnx` (its digest rewritten): the
    clip path, temperature and thresholds as released, only the weights differ. Good for the
    spread across scales; a finding flip is then judged at the shipped model's threshold."""
    import shutil

    import tomli_w

    from edge.compat import tomllib

    folder = into / model
    shutil.copytree(models_dir / model, folder)
    manifest = tomllib.loads((folder / "model.toml").read_text())
    fp32 = manifest["variants"]["fp32"]
    shutil.copyfile(onnx, folder / fp32["file"])
    fp32["sha256"] = sha256_file(folder / fp32["file"])
    manifest["variants"] = {"fp32": fp32}
    (folder / "model.toml").write_text(tomli_w.dumps(manifest))
    return into


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="us-lung")
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--variant", help="a variant by name (default: what this machine serves)")
    parser.add_argument("--onnx", type=Path, help="candidate FP32 weights in place of the shipped ones")
    parser.add_argument("--limit", type=int, help="only the first N clips (smoke tests)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir
        if args.onnx:
            models_dir = staged_candidate(models_dir, args.model, args.onnx, Path(tmp) / "models")
        settings = load_settings(None, data_dir=Path(tmp))
        settings.models.dir = models_dir
        pool = ModelPool(Registry(models_dir), settings, Path(tmp) / "cache")
        served = pool.load_variant(args.model, args.variant) if args.variant else pool.get(args.model)
        result = sweep(settings, served, clips(args.limit))
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
