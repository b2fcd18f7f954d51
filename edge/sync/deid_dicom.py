"""Full DICOM files for the hub: DICOM PS3.15 Annex E as an allow-list, not a deny-list.

A deny-list (delete what the profile names) lets through whatever it does not name: names inside
sequences, attributes added to the standard since, private tags under an unknown creator, curves.
Here a new file is built that holds only what a reader needs (`ALLOWED`: the pixel module, image
geometry and spacing, modality, body part, view, windowing and LUTs, the multi-frame functional
groups that carry them) plus the keyed pseudonym, and nothing else, at every level of nesting.

The profile's own table (PS3.15 Table E.1-1) comes from `dicom-anonymizer` (KitwareMedical), whose
tables are generated from the published standard, one per edition, and kept up to date with it.
It is used, not its engine (which applies the table's actions as a deny-list): it says which of
the kept attributes the profile acts on, and so how each is handled here (UIDs remapped; dates
under the Retain Longitudinal Temporal Information option; age and sex under Retain Patient
Characteristics), and a test places a marker in every attribute it lists. pydicom's `deid`
(hand-written recipes, pulls in matplotlib) and `dicognito` (replaces values with
plausible fakes, its own list) were the alternatives.

Rules that hold whatever the allow-list says: no text VR is kept (LO, SH, ST, LT, UT, UC, PN,
AE...: free text is dropped, not scrubbed); a kept element whose VR is not its dictionary's, or
whose value does not match its VR, is dropped (a name can hide in a "CS" read from an explicit-VR
file); UN is never kept; the file meta is written anew (no station AE title, no source
implementation name).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache

import numpy as np
from pydicom import uid
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from edge.imaging.anatomy import Region, region
from edge.sync.dicom_terms import defined

# The edition of PS3.15 whose Table E.1-1 applies (dicom-anonymizer's name for it).
PROFILE_EDITION = "dicomfields_2026c"

# What a reader needs, by module. Every keyword is a standard attribute with a non-text VR.
PIXEL = (
    "SamplesPerPixel PhotometricInterpretation Rows Columns BitsAllocated BitsStored HighBit "
    "PixelRepresentation PlanarConfiguration PixelAspectRatio SmallestImagePixelValue "
    "LargestImagePixelValue PixelPaddingValue PixelPaddingRangeLimit "
    "RedPaletteColorLookupTableDescriptor GreenPaletteColorLookupTableDescriptor "
    "BluePaletteColorLookupTableDescriptor RedPaletteColorLookupTableData "
    "GreenPaletteColorLookupTableData BluePaletteColorLookupTableData ColorSpace "
    "PixelData FloatPixelData DoubleFloatPixelData "
    "NumberOfFrames FrameIncrementPointer FrameTime FrameTimeVector CineRate "
    "RecommendedDisplayFrameRate ActualFrameDuration LossyImageCompression "
    "LossyImageCompressionRatio LossyImageCompressionMethod PixelIntensityRelationship "
    "PixelIntensityRelationshipSign BurnedInAnnotation RecognizableVisualFeatures"
)
GEOMETRY = (
    "PixelSpacing ImagerPixelSpacing NominalScannedPixelSpacing PixelSpacingCalibrationType "
    "EstimatedRadiographicMagnificationFactor DistanceSourceToDetector DistanceSourceToPatient "
    "SliceThickness SpacingBetweenSlices SliceLocation ImagePositionPatient ImageOrientationPatient "
    "PatientOrientation PatientPosition FrameOfReferenceUID "
    "SharedFunctionalGroupsSequence PerFrameFunctionalGroupsSequence PixelMeasuresSequence "
    "PlanePositionSequence PlaneOrientationSequence FrameContentSequence FrameAcquisitionNumber "
    "InStackPositionNumber FrameAcquisitionDuration FrameAcquisitionDateTime FrameReferenceDateTime "
    # Ultrasound calibration: a reader measures on the image with these.
    "SequenceOfUltrasoundRegions RegionSpatialFormat RegionDataType RegionFlags "
    "RegionLocationMinX0 RegionLocationMinY0 RegionLocationMaxX1 RegionLocationMaxY1 "
    "ReferencePixelX0 ReferencePixelY0 PhysicalUnitsXDirection PhysicalUnitsYDirection "
    "ReferencePixelPhysicalValueX ReferencePixelPhysicalValueY PhysicalDeltaX PhysicalDeltaY"
)
DISPLAY = (
    "WindowCenter WindowWidth VOILUTFunction RescaleIntercept RescaleSlope PresentationLUTShape "
    "PresentationIntentType ModalityLUTSequence VOILUTSequence LUTDescriptor LUTData "
    "FrameVOILUTSequence PixelValueTransformationSequence"
)
STUDY = (
    "SpecificCharacterSet SOPClassUID SOPInstanceUID StudyInstanceUID SeriesInstanceUID Modality "
    "BodyPartExamined ViewPosition Laterality ImageLaterality ImageType ConversionType "
    "DetectorType PositionerType "
    "SeriesNumber InstanceNumber AcquisitionNumber "
    # Retain Patient Characteristics: age and sex, which the reader needs and the result payload
    # carries. Size and weight are not kept: no model or review page uses them, and exact height
    # and weight single a patient out in a small clinic's list.
    "PatientAge PatientSex "
    # Retain Longitudinal Temporal Information: under the date policy (kept, shifted, removed);
    # times only under "keep".
    "StudyDate SeriesDate AcquisitionDate ContentDate StudyTime SeriesTime AcquisitionTime "
    "ContentTime AcquisitionDateTime"
)

# Private attributes a reader needs, by private creator -> element offsets (0x00-0xFF): none yet.
# An entry must name one vendor's block that holds no identity (PS3.15's Retain Safe Private).
PRIVATE_ALLOWED: dict[str, frozenset[int]] = {}

# The picture itself, once, at the top: pixel data inside a sequence (a second picture, never
# read for burned-in text) is not sent. An ICC profile is not on the list at all: a binary blob
# with text tags of its own, and a reader's screen shows the picture without it.
TOP_LEVEL_ONLY = frozenset(
    int(tag_for_keyword(keyword) or 0)
    for keyword in [
        "PixelData",
        "FloatPixelData",
        "DoubleFloatPixelData",
        "RedPaletteColorLookupTableData",
        "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
    ]
)
# A palette is read only for PALETTE COLOR pixels: on any other picture its tables are bytes no
# reader shows, where text could ride. (An Extended Offset Table is not on the list at all: the
# pixel data sent is rewritten, and a reader finds its frames without one.)
PALETTE = tuple(
    f"{colour}PaletteColorLookupTable{part}"
    for colour in ("Red", "Green", "Blue")
    for part in ("Descriptor", "Data")
)
# A modality or VOI LUT maps stored values to display values: a curve, monotone. Bytes that are
# not one (text placed in the table) are not a LUT a reader needs.
LUT_DATA = int(tag_for_keyword("LUTData") or 0)

TEXT_VRS = frozenset({"AE", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
DATE_VRS = frozenset({"DA", "DT", "TM"})
# Values of these VRs are strings a name could be smuggled in: each must look like its VR. A
# code string (CS) must be more: one of the terms the standard defines for it (`dicom_terms`),
# as a surname has a code string's shape.
_SHAPES = {
    "DS": re.compile(r"[0-9+\-.eE ]{0,32}"),  # a float set in code may print longer than 16
    "IS": re.compile(r"[0-9+\- ]{0,12}"),
    "AS": re.compile(r"[0-9]{3}[DWMY]"),
    "UI": re.compile(r"[0-9.]{0,64}"),
}


def _tags(keywords: Iterable[str]) -> dict[int, str]:
    found = {}
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise ValueError(f"{keyword} is not a DICOM keyword")  # a typo in the list above
        found[int(tag)] = keyword
    return found


ALLOWED: dict[int, str] = _tags(" ".join((PIXEL, GEOMETRY, DISPLAY, STUDY)).split())


@cache
def profile_table() -> dict[str, list[tuple[int, ...]]]:
    """PS3.15 Table E.1-1 by action (D, Z, X, U and their combinations), from dicom-anonymizer.
    An entry is (group, element) or (group, element, group mask, element mask) for repeating
    groups (curves 50xx, overlays 60xx)."""
    from dicomanonymizer.dicomfields_selector import (  # type: ignore[import-untyped]
        dicom_anonymization_database_selector,
    )

    table = dicom_anonymization_database_selector(PROFILE_EDITION)
    return {action: list(tags) for action, tags in table.items() if action != "ALL_TAGS"}


@cache
def profile_tags() -> frozenset[int]:
    """Every exact tag the basic profile acts on (repeating-group entries are masks: see
    `in_profile`)."""
    return frozenset((t[0] << 16) | t[1] for tags in profile_table().values() for t in tags if len(t) == 2)


@cache
def _profile_masks() -> tuple[tuple[int, int, int, int], ...]:
    return tuple((t[0], t[1], t[2], t[3]) for tags in profile_table().values() for t in tags if len(t) == 4)


def in_profile(tag: int) -> bool:
    group, element = tag >> 16, tag & 0xFFFF
    if tag in profile_tags():
        return True
    return any(group & gm == g and element & em == e for g, e, gm, em in _profile_masks())


@cache
def remapped_uids() -> frozenset[int]:
    """The UID attributes the profile replaces (action U): remapped through the keyed hash."""
    return frozenset((t[0] << 16) | t[1] for t in profile_table()["U_TAGS"] if len(t) == 2)


@dataclass(frozen=True)
class Policy:
    """What the device's `Deidentifier` decides for values: UIDs, dates, the date policy."""

    uid: Callable[[str], str]
    date: Callable[[str | None], str | None]
    dates: str  # keep | shift | remove


