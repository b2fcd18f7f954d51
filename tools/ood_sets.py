"""Out-of-distribution image sets for measuring a model's applicability check (tools/applicability.py).

Every set is real or plainly synthetic, and none was used to fit or threshold the check:
- the other models' training data in ../shared/data (chest X-ray, breast and lung ultrasound);
- the real ultrasound device recordings and stills in ../shared/data/ultrasound-video/devices
  (eyes, phantoms; frames sampled from each video, as a capture would take them);
- pydicom's bundled test files that the product's decoder opens (CT, MR, US, RG, ...);
- natural photographs and textures bundled with scikit-image;
- synthetic images: blank, noise, gradients, checkerboards;
- screenshots of text (a terminal, a form, a report), drawn with OpenCV.
Each loader returns display images (uint8, grey or RGB) as the product's decoder would give them.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError
from edge.imaging.decode import decode_bytes
from tools.recipe import REPO

DATA = REPO.parent / "shared" / "data"
LABELLED = {
    "cxr-pneumonia": ("cxr-pneumonia", "path"),
    "us-breast": ("us-breast", "path"),
    "us-lung": ("lung-us", "path"),
}
"""model -> (its data folder, path column): the other models' images are out of distribution."""


def _decode(path: Path) -> np.ndarray | None:
    try:
        return decode_bytes(path.read_bytes(), path.name).pixels
    except (EdgeError, OSError):
        return None


def labelled_images(model: str, limit: int, seed: int = 0) -> list[np.ndarray]:
    """Up to `limit` images of another model's data set, a seeded random sample."""
    folder, column = LABELLED[model]
    root = DATA / folder
    with (root / "labels.csv").open(newline="") as handle:
        paths = [row[column] for row in csv.DictReader(handle)]
    random.Random(seed).shuffle(paths)
    images = (_decode(root / p) for p in paths[:limit])
    return [image for image in images if image is not None]


def device_images(frames_per_video: int = 12) -> list[np.ndarray]:
    """Stills, DICOMs and sampled video frames of the real ultrasound device recordings."""
    root = DATA / "ultrasound-video" / "devices"
    out = []
    for path in sorted(root.iterdir()):
        if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".dcm"):
            image = _decode(path)
            if image is not None:
                out.extend(_frames(image, frames_per_video))
        elif path.suffix.lower() == ".mp4":
            out.extend(video_frames(path, frames_per_video))
    return out


def _frames(image: np.ndarray, count: int) -> list[np.ndarray]:
    """A still as itself; a cine (frames first) as `count` evenly spaced frames."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[-1] in (3, 4)):
        return [image]
    picks = np.linspace(0, len(image) - 1, count).round().astype(int) if count > 1 else [len(image) // 2]
    return [image[int(i)] for i in sorted(set(picks))]


def video_frames(path: Path, count: int) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 1
    out = []
    for index in np.linspace(0, total - 1, count).astype(int):
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(index))
        ok, frame = capture.read()
        if ok:
            out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return out


def pydicom_images() -> list[np.ndarray]:
    """pydicom's bundled test files the product decodes (one image per file: a cine's middle frame)."""
    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    out = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.stat().st_size > 20_000_000:
            continue
        image = _decode(path)
        if image is not None:
            out.extend(_frames(image, 1))
    return out


def photographs() -> list[np.ndarray]:
    """scikit-image's bundled photographs and textures (no download)."""
    from skimage import data

    names = [
        "astronaut", "camera", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field",
        "immunohistochemistry", "moon", "horse", "coins", "clock", "brick", "grass", "gravel",
        "retina", "colorwheel", "microaneurysms", "logo",
    ]  # fmt: skip
    out = []
    for name in names:
        image = np.asarray(getattr(data, name)())
        if image.dtype == bool:
            image = image.astype(np.uint8) * 255
        if image.ndim == 3 and image.shape[-1] == 4:
            image = image[..., :3]
        out.append(image.astype(np.uint8))
    return out


def synthetic(seed: int = 0) -> list[np.ndarray]:
    """Blank, noise, gradient and pattern images at a few sizes."""
    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    for size in (256, 512):
        for level in (0, 40, 128, 220, 255):
            out.append(np.full((size, size), level, np.uint8))
        out.append(rng.integers(0, 256, (size, size), dtype=np.uint8))
        out.append(cv2.GaussianBlur(rng.integers(0, 256, (size, size), dtype=np.uint8), (0, 0), 4))
        out.append(rng.normal(128, 30, (size, size)).clip(0, 255).astype(np.uint8))
        ramp = np.linspace(0, 255, size, dtype=np.float32)
        out.append(np.tile(ramp, (size, 1)).astype(np.uint8))
        out.append(np.tile(ramp[:, None], (1, size)).astype(np.uint8))
        radial = np.hypot(*np.meshgrid(ramp - 128, ramp - 128))
        out.append((255 * radial / radial.max()).astype(np.uint8))
        squares = (np.indices((size, size)).sum(axis=0) // (size // 8)) % 2
        out.append((squares * 255).astype(np.uint8))
        out.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return out


def text_screens(seed: int = 0) -> list[np.ndarray]:
    """Screenshots of text: terminals, forms and reports, light and dark."""
    rng = random.Random(seed)
    words = [
        "patient",
        "study",
        "report",
        "result",
        "normal",
        "finding",
        "chest",
        "scan",
        "ultrasound",
        "device",
        "sync",
        "hub",
        "review",
        "model",
        "edge",
        "queue",
        "image",
        "heatmap",
        "please",
        "check",
        "the",
        "following",
        "items",
    ]
    out = []
    for index in range(24):
        dark = index % 2 == 0
        height, width = rng.choice([(480, 640), (600, 800), (768, 1024), (400, 720)])
        image = np.full((height, width, 3), 20 if dark else 240, np.uint8)
        colour = (200, 230, 200) if dark else (30, 30, 30)
        scale = rng.choice([0.5, 0.6, 0.8, 1.0])
        step = int(28 * scale) + 6
        for y in range(step, height - 4, step):
            line = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
            cv2.putText(image, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
        if index % 3 == 0:  # a form: boxes around fields
            for y in range(40, height - 40, 80):
                cv2.rectangle(image, (width // 2, y), (width - 20, y + 40), colour, 1)
        out.append(image)
    return out


def ood_sets(model: str, per_set: int = 300) -> dict[str, Callable[[], list[np.ndarray]]]:
    """name -> loader of the out-of-distribution sets for one model."""
    sets: dict[str, Callable[[], list[np.ndarray]]] = {}
    for other in LABELLED:
        if other != model:
            sets[f"{other} images"] = lambda other=other: labelled_images(other, per_set)  # type: ignore[misc]
    sets["ultrasound devices (eyes, phantoms)"] = device_images
    sets["pydicom test files"] = pydicom_images
    sets["photographs (scikit-image)"] = photographs
    sets["synthetic (blank, noise, gradients)"] = synthetic
    sets["text screenshots"] = text_screens
    return sets
