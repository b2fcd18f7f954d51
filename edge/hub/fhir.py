"""Synced results as FHIR R4 resources, built with fhir.resources' models (validated as they are
made), and the endpoint's own resources (CapabilityStatement, Bundle, OperationOutcome).

fhir.resources ships R5 and R4B models; R4B (4.3.0) is R4 (4.0.1) for every resource used
here (DiagnosticReport, Observation, Device, Patient, Organization, Bundle, CapabilityStatement,
OperationOutcome), and only R4 elements are filled in, so the JSON is R4: the server says
`fhirVersion: 4.0.1`.

One result becomes:
- a `DiagnosticReport` (id: the result's uuid): status `preliminary` until a specialist reviewed
  it, `final` after one review, `amended` after more; `conclusionCode` the latest review's finding
  once reviewed, else the model's; `effectiveDateTime` and `issued` when the hub received it;
- an `Observation` "<uuid>-probability": the calibrated probability of the model's positive label
  (valueQuantity, UCUM "1"), with the threshold, the operating point and each class's probability
  as components;
- an `Observation` "<uuid>-finding": the coded finding (SNOMED CT where a code fits, the model's
  label always), interpreted POS/NEG against the threshold;
- an `Observation` "review-<review id>" per specialist review (verdict, finding, note, role);
- the model as a `Device` (id: its sha256), the site as an `Organization`, and the `Patient` by
  the device's keyed pseudonym alone.

Nothing is copied from the payload by iterating over it: each field used is named here (the
payload is de-identified on the device; this list is the hub's second gate, as for the pages).
"""

from __future__ import annotations

import re
from typing import Any

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.device import Device, DeviceDeviceName, DeviceVersion
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.meta import Meta
from fhir.resources.R4B.observation import Observation, ObservationComponent
from fhir.resources.R4B.organization import Organization
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from edge.hub import fhir_codes as codes
from edge.hub.fhir_search import FHIR_ID, ReportSource, organization_id
from edge.interop.finding_codes import snomed_for

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _coding(system: str, code: str, display: str | None = None) -> Coding:
    return Coding(system=system, code=code, display=display)


def _concept(entry: tuple[str, str, str], text: str | None = None) -> CodeableConcept:
    return CodeableConcept(coding=[_coding(*entry)], text=text)


def _own(code: str, text: str | None = None) -> CodeableConcept:
    display = codes.OBSERVATION_CODES[code]
    return CodeableConcept(coding=[_coding(codes.OBSERVATION, code, display)], text=text or display)


def finding_concept(model: str | None, label: str) -> CodeableConcept:
    """A finding: its SNOMED CT code where one fits, the model's own label always (as text too)."""
    coding = [_coding(codes.FINDING, label, label)]
    snomed = snomed_for(model, label)
    if snomed is not None:
        coding.insert(0, _coding(codes.SNOMED, *snomed))
    return CodeableConcept(coding=coding, text=label)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _probability(value: float) -> Quantity:
    return Quantity(value=round(value, 5), unit="probability", system=codes.UCUM, code="1")


def _text(value: Any) -> str | None:
    return (
        str(value)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and value != ""
        else None
    )


def _secured(last_updated: str | None = None) -> Meta:
    return Meta(security=[_coding(*codes.PSEUDONYMISED)], lastUpdated=last_updated)


# ------------------------------------------------------------------ one result


def patient_id(source: ReportSource) -> str | None:
    pseudonym = _text(source.part("study").get("patient"))
    return pseudonym if pseudonym and FHIR_ID.match(pseudonym) else None


def device_id(source: ReportSource) -> str | None:
    sha = _text(source.part("result").get("model_sha256"))
    return sha if sha and _SHA256.match(sha) else None


def site_organization(programme: str, site: str) -> Organization:
    return Organization(
        id=organization_id(programme, site),
        meta=_secured(),
        identifier=[Identifier(system=codes.SITE, value=site)] if site else None,
        active=True,
        name=site or f"unnamed site of programme {programme}",
        partOf=Reference(identifier=Identifier(system=codes.PROGRAMME, value=programme), display=programme),
    )


