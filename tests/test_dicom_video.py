"""Cines whose pixel data is a video stream (MPEG-2, H.264, HEVC): decoded, not refused.

Ultrasound machines store long loops this way; pydicom has no decoder for them, and the DICOM
listener did not accept their transfer syntaxes, so such a cine could not even be sent. The
streams here are encoded by the real `ffmpeg` program from the bundled lung clip's frames.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydicom import uid
from pydicom.encaps import encapsulate

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decoded import UndecodableDicom
from edge.imaging.dicom import decode_dicom, display_frames
from tests.conftest import REPO
from tools import dicomgen

CLIP = REPO / "samples" / "video" / "lung-regular-alines.mp4"
SYNTAXES = {
    "mpeg2": uid.MPEG2MPHL,
    "h264": uid.MPEG4HP41,
    "hevc": uid.HEVCMP51,
}


def needs_ffmpeg() -> None:
    if shutil.which("ffmpeg") is None:
        if os.environ.get("CI"):
            pytest.fail("ffmpeg is missing: .ci/run must apt-get install ffmpeg")
        pytest.skip("the ffmpeg program is not installed")


def clip_frames(count: int = 20) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(CLIP))
    frames = []
    while len(frames) < count:
        ok, bgr = capture.read()
        if not ok:
            break
        rows, columns = bgr.shape[0] // 2 * 2, bgr.shape[1] // 2 * 2  # the encoders' 4:2:0
        frames.append(np.ascontiguousarray(bgr[:rows, :columns, ::-1]))
    capture.release()
    return frames


@pytest.mark.parametrize("syntax", SYNTAXES.values(), ids=SYNTAXES.keys())
def test_a_video_cine_decodes_frame_for_frame(syntax: str, private_tmp: Path) -> None:
    needs_ffmpeg()
    frames = clip_frames()
    data = dicomgen.to_bytes(dicomgen.video_cine(frames, syntax, fps=10.0))
    decoded = decode_dicom(data, "cine.dcm")
    assert decoded.frames == len(frames)
    # The middle picture stands for the cine (gate, metadata), as for any other cine.
    distances = [np.abs(decoded.pixels.astype(int) - frame.astype(int)).mean() for frame in frames]
    assert int(np.argmin(distances)) == len(frames) // 2
    assert distances[len(frames) // 2] < 4  # lossy, but the same picture
    shown = list(display_frames(data))
    assert [round(t, 6) for t, _ in shown] == [round(i * 0.1, 6) for i in range(len(frames))]
    for (_, picture), frame in zip(shown, frames, strict=True):
        assert picture.shape == frame.shape
        assert picture.dtype == np.uint8
        assert np.abs(picture.astype(int) - frame.astype(int)).mean() < 4
    assert not list(private_tmp.iterdir())  # the stream's file went with the frames


def test_a_long_video_cine_is_stood_for_by_a_picture_a_second_in(private_tmp: Path) -> None:
    """A stream has no index to seek by: its middle is read from the start, seconds for a long
    loop each time it is shown. At most 30 pictures in (the middle of a short one) stands for it."""
    needs_ffmpeg()
    first = clip_frames(1)[0]
    frames = [np.roll(first, 4 * i, axis=1) for i in range(70)]  # the sample has 30: each its own
    decoded = decode_dicom(dicomgen.to_bytes(dicomgen.video_cine(frames, uid.MPEG4HP41)), "cine.dcm")
    distances = [np.abs(decoded.pixels.astype(int) - frame.astype(int)).mean() for frame in frames]
    assert decoded.frames == 70
    assert int(np.argmin(distances)) == 30


def test_a_video_cine_without_its_number_of_frames_is_still_a_cine(private_tmp: Path) -> None:
    """Number of Frames is Type 1, yet a machine may leave it out: read as a still, the loop
    went to a still's model, its first picture standing for it. The stream is counted instead."""
    needs_ffmpeg()
    frames = clip_frames(12)
    ds = dicomgen.video_cine(frames, uid.MPEG4HP41)
    del ds.NumberOfFrames
    data = dicomgen.to_bytes(ds)
    decoded = decode_dicom(data, "cine.dcm")
    assert decoded.frames == 12
    distances = [np.abs(decoded.pixels.astype(int) - frame.astype(int)).mean() for frame in frames]
    assert int(np.argmin(distances)) == 6
    assert len(list(display_frames(data))) == 12
    assert not list(private_tmp.iterdir())


@pytest.mark.parametrize(
    ("pixel_data", "code"),
    [
        (b"\x00\x00\x00\x01" + bytes(range(256)) * 64, Code.DICOM_UNSUPPORTED),  # a stream, unreadable
        (bytes(range(256)) * 64, Code.DICOM_INVALID),  # no stream at all
        (b"#EXTM3U\n#EXTINF:1,\n/etc/hostname\n", Code.DICOM_INVALID),  # a playlist naming a file
        (b"\x00\x00\x00\x18ftypisom" + bytes(64), Code.DICOM_INVALID),  # another container
    ],
    ids=["garbled-stream", "not-a-stream", "playlist", "mp4-container"],
)
def test_pixel_data_that_is_not_its_stream_is_refused_before_ffmpeg_sees_it(
    private_tmp: Path, pixel_data: bytes, code: Code
) -> None:
    """FFmpeg probes whatever it is given as any format it knows: another container, or a
    playlist whose entries (files on this device, network addresses) it would read. A stream
    that starts as its syntax's does but will not decode is stored unanalysed
    (UndecodableDicom); anything else is refused as malformed. Never a crash."""
    needs_ffmpeg()
    ds = dicomgen.video_cine(clip_frames(4), uid.MPEG4HP41)
    ds.PixelData = encapsulate([pixel_data])
    with pytest.raises(EdgeError) as caught:
        decode_dicom(dicomgen.to_bytes(ds), "cine.dcm")
    assert caught.value.code is code, caught.value.message
    assert isinstance(caught.value, UndecodableDicom) == (code is Code.DICOM_UNSUPPORTED)
    assert not list(private_tmp.iterdir())


