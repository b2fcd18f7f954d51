"""The code systems and codes of the hub's FHIR resources, in one place (no HTTP, no FHIR models).

Well-known codes only where one means what the model's label means; every coded finding also
carries the model's own label, in the `FINDING` system and as the concept's text, so nothing is
lost when no standard code fits (a breast lesion the model calls "benign" has none here).

- LOINC 18748-4 "Diagnostic imaging study": the report's code.
- HL7 v2-0074 RAD "Radiology": the report's category; observation-category "imaging".
- SNOMED CT 404684003 "Clinical finding": the code of the finding Observation.
- SNOMED CT findings: `edge/interop/finding_codes.py`, the one table the DICOM SR uses too.
- v3-ObservationInterpretation POS / NEG: the probability against the site threshold.
- v3-ObservationValue PSEUDED: the security label of every resource about a patient
  (pseudonymised data); the Device, the model, has none.

The hub's own systems are URNs under `urn:edge-clinic:` (identifiers, not addresses).
"""

from __future__ import annotations

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
SECURITY = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
UUID_IDENTIFIER = "urn:ietf:rfc:3986"

# The hub's own systems.
NAMESPACE = "urn:edge-clinic"
FINDING = f"{NAMESPACE}:finding"  # a model's own label (code = the label)
OBSERVATION = f"{NAMESPACE}:observation"  # what each Observation (or component) holds
VERDICT = f"{NAMESPACE}:verdict"  # agree | disagree | uncertain
PATIENT_PSEUDONYM = f"{NAMESPACE}:patient-pseudonym"  # the device's keyed pseudonym
SITE = f"{NAMESPACE}:site"
PROGRAMME = f"{NAMESPACE}:programme"
MODEL_SHA256 = f"{NAMESPACE}:model-sha256"

REPORT_CODE = (LOINC, "18748-4", "Diagnostic imaging study")
REPORT_CATEGORY = (V2_0074, "RAD", "Radiology")
FINDING_CODE = (SNOMED, "404684003", "Clinical finding")
PSEUDONYMISED = (SECURITY, "PSEUDED", "pseudonymized")

OBSERVATION_CODES = {
    "cad-finding": "CAD finding",
    "cad-probability": "CAD calibrated probability",
    "cad-threshold": "CAD decision threshold",
    "cad-operating-point": "CAD operating point",
    "class-probability": "calibrated probability of one class",
    "specialist-review": "Specialist review of the CAD result",
    "reviewed-finding": "Specialist's finding",
}
VERDICTS = {"agree": "agrees with the CAD finding", "disagree": "disagrees", "uncertain": "uncertain"}
