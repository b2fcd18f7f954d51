"""What this product writes as DICOM meets its IOD, checked with David Clunie's validator
(dicom3tools' `dciodvfy`) where it is installed (CI installs it), and the facts a reader relies on
checked here everywhere: the side a heatmap shows, the study's clock, the character set, a lossy
history, the attributes a de-identified DX file must carry. Found by a conformance review."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from edge.imaging.dicom_redact import redact_pixel_data
from edge.interop import sr
from edge.interop.pacs_export import PacsExporter
from edge.store import Store
from edge.sync import deid_dicom
from edge.sync.deid import Deidentifier
from tests.conftest import gradient
from tests.pacsfixtures import Receiver, analyse, pacs_settings
from tools import dicomgen

needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dicom3tools' dciodvfy is not installed"
)
SECRET = "HOLLOWAY-CALIBRATION-NOTE"


def _errors(path: Path) -> list[str]:
    out = subprocess.run(
        ["dciodvfy", "-new", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _film(sop_class: str) -> pydicom.Dataset:
    """A chest film whose own header meets its IOD, so the errors found are in what is written."""
    modality = "DX" if sop_class == dicomgen.DX_STORAGE else "CR"
    ds = dicomgen.grey_dicom(
        dicomgen.twelve_bit(gradient(96, 80)), bits_stored=12, window=(2048.0, 4096.0),
        sop_class=sop_class, modality=modality, uid_seed=f"conformance-{modality}",
    )  # fmt: skip
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientBirthDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID = "20200101", "101500", "", "S1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "Synthetic"
    ds.PatientOrientation, ds.ViewPosition, ds.ImageType = ["L", "F"], "PA", ["ORIGINAL", "PRIMARY"]
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    if modality == "DX":
        ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
        ds.PresentationIntentType, ds.PresentationLUTShape = "FOR PRESENTATION", "IDENTITY"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.BurnedInAnnotation, ds.LossyImageCompression, ds.ImageLaterality = "NO", "00", "U"
        ds.DetectorType, ds.DetectorConfiguration, ds.PositionerType = "DIRECT", "AREA", "NONE"
        ds.PixelSpacing, ds.PixelSpacingCalibrationType = [0.5, 0.5], "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = SECRET  # free text: never leaves
        ds.AnatomicRegionSequence = Sequence([_code("51185008", "SCT", "Thorax")])
        ds.ViewCodeSequence = Sequence([_code("399348003", "SCT", "postero-anterior")])
        ds.AcquisitionContextSequence = Sequence([])
        # Type 2 of the DX modules, unknown here: present and empty.
        type_2 = """DetectorID DateOfLastDetectorCalibration TimeOfLastDetectorCalibration
            DetectorElementPhysicalSize DetectorElementSpacing DetectorBinning FieldOfViewShape
            FieldOfViewDimensions KVP ExposureIndex DistanceSourceToDetector DistanceSourceToPatient
            EstimatedRadiographicMagnificationFactor FocalSpots Grid AnodeTargetMaterial FilterMaterial
            ExposureTime XRayTubeCurrent Exposure ExposureInuAs BodyPartThickness CompressionForce
            AcquisitionDeviceProcessingDescription"""
        for keyword in type_2.split():
            setattr(ds, keyword, None)
    return ds


def _hub_file(source: pydicom.Dataset) -> pydicom.Dataset:
    sent = Deidentifier(b"k" * 32, "shift").dicom(redact_pixel_data(dicomgen.to_bytes(source), None, []))
    assert sent is not None
    assert SECRET.encode() not in sent
    return pydicom.dcmread(pydicom.filebase.DicomBytesIO(sent))


@pytest.mark.security
def test_a_de_identified_dx_film_carries_what_its_iod_requires_and_no_source_text(tmp_path: Path) -> None:
    """DX makes Rescale Type Type 1 (Enumerated Value US), a calibration type its description,
    and Type 2 an anatomic region, a detector and a positioner type, and a manufacturer: what the
    allow-list cannot carry (text, coded sequences) is written by this code, never copied."""
    out = _hub_file(_film(dicomgen.DX_STORAGE))
    assert out.RescaleType == "US"
    assert out.PixelSpacingCalibrationType == "GEOMETRY"
    assert out.PixelSpacingCalibrationDescription == deid_dicom.REMOVED
    assert (out.DetectorType, out.PositionerType, out.Manufacturer) == ("DIRECT", "NONE", "")
    [region] = out.AnatomicRegionSequence  # from Body Part Examined, by the standard's table
    assert (region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning) == (
        "816094009",
        "SCT",
        "Chest",
    )
    assert len(out.AcquisitionContextSequence) == 0


@needs_dciodvfy
@pytest.mark.parametrize("sop_class", [dicomgen.CR_STORAGE, dicomgen.DX_STORAGE], ids=["CR", "DX"])
def test_dciodvfy_finds_no_error_in_a_de_identified_film(tmp_path: Path, sop_class: str) -> None:
    source, sent = tmp_path / "source.dcm", tmp_path / "sent.dcm"
    film = _film(sop_class)
    film.save_as(source, enforce_file_format=True)
    assert _errors(source) == []  # the source is valid: what follows is this product's own
    _hub_file(film).save_as(sent, enforce_file_format=True)
    assert _errors(sent) == []


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_a_report_or_a_heatmap(tmp_path: Path) -> None:
    receiver = Receiver()
    try:
        settings = pacs_settings(tmp_path, receiver.port)
        analyse(settings, tmp_path, dicoms=1)
        with Store(settings.data_dir) as store:
            assert PacsExporter(settings, store).run_round()
        assert {ds.Modality for ds in receiver.received} == {"SR", "OT"}
        for index, dataset in enumerate(receiver.received):
            path = tmp_path / f"sent-{index}.dcm"
            dataset.save_as(path, enforce_file_format=True)
            assert _errors(path) == [], dataset.Modality
    finally:
        receiver.close()


def _built(tmp_path: Path, **header: Any) -> tuple[Any, pydicom.Dataset, pydicom.Dataset]:
    """A stored result, and its heatmap and report built from its source's header changed as
    asked (a value of None: without the attribute)."""
    settings = pacs_settings(tmp_path, 1)
    [result_id] = analyse(settings, tmp_path, dicoms=1)
    with Store(settings.data_dir) as store:
        result = store.result(result_id)
    source = pydicom.dcmread(tmp_path / "cr-0.dcm", stop_before_pixels=True)
    for keyword, value in header.items():
        if value is None:
            source.pop(keyword, None)
        else:
            setattr(source, keyword, value)
    written = tmp_path / "source.dcm"  # as the exporter reads it: text encoded in its character sets
    source.save_as(written, enforce_file_format=True)
    reference = sr.reference_header(pydicom.dcmread(written, stop_before_pixels=True))
    heatmap = sr.build_heatmap(result, reference, np.zeros((16, 16, 3), np.uint8))
    report = sr.build_sr(result, reference, sr.Provenance.for_site("Klinik Łódź", "device-key"))
    return result, heatmap, report


def test_a_heatmap_says_which_side_it_shows(tmp_path: Path) -> None:
    """A breast's heatmap without its side cannot be told from the other breast's (found by the
    review: highdicom copies only patient and study)."""
    _, heatmap, _ = _built(tmp_path / "a", BodyPartExamined="BREAST", ImageLaterality="L")
    assert (heatmap.BodyPartExamined, heatmap.Laterality) == ("BREAST", "L")
    _, heatmap, _ = _built(tmp_path / "b", BodyPartExamined="BREAST")
    assert "Laterality" in heatmap  # a paired part, side unknown: present and empty (Type 2C)
    assert not heatmap.Laterality
    _, heatmap, _ = _built(tmp_path / "c", BodyPartExamined="CHEST")
    assert "Laterality" not in heatmap  # not paired: not required, so not present


def test_a_heatmap_carries_the_source_pictures_text_flag(tmp_path: Path) -> None:
    """The overlay is the source's picture: "NO" only where the source said it has no text."""
    _, heatmap, _ = _built(tmp_path / "a", BurnedInAnnotation="NO")
    assert heatmap.BurnedInAnnotation == "NO"
    _, heatmap, _ = _built(tmp_path / "b")
    assert heatmap.BurnedInAnnotation == "YES"


