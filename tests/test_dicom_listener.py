"""The C-STORE listener against dcmtk's real `storescu` and `echoscu`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.config import Settings
from edge.ingest.dicom_listener import DicomListener
from edge.ingest.guard import GuardedDecoder
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, MODELS
from tools import dicomgen

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def dcmtk_or_skip() -> None:
    if not (Path(STORESCU).exists() and Path(ECHOSCU).exists()):
        if os.environ.get("CI"):
            pytest.fail("dcmtk is missing: .ci/run must apt-get install dcmtk")
        pytest.skip("dcmtk is not installed (apt-get install dcmtk)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Listening:
    def __init__(self, settings: Settings, accepting: bool = True) -> None:
        self.settings = settings
        self.decoder = GuardedDecoder(timeout_s=30)
        self.accepting = accepting
        self.listener = DicomListener(
            settings,
            lambda: Pipeline(settings, Store(settings.data_dir), actor="dicom"),
            self.decoder.decode,
            accepting=lambda: (self.accepting, "test: disk below the floor"),
        )

    def __enter__(self) -> Listening:
        Store(self.settings.data_dir).close()
        self.listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop()
        self.decoder.close()


@pytest.fixture
def listening(settings: Settings) -> Iterator[Listening]:
    dcmtk_or_skip()
    configured = settings.model_copy(
        update={
            "dicom": settings.dicom.model_copy(
                update={
                    "enabled": True,
                    "port": free_port(),
                    "bind": "127.0.0.1",
                    "allowed_callers": ["XRAY1", "STORESCU"],
                }
            )
        }
    )
    with Listening(configured) as running:
        yield running


def send(
    listening: Listening,
    *files: Path,
    calling: str = "XRAY1",
    called: str = "EDGE",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    port = str(listening.settings.dicom.port)
    command = [STORESCU, "-v", "-aet", calling, "-aec", called, *extra, "127.0.0.1", port, *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def counts(settings: Settings) -> dict[str, int]:
    with Store(settings.data_dir) as store:
        return store.counts()


def demo_dicoms() -> list[Path]:
    return sorted((MODELS / DEFAULT_MODEL / "samples" / "demo").glob("*.dcm"))


def test_echo(listening: Listening) -> None:
    port = str(listening.settings.dicom.port)
    result = subprocess.run(
        [ECHOSCU, "-aet", "XRAY1", "-aec", "EDGE", "127.0.0.1", port],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_store_then_duplicate_gives_one_image(listening: Listening) -> None:
    uncompressed = [p for p in demo_dicoms() if b"1.2.840.10008.1.2.5" not in p.read_bytes()[:400]]
    result = send(listening, *uncompressed, extra=("-R",))
    assert result.returncode == 0, result.stderr
    assert counts(listening.settings)["images"] == len(uncompressed) == listening.listener.stored
    again = send(listening, uncompressed[0])
    assert again.returncode == 0, again.stderr  # Success again: the modality must not retry
    after = counts(listening.settings)
    assert (after["images"], after["jobs_queued"]) == (len(uncompressed), len(uncompressed))


def test_rle_compressed_store(listening: Listening) -> None:
    rle = [p for p in demo_dicoms() if b"1.2.840.10008.1.2.5" in p.read_bytes()[:400]]
    assert rle, "the samples include an RLE Lossless file"
    result = send(listening, *rle, extra=("-xr",))
    assert result.returncode == 0, result.stderr
    assert counts(listening.settings)["images"] == len(rle)


def test_a_cine_as_a_video_stream_is_accepted(listening: Listening, tmp_path: Path) -> None:
    """Ultrasound machines store long loops as H.264 (or MPEG-2, HEVC): the transfer syntax
    was refused in negotiation, so storescu could not send the cine at all."""
    from pydicom import uid

    from tests.test_dicom_video import clip_frames, needs_ffmpeg

    needs_ffmpeg()
    path = tmp_path / "h264.dcm"
    path.write_bytes(dicomgen.to_bytes(dicomgen.video_cine(clip_frames(12), uid.MPEG4HP41)))
    result = send(listening, path, extra=("-xn",))  # proposes H.264 High Profile 4.1
    assert result.returncode == 0, result.stderr
    assert counts(listening.settings)["images"] == 1
    assert counts(listening.settings)["jobs_queued"] == 1  # decoded: a job for the video path


@pytest.mark.security
def test_disallowed_caller_and_wrong_called_title_are_rejected(listening: Listening) -> None:
    for calling, called in (("INTRUDER", "EDGE"), ("XRAY1", "NOTEDGE")):
        result = send(listening, demo_dicoms()[0], calling=calling, called=called)
        assert result.returncode != 0
        assert "Association Rejected" in result.stderr
    assert counts(listening.settings)["images"] == 0


def test_undecodable_dataset_is_refused_not_stored(listening: Listening, tmp_path: Path) -> None:
    ds = dicomgen.grey_dicom(dicomgen.twelve_bit(np.zeros((64, 64), np.uint8)), bits_stored=12)
    ds.PhotometricInterpretation = "YBR_MADE_UP"  # decodes to nothing we can display
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(dicomgen.to_bytes(ds))
    result = send(listening, broken)
    assert "Error: CannotUnderstand" in result.stderr, result.stderr
    after = counts(listening.settings)
    assert (after["images"], after["audit"]) == (0, 1)
    # Never stored, so no worklist row: `edge status` says what the listener refused.
    status = CliRunner().invoke(cli, ["--data-dir", str(listening.settings.data_dir), "status"])
    [line] = [line for line in status.output.splitlines() if line.startswith("dicom: ")]
    assert "1 instance(s) refused in 7 days (DICOM_INVALID x1)" in line, line


def test_full_disk_answers_out_of_resources(listening: Listening) -> None:
    listening.accepting = False
    result = send(listening, demo_dicoms()[0])
    assert "Refused: OutOfResources" in result.stderr
    assert counts(listening.settings)["images"] == 0
    listening.accepting = True
    assert send(listening, demo_dicoms()[0]).returncode == 0
    assert counts(listening.settings)["images"] == 1


def test_dcmtk_is_the_real_one() -> None:
    dcmtk_or_skip()
    version = subprocess.run([STORESCU, "--version"], capture_output=True, text=True, check=False).stdout
    assert "OFFIS DCMTK" in version or "dcmtk" in version.lower()
    assert shutil.which("storescu")
