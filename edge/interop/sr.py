"""A result as DICOM objects for the hospital's PACS, built with highdicom: a Comprehensive SR
holding a TID 1500 Measurement Report, and a secondary capture of the heatmap overlay.

Both go into the source study: the patient and study modules are copied from the source image's
header (these objects stay inside the hospital, so the identifiers are the real ones), in new
series made for this device's model. Every UID and every date is a function of the result, so
building the same result again (a retry after a crash) gives the same instance, which a PACS
stores once.

The report (TID 1500, one TID 1501 measurement group per result):
- finding type: what the model looks for (`finding_label`), as a coded concept;
- qualitative evaluations: Finding (DCM 121071) = the model's decision; Operating point and
  Applicability (private codes, scheme 99EDGE);
- measurements (UCUM "1", no units): the calibrated probability of each label, the decision
  threshold, and the image-quality measures the gate read;
- algorithm identification (TID 4019): model name, version, and as parameters its sha256,
  variant, backend and precision;
- the source image in the image library and as the group's source image.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import config
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ComprehensiveSRStorage, ExplicitVRLittleEndian
from pydicom.valuerep import validate_value

from edge import __version__
from edge.imaging.anatomy import region
from edge.interop.finding_codes import snomed_for
from edge.store import StoredResult

MANUFACTURER = "edge"
PRIVATE_SCHEME = "99EDGE"
SR_SERIES_NUMBER = 9901
HEATMAP_SERIES_NUMBER = 9902

_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
_OPERATING_POINT = hd.sr.CodedConcept("OPERATING-POINT", PRIVATE_SCHEME, "Operating point")
_APPLICABILITY = hd.sr.CodedConcept("APPLICABILITY", PRIVATE_SCHEME, "Applicability")
_APPLICABLE = hd.sr.CodedConcept(
    "APPLICABLE", PRIVATE_SCHEME, "Accepted by the applicability and quality gate"
)
_THRESHOLD = hd.sr.CodedConcept("THRESHOLD", PRIVATE_SCHEME, "Decision threshold")
_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging")


_UID_NAMESPACE = uuid.UUID("5d3c3a4e-7f5b-5c1e-9a62-0e6b1f1d7c21")  # this product's, fixed forever


def derived_uid(*parts: str) -> str:
    """A UID that is a function of `parts`: `2.25.` and a name-based (SHA-1) UUID as an integer
    (PS3.5 B.2). pydicom's `generate_uid(prefix=None)` ignores its entropy sources, so it is
    not used here."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def instance_uid(result_id: str, kind: str) -> str:
    """The SOP Instance UID of a result's `kind` (`sr`, `heatmap`): the same on every retry."""
    return derived_uid("instance", result_id, kind)


def series_uid(study_uid: str, model_name: str, model_version: str, kind: str) -> str:
    """One series per (study, model version, kind): a model's reports of a study sit together."""
    return derived_uid("series", study_uid, model_name, model_version, kind)


def label_code(model: str, label: str) -> hd.sr.CodedConcept:
    """The finding as a code: SNOMED CT where the label has a concept (the table the hub's FHIR
    uses too), else the private scheme with the label as its meaning (LO: 64 characters)."""
    known = snomed_for(model, label)
    if known is not None:
        return hd.sr.CodedConcept(known[0], "SCT", known[1][:64])
    return hd.sr.CodedConcept(label.upper()[:16], PRIVATE_SCHEME, label[:64])


@dataclass(frozen=True)
class Provenance:
    """Who made the object: this device (site, a stable UID for its observer context)."""

    site: str
    device_uid: str

    @classmethod
    def for_site(cls, site: str, device_key: str) -> Provenance:
        return cls(site, derived_uid("device", device_key))


# Type 2 attributes of the patient and study modules that highdicom reads from the source: a
# file without one (common) gets it empty, which is what Type 2 allows.
_REQUIRED_EMPTY_OK = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
# The rest of the patient, general study and patient study modules, copied as the source has them.
_COPIED = (
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDsSequence",
    "PatientBirthTime",
    "PatientComments",
    "EthnicGroup",
    "PatientIdentityRemoved",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "AdmittingDiagnosesDescription",
)


