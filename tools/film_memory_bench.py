"""Memory and time of showing a large film, the product's way against every pixel in floats.

    python -m tools.film_memory_bench [--sizes 7.5,15,30] [--guard]

For each size, a 12-bit chest film (the bundled sample scaled up, a rescale and a window) goes
through the display pipeline (`edge.imaging.dicom`: modality LUT, VOI, scaling) and the views of
its stored values (`edge.imaging.dicom_redact.stored_value_views`) two ways in one run:
- `whole`: each function applied to every pixel, as before `edge.imaging.per_value`;
- `per value`: the product, each function worked out once per distinct value and looked up.
The two must give the same pixels. Reported: the peak of Python's allocations (tracemalloc:
numpy's arrays included, deterministic) and the median of 3 timings, and their ratios.
`--guard` also runs the sync agent's preparation of the film in a fresh process per size, OCR
included, as it is by default (thumbnail and rendition) and with `images = "full"` (the full
image too). It reports the process's peak RSS, its peak before the work (imports, the film's
bytes read), and the peak of the process and its OCR children together: what the sync service
needs under its MemoryMax (systemd/edge-sync.service) for a film.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pydicom

from edge.imaging import dicom
from edge.imaging.decode import decode_bytes
from edge.imaging.dicom_redact import value_views
from edge.imaging.per_value import per_value
from tools import dicomgen

SAMPLE = Path(__file__).resolve().parent.parent / "models/cxr-pneumonia/samples/sample-01.png"
NAME, MRN = "HOLLOWAY^MARGARET", "40817253"


def film(megapixels: float) -> bytes:
    """A 12-bit CR of about `megapixels`, 4:5, with a name written on it."""
    width = round((megapixels * 1e6 * 4 / 5) ** 0.5)
    height = round(width * 5 / 4)
    picture = decode_bytes(SAMPLE.read_bytes()).pixels
    picture = picture[:, :, 0] if picture.ndim == 3 else picture
    picture = cv2.resize(picture, (width, height), interpolation=cv2.INTER_CUBIC)
    cv2.putText(picture, "HOLLOWAY 40817253", (width // 20, height // 12), cv2.FONT_HERSHEY_SIMPLEX,
                width / 800, 255, max(2, width // 400))  # fmt: skip
    ds = dicomgen.grey_dicom(dicomgen.twelve_bit(picture), bits_stored=12, rescale=(1.0, -1024.0),
                             window=(1000.0, 3500.0), patient_id=MRN, patient_name=NAME)  # fmt: skip
    return dicomgen.to_bytes(ds)


def _measure(work: Callable[[], list[np.ndarray]]) -> tuple[list[np.ndarray], int, float]:
    tracemalloc.start()
    try:
        out = work()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return out, peak, statistics.median(seconds)


def _views(
    values: np.ndarray, apply: Callable[[np.ndarray, Callable[[np.ndarray], np.ndarray]], np.ndarray]
) -> list[np.ndarray]:
    return [apply(values, view) for view in value_views(values)]


def compare(data: bytes) -> dict[str, object]:
    ds = pydicom.dcmread(io.BytesIO(data))
    stored = np.asarray(ds.pixel_array)

    def whole(values: np.ndarray, function: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return function(values)

    def display(apply: Callable[..., np.ndarray]) -> list[np.ndarray]:
        return [apply(stored, lambda values: dicom._grey_values(values, ds, invert=False))]

    row: dict[str, object] = {
        "megapixels": round(stored.size / 1e6, 1),
        "film_mb": round(stored.nbytes / 2**20, 1),
    }
    for name, work in (
        ("display", display),
        ("stored views", lambda apply: _views(stored, apply)),
    ):
        before, before_peak, before_s = _measure(partial(work, whole))
        after, after_peak, after_s = _measure(partial(work, per_value))
        if not all(np.array_equal(a, b) for a, b in zip(before, after, strict=True)):
            raise SystemExit(f"{name}: the two ways disagree")
        row[name] = {
            "peak_mb": {"whole": round(before_peak / 2**20), "per value": round(after_peak / 2**20)},
            "peak_ratio": round(before_peak / after_peak, 1),
            "median_s": {"whole": round(before_s, 3), "per value": round(after_s, 3)},
            "time_ratio": round(before_s / after_s, 1),
        }
    return row


_GUARD = """
import json, sys
from edge.sync.outgoing import PixelGuard
def peak():  # VmHWM: this process's own peak (ru_maxrss carries the parent's across fork and exec)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024
NAME, MRN, KINDS = sys.argv[1:4]
data = sys.stdin.buffer.read()
before = peak()
image = {"id": "film", "format": "dicom", "meta": {"modality": "CR"}}
study = {"modality": "CR", "phi_patient_name": NAME, "phi_patient_id": MRN}
guard = PixelGuard("identifiers")
sent = {kind: guard.prepare(kind, image, study, data) for kind in KINDS.split(",")}
print(json.dumps({"peak_rss_mb": peak(), "peak_rss_before_mb": before,
                  "withheld": [kind for kind, out in sent.items() if out.data is None]}))
"""
# What the sync agent prepares of a film: by default (images = "thumbnails", the rendition of a
# positive result), and with images = "full".
GUARD_MODES = {"thumbnails": "thumbnail,rendition", "full": "thumbnail,rendition,image"}


def _tree_rss_mb(root: int) -> int:
    """The resident memory of a process and all its descendants (/proc), as its service's cgroup
    counts it: the OCR engine runs as children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    pending, total_kb = [root], 0
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        resident = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        total_kb += int(resident[0]) if resident else 0
    return total_kb // 1024


def guard(data: bytes, kinds: str) -> dict[str, object]:
    """The sync agent's preparation of the film, in a fresh process: its own peak RSS, and the
    peak of it and its OCR children together (sampled every 10 ms: what MemoryMax counts)."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", _GUARD, NAME, MRN, kinds], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    tree_peak = 0

    def sample() -> None:
        nonlocal tree_peak
        while child.poll() is None:
            tree_peak = max(tree_peak, _tree_rss_mb(child.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = child.communicate(data)
    sampler.join()
    if child.returncode:
        raise SystemExit(f"the preparation failed ({child.returncode})")
    return {**json.loads(out), "peak_tree_mb": tree_peak, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="7.5,15,30", help="megapixels, comma separated")
    parser.add_argument("--guard", action="store_true", help="also the sync agent's preparation, per film")
    args = parser.parse_args(argv)
    rows = []
    for size in (float(text) for text in args.sizes.split(",")):
        data = film(size)
        row = compare(data)
        if args.guard:
            row["guard"] = {mode: guard(data, kinds) for mode, kinds in GUARD_MODES.items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
