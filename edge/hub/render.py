"""Pictures for the review page, sized for the reader's screen, from what the device sent.

The base image comes from the best source the hub holds: the full image (`[sync] images =
"full"`: de-identified DICOM, or PNG), else the grey image recovered from the heatmap overlay,
else the 256-px thumbnail. It is sent as a progressive JPEG at the width the page asks for
(snapped to a few sizes, never enlarged), so a 1 Mbit/s link shows a first pass at once.

The device stores its heatmap as an overlay: `edge.imaging.explain.overlay` blends the display
image with the JET colour of the heat, weight `0.45 * heat` per pixel. On a grey image that
blend can be undone: for each pixel, the heat level whose colour leaves a grey remainder is the
heat, and the remainder is the image underneath. `split_overlay` finds it in closed form (one
matrix product over the 256 levels). The page gets the heat as a small grey PNG that the browser
colours: window/level never touches it and opacity is the reader's. A colour image (Doppler)
does not fit that model; there the overlay itself is shown as the layer.

Renditions are cached on disk by the sha256 of their source: a file never changes under a hash.
A device's upload is never decoded in the hub's own process: its header's claimed size is
checked first (`[hub] render_max_pixels`), then a child process bounded in memory
(`[hub] render_memory_mb`, `render_process.py`) decodes it once into a "master" no larger than
the widest rendition, cached with the source's true size; every rendition is made from that.
A source that is refused stays refused (remembered in the cache): the page shows the next best.

A device since issue 21 sends, under the "heatmap" kind, the class-activation evidence grid
itself (`edge.imaging.evidence`, media type `MEDIA_TYPE`: a few hundred bytes) instead of the
blended PNG. There is nothing to un-blend: the bounded child reads the grid, places it on the
image frame with the geometry it carries (`explain.to_image_frame`) and writes the grey heat
layer the page colours, the same layer a split PNG gives. The base image is then the thumbnail
or the full image. An older device's PNG is handled as above.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edge.hub.render_process import RenderRefused, claimed_pixels, read_job, run_bounded
from edge.imaging import evidence
from edge.imaging.decode import decode_bytes

log = logging.getLogger(__name__)

WIDTHS = (256, 384, 512, 768, 1024, 1536, 2048)
HEAT_SIDE = 256  # the class activation map is a 7x7 to 14x14 grid: 256 px lose nothing of it
OVERLAY_ALPHA = 0.45  # edge.imaging.explain.overlay's blend weight at full heat
JPEG_QUALITY = 85
MASTER_SIDE = WIDTHS[-1]  # a decoded source is kept no larger than the widest rendition
_FIT_RESIDUAL = 12.0  # squared grey levels over the three channels: ~2 levels of rounding each
_FIT_SHARE = 0.01  # the blend model must explain all but 1% of the pixels


def _jet_rgb() -> np.ndarray:
    levels = np.arange(256, dtype=np.uint8).reshape(-1, 1)
    return cv2.applyColorMap(levels, cv2.COLORMAP_JET)[:, 0, ::-1].astype(np.float32)


_JET = _jet_rgb()


@dataclass(frozen=True)
class Split:
    base: np.ndarray  # uint8 grey, the image under the overlay
    heat: np.ndarray  # uint8 0..255, the heat level of each pixel
    fits: bool  # the overlay is a grey image blended as explain.overlay does


def split_overlay(overlay: np.ndarray, alpha: float = OVERLAY_ALPHA, chunk: int = 65536) -> Split:
    """RGB uint8 overlay -> the grey image and the heat that made it.

    With o the pixel, g its grey value and J_k the colour of heat level k (weight w_k):
    o = (1 - w_k) g + w_k J_k. Removing each vector's channel mean (a for o, b_k for J_k) removes
    g, leaving a = w_k b_k; the k with the least |a - w_k b_k|^2 is the heat level.
    """
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"expected an RGB overlay, got shape {overlay.shape}")
    height, width = overlay.shape[:2]
    flat = overlay.reshape(-1, 3).astype(np.int32)
    # An overlay repeats its colours (smooth heat over a smooth image): solve each colour once.
    colours, where = np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2], return_inverse=True)
    pixels = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=1).astype(np.float32)
    weights = alpha * np.arange(256, dtype=np.float32) / 255.0
    jet_centred = _JET - _JET.mean(axis=1, keepdims=True)  # b_k
    penalty = weights**2 * (jet_centred**2).sum(axis=1)  # w_k^2 |b_k|^2
    levels = np.empty(len(pixels), np.int64)
    residual = np.empty(len(pixels), np.float32)
    for start in range(0, len(pixels), chunk):
        block = pixels[start : start + chunk]
        centred = block - block.mean(axis=1, keepdims=True)  # a
        score = 2.0 * weights * (centred @ jet_centred.T) - penalty  # |a|^2 - score = residual
        best = np.argmax(score, axis=1)
        levels[start : start + chunk] = best
        residual[start : start + chunk] = (centred**2).sum(axis=1) - score[np.arange(len(best)), best]
    w = weights[levels]
    grey = (pixels.mean(axis=1) - w * _JET[levels].mean(axis=1)) / (1.0 - w)
    where = where.reshape(-1)
    fits = float(np.mean(residual[where] > _FIT_RESIDUAL)) < _FIT_SHARE
    return Split(
        base=np.clip(np.rint(grey), 0, 255).astype(np.uint8)[where].reshape(height, width),
        heat=levels.astype(np.uint8)[where].reshape(height, width),
        fits=fits,
    )


def snap_width(requested: int, available: int) -> int:
    """The smallest standard width that covers the request, never wider than the source."""
    wanted = next((size for size in WIDTHS if size >= requested), WIDTHS[-1])
    return max(1, min(wanted, available))


def resize_to_width(pixels: np.ndarray, width: int) -> np.ndarray:
    if pixels.shape[1] <= width:
        return pixels
    height = max(1, round(pixels.shape[0] * width / pixels.shape[1]))
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    image = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, 1]
    ok, encoded = cv2.imencode(".jpg", image, [*params, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
    if not ok:
        raise ValueError("could not encode the JPEG")
    return encoded.tobytes()


def encode_png(pixels: np.ndarray) -> bytes:
    image = pixels if pixels.ndim == 2 else np.ascontiguousarray(pixels[:, :, ::-1])
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError("could not encode the PNG")
    return encoded.tobytes()


def png_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from a PNG's header, without decoding it."""
    try:
        with path.open("rb") as handle:
            head = handle.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def is_evidence(row: Any) -> bool:
    """An upload that is an evidence grid (a device since issue 21), not a blended PNG."""
    return row is not None and str(getattr(row, "media_type", "")) == evidence.MEDIA_TYPE