def test_pictures_of_another_size_than_the_header_says_are_refused(private_tmp: Path) -> None:
    """A stream of 8192x8192 pictures under a 64x64 header decoded, 201 MB a picture past the
    header's size checks: the stream's size is the header's or the object is malformed."""
    needs_ffmpeg()
    ds = dicomgen.video_cine(clip_frames(4), uid.MPEG4HP41)
    ds.Rows, ds.Columns = 64, 64
    with pytest.raises(EdgeError) as caught:
        decode_dicom(dicomgen.to_bytes(ds), "cine.dcm")
    assert caught.value.code is Code.DICOM_INVALID
    assert "pictures are 322x322 where the header says 64x64" in caught.value.message


def test_a_stream_cut_inside_a_whole_object_ends_its_frames_with_a_code(private_tmp: Path) -> None:
    """The object is complete but its stream holds half the frames its header states: the
    pictures that decode are shown, and the frames end with DICOM_INVALID, which refuses the
    job (the video path must not take half a clip for the whole)."""
    from io import BytesIO

    from pydicom.encaps import generate_fragments, parse_basic_offsets

    from edge.errors import EdgeError

    needs_ffmpeg()
    ds = dicomgen.video_cine(clip_frames(20), uid.MPEG4HP41)
    buffer = BytesIO(ds.PixelData)
    parse_basic_offsets(buffer)
    stream = b"".join(generate_fragments(buffer))
    ds.PixelData = encapsulate([stream[: len(stream) // 2]])
    data = dicomgen.to_bytes(ds)
    assert decode_dicom(data, "cine.dcm").frames == 20  # its middle picture may still decode
    shown, error = 0, None
    try:
        for _ in display_frames(data):
            shown += 1
    except EdgeError as raised:
        error = raised
    assert error is not None
    assert error.code is Code.DICOM_INVALID
    assert f"holds {shown} pictures where the header states 20 frames" in error.message
    assert 0 < shown < 18
    assert not list(private_tmp.iterdir())


def test_a_video_cine_analysed_end_to_end_in_the_guard(settings: Settings, tmp_path: Path) -> None:
    """`edge infer` (the guard's worker decodes, the frames stream to the video path): a clip
    with its finding, as from the same frames in a JPEG cine."""
    from edge.device import Device

    needs_ffmpeg()
    path = tmp_path / "h264.dcm"
    path.write_bytes(dicomgen.to_bytes(dicomgen.video_cine(clip_frames(40), uid.MPEG4HP41, fps=10.0)))
    with Device(settings, guarded=True) as device:
        [analysis] = device.analyse_file(path, model="us-lung")
        assert analysis.ok, analysis.message
        clip = device.store.clip_for_result(analysis.result.id)
    assert clip is not None
    assert clip["source"] == "dicom"
    assert clip["frames_analysed"] >= 3


def test_doctor_says_when_opencv_cannot_read_video_streams(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Jetson's system OpenCV may come without FFmpeg: such cines would be refused, and the
    field engineer is told why before the first one is."""
    from edge.operations import doctor

    def decoders() -> doctor.Check:
        return next(c for c in doctor.run_checks(settings) if c.name == "dicom decoders")

    assert "H.264" not in decoders().message
    monkeypatch.setattr(cv2.videoio_registry, "hasBackend", lambda backend: False)
    check = decoders()
    assert check.level == "warn"
    assert "MPEG-2/H.264/HEVC cines (OpenCV without FFmpeg)" in check.message


def test_a_killed_decoder_leaves_no_copy_of_the_stream(private_tmp: Path) -> None:
    """The stream is the patient's pictures: written to the worker's own scratch folder, which
    goes when the worker is killed (a hang, a crash), or at the next start if its agent died."""
    import signal

    from edge.errors import EdgeError
    from edge.ingest.guard import GuardedDecoder

    needs_ffmpeg()
    data = dicomgen.to_bytes(dicomgen.video_cine(clip_frames(40), uid.MPEG4HP41))
    left_by_a_dead_agent = private_tmp / "edge-guard-abc"
    (left_by_a_dead_agent / "edge-video-x").mkdir(parents=True)
    (left_by_a_dead_agent / ".owner").touch()  # its lock went with its process
    os.utime(left_by_a_dead_agent, (1, 1))
    with GuardedDecoder(timeout_s=20) as guarded:
        assert not left_by_a_dead_agent.exists()
        pool = set(guarded.pids())
        frames = guarded.frames(data, "cine.dcm")
        next(frames)
        [streaming] = set(guarded.pids()) - pool
        assert list(private_tmp.glob("edge-guard-*/edge-video-*/stream.h264"))  # where it is
        os.kill(streaming, signal.SIGKILL)
        with pytest.raises(EdgeError):
            list(frames)
        assert not list(private_tmp.glob("edge-guard-*/edge-video-*"))
    assert not list(private_tmp.iterdir())