def model_device(source: ReportSource) -> Device | None:
    sha = device_id(source)
    if sha is None:
        return None
    result = source.part("result")
    name, version = _text(result.get("model")), _text(result.get("version"))
    return Device(
        id=sha,
        identifier=[Identifier(system=codes.MODEL_SHA256, value=sha)],
        status="active",
        deviceName=[DeviceDeviceName(name=name, type="model-name")] if name else None,
        version=[DeviceVersion(value=version)] if version else None,
        type=CodeableConcept(text="computer-aided detection model"),
    )


def patient(source: ReportSource) -> Patient | None:
    """The patient by the device's keyed pseudonym, and nothing else about them."""
    pseudonym = patient_id(source)
    if pseudonym is None:
        return None
    site = Reference(reference=f"Organization/{organization_id(source.programme, source.site)}")
    return Patient(
        id=pseudonym,
        meta=_secured(),
        identifier=[Identifier(system=codes.PATIENT_PSEUDONYM, value=pseudonym, assigner=site)],
        managingOrganization=site,
    )


def _interpretation(positive: bool) -> list[CodeableConcept]:
    code, display = ("POS", "Positive") if positive else ("NEG", "Negative")
    return [_concept((codes.INTERPRETATION, code, display))]


def _common(source: ReportSource) -> dict[str, Any]:
    """What every Observation of a result shares."""
    pseudonym = patient_id(source)
    return {
        "meta": _secured(),
        "category": [_concept((codes.OBSERVATION_CATEGORY, "imaging", "Imaging"))],
        "subject": Reference(reference=f"Patient/{pseudonym}") if pseudonym else None,
        "issued": source.received_at,
    }


def observations(source: ReportSource) -> list[Observation]:
    """The model's probability and finding, then one Observation per review (oldest first)."""
    result = source.part("result")
    model = _text(result.get("model"))
    probability, threshold = _number(result.get("probability")), _number(result.get("threshold"))
    finding, positive_label = _text(result.get("finding")), _text(result.get("positive_label"))
    created = _text(result.get("created"))
    sha = device_id(source)
    common = _common(source)
    if created and _DATE_TIME.match(created):  # the device's clock, under its date policy
        common["effectiveDateTime"] = created
    device = Reference(reference=f"Device/{sha}") if sha else None
    positive = finding is not None and finding == positive_label
    made: list[Observation] = []
    if probability is not None:
        components = []
        if threshold is not None:
            components.append(
                ObservationComponent(code=_own("cad-threshold"), valueQuantity=_probability(threshold))
            )
        operating_point = _text(result.get("operating_point"))
        if operating_point:
            components.append(
                ObservationComponent(code=_own("cad-operating-point"), valueString=operating_point)
            )
        by_label = result.get("probabilities")
        for label, value in by_label.items() if isinstance(by_label, dict) else ():
            if _number(value) is not None:
                concept = CodeableConcept(
                    coding=[
                        _coding(codes.FINDING, str(label), str(label)),
                        _coding(codes.OBSERVATION, "class-probability"),
                    ],
                    text=f"P({label})",
                )
                components.append(
                    ObservationComponent(code=concept, valueQuantity=_probability(float(value)))
                )
        made.append(
            Observation(
                id=f"{source.uuid}-probability",
                status="final",
                code=_own(
                    "cad-probability", f"calibrated probability of {positive_label or 'the positive label'}"
                ),
                valueQuantity=_probability(probability),
                interpretation=_interpretation(threshold is not None and probability >= threshold),
                device=device,
                component=components or None,
                **common,
            )
        )
    if finding is not None:
        method = " ".join(str(v) for v in (model, _text(result.get("version"))) if v)
        made.append(
            Observation(
                id=f"{source.uuid}-finding",
                status="final",
                code=CodeableConcept(
                    coding=[
                        _coding(*codes.FINDING_CODE),
                        _coding(codes.OBSERVATION, "cad-finding", "CAD finding"),
                    ],
                    text="computer-aided detection finding",
                ),
                valueCodeableConcept=finding_concept(model, finding),
                interpretation=_interpretation(positive),
                method=CodeableConcept(text=f"computer-aided detection: {method}") if method else None,
                device=device,
                derivedFrom=[Reference(reference=f"Observation/{made[0].id}")] if made else None,
                **common,
            )
        )
    for review in source.reviews:
        components = []
        if review.finding:
            components.append(
                ObservationComponent(
                    code=_own("reviewed-finding"), valueCodeableConcept=finding_concept(model, review.finding)
                )
            )
        made.append(
            Observation(
                id=f"review-{review.id}",
                status="final",
                code=_own("specialist-review"),
                valueCodeableConcept=CodeableConcept(
                    coding=[_coding(codes.VERDICT, review.verdict, codes.VERDICTS.get(review.verdict))],
                    text=review.verdict,
                ),
                performer=[Reference(display=review.reviewer_role or "specialist")],
                note=[Annotation(text=review.note)] if review.note else None,
                derivedFrom=[Reference(reference=f"Observation/{source.uuid}-finding")] if finding else None,
                component=components or None,
                **{**common, "issued": review.reviewed_at, "effectiveDateTime": review.reviewed_at},
            )
        )
    return made


