"""From bytes to a display-ready image: format sniffing, completeness checks, decoding.

Every decoder returns a `DecodedImage` whose pixels are uint8, HxW (grey) or HxWx3 (RGB), the
way a reader would see the image on screen: the form the models were trained on. Anything that
cannot become such an image is refused with a code before it is stored.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from edge.errors import Code, EdgeError
from edge.imaging.decoded import DecodedImage, sha256_hex

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PIXELS = 100_000_000  # 10k x 10k: larger than any radiograph, smaller than a bomb


def read_input(path: Path, max_bytes: int) -> bytes:
    """Read a whole input file, refusing what is missing, empty, unreadable or too large."""
    if not path.exists():
        raise EdgeError(Code.INPUT_NOT_FOUND, f"{path} does not exist")
    if not path.is_file():
        raise EdgeError(Code.INPUT_UNREADABLE, f"{path} is not a regular file")
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise EdgeError(Code.INPUT_TOO_LARGE, f"{path.name} is {size} bytes, over the {max_bytes} limit")
        data = path.read_bytes()
    except OSError as exc:
        raise EdgeError(Code.INPUT_UNREADABLE, f"{path.name} cannot be read: {exc.strerror}") from exc
    if not data:
        raise EdgeError(Code.INPUT_EMPTY, f"{path.name} is empty")
    return data


def sniff(data: bytes) -> str:
    """The container format from the bytes themselves (file names lie)."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "dicom"
    if _looks_like_raw_dicom(data):
        return "dicom"
    raise EdgeError(Code.INPUT_NOT_IMAGE, "not a DICOM, PNG or JPEG file")


_DICOM_GROUPS = {0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028}


def _looks_like_raw_dicom(data: bytes) -> bool:
    """A dataset without the Part 10 preamble (old or hand-made files) starts with a tag of a
    low group, little- or big-endian; let pydicom judge the rest."""
    if len(data) < 16:
        return False
    for order in ("<", ">"):
        group, element = struct.unpack(f"{order}HH", data[:4])
        if group in _DICOM_GROUPS and element < 0x2000:
            return True
    return False


def decode_bytes(data: bytes, name: str = "input") -> DecodedImage:
    """Decode any supported input; every failure becomes a coded refusal."""
    kind = sniff(data)
    try:
        if kind == "dicom":
            from edge.imaging.dicom import decode_dicom  # pydicom is only needed for DICOM

            return decode_dicom(data, name)
        return _decode_raster(data, kind, name)
    except MemoryError as exc:
        # Where the decoding is not in the agent's bounded process (`edge infer`, a re-run), a
        # picture under the pixel limit but too deep for the memory left (a 10000 x 10000 RGBA
        # 16-bit PNG of 760 KB, by fuzzing) ended in a traceback.
        raise EdgeError(
            Code.IMAGE_DECODE_FAILED, f"{name} could not be decoded: not enough memory for its pixels"
        ) from exc


def _decode_raster(data: bytes, kind: str, name: str) -> DecodedImage:
    if kind == "png":
        _check_png(data, name)
    else:
        _check_jpeg(data, name)
    # A JPEG is shown as its EXIF orientation says (a phone's photograph of a film, stored
    # sideways with a tag: read as stored, every such film was refused as unlike a chest film);
    # OpenCV applies the tag unless asked for the file unchanged, which a PNG needs (its alpha).
    flags = cv2.IMREAD_UNCHANGED if kind == "png" else cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
    try:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:  # OpenCV's own limits (size, corrupt data) raise rather than return None
        raise _undecodable(data, kind, name) from exc
    if decoded is None or decoded.size == 0:
        raise _undecodable(data, kind, name)
    pixels = to_display_uint8(decoded, _png_significant_bits(data) if kind == "png" else None)
    return DecodedImage(
        pixels=pixels,
        format=kind,
        sha256=sha256_hex(data),
        meta={"channels": 1 if pixels.ndim == 2 else 3, "source_dtype": str(decoded.dtype)},
    )


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by IHDR colour type


def _undecodable(data: bytes, kind: str, name: str) -> EdgeError:
    what = f"{name} could not be decoded as {kind.upper()}{_decoded_size(data, kind)}"
    return EdgeError(Code.IMAGE_DECODE_FAILED, what)


