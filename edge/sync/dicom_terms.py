"""The values DICOM defines for the coded attributes that may leave the device, so that a code
field carries a code and nothing else: a surname typed into Body Part Examined ("HOLLOWAY" has
the shape of a code string) is not one of them and stays behind.

Where a maintained library holds the list it is read from there: modalities from pydicom's
context groups (CID 29 Acquisition Modality and CID 33 Modality), character sets from pydicom's
codec table. The rest are the Defined and Enumerated Terms of DICOM PS3.3 (sections named beside
each) and, for Body Part Examined, PS3.16 Table L-1 (the same list highdicom 0.28 ships as
`_standard/anatomic_regions.json`; tests/test_deid_markers.py compares the two where it can). A
value outside its list is dropped, never rewritten: the device keeps the original for its own
checks. Pure data.
"""

from __future__ import annotations

import re

from pydicom.charset import python_encoding
from pydicom.sr.codedict import codes


def _context_group(*groups: object) -> frozenset[str]:
    return frozenset(code.value for group in groups for code in group.concepts.values())  # type: ignore[attr-defined]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


MODALITIES = _context_group(codes.cid29, codes.cid33)

# PS3.16 Table L-1: Body Part Examined's Defined Terms.
BODY_PARTS = _words(
    """
    3RDVENTRICLE 4THVENTRICLE ABDOMEN ABDOMENPELVIS ABDOMINALAORTA ACA ACJOINT ADRENAL AMNIOTICFLUID
    ANKLE ANTCARDIACV ANTCOMMA ANTECUBITALV ANTSPINALA ANTTIBIALA ANUSRECTUMSIGMD AORTA AORTICARCH
    APPENDIX ARTERY ASCAORTA ASCENDINGCOLON AXILLA AXILLARYA AXILLARYV AZYGOSVEIN BACK BASILARA
    BILEDUCT BILIARYTRACT BLADDER BLADDERURETHRA BRACHIALA BRACHIALV BRAIN BREAST BRONCHUS BULB
    BUTTOCK CALCANEUS CALF CARDIOVASCSYS CAROTID CCA CELIACA CEPHALICV CEREBELLUM CEREBHEMISPHERE
    CEREBRALA CERVIX CFA CFV CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CHOROIDPLEXUS CIRCLEOFWILLIS
    CLAVICLE COCCYX COLON COMILIACA COMILIACV COMMONBILEDUCT CORNEA CORONARYARTERY CORONARYSINUS
    CSPINE CTSPINE CULDESAC DESCAORTA DESCENDINGCOLON DUODENUM EAC EAR ECA ELBOW ENDOARTERIAL
    ENDOCARDIAC ENDOESOPHAGEAL ENDOMETRIUM ENDONASAL ENDONASOPHARYNYX ENDORECTAL ENDORENAL
    ENDOURETERIC ENDOURETHRAL ENDOVAGINAL ENDOVASCULAR ENDOVENOUS ENDOVESICAL EPIDIDYMIS EPIGASTRIC
    ESOPHAGUS EXTILIACA EXTILIACV EXTJUGV EXTREMITY EYE EYELID FACE FACIALA FEMORALA FEMORALV FEMUR
    FIBULA FINGER FLANK FONTANEL FOOT FOREARM GALLBLADDER GASTRICV GENICULARA GESTSAC GLUTEAL GSV
    HAND HEAD HEADNECK HEART HEPATICA HEPATICV HIP HUMERUS HYPOGASTRIC HYPOPHARYNX IAC ICA ILEUM
    ILIACA ILIACV ILIUM INFMESA INFVENACAVA INGUINAL INNOMINATEA INNOMINATEV INTILIACA INTJUGULARV
    INTMAMMARYA INTRACRANIAL JAW JEJUNUM JOINT KIDNEY KNEE LACRIMALA LARGEINTESTINE LARYNX LATRIUM
    LATVENTRICLE LFEMORALA LHEPATICV LHYPOCHONDRIAC LINGUALA LINGUINAL LIVER LLQ LLUMBAR LOWERLEG
    LOWERLIMB LOWERTRUNK LPORTALV LPULMONARYA LSPINE LSSPINE LSUPPULMONARYV LUMBAR LUMBARA LUMEN
    LUNG LUQ LVENTRICLE MANDIBLE MASTOID MAXILLA MCA MEDIASTINUM MESENTRICA MESENTRICV MIDHEPATICV
    MORISONSPOUCH MOUTH NASOPHARYNX NECK NECKCHEST NECKCHESTABDOMEN NECKCHESTABDPELV NOSE OCCIPTALV
    OCCPITALA OPHTHALMICA OPTICCANAL ORBIT OVARY PANCBILEDUCT PANCREAS PANCREATICDUCT PARASTERNAL
    PARATHYROID PAROTID PATELLA PCA PELVIS PELVISLOWEXTREMT PENILEA PENIS PERINEUM PERONEALA PHANTOM
    PHARYNX PHARYNXLARYNX PLACENTA POPLITEALA POPLITEALFOSSA POPLITEALV PORTALV POSCOMMA POSTIBIALA
    PROFFEMA PROFFEMV PROSTATE PULMONARYA PULMONARYV RADIALA RADIUS RADIUSULNA RATRIUM RECTUM RENALA
    RENALV RETROPERITONEUM RFEMORALA RHEPATICV RHYPOCHONDRIAC RIB RINGUINAL RLQ RLUMBAR RPORTALV
    RPULMONARYA RSUPPULMONARYV RUQ RVENTRICLE SAPHENOUSV SCALP SCAPULA SCJOINT SCLERA SCROTUM SELLA
    SEMVESICLE SESAMOID SFA SFJ SFV SHOULDER SIGMOID SIJOINT SKULL SMA SMALLINTESTINE SPINALCORD
    SPINE SPLEEN SPLENICA SPLENICV SSPINE STERNUM STOMACH SUBCLAVIANA SUBCLAVIANV SUBCOSTAL
    SUBMANDIBULAR SUPRACLAVICULAR SUPRAPUBIC SUPTHYROIDA SVC TESTIS THALAMUS THIGH THORACICAORTA
    THORAX THUMB THYMUS THYROID TIBIA TIBIAFIBULA TLSPINE TMJ TOE TONGUE TRACHEA TRACHEABRONCHUS
    TRANSVERSECOLON TRUNK TSPINE ULNA ULNARA UMBILICAL UMBILICALA UMBILICALV UPPERARM UPPERLIMB
    UPPERTRUNK UPRURINARYTRACT URETER URETHRA UTERUS VAGINA VEIN VERTEBRALA VULVA WHOLEBODY WRIST
    ZYGOMA
    """
)

