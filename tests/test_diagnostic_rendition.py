"""The diagnostic rendition (issue 20 item 2, issue 21's budget row): a 1024-px greyscale JPEG of
the display image with its windowing facts, sent after the lean payload for positive and flagged
results, for any other when the hub asks (a specialist opened the study), never under
`[sync] images = "none"`; its pixels pass the same burned-in text check as the thumbnail; the
study page prefers it and says when it was asked for."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from sqlalchemy import insert, select

from edge.config import Settings, load_settings
from edge.hub import accounts, db, rendition_requests
from edge.imaging import rendition_meta
from edge.pipeline import Pipeline
from edge.store import Store
from edge.sync.outgoing import RENDITION_SIDE, PixelGuard
from edge.sync.runner import exchange
from tests.conftest import DEFAULT_MODEL, MODELS, png_bytes
from tests.hubfixtures import HTML, REVIEW_PASSWORD, Hub, login, reset
from tests.test_burned_text import _NoOcr, _OneWordOcr

SAMPLES = MODELS / DEFAULT_MODEL / "samples"


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    running = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    reset(running.engine)
    return running


def _device(tmp_path: Path, **sync: str) -> Settings:
    return load_settings(
        data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails", **sync}
    )


def _large(tmp_path: Path, name: str) -> Path:
    """A shipped sample at a radiograph's size (1400 x 1700), so the 1024-px bound shows."""
    pixels = cv2.imread(str(SAMPLES / name), cv2.IMREAD_GRAYSCALE)
    path = tmp_path / f"large-{name}"
    path.write_bytes(png_bytes(cv2.resize(pixels, (1400, 1700), interpolation=cv2.INTER_CUBIC)))
    return path


def _analyse(settings: Settings, store: Store, paths: list[Path]) -> dict[str, bool]:
    """result id -> positive, by the real pipeline."""
    pipeline = Pipeline(settings, store)
    analyses = [a for path in paths for a in pipeline.analyse_file(path) if a.ok and a.result]
    pipeline.close()
    return {a.result.id: a.result.finding == a.result.finding_label for a in analyses}  # type: ignore[union-attr]


def _uploads(hub: Hub, kind: str) -> dict[str, Any]:
    with hub.engine.connect() as conn:
        rows = conn.execute(select(db.uploads).where(db.uploads.c.kind == kind, db.uploads.c.complete)).all()
    return {row.result_uuid: row for row in rows}


# sample-11 is a pneumonia the shipped model calls positive; sample-01 a normal it calls negative.
POSITIVE, NEGATIVE = "sample-11.png", "sample-01.png"


def test_positive_sends_it_negative_only_when_the_hub_asks(tmp_path: Path, hub: Hub) -> None:
    device = _device(tmp_path)
    accounts.create_user(hub.engine, "dr-a", REVIEW_PASSWORD, "specialist", ["*"])
    page = hub.client.__class__(hub.app, base_url="http://testserver")
    assert login(page, "dr-a") == 303
    with Store(device.data_dir) as store:
        positive = _analyse(device, store, [_large(tmp_path, POSITIVE), _large(tmp_path, NEGATIVE)])
        assert sorted(positive.values()) == [False, True]
        pos = next(r for r, p in positive.items() if p)
        neg = next(r for r, p in positive.items() if not p)
        client = hub.sync_client(device, store, hub.enroll(device))
        exchange(client)
        sent = _uploads(hub, "rendition")
        assert set(sent) == {pos}  # the default, "positive": not the negative
        # After the lean payload: its outbox row comes after the result's thumbnail and heatmap.
        seqs = dict(
            store.db.execute(
                "SELECT kind, seq FROM outbox WHERE json_extract(payload, '$.result_id') = ?", [pos]
            ).fetchall()
        )
        assert seqs["rendition"] > max(seqs["thumbnail"], seqs["heatmap"])
        data = Path(sent[pos].path).read_bytes()
        assert sent[pos].media_type == "image/jpeg"
        shown = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        assert shown.ndim == 2
        assert max(shown.shape) == RENDITION_SIDE
        facts = rendition_meta.read(data)
        assert facts is not None
        assert facts["voi"] == "as stored"
        assert facts["size"] == [1024, 843]
        assert facts["source_size"] == [1700, 1400]

        # The specialist opens the negative: the hub asks, the page says so, the thumbnail shows.
        answer = page.get(f"/review/studies/{neg}", headers=HTML)
        assert answer.status_code == 200
        assert "Preview only: diagnostic image requested from the device" in answer.text
        assert rendition_requests.was_asked(hub.engine, client.credential.device_id, neg)
        assert [str(u) for u in client.rendition_requests().results] == [neg]
        assert page.get(f"/review/studies/{pos}", headers=HTML).text.count("requested from the device") == 0

        exchange(client)  # the next round pulls the request and sends the rendition
        assert set(_uploads(hub, "rendition")) == {pos, neg}
        assert client.rendition_requests().results == []  # it arrived: no longer open
        assert exchange(client)["files"] == 0  # and it is not sent twice
    answer = page.get(f"/review/studies/{neg}", headers=HTML)
    assert "diagnostic rendition (greyscale, at most 1024 px; never enlarged)" in answer.text
    assert "requested from the device" not in answer.text
    assert "grey levels from the pixels as stored on the device" in answer.text
    image = page.get(f"/review/studies/{neg}/image?w=1024")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/jpeg"
    hub.client.close()


