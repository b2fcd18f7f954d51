"""Cines whose pixel data is a video stream: MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265.

Ultrasound machines store long loops this way (PS3.5 8.2.5-8.2.8): the encapsulated pixel data
is one compressed bit stream, split into fragments anywhere the sender liked, not one picture
per frame. pydicom has no decoder for it, so such a cine was refused (`DICOM_UNSUPPORTED`) and
the DICOM listener did not even accept the transfer syntax. The stream is written, fragment by
fragment, to a private temporary file (OpenCV reads no buffers; the file is the patient's
picture, so it is owner-only and removed when the frames end) and decoded by FFmpeg through
OpenCV, the reader the video path already uses, which converts its YBR to RGB (honouring a
BT.709 tag). FFmpeg probes what it is given as any format it knows (another container, a
playlist naming files or addresses), so the pixel data must begin as its syntax's stream does
(a start code; for MPEG-2 also a transport stream's sync byte), and in the guard's worker
FFmpeg may open only these stream formats, from files (`FFMPEG_OPTIONS`). Its pictures must be
the header's size. In the agent, `edge infer` and the TUI this runs in the guard's worker, like
every decode of received bytes: a crafted stream of empty units takes FFmpeg's parser
gigabytes, which only the worker's bound holds. (The sync service still decodes a stored
picture for the hub in its own process.)
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Generator
from io import BytesIO
from pathlib import Path

import cv2
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets

from edge.errors import Code, EdgeError

VIDEO_SYNTAXES = frozenset(uid.MPEGTransferSyntaxes)
_SUFFIX = {"MPEG2": ".mpg", "MPEG-4": ".h264", "HEVC": ".hevc"}  # a hint; FFmpeg probes anyway
FFMPEG_OPTIONS = "format_whitelist;h264,hevc,mpegvideo,mpeg,mpegts|protocol_whitelist;file"
"""For OpenCV's FFmpeg reader where only these streams are read (the guard's worker sets it as
OPENCV_FFMPEG_CAPTURE_OPTIONS): no other container, no playlist, no network."""


def ffmpeg_available() -> bool:
    """Whether OpenCV has FFmpeg (a Jetson's system OpenCV may have GStreamer only): without it
    these syntaxes are not offered to senders, and `edge doctor` warns."""
    try:
        return bool(cv2.videoio_registry.hasBackend(cv2.CAP_FFMPEG))
    except (AttributeError, cv2.error):
        return False


def is_video(ds: Dataset) -> bool:
    """Whether the object's pixel data is a video stream (by its transfer syntax)."""
    try:
        return str(ds.file_meta.TransferSyntaxUID) in VIDEO_SYNTAXES
    except AttributeError:
        return False


def video_frames(ds: Dataset, name: str, stated: int = 0) -> Generator[np.ndarray, None, None]:
    """The stream's pictures in order, each RGB uint8. Refused: pixel data that does not begin
    as its syntax's stream does (FFmpeg would otherwise probe it as any format it knows: another
    container, a playlist naming other files or addresses) or whose pictures are not the
    header's Rows x Columns (DICOM_INVALID); a stream no picture of which decodes
    (DICOM_UNSUPPORTED). Read to its end, a stream of fewer pictures than the `stated` number of
    frames (2% short at most) ends with DICOM_INVALID: a stream cut or damaged inside a
    well-formed object, which the video path must not take for the whole clip."""
    syntax = uid.UID(str(ds.file_meta.TransferSyntaxUID))
    family = _family(syntax)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    count = 0
    with tempfile.TemporaryDirectory(prefix="edge-video-") as folder:
        path = Path(folder) / f"stream{_SUFFIX.get(family, '.bin')}"
        _write_stream(ds, path, name, syntax)
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            size = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
            if capture.isOpened() and all(size) and size != (rows, columns):  # 0: not known yet
                raise _wrong_size(name, size, rows, columns)
            while capture.isOpened():
                ok, bgr = capture.read()
                if not ok:
                    break
                if bgr.shape[:2] != (rows, columns):
                    raise _wrong_size(name, bgr.shape[:2], rows, columns)
                count += 1
                yield np.ascontiguousarray(bgr[:, :, ::-1]) if bgr.ndim == 3 else bgr
        finally:
            capture.release()
    if not count:
        raise EdgeError(Code.DICOM_UNSUPPORTED, f"its video stream ({syntax.name}) could not be decoded")
    if count < stated - stated // 50:
        raise EdgeError(
            Code.DICOM_INVALID,
            f"{name}: its video stream holds {count} pictures where the header states {stated}"
            " frames: a damaged stream, or a wrong header",
        )


def _wrong_size(name: str, size: tuple[int, ...], rows: int, columns: int) -> EdgeError:
    return EdgeError(
        Code.DICOM_INVALID,
        f"{name}: its video stream's pictures are {size[1]}x{size[0]} where the header says {columns}x{rows}",
    )


def _starts_as(family: str, head: bytes) -> bool:
    """Whether a stream begins as one of `family` does: H.264 and HEVC byte streams with a start
    code (after any zero bytes), MPEG-2 with one too (an elementary or program stream) or as a
    transport stream (its sync byte)."""
    code = head.lstrip(b"\x00")
    started = len(head) - len(code) >= 2 and code[:1] == b"\x01"
    if family == "MPEG2":
        return started or head[:1] == b"\x47"
    return started


def _family(syntax: uid.UID) -> str:
    """MPEG2, MPEG-4 (H.264) or HEVC, by the syntax's name."""
    return next((key for key in _SUFFIX if key in syntax.name), "")


def _write_stream(ds: Dataset, path: Path, name: str, syntax: uid.UID) -> None:
    """The fragments' bytes, in order, after the (ignored) basic offset table. A temporary disk
    that is full is DISK_FULL (a failure of the device, tried again), not the file's fault."""
    try:
        buffer = BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        fragments = generate_fragments(buffer)
        head = b""
        for fragment in fragments:  # a sender may cut anywhere, even inside the first bytes
            head += fragment
            if len(head) >= 64:
                break
        if not _starts_as(_family(syntax), head[:64]):
            raise EdgeError(
                Code.DICOM_INVALID, f"{name}: its pixel data is not the {syntax.name} stream it says"
            )
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(head)
            for fragment in fragments:
                stream.write(fragment)
    except (ValueError, KeyError, AttributeError, TypeError, struct.error) as exc:  # not as stated
        raise EdgeError(
            Code.DICOM_INVALID, f"{name}: its video stream is not encapsulated as DICOM says ({exc})"[:300]
        ) from exc
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            raise
        raise EdgeError(
            Code.DISK_FULL, f"{name}: no room for its video stream's temporary file ({exc})"
        ) from exc
