"""PNG bytes helpers (pure; no decoding)."""

from __future__ import annotations

import struct
import zlib


def with_text(png: bytes, keyword: str, text: str) -> bytes:
    """The same PNG with a tEXt chunk before IEND: identical pixels, distinct bytes.

    Stored images are deduplicated by sha256, so a derived image (a clip's key frame) that must
    stay its own row carries what it belongs to as text.
    """
    if not png.startswith(b"\x89PNG\r\n\x1a\n") or b"IEND" not in png:
        raise ValueError("not a PNG")
    end = png.rindex(b"IEND") - 4
    body = b"tEXt" + keyword.encode("latin-1") + b"\x00" + text.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:end] + chunk + png[end:]