def reference_header(source: Dataset) -> Dataset:
    """The source's header as highdicom is given it: its own, without pixels, with the Type 2
    patient and study attributes present (empty where the source left them out)."""
    header = Dataset()
    for element in source:
        if element.tag.group != 0x7FE0:  # no pixel data: only the header is copied
            header.add(element)
    for keyword in _REQUIRED_EMPTY_OK:
        if keyword not in header:
            setattr(header, keyword, "")
    # Its text read in its own character sets, then held as UTF-8, as the objects are written:
    # the standard form of a Japanese or Korean study's ("\ISO 2022 IR 87", the first value
    # empty) was refused by highdicom, and its results never reached the PACS.
    header.SpecificCharacterSet = source.get("SpecificCharacterSet") or "ISO_IR 6"
    header.decode()
    header.SpecificCharacterSet = "ISO_IR 192"
    _blank_malformed(header)
    return header


_SEXES = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}
_CHECKED_VRS = ("DA", "TM", "DT", "AS", "DS", "IS")
"""Values with a form (dates, times, ages, numbers); names and text are copied as they are."""


def _blank_malformed(header: Dataset) -> None:
    """Empty the patient and study values the objects copy that their value representation
    does not allow ("2026-12-05" for a date, "9:15" for a time, "FEMALE" for a sex): highdicom
    refused to build the report, so a modality's one sloppy field kept every result of the
    study out of the PACS (a re-check). The study is found by its UID; the value stays in the
    source. A sex written out in full is read as its code."""
    for keyword in (*_REQUIRED_EMPTY_OK, *_COPIED):
        if keyword not in header:
            continue
        element = header[keyword]
        if element.value in (None, ""):
            continue
        if keyword == "PatientSex":
            element.value = _SEXES.get(str(element.value).strip().upper(), "")
        elif element.VR in _CHECKED_VRS:
            values = element.value if element.VM > 1 else [element.value]
            try:
                for value in values:
                    validate_value(element.VR, value, config.RAISE)
            except (ValueError, TypeError):
                element.value = ""


def _copy_modules(source: Dataset, target: Dataset) -> None:
    for keyword in _COPIED:
        if keyword in source and keyword not in target:
            setattr(target, keyword, source[keyword].value)


def _created(result: StoredResult) -> dt.datetime:
    """The result's time (UTC), used for every date and time of its objects."""
    return dt.datetime.strptime(result.created_at[:19], "%Y-%m-%dT%H:%M:%S")


def _local(when: dt.datetime, source: Dataset) -> tuple[dt.datetime, str | None]:
    """The result's time (UTC) on the study's clock: at the source's own offset from UTC when it
    states one, else on this device's clock with no offset written. The study's dates and times
    are copied as the source has them, and an offset applies to every date and time of the
    object (PS3.3 C.12.1.1.8): "+0000" beside them would move the study (found by dciodvfy's
    reviewer)."""
    offset = str(source.get("TimezoneOffsetFromUTC") or "").strip()
    match = re.fullmatch(r"([+-])(\d\d)(\d\d)", offset)
    if match and int(match[2]) <= 14 and int(match[3]) < 60:
        sign = 1 if match[1] == "+" else -1
        return when + sign * dt.timedelta(hours=int(match[2]), minutes=int(match[3])), offset
    return when.replace(tzinfo=dt.timezone.utc).astimezone().replace(tzinfo=None), None


