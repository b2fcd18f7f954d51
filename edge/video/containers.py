"""Whether a video file is a finished recording, from its container's own bytes. Pure.

A recorder writing into the drop folder (or a copy that pauses) leaves a file that stops
changing for a while before it is finished. An AVI or Matroska file still being written states
no frame count, so its first pictures were analysed and stored as if they were the whole clip
(an outside-style check: 38 of 90 frames stored, the finished file never analysed); an MP4 still
being written has no index yet and was quarantined as unreadable while the recorder went on
writing into quarantine/. Each container says when it is finished:

- MP4/MOV: its top-level boxes tile the file exactly and one is the index (`moov`); a
  fragmented one (`moof` boxes, or `mvex` in its index: written live) ends with its
  fragments' index (`mfra`);
- AVI: its RIFF size is within the file and its main header states a frame count;
- Matroska: its segment's size is known (a writer leaves it unknown until it closes the file)
  and within the file.
"""

from __future__ import annotations

import struct

MP4_INDEX = b"moov"
MP4_FRAGMENT = b"moof"
MP4_FRAGMENTS_INDEX = b"mfra"
MP4_FRAGMENTS_SAID = b"mvex"
"""In the index: fragments follow (a recorder's header, before any fragment is written)."""


def unfinished(data: bytes) -> str | None:
    """Why `data` (a whole MP4/MOV, AVI or Matroska file) is not a finished recording, or None."""
    if data[4:8] == b"ftyp":
        return _mp4(data)
    if data.startswith(b"RIFF") and data[8:12] == b"AVI ":
        return _avi(data)
    if data.startswith(b"\x1aE\xdf\xa3"):
        return _matroska(data)
    return None


def _mp4(data: bytes) -> str | None:
    position, indexed, fragmented, last = 0, False, False, b""
    while position < len(data):
        if position + 8 > len(data):
            return "its last MP4 box is cut"
        size, kind = struct.unpack(">I4s", data[position : position + 8])
        if size == 1:
            if position + 16 > len(data):
                return "its last MP4 box is cut"
            size = struct.unpack(">Q", data[position + 8 : position + 16])[0]
        elif size == 0:  # runs to the end of the file: what a writer leaves until it finishes
            size = len(data) - position
        if size < 8 or position + size > len(data):
            return "its last MP4 box runs past the end of the file"
        indexed = indexed or kind == MP4_INDEX
        fragmented = (
            fragmented
            or kind == MP4_FRAGMENT
            or (kind == MP4_INDEX and _has_child(data[position + 8 : position + size], MP4_FRAGMENTS_SAID))
        )
        position, last = position + size, kind
    if not indexed:
        return "it has no MP4 index (moov) yet"
    if fragmented and last != MP4_FRAGMENTS_INDEX:
        # A recorder writing fragments leaves a file whose boxes tile it after each fragment:
        # only the closing index says it is done (a finished file without one waits its time).
        return "its MP4 fragments have no closing index (mfra) yet"
    return None


def _has_child(body: bytes, wanted: bytes) -> bool:
    """Whether a box's body (its children, one after another) holds a box of kind `wanted`."""
    position = 0
    while position + 8 <= len(body):
        size, kind = struct.unpack(">I4s", body[position : position + 8])
        if kind == wanted:
            return True
        if size < 8:
            return False
        position += size
    return False


def _avi(data: bytes) -> str | None:
    riff_size = struct.unpack("<I", data[4:8])[0]
    if riff_size + 8 > len(data):
        return "its AVI (RIFF) size runs past the end of the file"
    if data[24:28] != b"avih" or len(data) < 52:
        return "it has no AVI main header"
    if struct.unpack("<I", data[48:52])[0] == 0:
        return "its AVI header states no frames yet"
    return None


def _vint(data: bytes, position: int) -> tuple[int, int, bool] | None:
    """An EBML variable-size integer at `position`: (value, its length, whether "unknown")."""
    if position >= len(data) or data[position] == 0:
        return None
    length = 8 - data[position].bit_length() + 1
    if position + length > len(data):
        return None
    value = int.from_bytes(data[position : position + length], "big") & ((1 << (7 * length)) - 1)
    return value, length, value == (1 << (7 * length)) - 1


def _matroska(data: bytes) -> str | None:
    header = _vint(data, 4)
    if header is None:
        return "its Matroska header is cut"
    segment = 4 + header[1] + header[0]
    if data[segment : segment + 4] != b"\x18\x53\x80\x67":
        return "it has no Matroska segment yet"
    size = _vint(data, segment + 4)
    if size is None:
        return "its Matroska segment is cut"
    value, length, unknown = size
    if unknown:
        return "its Matroska segment has no size yet (the writer has not closed it)"
    if segment + 4 + length + value > len(data):
        return "its Matroska segment runs past the end of the file"
    return None
