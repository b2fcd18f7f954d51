"""Burned-in text in pixels leaving for the hub (issue 17 item 2): the sector, OCR redaction, and
withholding whatever cannot be checked."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from edge.errors import Code
from edge.imaging.burned_text import Identifiers, TextPolicy, fold, redact_text, text_layers
from edge.imaging.decode import decode_bytes
from edge.imaging.dicom_redact import burned_in_flag
from edge.imaging.ocr import OcrUnavailable, TesseractOcr, Word
from edge.sync.outgoing import PixelGuard

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "ood" / "sonosite-anon-eye1.jpg"
SAMPLES_CXR = Path(__file__).resolve().parent.parent / "models" / "cxr-pneumonia" / "samples"
NAME, MRN = "HOLLOWAY^MARGARET", "40817253"
TESSERACT = TesseractOcr()
needs_tesseract = pytest.mark.skipif(not TESSERACT.is_available(), reason="tesseract-ocr not installed")


def _readable(pixels: np.ndarray, secrets: list[str], turn: int | None = None) -> list[str]:
    """The secrets OCR can still read in `pixels` (upscaled like the guard reads them), turned by
    `turn` (a cv2.ROTATE_* code) first when given."""
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    grey = grey if turn is None else cv2.rotate(grey, turn)
    scale = max(1.0, 1600 / max(grey.shape))
    grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    # The strongest reader at hand stands in for a person: the guard's own layers (plain reading
    # found nothing more on these images), each word fuzzily, and the words run together.
    words = [w for page in text_layers(grey) for w in TESSERACT.words(page)]
    line = fold("".join(w.text for w in words))
    return [
        s
        for s in secrets
        if fold(s) in line or any(Identifiers.from_values(ids=[s]).match(w.text) for w in words)
    ]


def _screen_with_name() -> np.ndarray:
    """A real ultrasound screen with the patient's name drawn beside the sector and the MRN
    drawn inside it, as scanners burn them in."""
    pixels = decode_bytes(SAMPLE.read_bytes()).pixels.copy()
    cv2.putText(pixels, "HOLLOWAY MARGARET", (20, 40), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
    cv2.putText(pixels, MRN, (420, 560), cv2.FONT_HERSHEY_DUPLEX, 0.9, (235, 235, 235), 2)
    return pixels


def _us_dicom(pixels: np.ndarray, flag: str | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6.1"  # Ultrasound Image Storage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "US", NAME, MRN
    ds.PatientBirthDate = "19610304"
    if flag is not None:
        ds.BurnedInAnnotation = flag
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _heatmap_png(pixels: np.ndarray) -> bytes:
    small = cv2.resize(pixels, (512, 384), interpolation=cv2.INTER_AREA)
    heat = cv2.applyColorMap(np.tile(np.linspace(0, 255, 512, dtype=np.uint8), (384, 1)), cv2.COLORMAP_JET)
    blended = cv2.addWeighted(small, 0.6, heat[:, :, ::-1], 0.4, 0)
    return cv2.imencode(".png", np.ascontiguousarray(blended[:, :, ::-1]))[1].tobytes()


IMAGE_ROW = {"id": "img-1", "format": "dicom", "meta": {"modality": "US"}}
STUDY_ROW = {"modality": "US", "phi_patient_name": NAME, "phi_patient_id": MRN, "phi_accession": None}


@needs_tesseract
@pytest.mark.slow
@pytest.mark.security
def test_a_flagless_ultrasound_never_sends_a_readable_name() -> None:
    # Under "identifiers", the weaker policy ("any" blacks out a superset of its words).
    policy = "identifiers"
    screen = _screen_with_name()
    data = _us_dicom(screen)  # no BurnedInAnnotation at all: the case that leaked
    assert _readable(screen, ["HOLLOWAY", MRN]) == ["HOLLOWAY", MRN]  # the test's text is legible
    guard = PixelGuard(policy)
    sent = {
        "thumbnail": guard.prepare("thumbnail", IMAGE_ROW, STUDY_ROW, data),
        "heatmap": guard.prepare("heatmap", IMAGE_ROW, STUDY_ROW, data, _heatmap_png(screen)),
        "image": guard.prepare("image", IMAGE_ROW, STUDY_ROW, data),
    }
    for kind, outgoing in sent.items():
        assert outgoing.data is not None, kind
        assert outgoing.code in (None, Code.BURNED_IN_TEXT_REDACTED), kind
        assert "HOLLOWAY" not in (outgoing.note or "")  # the note counts, it never quotes
        pixels = decode_bytes(outgoing.data, kind).pixels
        assert _readable(pixels, ["HOLLOWAY", "MARGARET", MRN]) == [], kind
    full = pydicom.dcmread(io.BytesIO(sent["image"].data or b""))
    assert full.pixel_array[40, 40].max() == 0  # beside the sector: black in the file's own pixels


@needs_tesseract
@pytest.mark.slow
@pytest.mark.security
def test_overlays_in_several_fonts_sizes_and_contrasts_are_unreadable_after() -> None:
    base = decode_bytes(SAMPLE.read_bytes()).pixels
    overlays = [
        (cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, (400, 360)),
        (cv2.FONT_HERSHEY_PLAIN, 1.6, 200, (420, 520)),
        (cv2.FONT_HERSHEY_COMPLEX, 0.7, 170, (390, 600)),
    ]
    ocr = TesseractOcr()
    identifiers = Identifiers.from_values([NAME], [MRN])
    for font, size, grey, at in overlays:
        pixels = base.copy()
        cv2.putText(pixels, f"MRN {MRN}", at, font, size, (grey, grey, grey), 2 if size < 1 else 1)
        assert _readable(pixels, [MRN]) == [MRN]
        out, found = redact_text(pixels, ocr, identifiers, TextPolicy(redact_all=False))
        assert found.identifiers >= 1
        assert _readable(out, [MRN]) == []


class _NoOcr:
    name = "absent"

    def is_available(self) -> bool:
        return False

    def words(self, image: np.ndarray) -> list[Word]:
        raise AssertionError("never called when unavailable")


class _FailingOcr:
    name = "failing"

    def is_available(self) -> bool:
        return True

    def words(self, image: np.ndarray) -> list[Word]:
        raise OcrUnavailable("Tesseract process timeout")


@pytest.mark.security
@pytest.mark.parametrize("ocr", [_NoOcr(), _FailingOcr(), TesseractOcr(command="/nonexistent/tesseract")])
@pytest.mark.parametrize("kind", ["thumbnail", "heatmap", "image"])
def test_pixels_that_cannot_be_checked_are_withheld(ocr: object, kind: str) -> None:
    screen = _screen_with_name()
    guard = PixelGuard("any", ocr=ocr)  # type: ignore[arg-type]
    outgoing = guard.prepare(kind, IMAGE_ROW, STUDY_ROW, _us_dicom(screen), _heatmap_png(screen))
    assert outgoing.data is None
    assert outgoing.code is Code.PIXELS_WITHHELD
    assert "PIXELS_WITHHELD" in (outgoing.note or "")


@pytest.mark.security
@pytest.mark.parametrize("flag", ["YES", "Y", "yes ", "YES\\NO", "NO\\YES"])
def test_any_form_of_the_flag_saying_yes_withholds(flag: str) -> None:
    data = _us_dicom(_screen_with_name(), flag=flag)
    stored = pydicom.dcmread(io.BytesIO(data)).get("BurnedInAnnotation")
    assert burned_in_flag(stored)
    row = {**IMAGE_ROW, "meta": {"modality": "US", "burned_in_annotation": flag}}
    outgoing = PixelGuard("any", ocr=_NoOcr()).prepare("thumbnail", row, STUDY_ROW, data)
    assert outgoing.data is None
    assert outgoing.code is Code.PIXELS_WITHHELD


@pytest.mark.parametrize("value", [None, "", "NO", "N"])
def test_a_flag_saying_no_is_not_yes(value: str | None) -> None:
    assert not burned_in_flag(value)


def test_identifiers_match_through_ocr_errors() -> None:
    ids = Identifiers.from_values([NAME], [MRN, "ACC-99812"], ["19610304"])
    for read in ["HOLLOWAY", "H0LL0WAY", "Holloway,", "NAME:HOLLOWAY", "4O8I7253", "408172S3", "04/03/1961"]:
        assert ids.match(read), read
    for other in ["4.5cm", "Res", "ABDOMEN", "12:30:11", "G:68"]:
        assert not ids.match(other), other
    assert not Identifiers.from_values()  # nothing known: the guard then blacks out every word


def test_a_still_ultrasound_screen_has_a_sector_without_its_margins() -> None:
    from edge.video.roi import detect_still_sector

    box = detect_still_sector(_screen_with_name())
    assert box is not None
    x, y, w, h = box
    assert x > 60  # the name drawn at the top left is outside
    assert y > 60
    assert w * h > 0.1 * 960 * 720
    assert detect_still_sector(np.zeros((480, 640, 3), np.uint8)) is None  # nothing: withheld


class _OneWordOcr:
    """Reads one confident word at the top left of whatever it is shown."""

    name = "one-word"

    def is_available(self) -> bool:
        return True

    def words(self, image: np.ndarray) -> list[Word]:
        return [Word("SMITH", 91.0, (4, 4, 40, 12), (1, 1, 1))]


@pytest.mark.security
@pytest.mark.parametrize("ocr", [_OneWordOcr(), _NoOcr()])
def test_the_client_notes_and_audits_what_it_did_to_the_pixels(tmp_path: Path, ocr: object) -> None:
    from edge.config import load_settings
    from edge.pipeline import Pipeline
    from edge.store import Store
    from edge.sync.runner import exchange
    from tests.conftest import DEFAULT_MODEL, MODELS
    from tests.hubfixtures import Hub, reset

    hub = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    reset(hub.engine)
    device = load_settings(
        data_dir=tmp_path / "device", models={"dir": MODELS}, sync={"images": "thumbnails"}
    )
    sample = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[0]
    with Store(device.data_dir) as store:
        pipeline = Pipeline(device, store)
        assert [a for a in pipeline.analyse_file(sample) if a.ok]
        pipeline.close()
        client = hub.sync_client(device, store, hub.enroll(device))
        client.pixels = PixelGuard("any", ocr=ocr)  # type: ignore[arg-type]
        exchange(client)
        notes = [
            row[0]
            for row in store.db.execute(
                "SELECT last_error FROM outbox WHERE kind IN ('thumbnail', 'heatmap')"
            )
        ]
        actions = [row["action"] for row in store.audit_rows() if row["action"].startswith("pixels.")]
    hub.client.close()
    expected = "BURNED_IN_TEXT_REDACTED" if isinstance(ocr, _OneWordOcr) else "PIXELS_WITHHELD"
    assert len(notes) == 2
    # The heatmap travels as its evidence grid (issue 21), which holds no pixel to redact: it is
    # withheld with the image it belongs to, and otherwise leaves without a note.
    pictures = 2 if expected == "PIXELS_WITHHELD" else 1
    assert sum(expected in (note or "") for note in notes) == pictures
    assert actions == ["pixels.redacted" if expected.startswith("BURNED") else "pixels.withheld"] * pictures


@needs_tesseract
def test_the_same_pixels_are_read_once_and_other_pixels_afresh(monkeypatch) -> None:
    """Readings are kept by the pixels' digest: a re-sent thumbnail costs no second OCR run, and
    any changed pixel (a blacked-out word) is read again."""
    pixels = np.full((60, 240), 255, np.uint8)
    pixels[55:, :] = np.random.default_rng().integers(200, 256, (5, 240))  # never read before
    cv2.putText(pixels, "MEMO 4711", (8, 40), cv2.FONT_HERSHEY_SIMPLEX, 1.0, 0, 2)
    runs: list[int] = []
    real = TesseractOcr._read
    monkeypatch.setattr(TesseractOcr, "_read", lambda self, page: runs.append(1) or real(self, page))
    first, again = TesseractOcr().words(pixels), TesseractOcr().words(pixels.copy())
    assert "4711" in " ".join(w.text for w in first)
    assert first == again
    assert len(runs) == 1
    changed = pixels.copy()
    changed[0, 0] = 0
    TesseractOcr().words(changed)
    assert len(runs) == 2


def test_with_no_identifier_known_speckle_words_are_not_text_but_an_id_or_a_name_is() -> None:
    """Under "any" with no identifier known, a reading of confidence 40-75 counts only when it is
    shaped like what a screen prints about a patient (3+ characters with a digit, or mostly
    capitals): lung and breast speckle read as "we", "ae", "Peed" blacked out up to a third of
    a clip's picture. Confident words (>= 75) count as before; with a known patient, as before."""
    from edge.imaging.burned_text import MIN_CONFIDENCE_UNKNOWN_PATIENT, _is_text

    unknown = TextPolicy(redact_all=True, min_confidence=MIN_CONFIDENCE_UNKNOWN_PATIENT)
    known = TextPolicy(redact_all=True)

    def word(text: str, confidence: float) -> Word:
        return Word(text, confidence, (0, 0, 10, 10), (1, 1, 1))

    for speckle in ("we", "ae;", "wee", "Peed", "Mart", "“st", "~~"):
        assert not _is_text(word(speckle, 55.0), unknown), speckle
    for printed in ("NKWO.40817253", "OKONKWO", "408", "817263", "DOE^JANE", "12/03/2026"):
        assert _is_text(word(printed, 50.0), unknown), printed
    assert _is_text(word("ow", 80.0), unknown)  # confident: text, whatever its shape
    assert not _is_text(word("OKONKWO", 39.0), unknown)  # below the floor
    assert not _is_text(word("OKONKWO", 60.0), known)  # known patient: its names match instead
    assert _is_text(word("ward", 90.0), known)