def _stamp(ds: Dataset, result: StoredResult, source: Dataset) -> None:
    """Dates and times from the result, not from the clock: a rebuild is byte-identical."""
    when, offset = _local(_created(result), source)
    for prefix in ("Content", "InstanceCreation", "Series"):
        if prefix != "Series" or "SeriesDate" in ds:
            setattr(ds, f"{prefix}Date", when.strftime("%Y%m%d"))
            setattr(ds, f"{prefix}Time", when.strftime("%H%M%S"))
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture = when.strftime("%Y%m%d")
        ds.TimeOfSecondaryCapture = when.strftime("%H%M%S")
    for item in ds.get("ContributingEquipmentSequence", []):  # highdicom names itself, with `now`
        if "ContributionDateTime" in item:
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    if offset is not None:
        ds.TimezoneOffsetFromUTC = offset
    elif "TimezoneOffsetFromUTC" in ds:
        del ds.TimezoneOffsetFromUTC
    # Text written here (the site's name, the model's words) may be outside the source's
    # character set, which the copied names were decoded from: everything is written as UTF-8.
    ds.SpecificCharacterSet = "ISO_IR 192"


def _algorithm(result: StoredResult) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=result.model_name,
        version=result.model_version,
        parameters=[
            f"sha256={result.model_sha256}",
            f"variant={result.variant}",
            f"backend={result.backend}",
            f"precision={result.precision}",
        ],
    )


def _measurements(result: StoredResult) -> list[hd.sr.Measurement]:
    out = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(
                f"P-{label.upper()}"[:16], PRIVATE_SCHEME, f"Calibrated probability of {label}"
            ),
            value=round(float(probability), 6),
            unit=_UNITLESS,
        )
        for label, probability in sorted(result.probabilities.items())
    ]
    out.append(hd.sr.Measurement(name=_THRESHOLD, value=round(float(result.threshold), 6), unit=_UNITLESS))
    for measure, value in sorted((result.quality or {}).items()):
        out.append(
            hd.sr.Measurement(
                name=hd.sr.CodedConcept(
                    f"Q-{measure.upper()}"[:16], PRIVATE_SCHEME, f"Image quality: {measure}"
                ),
                value=round(float(value), 6),
                unit=_UNITLESS,
            )
        )
    return out