# DX positioning (PS3.3 C.8.11.5.1.1), then the mammography views devices also write there.
VIEW_POSITIONS = _words("AP PA LL RL RLD LLD RLO LLO") | _words("CC FB LM LMO ML MLO SIO XCCL XCCM")

# The Defined or Enumerated Terms of PS3.3 for each coded attribute the allow-list keeps
# (`deid_dicom.ALLOWED`); a test holds that none is kept without one. Image Type has its own rule.
TERMS: dict[str, frozenset[str]] = {
    "Modality": MODALITIES,
    "BodyPartExamined": BODY_PARTS,
    "ViewPosition": VIEW_POSITIONS,
    "PhotometricInterpretation": _words(
        "MONOCHROME1 MONOCHROME2 RGB YBR_FULL YBR_FULL_422 YBR_PARTIAL_422 YBR_PARTIAL_420 YBR_ICT "
        "YBR_RCT XYB HSV ARGB CMYK"
    )
    | {"PALETTE COLOR"},
    "ColorSpace": _words("SRGB ADOBERGB ROMMRGB"),
    "LossyImageCompression": _words("00 01"),
    "LossyImageCompressionMethod": _words(
        "ISO_10918_1 ISO_14495_1 ISO_15444_1 ISO_15444_15 ISO_18181_1 ISO_13818_2 ISO_14496_10 ISO_23008_2"
    ),
    "PixelIntensityRelationship": _words("LIN LOG DISP"),
    "BurnedInAnnotation": _words("YES NO"),
    "RecognizableVisualFeatures": _words("YES NO"),
    "PixelSpacingCalibrationType": _words("GEOMETRY FIDUCIAL"),
    "DetectorType": _words("DIRECT SCINTILLATOR STORAGE FILM"),  # C.8.11.4
    "PositionerType": _words("CARM COLUMN MAMMOGRAPHIC PANORAMIC CEPHALOSTAT RIGID NONE"),  # C.8.11.5
    "PatientPosition": _words("HFP HFS HFDR HFDL FFDR FFDL FFP FFS LFP LFS RFP RFS AFDR AFDL PFDR PFDL"),
    "VOILUTFunction": _words("LINEAR LINEAR_EXACT SIGMOID"),
    "PresentationLUTShape": _words("IDENTITY INVERSE"),
    "PresentationIntentType": frozenset({"FOR PRESENTATION", "FOR PROCESSING"}),
    "Laterality": _words("R L"),
    "ImageLaterality": _words("R L U B"),
    "ConversionType": _words("DV DI DF WSD SD SI DRW SYN"),
    "SpecificCharacterSet": frozenset(term for term in python_encoding if term),
    "PatientSex": _words("M F O"),
}

# Patient Orientation: each value a direction of the patient (A P R L H F), up to three combined.
ORIENTATION = re.compile(r"[APRLHF]{1,3}")


def defined(keyword: str, value: str) -> bool:
    """Whether `value` is one the standard defines for `keyword` (as written, trailing spaces
    aside: DICOM's code strings are upper case). False for a keyword with no list here."""
    text = value.strip()
    if keyword == "PatientOrientation":
        return ORIENTATION.fullmatch(text) is not None
    terms = TERMS.get(keyword)
    return terms is not None and text in terms