def test_the_study_keeps_its_clock_and_the_sites_name_its_letters(tmp_path: Path) -> None:
    """The study's times are copied as the source has them, so an offset from UTC is the
    source's (or none): "+0000" beside them moved the study. Text is written as UTF-8: a site's
    name outside the source's Latin-1 came out as question marks."""
    result, heatmap, report = _built(
        tmp_path / "a", TimezoneOffsetFromUTC="-0500", SpecificCharacterSet="ISO_IR 100", StudyTime="101500"
    )
    created = dt.datetime.strptime(result.created_at[:19], "%Y-%m-%dT%H:%M:%S")
    for ds in (heatmap, report):
        assert ds.TimezoneOffsetFromUTC == "-0500"
        assert str(ds.StudyTime) == "101500"  # the study's own clock, as the source has it
        assert ds.ContentTime == (created - dt.timedelta(hours=5)).strftime("%H%M%S")
        assert ds.SpecificCharacterSet == "ISO_IR 192"
    written = tmp_path / "report.dcm"
    report.save_as(written, enforce_file_format=True)
    assert "Klinik Łódź" in [str(e.value) for e in pydicom.dcmread(written).iterall() if e.VR != "SQ"]
    _, heatmap, report = _built(tmp_path / "b", TimezoneOffsetFromUTC=None)
    assert "TimezoneOffsetFromUTC" not in heatmap
    assert "TimezoneOffsetFromUTC" not in report