def build_sr(
    result: StoredResult,
    source: Dataset,
    provenance: Provenance,
    replaces: Sequence[tuple[str, str, str]] = (),
) -> hd.sr.ComprehensiveSR:
    """The result's structured report, in the source's study (`source`: `reference_header`).
    `replaces`: (SOP Instance UID, model, version) of the reports of earlier results it
    replaces (a re-analysis, a corrected instance), named in its Predecessor Documents
    Sequence: a PACS showed contradicting reports of one image with nothing to tell the
    current one (an outside-style check)."""
    algorithm = _algorithm(result)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=provenance.device_uid,
            name=f"edge {result.model_name}"[:64],
            manufacturer_name=MANUFACTURER,
            model_name=result.model_name,
            physical_location=provenance.site[:64],
        ),
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=instance_uid(result.id, "tracking"), identifier=f"edge result {result.id}"
        ),
        algorithm_id=algorithm,
        measurements=_measurements(result),
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(_FINDING, label_code(result.model_name, result.finding)),
            hd.sr.QualitativeEvaluation(
                _OPERATING_POINT,
                hd.sr.CodedConcept(
                    result.operating_point.upper()[:16], PRIVATE_SCHEME, result.operating_point
                ),
            ),
            hd.sr.QualitativeEvaluation(_APPLICABILITY, _APPLICABLE),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE,
        imaging_measurements=[group],
        referenced_images=[source] if _describable(source) else None,
    )
    sr = hd.sr.ComprehensiveSR(
        evidence=[source],
        content=report,
        series_instance_uid=series_uid(
            source.StudyInstanceUID, result.model_name, result.model_version, "sr"
        ),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=instance_uid(result.id, "sr"),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # a machine's second read, not a signed report
        is_verified=False,
        institution_name=source.get("InstitutionName"),
        previous_versions=[_predecessor(source, *replaced) for replaced in replaces] or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_modules(source, sr)
    # The private scheme named where a reader looks it up (PS3.3 C.12.1.1.2: a designator
    # beginning "99" is private; this says whose it is).
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "edge inference: result and quality concepts"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    sr.SeriesDescription = f"AI result: {result.model_name} {result.model_version}"[:64]
    sr.add_new(0x00181020, "LO", [__version__, result.model_version])  # Software Versions
    _stamp(sr, result, source)
    return sr


def _predecessor(source: Dataset, sop_instance_uid: str, model: str, version: str) -> Dataset:
    """An earlier report of this study as highdicom names a predecessor: its UIDs."""
    earlier = Dataset()
    earlier.StudyInstanceUID = source.StudyInstanceUID
    earlier.SeriesInstanceUID = series_uid(source.StudyInstanceUID, model, version, "sr")
    earlier.SOPClassUID = ComprehensiveSRStorage
    earlier.SOPInstanceUID = sop_instance_uid
    return earlier


def build_heatmap(result: StoredResult, source: Dataset, overlay_rgb: np.ndarray) -> hd.sc.SCImage:
    """The heatmap overlay (the image blended with its evidence map, RGB uint8) as a secondary
    capture in the source's study. Its pixels are not the source's geometry (the overlay is at
    most `[explain] max_side` on its longest side), so no pixel spacing is claimed."""
    pixels = np.ascontiguousarray(overlay_rgb, dtype=np.uint8)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid(
            source.StudyInstanceUID, result.model_name, result.model_version, "heatmap"
        ),
        series_number=HEATMAP_SERIES_NUMBER,
        sop_instance_uid=instance_uid(result.id, "heatmap"),
        instance_number=int(source.get("InstanceNumber") or 1),
        manufacturer=MANUFACTURER,
        patient_orientation=_orientation(source),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    _copy_modules(source, sc)
    if "PatientOrientation" not in source:  # Type 2C: unknown is empty, not a guess
        sc.add_new(0x00200020, "CS", None)  # Patient Orientation, empty
    sc.SeriesDescription = f"AI heatmap: {result.model_name} {result.model_version}"[:64]
    sc.add_new(0x00080008, "CS", ["DERIVED", "SECONDARY"])  # Image Type
    # The overlay is the source's picture blended with the map: it carries whatever text the
    # source's pixels do, and says so unless the source said it has none.
    source_flag = str(source.get("BurnedInAnnotation") or "").strip().upper()
    sc.BurnedInAnnotation = "NO" if source_flag == "NO" else "YES"
    _laterality(source, sc)
    sc.ImageComments = (
        f"{result.model_name} {result.model_version}: {result.finding}, "
        f"P({result.finding_label})={result.probability:.3f}, threshold {result.threshold:.3f} "
        f"({result.operating_point}). Not for diagnosis on its own."
    )[:10240]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    sc.DerivationDescription = "Class activation map of the model's output, blended over the image"
    sc.add_new(0x00181020, "LO", [__version__, result.model_version])  # Software Versions
    _stamp(sc, result, source)
    return sc


def _laterality(source: Dataset, sc: Dataset) -> None:
    """Which side the picture shows, and of what, as the source says: for a paired organ (a
    breast) a heatmap without it cannot be told from the other side's. Laterality (General
    Series, Type 2C) from the source's, else from its Image Laterality when that names one side;
    present and empty (unknown) for a paired part that neither names, absent otherwise."""
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    for keyword in ("Laterality", "ImageLaterality"):
        side = str(source.get(keyword) or "").strip().upper()
        if side in ("R", "L"):
            sc.Laterality = side
            return
    part = region(source.get("BodyPartExamined"))
    if part is not None and part.paired:
        sc.add_new(0x00200060, "CS", None)  # Laterality, unknown


def _describable(source: Dataset) -> bool:
    """Whether the image library can describe the source (TID 1601 descriptors need, for a
    radiograph, its orientation and imager pixel spacing; many CR files carry neither). Without
    them the library is left out and the source is still named as the group's source image."""
    try:
        hd.sr.ImageLibraryEntryDescriptors(source)
    except (AttributeError, ValueError, TypeError, IndexError):
        return False
    return True


def _orientation(source: Dataset) -> tuple[str, str]:
    found = source.get("PatientOrientation")
    if found and len(found) == 2 and all(found):
        return (str(found[0]), str(found[1]))
    return ("L", "F")  # highdicom asks for one; emptied again when the source has none
