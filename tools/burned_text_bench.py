"""Burned-in text benchmark: does a synthetic name/MRN drawn into real images leave the device
unreadable, how often are clean images redacted, and what does the check cost.

    python -m tools.burned_text_bench --images 12 --policy any

For each image (real ultrasound screens and stills, real chest X-rays: /work/shared/data and
samples/), overlays of a name and an MRN are drawn in OpenCV's Hershey fonts and, when Pillow
has a TrueType font, DejaVu Sans; at several sizes, positions and contrasts. Each overlaid image
goes through `PixelGuard.prepare("image", ...)` (a PNG image: the full-resolution rendition) and
`"thumbnail"`; the output is read again by Tesseract (upscaled) and an overlay counts as leaked
when the identifier is still recoverable (`Identifiers.match` on the words read, or the exact
token). Only overlays legible before (OCR reads them on the input) count. Clean images measure
false redaction (`BURNED_IN_TEXT_REDACTED` with no overlay: how often text is found where none
was drawn; ultrasound screens carry real labels, so it is reported per set). Cost: milliseconds
per image of the guard, against a plain decode + PNG encode of the same image in the same run.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from edge.errors import Code
from edge.imaging.burned_text import Identifiers, fold, text_layers
from edge.imaging.decode import decode_bytes
from edge.imaging.ocr import TesseractOcr
from edge.sync.outgoing import PixelGuard

DATA = Path("/work/shared/data")
NAME, MRN = "OKONKWO^ADAEZE", "40817253"
TTF = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
HERSHEY = [
    cv2.FONT_HERSHEY_SIMPLEX,
    cv2.FONT_HERSHEY_PLAIN,
    cv2.FONT_HERSHEY_DUPLEX,
    cv2.FONT_HERSHEY_COMPLEX,
]


def image_sets(count: int, rng: random.Random) -> dict[str, list[tuple[Path, bool]]]:
    """(path, is ultrasound) per set, `count` drawn at random from each."""
    us_screens = sorted((DATA / "ultrasound-video" / "devices").glob("*.[jp][pn]g"))
    lung = sorted((DATA / "lung-us").rglob("*.jpg")) + sorted((DATA / "lung-us").rglob("*.png"))
    breast = sorted((DATA / "us-breast").rglob("*.png"))
    cxr = sorted((DATA / "cxr-pneumonia").rglob("*.jpeg"))
    pick = lambda files: rng.sample(files, min(count, len(files)))  # noqa: E731
    return {
        "us-screens": [(p, True) for p in us_screens],
        "lung-us": [(p, True) for p in pick(lung)],
        "us-breast": [(p, True) for p in pick(breast)],
        "cxr": [(p, False) for p in pick(cxr)],
    }


def draw(pixels: np.ndarray, text: str, rng: random.Random, sector: bool) -> tuple[np.ndarray, str]:
    """`text` drawn once, in a random font, size, place and grey, one time in four running up or
    down the picture (a film's vertical label); returns the image and how."""
    out = pixels.copy() if pixels.ndim == 3 else cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB)
    turn = rng.choice([None, None, None, cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE])
    if turn is None:
        return _upright(out, text, rng, sector)
    # Drawn upright on the picture turned, then turned back.
    back = cv2.ROTATE_90_COUNTERCLOCKWISE if turn == cv2.ROTATE_90_CLOCKWISE else cv2.ROTATE_90_CLOCKWISE
    drawn, how = _upright(cv2.rotate(out, turn), text, rng, sector)
    return cv2.rotate(drawn, back), how + ("/down" if turn == cv2.ROTATE_90_CLOCKWISE else "/up")