def _values(element: DataElement) -> list[str]:
    value = element.value
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return ["" if item is None else str(item) for item in items]


def _image_type(element: DataElement) -> DataElement | None:
    """Image Type's first two values, which the standard defines (ORIGINAL or DERIVED, PRIMARY
    or SECONDARY); its third and later are each IOD's or vendor's own words, which a reader does
    not need and a short name in capitals would pass for (an audit placed one there)."""
    values = _values(element)[:2]
    allowed = ({"ORIGINAL", "DERIVED"}, {"PRIMARY", "SECONDARY"})
    kept = [value for value, terms in zip(values, allowed, strict=False) if value in terms]
    if len(kept) != len(values) or not kept:
        return None
    return DataElement(element.tag, "CS", kept if len(kept) > 1 else kept[0])


def _monotone(element: DataElement) -> bool:
    """Whether LUT data is a curve: its entries (16-bit, as every LUT's are stored here; 8-bit
    tables are widened on reading) never fall, or never rise (an inverting LUT)."""
    value = element.value
    if isinstance(value, bytes | bytearray):
        entries = np.frombuffer(bytes(value)[: len(value) // 2 * 2], dtype="<u2").astype(np.int64)
    else:
        listed = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
        entries = np.asarray(listed, np.int64)
    if len(entries) < 2:
        return True
    steps = np.diff(entries)
    return bool((steps >= 0).all() or (steps <= 0).all())


def _vr_fits(tag: int, vr: str) -> bool:
    return vr in dictionary_VR(tag).split(" or ")


class Walker:
    """Copies the allow-listed part of a dataset, item by item through every sequence."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.depth = 0  # 0: the dataset itself; 1 and more: items of its sequences

    def copy(self, source: Dataset) -> Dataset:
        out = Dataset()
        # By tag first: an element off the list is never even parsed (a malformed value there
        # cannot stop the file), and one on it that pydicom cannot read as its VR is not sent.
        for tag in [t for t in source.keys() if int(t) in ALLOWED]:  # noqa: SIM118 - tags, not elements
            try:
                kept = self._element(source[tag])
            except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
                kept = None
            if kept is not None:
                out.add(kept)
        self._private(source, out)
        return out

    def _element(self, element: DataElement) -> DataElement | None:
        tag = int(element.tag)
        keyword = ALLOWED.get(tag)
        if keyword is None or element.VR == "UN" or element.VR in TEXT_VRS or not _vr_fits(tag, element.VR):
            return None
        if tag in TOP_LEVEL_ONLY and self.depth > 0:
            return None
        if element.VR == "SQ":
            self.depth += 1
            try:
                return DataElement(tag, "SQ", Sequence([self.copy(item) for item in element.value]))
            finally:
                self.depth -= 1
        if tag == LUT_DATA and not _monotone(element):
            return None
        if element.VR in DATE_VRS:
            return self._date(element)
        if element.VR == "UI":
            return self._uid(element)
        if keyword == "ImageType":
            return _image_type(element)
        if element.VR == "CS":  # a code: one the standard defines for it, or nothing
            return element if all(not v.strip() or defined(keyword, v) for v in _values(element)) else None
        shape = _SHAPES.get(element.VR)
        if shape is not None and not all(shape.fullmatch(v) for v in _values(element)):
            return None
        return element

    def _uid(self, element: DataElement) -> DataElement | None:
        values = _values(element)
        if not all(_SHAPES["UI"].fullmatch(v) for v in values):
            return None
        if int(element.tag) in remapped_uids():
            mapped = [self.policy.uid(v) if v else "" for v in values]
            return DataElement(element.tag, "UI", mapped if len(mapped) > 1 else mapped[0])
        # Not one the profile replaces (SOP Class): it must be a UID the standard defines.
        return element if all(v in UID_dictionary for v in values) else None

    def _date(self, element: DataElement) -> DataElement | None:
        dates = self.policy.dates
        if dates == "remove":
            return None
        values = _values(element)
        if element.VR == "TM":
            if dates == "shift":
                # A time to the second picks one patient out of a device's studies whatever the
                # date says: under modified dates, times go (a DT keeps its shifted date only).
                return None
            ok = all(re.fullmatch(r"[0-9]{0,6}(\.[0-9]{1,6})?", v.strip()) for v in values)
            return element if ok else None
        shaped = []
        for value in values:
            text = value.strip()
            if text and not re.fullmatch(r"[0-9]{8}([0-9.]{0,13})?([+-][0-9]{4})?", text):
                return None  # partial dates (a year alone) and anything else that is not a date
            if dates == "keep" or not text:
                shaped.append(text)
                continue
            day = self.policy.date(text[:8])
            if day is None:
                return None
            shaped.append(day[:8])
        return DataElement(element.tag, element.VR, shaped if len(shaped) > 1 else shaped[0])

    @staticmethod
    def _private(source: Dataset, out: Dataset) -> None:
        """Private attributes only under an allow-listed creator and offset (`PRIVATE_ALLOWED`)."""
        if not PRIVATE_ALLOWED:
            return
        for tag in list(source.keys()):
            if not tag.is_private or tag.element < 0x1000:
                continue
            creator_tag = Tag(tag.group, tag.element >> 8)
            creator = source.get(creator_tag)
            if creator is None or (tag.element & 0xFF) not in PRIVATE_ALLOWED.get(str(creator.value), ()):
                continue
            out.add(DataElement(creator_tag, "LO", creator.value))
            out.add(source[tag])


def _transfer_syntax(source: Dataset) -> str:
    """The source's transfer syntax; "" when it is not one the standard defines."""
    meta = getattr(source, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax:
        return syntax if syntax in UID_dictionary else ""
    # A dataset written without its file meta (ingest reads those, with force): the encoding
    # pydicom found, unless the pixels are encapsulated (then which codec is unknown).
    if "PixelData" in source and source["PixelData"].is_undefined_length:
        return ""
    implicit, little = source.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


def deidentify(source: Dataset, policy: Policy, pseudonym: str | None) -> Dataset | None:
    """The dataset to send; None when its transfer syntax is not one the standard defines (a
    private encoding could carry anything, and this code cannot rewrite what it cannot read)."""
    syntax = _transfer_syntax(source)
    if not syntax:
        return None
    out = Walker(policy).copy(source)
    out.PatientID = pseudonym or ""
    out.PatientName = pseudonym or ""
    # Type 2 attributes of the patient and study modules: present and empty, as the profile's
    # Z action leaves them, so the file stays valid for a PACS on the hub's side.
    for keyword in ("PatientBirthDate", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(out, keyword, "")
    _empty_if_absent(out, "StudyDate", "StudyTime")
    _required_of_its_iod(out)
    if str(out.get("PhotometricInterpretation", "")).strip() != "PALETTE COLOR":
        for keyword in PALETTE:
            if keyword in out:
                delattr(out, keyword)
    _mark(out, policy.dates)
    if not UID(syntax).is_compressed:
        try:
            _native_pixels(out, big_endian=syntax == ExplicitVRBigEndian)
        except (AttributeError, KeyError, ValueError, TypeError):
            return None  # a pixel module too broken to size its frames: not sent as it is
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = UID(syntax)
    if "SOPClassUID" in out:
        out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    if "SOPInstanceUID" in out:
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    return out


# The digital X-ray family (DX, mammography, intra-oral; for presentation and for processing),
# whose modules ask for more than the others' (PS3.3 A.26-A.28).
DX_FAMILY = frozenset(
    {
        uid.DigitalXRayImageStorageForPresentation,
        uid.DigitalXRayImageStorageForProcessing,
        uid.DigitalMammographyXRayImageStorageForPresentation,
        uid.DigitalMammographyXRayImageStorageForProcessing,
        uid.DigitalIntraOralXRayImageStorageForPresentation,
        uid.DigitalIntraOralXRayImageStorageForProcessing,
    }
)
# Written by this code, never the source's text: what a required attribute says when the
# allow-list could not carry the source's value (PS3.15 E.1: a dummy value for Type 1).
REMOVED = "removed by de-identification"


def _empty_if_absent(out: Dataset, *keywords: str) -> None:
    """Type 2 attributes the source left out: present and empty, which Type 2 allows."""
    for keyword in keywords:
        if keyword not in out:
            setattr(out, keyword, None)


def _required_of_its_iod(out: Dataset) -> None:
    """What the object's IOD requires and the allow-list cannot carry (text, coded sequences
    whose meanings are text), written so that the file stays valid for a PACS on the hub's side
    (as found by dciodvfy): Type 2 present and empty, Type 1 with a value that says nothing of
    the source. The source's own text never comes back."""
    # General Equipment, Series and Image (every image IOD); CR Series.
    _empty_if_absent(out, "Manufacturer", "SeriesNumber", "InstanceNumber")
    if "ImageOrientationPatient" not in out:
        _empty_if_absent(out, "PatientOrientation")  # Type 2C: unknown
    sop_class = str(out.get("SOPClassUID", ""))
    if sop_class == uid.ComputedRadiographyImageStorage:
        _empty_if_absent(out, "ViewPosition")
    if "RescaleIntercept" in out and str(out.get("Modality", "")) not in ("CT", "PT"):
        # Rescale Type (LO, dropped as text) is Type 1C beside a rescale, and Type 1 with the
        # Enumerated Value US in DX: "US" is "unspecified", true of any value the source held.
        out.RescaleType = "US"
    if "PixelSpacingCalibrationType" in out:  # its description (LO, Type 1C) was dropped
        out.PixelSpacingCalibrationDescription = REMOVED
    if sop_class in DX_FAMILY:
        _empty_if_absent(out, "DetectorType", "PositionerType")
        out.AcquisitionContextSequence = Sequence([])  # Type 2; its items hold text
        # Type 2, and known when Body Part Examined is: its code from the standard's table
        # (PS3.16 Table L-1), never the source's sequence (whose meanings are text).
        out.AnatomicRegionSequence = Sequence(_coded(region(out.get("BodyPartExamined"))))


def _coded(known: Region | None) -> list[Dataset]:
    if known is None:
        return []
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = known.code, known.scheme, known.meaning
    return [item]


def _native_pixels(out: Dataset, *, big_endian: bool) -> None:
    """Uncompressed pixel data carries the image and nothing else: bytes past the frames' end
    are cut, and bits above High Bit (where retired embedded overlays kept their graphics and
    text) are cleared; the decoded image is unchanged, since every reader masks them."""
    if "PixelData" not in out or out["PixelData"].is_undefined_length:
        return
    from pydicom.pixels.utils import get_expected_length

    data = bytes(out.PixelData)
    expected = get_expected_length(out, "bytes")
    if len(data) > expected + (expected % 2):
        data = data[:expected] + b"\0" * (expected % 2)
    allocated, stored = int(out.get("BitsAllocated", 0)), int(out.get("BitsStored", 0))
    if "HighBit" in out and int(out.HighBit) != stored - 1:
        # Readers disagree on which bits hold the value (pydicom takes the lowest Bits Stored,
        # the standard counts down from High Bit): the picture the text check read may not be
        # the one a viewer shows, so the file is not sent as it is.
        raise ValueError(f"High Bit {out.HighBit} with {stored} bits stored")
    if allocated in (16, 32) and 0 < stored < allocated:
        words = np.frombuffer(
            data[: len(data) - len(data) % (allocated // 8)], f"{'>' if big_endian else '<'}u{allocated // 8}"
        )
        data = (words & ((1 << stored) - 1)).astype(words.dtype).tobytes() + data[words.nbytes :]
    out.PixelData = data


def _mark(out: Dataset, dates: str) -> None:
    """PS3.15 E.1.1: say that and how the dataset was de-identified (CID 7050 codes)."""
    options = [codes.DCM.BasicApplicationConfidentialityProfile, codes.DCM.RetainPatientCharacteristicsOption]
    if dates == "shift":
        options.append(codes.DCM.RetainLongitudinalTemporalInformationModifiedDatesOption)
    elif dates == "keep":
        options.append(codes.DCM.RetainLongitudinalTemporalInformationFullDatesOption)
    items = []
    for code in options:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = (
            code.value,
            code.scheme_designator,
            code.meaning,
        )
        items.append(item)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = f"edge allow-list, PS3.15 basic profile, dates {dates}"
    out.DeidentificationMethodCodeSequence = Sequence(items)
    out.LongitudinalTemporalInformationModified = {"shift": "MODIFIED", "remove": "REMOVED"}.get(
        dates, "UNMODIFIED"
    )


def kept_in_profile() -> dict[str, str]:
    """Allow-listed attributes that the profile's table acts on, with how they are handled:
    the ones a reviewer of this list must check against the profile's options."""
    handled = {}
    for tag, keyword in ALLOWED.items():
        if not in_profile(tag):
            continue
        vr = dictionary_VR(tag)
        if tag in remapped_uids():
            handled[keyword] = "UID remapped"
        elif vr in DATE_VRS:
            handled[keyword] = "date policy"
        elif keyword in ("PatientAge", "PatientSex"):
            handled[keyword] = "patient characteristic"
        else:
            handled[keyword] = "KEPT"
    return handled