@needs_tesseract
@pytest.mark.security
def test_text_as_bright_as_its_background_in_another_hue_is_read() -> None:
    """Magenta on grey has the grey's luminance: a greyscale reading sees nothing, while the
    full image leaves in colour. The colour-difference planes are read too (found by an audit)."""
    picture = np.full((220, 760, 3), 128, np.uint8)
    magenta = (255, 56, 166)  # 0.299 R + 0.587 G + 0.114 B = 128
    cv2.putText(picture, "HOLLOWAY MARGARET", (30, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.2, magenta, 3)
    cv2.putText(picture, "MRN 40817253", (30, 160), cv2.FONT_HERSHEY_SIMPLEX, 1.2, magenta, 3)
    secrets = ["HOLLOWAY", MRN]
    assert _readable(picture, secrets) == []  # invisible to a reading of the luminance
    assert _readable(picture[..., 1].copy(), secrets)  # plain in the green channel
    out, found = redact_text(picture, TESSERACT, Identifiers.from_values([NAME], [MRN]), TextPolicy(True))
    assert found.boxes
    for channel in range(3):
        assert _readable(out[..., channel].copy(), secrets) == [], channel


@needs_tesseract
@pytest.mark.security
def test_a_full_dicom_keeps_no_text_hidden_outside_its_window() -> None:
    """The full image keeps its stored values: a name drawn far below the window is black on the
    display the guard read, and readable to whoever widens the window (found by an audit)."""
    from edge.imaging.dicom_redact import stored_value_views
    from tools import dicomgen

    picture = np.tile(np.linspace(8300, 12200, 896), (896, 1)).astype(np.uint16)
    label = np.zeros(picture.shape, np.uint8)
    cv2.putText(label, "HOLLOWAY MARGARET", (40, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 3)
    cv2.putText(label, "MRN 40817253", (40, 120), cv2.FONT_HERSHEY_SIMPLEX, 1.2, 255, 3)
    picture[:150, :720] = 7000  # a band below the window: black when displayed
    picture[label > 0] = 700  # and the text further below it: black on black
    ds = dicomgen.grey_dicom(picture, bits_stored=16, window=(10240, 4096), patient_id=MRN, patient_name=NAME)
    data = dicomgen.to_bytes(ds)
    secrets = ["HOLLOWAY", MRN]
    assert _readable(decode_bytes(data).pixels, secrets) == []  # the display hides it
    assert any(_readable(view, secrets) for view in stored_value_views(data))  # the values do not
    image = {"id": "full-1", "format": "dicom", "meta": {"modality": "CR"}}
    study = {"phi_patient_name": NAME, "phi_patient_id": MRN}
    sent = PixelGuard("any", ocr=TESSERACT).prepare("image", image, study, data)
    assert sent.data is not None
    assert sent.code is Code.BURNED_IN_TEXT_REDACTED
    for view in stored_value_views(sent.data):
        assert _readable(view, secrets) == []


@needs_tesseract
@pytest.mark.security
def test_a_label_running_up_the_film_is_read_and_blacked_out() -> None:
    """As an audit found: a name and ID written up the left edge of a chest film (a vertical
    label, common on CR and DX) were read by nobody and reached the hub in the full image, the
    rendition and the thumbnail. Pages are now read turned a quarter either way too."""
    from tools import dicomgen

    film = decode_bytes((SAMPLES_CXR / "sample-01.png").read_bytes()).pixels
    film = cv2.resize(film, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    film = film[:, :, 0] if film.ndim == 3 else film
    band = np.zeros((60, 700), np.uint8)
    cv2.putText(band, "HOLLOWAY 40817253", (10, 45), cv2.FONT_HERSHEY_SIMPLEX, 1.4, 255, 3)
    upward = cv2.rotate(band, cv2.ROTATE_90_COUNTERCLOCKWISE)
    film[150 : 150 + upward.shape[0], 10 : 10 + upward.shape[1]] |= upward
    secrets = ["HOLLOWAY", MRN]
    assert _readable(film, secrets) == []  # upright, nothing: why it was missed
    assert _readable(film, secrets, cv2.ROTATE_90_CLOCKWISE) == secrets
    data = dicomgen.to_bytes(dicomgen.grey_dicom(film, bits_stored=8, patient_id=MRN, patient_name=NAME))
    image = {"id": "vertical-1", "format": "dicom", "meta": {"modality": "CR"}}
    study = {"modality": "CR", "phi_patient_name": NAME, "phi_patient_id": MRN}
    for kind in ("image", "rendition", "thumbnail"):
        sent = PixelGuard("identifiers", ocr=TESSERACT).prepare(kind, image, study, data)
        assert sent.data is not None, kind
        assert sent.code is Code.BURNED_IN_TEXT_REDACTED, kind
        pixels = decode_bytes(sent.data).pixels
        assert _readable(pixels, secrets, cv2.ROTATE_90_CLOCKWISE) == [], kind


def test_a_turned_page_counts_only_words_shaped_like_an_id_or_a_name() -> None:
    """Speckle and anatomy read sideways come back as confident short words; on a turned page
    only identifiers and words shaped like one count, upright pages are judged as before."""
    from edge.imaging.burned_text import read_text

    class _SameWords:
        name = "double"

        def is_available(self) -> bool:
            return True

        def words(self, image: np.ndarray) -> list[Word]:
            speckle = Word("at", 95.0, (0, 0, 10, 10), (1, 1, 1))
            return [speckle, Word("A40817253", 90.0, (20, 0, 40, 10), (1, 1, 2))]

    picture = np.zeros((200, 300), np.uint8)
    upright_only = read_text(picture, _SameWords(), Identifiers(), TextPolicy(True, sideways=False))
    both = read_text(picture, _SameWords(), Identifiers(), TextPolicy(True))
    # Two layers: upright both words each; turned both ways, the ID-shaped word only.
    assert upright_only.other_text == 4
    assert both.other_text == 4 + 4
