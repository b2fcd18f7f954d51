"""How burned-in text is read, timed three ways in one run, on the same images.

    python -m tools.ocr_threads_bench --images 2 [--busy-cores 1]

- `openmp`: Tesseract on OpenMP's threads, as Debian builds it and as the sync agent ran it
  before: no limit set (here a limit of 1024, far above any core count; libgomp's own default is
  none), one page at a time. Its nested parallel regions then start more threads than cores.
- `openmp-cores`: the same with OpenMP limited to the cores.
- `one-thread`: one thread per Tesseract child, one page at a time.
- `side-by-side`: one thread per child, a reading's pages read several at a time (the product).

Images are drawn from `tools/burned_text_bench.py`'s sets (real screens, stills, chest X-rays),
half with a name and MRN drawn in. Each goes through `redact_text` (policy "any", the patient
known) in each arm, the arms' order turned round from one image to the next and the OCR memo
emptied before each, so no arm reads another's cached pages. The findings must be the same in
every arm. `--busy-cores N` keeps N cores spinning meanwhile, as the agent's inference would on
the device (the sync agent runs beside it at Nice 10). Reported: each arm's median and total
seconds, and the per-image ratio of `openmp` to `side-by-side`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import statistics
import time

from edge.imaging import burned_text
from edge.imaging.decode import decode_bytes
from edge.imaging.ocr import TesseractOcr
from tools.burned_text_bench import MRN, NAME, draw, image_sets


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=2, help="images per set (screens: at most 3)")
    parser.add_argument("--busy-cores", type=int, default=0, help="cores kept spinning meanwhile")
    parser.add_argument("--seed", type=int, default=17)
    args = parser.parse_args()

    arms = {  # OMP_THREAD_LIMIT, pages at once
        "openmp": ("1024", 1),
        "openmp-cores": (str(os.cpu_count() or 1), 1),
        "one-thread": ("1", 1),
        "side-by-side": ("1", burned_text.OCR_MAX_WORKERS),
    }
    rng = random.Random(args.seed)
    identifiers = burned_text.Identifiers.from_values(names=[NAME], ids=[MRN])
    policy = burned_text.TextPolicy(redact_all=True)
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    differing = 0
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy_cores)]
    for spinner in spinners:
        spinner.start()
    try:
        images = [item for items in image_sets(args.images, rng).values() for item in items[:3]]
        for index, (path, sector) in enumerate(images):
            pixels = decode_bytes(path.read_bytes()).pixels
            if rng.random() < 0.5:
                pixels, _ = draw(pixels, f"{NAME.split('^')[0]} {MRN}", rng, sector)
            names = list(arms)
            names = names[index % len(names) :] + names[: index % len(names)]
            found = {}
            for arm in names:
                os.environ["OMP_THREAD_LIMIT"], burned_text.OCR_MAX_WORKERS = arms[arm]
                TesseractOcr._memo.clear()
                started = time.perf_counter()
                _, findings = burned_text.redact_text(pixels, TesseractOcr(), identifiers, policy)
                seconds[arm].append(time.perf_counter() - started)
                found[arm] = (sorted(findings.boxes), findings.identifiers, findings.other_text)
            differing += len({repr(value) for value in found.values()}) > 1
            print(path.name, pixels.shape, {arm: round(s[-1], 2) for arm, s in seconds.items()}, flush=True)
    finally:
        for spinner in spinners:
            spinner.terminate()
    ratios = [old / new for old, new in zip(seconds["openmp"], seconds["side-by-side"], strict=True)]
    report = {
        "images": len(ratios),
        "busy_cores": args.busy_cores,
        "cores": os.cpu_count(),
        "findings_differing": differing,
        **{
            arm: {"median_s": round(statistics.median(s), 2), "total_s": round(sum(s), 1)}
            for arm, s in seconds.items()
        },
        "openmp_over_side_by_side_median": round(statistics.median(ratios), 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