def test_pixels_once_lossy_say_so_after_they_are_rewritten() -> None:
    """A JPEG Baseline film rewritten uncompressed (to black out text) keeps its lossy history
    (PS3.3 C.7.6.1.1.5), even when the source did not state it."""
    picture = gradient(64, 48)
    ok, jpeg = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    ds = dicomgen.base_dataset(dicomgen.CR_STORAGE, uid_seed="lossy")
    ds.Rows, ds.Columns = picture.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    rewritten = pydicom.dcmread(
        pydicom.filebase.DicomBytesIO(redact_pixel_data(dicomgen.to_bytes(ds), None, []))
    )
    assert not rewritten.file_meta.TransferSyntaxUID.is_compressed
    assert (rewritten.LossyImageCompression, rewritten.LossyImageCompressionMethod) == ("01", "ISO_10918_1")
    sent = Deidentifier(b"k" * 32, "shift").dicom(redact_pixel_data(dicomgen.to_bytes(ds), None, []))
    assert sent is not None
    assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(sent)).LossyImageCompression == "01"


def test_a_file_without_an_instance_uid_is_withheld_not_a_crash() -> None:
    ds = _film(dicomgen.CR_STORAGE)
    data = dicomgen.to_bytes(ds)
    del ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    broken = dicomgen.to_bytes(ds)
    assert Deidentifier(b"k" * 32, "shift").dicom(data) is not None
    assert Deidentifier(b"k" * 32, "shift").dicom(broken) is None


@pytest.mark.parametrize(
    ("charsets", "name"),
    [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=홍^길동"),
    ],
)
def test_a_study_in_japanese_or_korean_iso_2022_is_reported(
    tmp_path: Path, charsets: list[str], name: str
) -> None:
    """The standard form of a Japanese or Korean study's character set starts with an empty
    value (ISO 2022 without code extensions for the first): its report and heatmap could not be
    built, retried for ever while the device looked healthy (an outside-style check)."""
    sent = tmp_path / "sent.dcm"
    _, heatmap, report = _built(tmp_path / "a", SpecificCharacterSet=charsets, PatientName=name)
    for ds in (heatmap, report):
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        ds.save_as(sent, enforce_file_format=True)
        assert str(pydicom.dcmread(sent).PatientName) == name


def test_a_sloppy_header_value_is_left_out_not_the_report(tmp_path: Path) -> None:
    """A date written "2026-12-05", a time "9:15", a birth date "14.03.2019" or a sex "FEMALE"
    from a modality made highdicom refuse the report and the heatmap: every result of the study
    stayed out of the PACS (a re-check). Such a value is left empty (the study is found by its
    UID); a sex written out is read as its code; well-formed values are copied as they are."""
    _, heatmap, report = _built(
        tmp_path / "a",
        StudyDate="2026-12-05",
        StudyTime="9:15",
        PatientBirthDate="14.03.2019",
        PatientSex="FEMALE",
        AccessionNumber="ACC-1",
    )
    for ds in (heatmap, report):
        assert not any((ds.StudyDate, ds.StudyTime, ds.PatientBirthDate))  # present, empty (Type 2)
        assert ds.PatientSex == "F"
        assert ds.AccessionNumber == "ACC-1"
    _, _, report = _built(tmp_path / "b", StudyDate="20261205", PatientSex="M")
    assert (report.StudyDate, report.PatientSex) == ("20261205", "M")
