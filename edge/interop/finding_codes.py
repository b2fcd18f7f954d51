"""The SNOMED CT concept each shipped model's label names: one table for every way a result
leaves the device or the hub (the DICOM SR for the PACS, the hub's FHIR resources), so a PACS and
an EHR reading the same result see the same code.

Codes only where one means what the label means; a label without one (us-breast's "benign",
which covers cysts as well as benign tumours, so no neoplasm concept fits) is carried by its
text alone, in each format's own way. Pure data: no DICOM or FHIR library here.

- 233604007 "Pneumonia": cxr-pneumonia's pneumonia (bacterial or viral).
- 840539006 "Disease caused by severe acute respiratory syndrome coronavirus 2": us-lung's covid.
- 254837009 "Malignant neoplasm of breast": us-breast's malignant.
- 17621005 "Normal": cxr-pneumonia's normal, and us-lung's regular (the A-line pattern of a
  normal lung).
"""

from __future__ import annotations

# (model, or None for any model, label) -> (SNOMED CT code, display)
_FINDINGS: dict[tuple[str | None, str], tuple[str, str]] = {
    (None, "pneumonia"): ("233604007", "Pneumonia"),
    (None, "covid"): ("840539006", "Disease caused by severe acute respiratory syndrome coronavirus 2"),
    ("us-breast", "malignant"): ("254837009", "Malignant neoplasm of breast"),
    ("cxr-pneumonia", "normal"): ("17621005", "Normal"),
    ("us-lung", "regular"): ("17621005", "Normal"),
}


def snomed_for(model: str | None, label: str) -> tuple[str, str] | None:
    """The SNOMED CT (code, display) for a model's label, or None where no code fits."""
    key = label.lower()
    return _FINDINGS.get((model, key)) or _FINDINGS.get((None, key))


def labels_for_snomed(code: str) -> list[tuple[str | None, str]]:
    """Every (model or None, label) a SNOMED CT code stands for (for a search by code)."""
    return [key for key, (snomed, _) in _FINDINGS.items() if snomed == code]
