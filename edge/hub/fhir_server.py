"""The FHIR endpoint's own resources: the CapabilityStatement (what it serves and how to ask),
the searchset Bundle (matches followed by what they reference) and the OperationOutcome of a
refusal. Built with fhir.resources' R4B models, like the results' resources (`fhir`).
"""

from __future__ import annotations

from fhir.resources.R4B.bundle import Bundle, BundleEntry, BundleEntrySearch, BundleLink
from fhir.resources.R4B.capabilitystatement import (
    CapabilityStatement,
    CapabilityStatementImplementation,
    CapabilityStatementRest,
    CapabilityStatementRestResource,
    CapabilityStatementRestResourceInteraction,
    CapabilityStatementRestResourceSearchParam,
    CapabilityStatementRestSecurity,
    CapabilityStatementSoftware,
)
from fhir.resources.R4B.operationoutcome import OperationOutcome, OperationOutcomeIssue

from edge import __version__
from edge.hub import fhir_codes as codes
from edge.hub.fhir import report_resources
from edge.hub.fhir_search import MAX_COUNT, ReportSource

FHIR_VERSION = "4.0.1"  # R4; the R4B models used are R4 for these resources (see `fhir`)
MEDIA_TYPE = "application/fhir+json"
INCLUDES = [
    "DiagnosticReport:performer",
    "DiagnosticReport:result",
    "DiagnosticReport:subject",
    "Observation:device",
]


def searchset(
    base: str,
    sources: list[ReportSource],
    total: int,
    self_url: str,
    next_url: str | None,
) -> Bundle:
    """Matches, each followed by what it references (`search.mode: include`, each resource once)."""
    entries: list[BundleEntry] = []
    seen: set[tuple[str, str]] = set()
    for source in sources:
        for index, resource in enumerate(report_resources(source)):
            key = (resource.get_resource_type(), str(resource.id))
            if key in seen:
                continue
            seen.add(key)
            entries.append(
                BundleEntry(
                    fullUrl=f"{base}/{key[0]}/{key[1]}",
                    resource=resource,
                    search=BundleEntrySearch(mode="match" if index == 0 else "include"),
                )
            )
    links = [BundleLink(relation="self", url=self_url)]
    if next_url:
        links.append(BundleLink(relation="next", url=next_url))
    return Bundle(type="searchset", total=total, link=links, entry=entries or None)


def operation_outcome(issue: str, message: str, severity: str = "error") -> OperationOutcome:
    return OperationOutcome(issue=[OperationOutcomeIssue(severity=severity, code=issue, diagnostics=message)])


_SEARCH_PARAMS = [
    ("_id", "token", "http://hl7.org/fhir/SearchParameter/Resource-id", "the result's uuid"),
    (
        "date",
        "date",
        "http://hl7.org/fhir/SearchParameter/clinical-date",
        "when the hub received the result (UTC; eq ne gt ge lt le sa eb; repeat for a range, e.g. "
        "date=ge2026-03-01&date=lt2026-04-01); device dates may be shifted by de-identification",
    ),
    (
        "performer",
        "reference",
        "http://hl7.org/fhir/SearchParameter/DiagnosticReport-performer",
        "the site: Organization/<id>",
    ),
    ("site", "string", None, "the site's name, exactly as the device was enrolled with (custom parameter)"),
    (
        "conclusion",
        "token",
        "http://hl7.org/fhir/SearchParameter/DiagnosticReport-conclusion",
        f"the finding: {codes.SNOMED}|<code>, {codes.FINDING}|<model label>, or a model label alone; "
        "the latest review's finding once reviewed, else the model's",
    ),
    ("patient", "reference", "http://hl7.org/fhir/SearchParameter/clinical-patient", "Patient/<pseudonym>"),
    (
        "subject",
        "reference",
        "http://hl7.org/fhir/SearchParameter/DiagnosticReport-subject",
        "Patient/<pseudonym>",
    ),
    (
        "status",
        "token",
        "http://hl7.org/fhir/SearchParameter/DiagnosticReport-status",
        "preliminary (not reviewed), final (one review), amended (more)",
    ),
]


def capability_statement(base: str, date: str) -> CapabilityStatement:
    def interactions(*names: str) -> list[CapabilityStatementRestResourceInteraction]:
        return [CapabilityStatementRestResourceInteraction(code=name) for name in names]

    report = CapabilityStatementRestResource(
        type="DiagnosticReport",
        interaction=interactions("read", "search-type"),
        searchInclude=INCLUDES,
        searchParam=[
            CapabilityStatementRestResourceSearchParam(
                name=name, type=kind, definition=definition, documentation=doc
            )
            for name, kind, definition, doc in _SEARCH_PARAMS
        ],
        documentation=(
            "One per CAD result. A search answers a searchset Bundle in which every match is followed "
            "by its Observations, Device (the model), Patient (pseudonym only) and Organization (the "
            "site) as `include` entries, whether or not _include is given. Results in the order the "
            f"hub stored them; _count up to {MAX_COUNT} (default 20); follow the `next` link to page. "
            "Unknown parameters are refused (400)."
        ),
    )
    others = [
        CapabilityStatementRestResource(type=kind, interaction=interactions("read"), documentation=doc)
        for kind, doc in (
            ("Observation", "A report's probability, finding and specialist reviews."),
            ("Device", "A CAD model; its id and identifier are the model file's sha256."),
            ("Patient", "A pseudonym made on the clinic's device; no name, birth date or other identity."),
            ("Organization", "A clinic site, part of a programme."),
        )
    ]
    return CapabilityStatement(
        status="active",
        date=date,
        publisher="edge hub",
        kind="instance",
        software=CapabilityStatementSoftware(name="edge hub", version=__version__),
        implementation=CapabilityStatementImplementation(
            description="edge hub: CAD results, read-only", url=base
        ),
        fhirVersion=FHIR_VERSION,
        format=[MEDIA_TYPE, "json"],
        rest=[
            CapabilityStatementRest(
                mode="server",
                documentation="Read-only; every read is limited to its credential's programmes and sites.",
                security=CapabilityStatementRestSecurity(
                    cors=False,
                    description=(
                        "Authorization: Bearer <token> (a token an administrator made with `edge hub "
                        "fhir-token create`, scoped to programmes and sites), or the session of a reader "
                        "logged in to the review pages (under /review/fhir, where the browser sends it)."
                    ),
                ),
                resource=[report, *others],
            )
        ],
    )