def report_status(source: ReportSource) -> str:
    return "preliminary" if not source.reviews else "final" if len(source.reviews) == 1 else "amended"


def _conclusion(source: ReportSource) -> str:
    result = source.part("result")
    model = " ".join(str(v) for v in (_text(result.get("model")), _text(result.get("version"))) if v)
    probability, threshold = _number(result.get("probability")), _number(result.get("threshold"))
    parts = [f"CAD ({model or 'model'}): {_text(result.get('finding')) or 'no finding'}"]
    if probability is not None:
        label = _text(result.get("positive_label")) or "positive"
        detail = f"P({label}) = {probability:.4g}"
        if threshold is not None:
            detail += f", threshold {threshold:.4g}"
        operating_point = _text(result.get("operating_point"))
        if operating_point:
            detail += f" ({operating_point})"
        parts[0] += f" [{detail}]"
    if source.reviews:
        latest = source.reviews[-1]
        who = f"{latest.reviewer_role or 'specialist'}, {latest.reviewed_at[:10]}"
        said = f"Specialist review ({who}): {latest.verdict}"
        parts.append(said + (f", finding {latest.finding}" if latest.finding else ""))
    else:
        parts.append("Not yet reviewed by a specialist")
    return ". ".join(parts) + "."


def concluded(source: ReportSource) -> str | None:
    """The latest review's finding once reviewed (None when it gave none), else the model's."""
    if source.reviews:
        return source.reviews[-1].finding or None
    return _text(source.part("result").get("finding"))


def diagnostic_report(source: ReportSource, results: list[Observation]) -> DiagnosticReport:
    model = _text(source.part("result").get("model"))
    finding = concluded(source)
    pseudonym = patient_id(source)
    updated = max([source.received_at, *(review.reviewed_at for review in source.reviews)])
    return DiagnosticReport(
        id=source.uuid,
        meta=_secured(updated),
        identifier=[Identifier(system=codes.UUID_IDENTIFIER, value=f"urn:uuid:{source.uuid}")],
        status=report_status(source),
        category=[_concept(codes.REPORT_CATEGORY)],
        code=_concept(codes.REPORT_CODE, f"computer-aided detection report ({model or 'model'})"),
        subject=Reference(reference=f"Patient/{pseudonym}") if pseudonym else None,
        effectiveDateTime=source.received_at,
        issued=source.received_at,
        performer=[
            Reference(
                reference=f"Organization/{organization_id(source.programme, source.site)}",
                display=source.site or None,
            )
        ],
        result=[Reference(reference=f"Observation/{observation.id}") for observation in results] or None,
        conclusion=_conclusion(source),
        conclusionCode=[finding_concept(model, finding)] if finding else None,
    )


def report_resources(source: ReportSource) -> list[Resource]:
    """The report first, then its Observations, Device, Patient and Organization."""
    made = observations(source)
    resources: list[Resource] = [diagnostic_report(source, made), *made]
    for extra in (model_device(source), patient(source), site_organization(source.programme, source.site)):
        if extra is not None:
            resources.append(extra)
    return resources
