"""Cines whose pixel data is a video stream: MPEG-2, MPEG-4 AVC/H.264 and HEVC/H.265.

Ultrasound machines store long loops this way (PS3.5 8.2.5-8.2.8): the encapsulated pixel data
is one compressed bit stream, split into fragments anywhere the sender liked, not one picture
per frame. pydicom has no decoder for it, so such a cine was refused (`DICOM_UNSUPPORTED`) and
the DICOM listener did not even accept the transfer syntax. The stream is written, fragment by
fragment, to a private temporary file (OpenCV reads no buffers; the file is the patient's
picture, so it is owner-only and removed when the frames end) and decoded by FFmpeg through
OpenCV, the reader the video path already uses. FFmpeg finds the stream's format itself (an
MPEG-2 elementary or program stream, an H.264 or HEVC byte stream) and converts its YBR to
RGB. In the agent this runs in the guard's worker, like every decode of received bytes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
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


def is_video(ds: Dataset) -> bool:
    """Whether the object's pixel data is a video stream (by its transfer syntax)."""
    try:
        return str(ds.file_meta.TransferSyntaxUID) in VIDEO_SYNTAXES
    except AttributeError:
        return False


def video_frames(ds: Dataset, name: str, stated: int = 0) -> Iterator[np.ndarray]:
    """The stream's pictures in order, each RGB uint8; DICOM_UNSUPPORTED when none decodes (a
    stream FFmpeg cannot read, or no stream at all). Read to its end, a stream of fewer pictures
    than the `stated` number of frames (2% or 2 short) ends with DICOM_INVALID: a stream cut or
    damaged inside a well-formed object, which the video path must not take for the whole clip."""
    syntax = uid.UID(str(ds.file_meta.TransferSyntaxUID))
    suffix = next((hint for key, hint in _SUFFIX.items() if key in syntax.name), ".bin")
    with tempfile.TemporaryDirectory(prefix="edge-video-") as folder:
        path = Path(folder) / f"stream{suffix}"
        _write_stream(ds, path, name)
        capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
        try:
            count = 0
            while capture.isOpened():
                ok, bgr = capture.read()
                if not ok:
                    break
                count += 1
                yield np.ascontiguousarray(bgr[:, :, ::-1]) if bgr.ndim == 3 else bgr
        finally:
            capture.release()
    if not count:
        raise EdgeError(
            Code.DICOM_UNSUPPORTED, f"{name}: its video stream ({syntax.name}) could not be decoded"
        )
    if count < stated - max(2, stated // 50):
        raise EdgeError(
            Code.DICOM_INVALID,
            f"{name}: its video stream holds {count} pictures where the header states {stated}"
            " frames: a damaged stream, or a wrong header",
        )


def _write_stream(ds: Dataset, path: Path, name: str) -> None:
    """The fragments' bytes, in order, after the (ignored) basic offset table."""
    try:
        buffer = BytesIO(ds.PixelData)
        parse_basic_offsets(buffer)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            for fragment in generate_fragments(buffer):
                stream.write(fragment)
    except (ValueError, KeyError, AttributeError, TypeError) as exc:  # not encapsulated as stated
        raise EdgeError(
            Code.DICOM_INVALID, f"{name}: its video stream is not encapsulated as DICOM says ({exc})"[:300]
        ) from exc