def _rgb(data: bytes) -> np.ndarray:
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None:
        raise ValueError("not a decodable image")
    return np.ascontiguousarray(decoded[:, :, ::-1])


# ------------------------------------------------------------------ what the page shows


@dataclass(frozen=True)
class Picture:
    """What the study page can show for one result."""

    source: str | None  # "rendition", "image", "heatmap" (the grey recovered from it), "thumbnail", "overlay"
    width: int
    height: int
    layer: str | None  # "heat" (grey heat, coloured by the page), "overlay", or None

    @property
    def label(self) -> str:
        return {
            "rendition": "diagnostic rendition (greyscale, at most 1024 px; never enlarged)",
            "image": "full image",
            "heatmap": "image recovered from the heatmap overlay",
            "thumbnail": "thumbnail (the device sends full images only with [sync] images = full)",
            "overlay": "heatmap overlay (no separate image was sent)",
        }.get(self.source or "", "no image was sent")


SPLITS_KEPT = 64  # heatmap-sized (device max_side), so a few MB at most


class Renditions:
    """Renditions of one hub's uploads, cached under `folder`."""

    def __init__(
        self, folder: Path, memory_mb: int = 1024, max_pixels: int = 80_000_000, timeout_s: float = 60.0
    ) -> None:
        self.folder = folder
        self.memory_mb, self.max_pixels, self.timeout_s = memory_mb, max_pixels, timeout_s
        # A study view asks for its description, image and layer: three requests, one split.
        self._splits: OrderedDict[str, Split] = OrderedDict()
        self._lock = threading.Lock()

    def _cached(self, key: str, make: Callable[[], bytes]) -> bytes:
        path = self.folder / key[:2] / key
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        data = make()
        _write_atomically(path, data)
        return data

    def _decoded(
        self, key: str, source: Any, job: dict[str, Any]
    ) -> tuple[dict[str, Any], np.ndarray] | None:
        """(meta, pixels) of what the bounded child made of `source` once (see the module
        docstring); None when the source is refused, or unreadable now (then not remembered)."""
        path = self.folder / key[:2] / key
        if not path.exists():
            try:
                pixels = claimed_pixels(Path(source.path))
            except OSError:
                return None
            try:
                if pixels is not None and pixels > self.max_pixels:
                    raise RenderRefused(
                        f"its header claims {pixels} pixels, over the {self.max_pixels} limit"
                    )
                job = {**job, "source": str(source.path), "out": str(path)}
                run_bounded("edge.hub.render", job, self.memory_mb, self.timeout_s)
                if not path.exists():
                    raise RenderRefused("the decode process wrote nothing")
            except RenderRefused as error:
                log.warning("upload %s is not shown: %s", source.sha256[:12], error)
                _write_atomically(path, json.dumps({"refused": str(error)[:300]}).encode() + b"\n")
        try:
            meta_line, _, png = path.read_bytes().partition(b"\n")
            meta = json.loads(meta_line)
        except (OSError, ValueError):
            return None
        if "refused" in meta:
            return None
        decoded = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)  # our own, bounded
        if decoded is None:
            return None
        return meta, (decoded if decoded.ndim == 2 else np.ascontiguousarray(decoded[:, :, ::-1]))

    def _split(self, heatmap: Any) -> Split | None:
        """The heatmap undone into image and heat; None without a readable blended heatmap."""
        if heatmap is None or is_evidence(heatmap):
            return None
        with self._lock:  # request threads share this
            if heatmap.sha256 in self._splits:
                self._splits.move_to_end(heatmap.sha256)
                return self._splits[heatmap.sha256]
        split = self._read_split(heatmap)
        if split is None:  # unreadable now: not remembered, a later request tries again
            return None
        with self._lock:
            self._splits[heatmap.sha256] = split
            if len(self._splits) > SPLITS_KEPT:
                self._splits.popitem(last=False)
        return split

    def _read_split(self, heatmap: Any) -> Split | None:
        made = self._decoded(f"{heatmap.sha256}-split", heatmap, {"job": "split"})
        if made is None:
            return None
        meta, both = made
        return Split(base=both[:, :, 0], heat=both[:, :, 1], fits=bool(meta["fits"]))

    def _overlay(self, heatmap: Any) -> np.ndarray | None:
        made = self._decoded(f"{heatmap.sha256}-overlay-master", heatmap, {"job": "master", "as": "overlay"})
        return None if made is None else made[1]

    def _image(self, row: Any) -> np.ndarray | None:
        made = self._decoded(f"{row.sha256}-image-master", row, {"job": "master", "as": "image"})
        return None if made is None else made[1]

    def _base(self, uploads: dict[str, Any]) -> tuple[str, Any, np.ndarray] | None:
        """(source kind, its upload row, pixels), best first: the diagnostic rendition (made
        for reading), the full image, then the lean payload's pictures."""
        if "rendition" in uploads:
            pixels = self._image(uploads["rendition"])
            if pixels is not None:
                return "rendition", uploads["rendition"], pixels
        if "image" in uploads:
            pixels = self._image(uploads["image"])
            if pixels is not None:
                return "image", uploads["image"], pixels
        split = self._split(uploads.get("heatmap"))
        thumbnail = uploads.get("thumbnail")
        thumb_size = png_size(Path(thumbnail.path)) if thumbnail is not None else None
        if split is not None and split.fits and (thumb_size is None or split.base.shape[1] >= thumb_size[0]):
            return "heatmap", uploads["heatmap"], split.base
        if thumbnail is not None:
            pixels = self._image(thumbnail)
            if pixels is not None:
                return "thumbnail", thumbnail, pixels
        heatmap = uploads.get("heatmap")
        overlay = self._overlay(heatmap) if heatmap is not None and not is_evidence(heatmap) else None
        if overlay is not None:
            return "overlay", uploads["heatmap"], overlay
        return None

    def describe(self, uploads: dict[str, Any]) -> Picture:
        base = self._base(uploads)
        if base is None:
            return Picture(None, 0, 0, None)
        kind, _, pixels = base
        split = self._split(uploads.get("heatmap"))
        layer = None if split is None or kind == "overlay" else ("heat" if split.fits else "overlay")
        if is_evidence(uploads.get("heatmap")):
            layer = "heat"
        return Picture(kind, int(pixels.shape[1]), int(pixels.shape[0]), layer)

    def image(self, uploads: dict[str, Any], requested_width: int) -> bytes | None:
        """The base image as a progressive JPEG, `requested_width` snapped to a standard size."""
        base = self._base(uploads)
        if base is None:
            return None
        kind, row, pixels = base
        width = snap_width(requested_width, pixels.shape[1])
        return self._cached(
            f"{row.sha256}-{kind}-{width}.jpg", lambda: encode_jpeg(resize_to_width(pixels, width))
        )

    def layer(self, uploads: dict[str, Any]) -> tuple[bytes, str, str] | None:
        """(bytes, media type, "heat" | "overlay") for the layer over the image."""
        heatmap = uploads.get("heatmap")
        if heatmap is not None and is_evidence(heatmap):
            made = self._decoded(f"{heatmap.sha256}-evidence-{HEAT_SIDE}", heatmap, {"job": "evidence"})
            if made is None:
                return None
            heat = made[1]
            return (
                self._cached(f"{heatmap.sha256}-heat-{HEAT_SIDE}.png", lambda: encode_png(heat)),
                "image/png",
                "heat",
            )
        split = self._split(heatmap)
        if heatmap is None or split is None:
            return None
        if split.fits:
            data = self._cached(
                f"{heatmap.sha256}-heat-{HEAT_SIDE}.png",
                lambda: encode_png(resize_to_width(split.heat, HEAT_SIDE)),
            )
            return data, "image/png", "heat"
        overlay = self._overlay(heatmap)
        if overlay is None:
            return None
        data = self._cached(f"{heatmap.sha256}-overlay.jpg", lambda: encode_jpeg(overlay))
        return data, "image/jpeg", "overlay"