def _decoded_size(data: bytes, kind: str) -> str:
    """What the header says decoding takes, for a refusal (worked out only then): a small file
    that unpacks to hundreds of MB fails in the guard's memory bound, and the words should let
    the reader see why."""
    if kind == "png":
        width, height = struct.unpack(">II", data[16:24])
        depth, channels = data[24], _PNG_CHANNELS.get(data[25], 4)
        size = width * height * channels * max(1, depth // 8)
    else:
        found = jpeg_size(data)
        if found is None:
            return ""
        width, height = found
        size = width * height * 3
    return f" ({width}x{height} pixels, {size / 1e6:.0f} MB decoded)"


def to_display_uint8(decoded: np.ndarray, significant_bits: int | None = None) -> np.ndarray:
    """OpenCV's BGR(A)/grey, 8 or 16 bit -> uint8 grey HxW or RGB HxWx3.

    16-bit samples are scaled from the bits they use: the PNG's sBIT chunk where it has one,
    else the fewest of 8, 10, 12, 14 or 16 that hold its largest value. A detector's 12-bit
    values in a 16-bit PNG (at most 4095), scaled as 16 bits, came out 16 times too dark and
    every such film was refused. Three identical channels (how X-rays are usually exported)
    collapse to grey, the canonical form of a radiograph.
    """
    image = decoded
    if image.dtype == np.uint16:
        bits = significant_bits if significant_bits and 8 <= significant_bits < 16 else None
        colour = image[:, :, :3] if image.ndim == 3 and image.shape[2] == 4 else image  # not alpha
        bits = bits or next(b for b in (8, 10, 12, 14, 16) if int(colour.max()) < 1 << b)
        if bits == 16:
            image = (image // 257).astype(np.uint8)
        else:
            top = (1 << bits) - 1
            image = (np.minimum(image, top).astype(np.uint32) * 255 // top).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise EdgeError(Code.IMAGE_DECODE_FAILED, f"unsupported pixel type {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = _over_black(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3:
        blue, green, red = image[:, :, 0], image[:, :, 1], image[:, :, 2]
        if np.array_equal(blue, green) and np.array_equal(green, red):
            return np.ascontiguousarray(blue)
        return np.ascontiguousarray(image[:, :, ::-1])
    return np.ascontiguousarray(image)


def _over_black(image: np.ndarray) -> np.ndarray:
    """A picture with an alpha channel as a viewer shows it, over black (the background of every
    medical viewer): colours where transparent were read as opaque, so a picture the technician
    saw as blank showed the model whatever its hidden colour channels held."""
    colour, alpha = image[:, :, :3], image[:, :, 3]
    if int(alpha.min()) == 255:
        return colour
    weighted = colour.astype(np.uint16) * alpha[:, :, None].astype(np.uint16)
    return ((weighted + 127) // 255).astype(np.uint8)


def _refuse_implausible_size(width: int, height: int, name: str) -> None:
    """The header's claim, checked before any decoder allocates for it."""
    if width == 0 or height == 0 or width * height > MAX_PIXELS:
        raise EdgeError(Code.IMAGE_DECODE_FAILED, f"{name} claims an implausible size {width}x{height}")


def _check_png(data: bytes, name: str) -> None:
    if len(data) < 33:
        raise EdgeError(Code.IMAGE_TRUNCATED, f"{name} is a truncated PNG (no header)")
    if data[12:16] != b"IHDR":
        raise EdgeError(Code.IMAGE_DECODE_FAILED, f"{name} is not a valid PNG (no IHDR chunk first)")
    width, height = struct.unpack(">II", data[16:24])
    _refuse_implausible_size(width, height, name)
    # A complete PNG ends with the IEND chunk (its CRC is fixed: AE 42 60 82).
    if data.rstrip(b"\x00")[-12:] != b"\x00\x00\x00\x00IEND\xaeB`\x82":
        raise EdgeError(Code.IMAGE_TRUNCATED, f"{name} is a truncated PNG (no IEND chunk)")


def _png_significant_bits(data: bytes) -> int | None:
    """The most significant bits of any channel in the PNG's sBIT chunk (before its image
    data), or None where it has none (or it is malformed)."""
    position = 8
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        if kind == b"IDAT":
            return None
        if kind == b"sBIT" and 1 <= length <= 4:
            said = data[position + 8 : position + 8 + length]
            return max(said) if said else None
        position += 12 + length
    return None


# Start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # RSTn, SOI, EOI, TEM: no length field


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the first start-of-frame segment, read by walking the marker
    segments before the scan; None when no frame header comes before the image data."""
    position = 2  # after SOI
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _JPEG_STANDALONE:
            position += 2
            continue
        if marker == 0xDA:  # start of scan: no frame header before it
            return None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    return None


def _check_jpeg(data: bytes, name: str) -> None:
    # libjpeg fills a truncated JPEG with grey and only warns: refuse it before it is scored.
    if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        raise EdgeError(Code.IMAGE_TRUNCATED, f"{name} is a truncated JPEG (no end-of-image marker)")
    size = jpeg_size(data)
    if size is None:
        raise EdgeError(Code.IMAGE_DECODE_FAILED, f"{name} is not a valid JPEG (no frame header)")
    _refuse_implausible_size(*size, name)