@pytest.mark.parametrize(
    ("sync", "expected"),
    [
        ({"images": "none", "diagnostic": "always"}, 0),  # never without images, even when asked
        ({"diagnostic": "never"}, 0),  # not even when asked
        ({"diagnostic": "on-request"}, 1),  # only the one asked for
        ({"diagnostic": "always"}, 2),
    ],
)
def test_the_setting_decides_and_images_none_never_sends_one(
    tmp_path: Path, hub: Hub, sync: dict[str, str], expected: int
) -> None:
    device = _device(tmp_path, **sync)
    with Store(device.data_dir) as store:
        results = list(_analyse(device, store, [SAMPLES / NEGATIVE, SAMPLES / "sample-02.png"]))
        client = hub.sync_client(device, store, hub.enroll(device))
        exchange(client)
        with hub.engine.begin() as conn:  # a specialist asked for the first
            conn.execute(
                insert(db.rendition_requests).values(
                    device_id=client.credential.device_id, result_uuid=results[0], requested_at=db.now()
                )
            )
        exchange(client)
        assert len(_uploads(hub, "rendition")) == expected
        queued = store.db.execute("SELECT count(*) FROM outbox WHERE kind = 'rendition'").fetchone()[0]
        assert queued == expected
    hub.client.close()


def _dicom_with_window(tmp_path: Path) -> bytes:
    """A MONOCHROME2 12-bit radiograph-sized file with a window and pixel spacing."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(tmp_path / "w.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PhotometricInterpretation = "CR", "MONOCHROME2"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 2048, 1536, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = ["2048", "1000"], ["4096", "500"]  # two: the first applies
    ds.PixelSpacing = ["0.15", "0.15"]
    ds.PixelData = (np.arange(2048 * 1536, dtype=np.uint16) % 4096).tobytes()
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_the_windowing_facts_travel_in_the_jpeg_at_the_renditions_scale(tmp_path: Path) -> None:
    data = _dicom_with_window(tmp_path)
    facts = rendition_meta.windowing_of(data, {"format": "dicom"})
    assert facts == {
        "photometric": "MONOCHROME2",
        "voi": "window",
        "window_center": 2048.0,
        "window_width": 4096.0,
        "pixel_spacing_mm": [0.15, 0.15],
    }
    scaled = rendition_meta.scaled(facts, (2048, 1536), (1024, 768))
    assert scaled["pixel_spacing_mm"] == [0.3, 0.3]  # mm per rendition pixel
    _ok, jpeg = cv2.imencode(".jpg", np.zeros((8, 8), np.uint8))
    marked = rendition_meta.embed(jpeg.tobytes(), scaled)
    assert rendition_meta.read(marked) == scaled
    assert cv2.imdecode(np.frombuffer(marked, np.uint8), cv2.IMREAD_UNCHANGED).shape == (8, 8)
    assert rendition_meta.read(jpeg.tobytes()) is None  # a JPEG without the comment
    assert pydicom.dcmread(io.BytesIO(data)).Rows == 2048


@pytest.mark.security
def test_burned_in_text_is_redacted_in_it_and_a_flagged_file_withholds_it(tmp_path: Path) -> None:
    pixels = cv2.resize(cv2.imread(str(SAMPLES / POSITIVE), cv2.IMREAD_GRAYSCALE), (1400, 1700))
    data = png_bytes(pixels)
    image = {"id": "i1", "format": "png", "meta": {}}
    study = {"phi_patient_name": "SMITH^JOHN", "phi_patient_id": "P1", "phi_accession": None}
    redacted = PixelGuard("any", ocr=_OneWordOcr()).prepare("rendition", image, study, data)  # type: ignore[arg-type]
    assert redacted.code is not None
    assert redacted.code.value == "BURNED_IN_TEXT_REDACTED"
    assert redacted.data is not None
    assert redacted.media_type == "image/jpeg"
    shown = cv2.imdecode(np.frombuffer(redacted.data, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert max(shown.shape) == RENDITION_SIDE
    assert int(shown[2:10, 2:30].max()) < 40  # the word's place, blacked out (JPEG ringing aside)
    flagged = {**image, "meta": {"burned_in_annotation": "YES"}}
    withheld = PixelGuard("any", ocr=_OneWordOcr()).prepare("rendition", flagged, study, data)  # type: ignore[arg-type]
    assert withheld.data is None
    assert withheld.code is not None
    assert withheld.code.value == "PIXELS_WITHHELD"
    unchecked = PixelGuard("any", ocr=_NoOcr()).prepare("rendition", image, study, data)  # type: ignore[arg-type]
    assert unchecked.data is None  # no OCR engine: not sent


def test_a_hub_that_refuses_the_kind_does_not_stop_the_round(
    tmp_path: Path, hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An older hub answers 400 BAD_REQUEST to the new kind: noted, the rest still goes."""
    from edge.sync.credential import HubRefused
    from edge.sync.protocol import WireCode

    device = _device(tmp_path, diagnostic="always")
    with Store(device.data_dir) as store:
        (result,) = _analyse(device, store, [SAMPLES / NEGATIVE])
        client = hub.sync_client(device, store, hub.enroll(device))
        upload = client._upload

        def older_hub(kind: str, *args: Any) -> None:
            if kind == "rendition":
                raise HubRefused(400, WireCode.BAD_REQUEST, "kind: Input should be 'thumbnail'")
            upload(kind, *args)

        monkeypatch.setattr(client, "_upload", older_hub)
        assert exchange(client)["files"] == 2  # thumbnail and heatmap
        note = store.db.execute(
            "SELECT last_error, acked_at FROM outbox WHERE kind = 'rendition' AND ref_id = ?", [result]
        ).fetchone()
    assert note[0] == "not sent: the hub does not take renditions"
    assert note[1] is not None
    assert set(_uploads(hub, "thumbnail")) == {result}
    hub.client.close()


def test_a_flagged_negative_sends_it_by_default(tmp_path: Path, hub: Hub) -> None:
    """Urgent means positive findings and flagged studies: a technician's flag is enough."""
    device = _device(tmp_path)
    with Store(device.data_dir) as store:
        results = _analyse(device, store, [SAMPLES / NEGATIVE, SAMPLES / "sample-02.png"])
        assert not any(results.values())
        flagged = next(iter(results))
        study = store.db.execute(
            "SELECT i.study_id FROM results r JOIN images i ON i.id = r.image_id WHERE r.id = ?", [flagged]
        ).fetchone()[0]
        store.technician.set_urgent(study, True, "technician")
        exchange(hub.sync_client(device, store, hub.enroll(device)))
    assert set(_uploads(hub, "rendition")) == {flagged}
    hub.client.close()