# ------------------------------------------------------------------ the bounded child's side


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, path)  # two readers making the same file: either copy is right


def boxed(pixels: np.ndarray, side: int = MASTER_SIDE) -> np.ndarray:
    """Scaled down to fit a side x side box (never enlarged)."""
    scale = side / max(pixels.shape[:2])
    if scale >= 1.0:
        return pixels
    size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def make_in_child(job: dict[str, Any]) -> None:
    """What `python -m edge.hub.render job.json` does, inside its memory bound: decode the
    upload once and write the bounded result with a JSON line of facts before it."""
    data = Path(job["source"]).read_bytes()
    meta: dict[str, Any]
    if job["job"] == "evidence":  # the grid placed on the image frame, HEAT_SIDE wide
        grid = evidence.decode(data)
        width = min(HEAT_SIDE, grid.image_width)
        height = max(1, round(grid.image_height * width / grid.image_width))
        heat = np.clip(np.rint(grid.heat(height, width) * 255), 0, 255).astype(np.uint8)
        meta = {"width": grid.image_width, "height": grid.image_height}
        encoded = encode_png(heat)
    elif job["job"] == "split":
        split = split_overlay(_rgb(data))
        base, heat = boxed(split.base), boxed(split.heat)
        meta = {"fits": split.fits}
        encoded = encode_png(np.stack([base, heat, base], axis=2))
    else:
        pixels = decode_bytes(data, "hub image").pixels if job["as"] == "image" else _rgb(data)
        meta = {"width": int(pixels.shape[1]), "height": int(pixels.shape[0])}
        encoded = encode_png(boxed(pixels))
    _write_atomically(Path(job["out"]), json.dumps(meta).encode() + b"\n" + encoded)


if __name__ == "__main__":
    make_in_child(read_job(sys.argv))