def _upright(out: np.ndarray, text: str, rng: random.Random, sector: bool) -> tuple[np.ndarray, str]:
    height, width = out.shape[:2]
    grey = rng.choice([255, 220, 170])
    # Screens burn text into the margins; a still or an X-ray anywhere (the sector test: inside).
    x = rng.randint(0, max(1, width // 3)) if not sector else rng.randint(width // 5, width // 2)
    y = rng.randint(height // 8, height - height // 8)
    target = rng.choice([0.025, 0.04, 0.06]) * height  # text height as a fraction of the image
    if TTF.exists() and rng.random() < 0.3:
        from PIL import Image, ImageDraw, ImageFont

        font = ImageFont.truetype(str(TTF), max(8, int(target)))
        image = Image.fromarray(out)
        ImageDraw.Draw(image).text((x, y), text, fill=(grey, grey, grey), font=font)
        return np.asarray(image).copy(), f"ttf/{int(target)}px/{grey}"
    face = rng.choice(HERSHEY)
    scale = cv2.getFontScaleFromHeight(face, max(8, int(target)), 1)
    thickness = max(1, int(target / 12))
    cv2.putText(out, text, (x, y), face, scale, (grey, grey, grey), thickness, cv2.LINE_AA)
    return out, f"hershey{face}/{int(target)}px/{grey}"


def readable(pixels: np.ndarray, ocr: TesseractOcr, secret: str) -> bool:
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    scale = min(4.0, max(1.0, 1600 / max(grey.shape)))
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    # The guard's own two layers (a plain reading found nothing more on these images), upright
    # and turned a quarter either way (text running up or down the picture).
    turns = (cv2.ROTATE_90_CLOCKWISE, cv2.ROTATE_90_COUNTERCLOCKWISE)
    pages = [turned for page in text_layers(grey) for turned in (page, *(cv2.rotate(page, t) for t in turns))]
    words = [w for page in pages for w in ocr.words(page)]
    joined = fold("".join(w.text for w in words))
    ids = Identifiers.from_values(ids=[secret])
    return fold(secret) in joined or any(ids.match(w.text) for w in words if len(fold(w.text)) >= 5)


def png(pixels: np.ndarray) -> bytes:
    bgr = pixels[:, :, ::-1] if pixels.ndim == 3 else pixels
    return cv2.imencode(".png", np.ascontiguousarray(bgr))[1].tobytes()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=8, help="images per set (us-screens: all)")
    parser.add_argument("--policy", choices=["any", "identifiers"], default="any")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument(
        "--unknown-patient",
        action="store_true",
        help="the device knows no identifier (a PNG from the drop folder): only the policy catches text",
    )
    args = parser.parse_args()
    rng = random.Random(args.seed)
    ocr = TesseractOcr()
    if not ocr.is_available():
        raise SystemExit("tesseract is not installed (apt-get install tesseract-ocr)")
    study = {"phi_patient_name": NAME, "phi_patient_id": MRN, "phi_accession": None}
    if args.unknown_patient:
        study = {"phi_patient_name": None, "phi_patient_id": None, "phi_accession": None}
    legible = leaked = 0
    leaks: list[str] = []
    guard_ms: list[float] = []
    base_ms: list[float] = []
    for set_name, files in image_sets(args.images, rng).items():
        clean_redacted = clean_withheld = 0
        regions: list[int] = []
        for number, (path, ultrasound) in enumerate(files):
            data = path.read_bytes()
            row = {"format": "png", "meta": {"modality": "US" if ultrasound else "DX"}}
            study_row = {**study, "modality": row["meta"]["modality"]}
            t0 = time.perf_counter()
            pixels = decode_bytes(data, "bench").pixels
            png(pixels)
            base_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            clean = PixelGuard(args.policy).prepare("image", {**row, "id": f"c{number}"}, study_row, data)
            guard_ms.append((time.perf_counter() - t0) * 1000)
            clean_redacted += clean.code is Code.BURNED_IN_TEXT_REDACTED
            regions.append(int(clean.detail.get("regions", 0)))
            clean_withheld += clean.data is None
            for secret in (NAME.replace("^", " "), MRN):
                overlaid, how = draw(pixels, secret, rng, sector=rng.random() < 0.3)
                token = secret.split()[0]
                if not readable(overlaid, ocr, token):
                    continue  # illegible before: says nothing about the guard
                legible += 1
                guard = PixelGuard(args.policy)
                for kind in ("image", "thumbnail"):
                    sent = guard.prepare(kind, {**row, "id": f"o{number}"}, study_row, png(overlaid))
                    if sent.data is not None and readable(decode_bytes(sent.data, kind).pixels, ocr, token):
                        leaked += 1
                        leaks.append(f"{set_name}/{path.name} {kind} {how}")
                        break
                print(f"  {set_name}/{path.name} {how}: legible {legible}, leaked {leaked}", flush=True)
        print(
            f"{set_name}: {len(files)} clean images, redacted {clean_redacted} (regions {regions}),"
            f" withheld {clean_withheld}",
            flush=True,
        )
    kept = legible - leaked
    print(f"overlays legible before: {legible}; unreadable after: {kept} ({kept / max(1, legible):.1%})")
    for leak in leaks:
        print("  leaked:", leak)
    q = lambda v, p: float(np.percentile(v, p))  # noqa: E731
    print(
        f"cost per clean image (image rendition): guard median {statistics.median(guard_ms):.0f} ms,"
        f" p95 {q(guard_ms, 95):.0f} ms; baseline decode+encode median {statistics.median(base_ms):.1f} ms,"
        f" p95 {q(base_ms, 95):.1f} ms"
    )


if __name__ == "__main__":
    main()
