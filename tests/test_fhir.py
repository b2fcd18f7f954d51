"""The hub's read-only FHIR R4 endpoint, on SQLite and on PostgreSQL, with results that real
devices analysed and synced (tests/hubfixtures.py: `world`, plus a DICOM full of identity):
the resources parse back with fhir.resources; search by date, site, finding, patient, status;
stable paging; tokens and sessions scoped by programme and site; revocation; no identifying
value anywhere; an OperationOutcome with its status for every refusal."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.operationoutcome import OperationOutcome

from edge.cli import cli
from edge.hub import fhir_codes, fhir_search, fhir_tokens, reviews
from edge.hub.fhir_search import Search, organization_id
from tests.hubfixtures import (  # noqa: F401 - postgres_url and world are fixtures
    World,
    browser,
    device_results,
    postgres_url,
    reader,
    world_fixture,
)
from tools import dicomgen

PHI = {
    "PatientName": "Zxqwerty^Marguerite",
    "PatientID": "MRN-88771234",
    "PatientBirthDate": "19610203",
    "PatientAddress": "17 Rue Obscure Kinshasa",
    "OtherPatientIDs": "NHIF-55512121",
    "ReferringPhysicianName": "Doctor^Hortensius",
    "InstitutionName": "Saint Qwerty Clinic",
    "AccessionNumber": "ACC77665544",
    "StudyDescription": "Chest for Marguerite follow-up",
}
FHIR_JSON = "application/fhir+json"


@dataclass
class Fhir:
    world: World
    tokens: dict[str, str]  # name -> bearer token
    phi_result: str  # the result of the DICOM that carried PHI
    pseudonym: str

    @property
    def all_results(self) -> list[str]:
        return [*self.world.north.results, *self.world.south.results]

    def client(self, token: str | None = "admin") -> TestClient:
        client = browser(self.world)
        if token is not None:
            client.headers["Authorization"] = f"Bearer {self.tokens[token]}"
        return client


@pytest.fixture(name="fhir", scope="module")
def fhir_fixture(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fhir]:
    from edge.imaging.decode import decode_bytes
    from edge.sync.deid import Deidentifier
    from tests.hubfixtures import review_samples

    folder = tmp_path_factory.mktemp("phi")
    pixels = decode_bytes(review_samples()[6].read_bytes()).pixels
    ds = dicomgen.grey_dicom(
        dicomgen.twelve_bit(pixels),
        bits_stored=12,
        window=(2048, 4096),
        patient_id=PHI["PatientID"],
        patient_name=PHI["PatientName"],
        extra={k: v for k, v in PHI.items() if k not in ("PatientID", "PatientName")},
    )
    ds.StudyDate = "20261015"
    path = folder / "phi.dcm"
    path.write_bytes(dicomgen.to_bytes(ds))
    north = world.north
    [phi_result] = device_results(north.settings, world.hub.client, north.credential, [path])
    north.results.append(phi_result)
    pseudonym = Deidentifier.for_device(north.settings.data_dir / "sync").pseudonym(PHI["PatientID"])
    assert pseudonym is not None
    engine = world.hub.engine
    tokens = {
        "admin": fhir_tokens.create_token(engine, "all", ["*"])[1],
        "north": fhir_tokens.create_token(engine, "his-north", ["north"])[1],
        "south": fhir_tokens.create_token(engine, "his-south", ["south"])[1],
        "north-elsewhere": fhir_tokens.create_token(engine, "north-other-site", ["north"], ["other-site"])[1],
    }
    yield Fhir(world, tokens, phi_result, pseudonym)
    north.results.remove(phi_result)


def resource(reply: Any, status: int = 200) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = reply.json()
    return body


def search(client: TestClient, query: str = "") -> Bundle:
    body = resource(client.get(f"/fhir/DiagnosticReport{'?' + query if query else ''}"))
    bundle = Bundle.model_validate(body)
    assert bundle.type == "searchset"
    return bundle


def matches(bundle: Bundle) -> list[str]:
    return [str(e.resource.id) for e in bundle.entry or () if e.search and e.search.mode == "match"]


def refused(reply: Any, status: int) -> str:
    outcome = OperationOutcome.model_validate(resource(reply, status))
    issue = outcome.issue[0]
    assert issue.severity == "error"
    return f"{issue.code}: {issue.diagnostics}"


# ------------------------------------------------------------------ the resources


def test_every_resource_validates_and_says_what_the_hub_holds(fhir: Fhir) -> None:
    admin = fhir.client()
    bundle = search(admin, "_count=100")
    assert bundle.total == len(fhir.all_results)
    assert sorted(matches(bundle)) == sorted(fhir.all_results)
    # A round trip: the JSON the server sent parses, and serialises back to the same JSON.
    sent = admin.get("/fhir/DiagnosticReport?_count=100").json()
    assert json.loads(Bundle.model_validate(sent).model_dump_json(exclude_none=True)) == sent
    by_id = {(e.resource.get_resource_type(), e.resource.id): e.resource for e in bundle.entry or ()}
    for entry in bundle.entry or ():
        kind, resource_id = entry.resource.get_resource_type(), entry.resource.id
        assert entry.fullUrl == f"http://testserver/fhir/{kind}/{resource_id}"
    report = by_id[("DiagnosticReport", fhir.phi_result)]
    assert isinstance(report, DiagnosticReport)
    assert report.status == "preliminary"
    assert [(c.system, c.code) for c in report.code.coding or ()] == [(fhir_codes.LOINC, "18748-4")]
    assert report.subject is not None
    assert report.subject.reference == f"Patient/{fhir.pseudonym}"
    assert report.performer[0].reference == f"Organization/{organization_id('north', 'north-clinic')}"
    finding = by_id[("Observation", f"{fhir.phi_result}-finding")]
    probability = by_id[("Observation", f"{fhir.phi_result}-probability")]
    label = finding.valueCodeableConcept.text
    assert label in ("normal", "pneumonia")
    snomed = {"normal": "17621005", "pneumonia": "233604007"}[label]
    assert [(c.system, c.code) for c in finding.valueCodeableConcept.coding] == [
        (fhir_codes.SNOMED, snomed),
        (fhir_codes.FINDING, label),
    ]
    assert report.conclusionCode[0].coding[0].code == snomed
    assert 0.0 <= float(probability.valueQuantity.value) <= 1.0
    assert probability.valueQuantity.system == fhir_codes.UCUM
    components = {c.code.coding[0].code: c for c in probability.component or ()}
    assert float(components["cad-threshold"].valueQuantity.value) == pytest.approx(0.4806)
    assert components["cad-operating-point"].valueString == "balanced"
    positive = float(probability.valueQuantity.value) >= 0.4806
    assert probability.interpretation[0].coding[0].code == ("POS" if positive else "NEG")
    assert (label == "pneumonia") == positive
    device = by_id[("Device", finding.device.reference.split("/")[1])]
    assert device.deviceName[0].name == "cxr-pneumonia"
    assert device.identifier[0].system == fhir_codes.MODEL_SHA256
    assert device.identifier[0].value == device.id
    assert len(device.id) == 64
    site = by_id[("Organization", organization_id("north", "north-clinic"))]
    assert site.name == "north-clinic"
    assert site.partOf.display == "north"
    # Each resource also reads on its own, the same as in the bundle.
    for (kind, resource_id), made in by_id.items():
        single = resource(admin.get(f"/fhir/{kind}/{resource_id}"))
        assert single == json.loads(made.model_dump_json(exclude_none=True)), (kind, resource_id)


def test_a_review_makes_the_report_final_then_amended(fhir: Fhir) -> None:
    engine = fhir.world.hub.engine
    target = fhir.world.south.results[0]
    admin = fhir.client()
    before = DiagnosticReport.model_validate(resource(admin.get(f"/fhir/DiagnosticReport/{target}")))
    assert before.status == "preliminary"
    model_label = before.conclusionCode[0].text
    other = {"normal": "pneumonia", "pneumonia": "normal"}[model_label]
    reviews.add_review(engine, target, "agree", finding=model_label, reviewer="south-reader")
    final = DiagnosticReport.model_validate(resource(admin.get(f"/fhir/DiagnosticReport/{target}")))
    assert final.status == "final"
    assert "Specialist review (specialist" in (final.conclusion or "")
    first_review = next(r.reference for r in final.result or () if "review-" in (r.reference or ""))
    observation = resource(admin.get(f"/fhir/{first_review}"))
    assert observation["valueCodeableConcept"]["coding"][0]["code"] == "agree"
    assert observation["performer"] == [{"display": "specialist"}]  # a role, never a reader's name
    reviews.add_review(
        engine, target, "disagree", finding=other, note="clear angles", reviewer="south-reader"
    )
    amended = DiagnosticReport.model_validate(resource(admin.get(f"/fhir/DiagnosticReport/{target}")))
    assert amended.status == "amended"
    assert amended.conclusionCode[0].text == other  # the latest review's finding
    assert "south-reader" not in admin.get(f"/fhir/DiagnosticReport?_id={target}").text
    assert target in matches(search(admin, f"conclusion={other}&status=amended"))
    assert target not in matches(search(admin, f"conclusion={model_label}"))
    assert target not in matches(search(admin, "status=preliminary"))


# ------------------------------------------------------------------ search and paging


def test_search_by_date_site_finding_and_patient(fhir: Fhir) -> None:
    admin = fhir.client()
    today = date.today()
    tomorrow, yesterday = today + timedelta(days=1), today - timedelta(days=1)
    everything = sorted(fhir.all_results)
    assert sorted(matches(search(admin, f"date=ge{yesterday}&date=le{tomorrow}&_count=100"))) == everything
    assert sorted(matches(search(admin, f"date={today:%Y-%m}&_count=100"))) == everything
    assert sorted(matches(search(admin, f"date=ge{today}T00:00:00%2B14:00&_count=100"))) == everything
    assert matches(search(admin, f"date=lt{yesterday}")) == []
    assert matches(search(admin, f"date=gt{tomorrow}")) == []
    north = sorted(fhir.world.north.results)
    assert sorted(matches(search(admin, "site=north-clinic&_count=100"))) == north
    north_org = organization_id("north", "north-clinic")
    assert sorted(matches(search(admin, f"performer=Organization/{north_org}&_count=100"))) == north
    assert matches(search(admin, "performer=Organization/site-0000")) == []
    labels = {}
    for bundle_entry in search(admin, "_count=100").entry or ():
        if bundle_entry.search.mode == "match":
            labels[bundle_entry.resource.id] = bundle_entry.resource.conclusionCode[0].text
    pneumonia = sorted(k for k, v in labels.items() if v == "pneumonia")
    by_snomed = search(admin, f"conclusion={fhir_codes.SNOMED}|233604007&_count=100")
    assert sorted(matches(by_snomed)) == pneumonia
    assert (
        sorted(matches(search(admin, f"conclusion={fhir_codes.FINDING}|pneumonia&_count=100"))) == pneumonia
    )
    either = sorted(matches(search(admin, "conclusion=pneumonia,normal&_count=100")))
    assert either == sorted(k for k, v in labels.items() if v in ("pneumonia", "normal"))
    assert matches(search(admin, "conclusion=http://loinc.org|233604007")) == []
    mine = search(admin, f"patient=Patient/{fhir.pseudonym}")
    assert matches(mine) == [fhir.phi_result]
    assert matches(search(admin, f"subject={fhir.pseudonym}")) == [fhir.phi_result]
    assert matches(search(admin, f"_id={fhir.phi_result}&site=south-clinic")) == []  # both apply


def test_paging_is_stable_and_bounded(fhir: Fhir) -> None:
    from tests.hubfixtures import review_samples

    admin = fhir.client()
    first = Bundle.model_validate(resource(admin.get("/fhir/DiagnosticReport?_count=2")))
    seen = matches(first)
    assert len(seen) == 2
    assert first.total == len(fhir.all_results)
    # A result arriving while a client pages lands at the end: no page shifts, nothing twice.
    south = fhir.world.south
    south.results += device_results(
        south.settings, fhir.world.hub.client, south.credential, [review_samples()[7]]
    )
    url = next((link.url for link in first.link or () if link.relation == "next"), None)
    pages = 1
    while url:
        bundle = Bundle.model_validate(resource(admin.get(url)))
        assert 0 < len(matches(bundle)) <= 2
        seen += matches(bundle)
        url = next((link.url for link in bundle.link or () if link.relation == "next"), None)
        pages += 1
    assert seen[-1] == south.results[-1]
    assert sorted(seen) == sorted(fhir.all_results)
    assert len(seen) == len(set(seen))
    assert pages == -(-len(fhir.all_results) // 2)
    again = Bundle.model_validate(resource(admin.get("/fhir/DiagnosticReport?_count=2&page=0")))
    assert matches(again) == seen[:2]  # the same page twice is the same page
    assert Search.parse([("_count", "100000")]).count == fhir_search.MAX_COUNT
    counted = search(admin, "_count=0")
    assert counted.total == len(fhir.all_results)
    assert not counted.entry


# ------------------------------------------------------------------ who may read what


@pytest.mark.security
def test_no_credential_no_data_and_programmes_stay_apart(fhir: Fhir) -> None:
    anonymous = fhir.client(None)
    metadata = CapabilityStatement.model_validate(resource(anonymous.get("/fhir/metadata")))
    assert metadata.fhirVersion == "4.0.1"  # the statement holds no data: public, as FHIR expects
    target = fhir.world.north.results[0]
    for path in (
        "/fhir/DiagnosticReport",
        f"/fhir/DiagnosticReport/{target}",
        f"/fhir/Patient/{fhir.pseudonym}",
    ):
        reply = anonymous.get(path)
        assert "login" in refused(reply, 401)
        assert reply.headers["www-authenticate"].startswith("Bearer")
        assert "login" in refused(
            anonymous.get(path, headers={"Authorization": "Bearer edgefhir_made-up"}), 401
        )
        assert "login" in refused(anonymous.get(path, headers={"Authorization": "Basic YTpi"}), 401)
    south = fhir.client("south")
    assert sorted(matches(search(south, "_count=100"))) == sorted(fhir.world.south.results)
    assert search(south, "site=north-clinic").total == 0  # another programme's results: none
    bundle = search(fhir.client("north"), "_count=100")
    assert sorted(matches(bundle)) == sorted(fhir.world.north.results)
    ours = {(e.resource.get_resource_type(), e.resource.id) for e in bundle.entry or ()}
    for kind, resource_id in ours:  # none of north's resources reads with south's token...
        if kind == "Device":  # ...but the model, which south's devices run too
            assert resource(south.get(f"/fhir/{kind}/{resource_id}"))["id"] == resource_id
            continue
        assert "not-found" in refused(south.get(f"/fhir/{kind}/{resource_id}"), 404), kind
    south_site = organization_id("south", "south-clinic")
    assert ("Organization", south_site) not in ours
    assert "not-found" in refused(fhir.client("north").get(f"/fhir/Organization/{south_site}"), 404)
    elsewhere = fhir.client("north-elsewhere")  # north, but a site with no results
    assert search(elsewhere).total == 0
    assert refused(elsewhere.get(f"/fhir/DiagnosticReport/{target}"), 404)
    # A reader logged in to the review pages reads with their own programmes (the browser sends
    # the session cookie under /review, so the endpoint is there too).
    south_reader = reader(fhir.world, "south-reader")
    found = Bundle.model_validate(resource(south_reader.get("/review/fhir/DiagnosticReport?_count=100")))
    assert sorted(matches(found)) == sorted(fhir.world.south.results)
    assert refused(south_reader.get(f"/review/fhir/DiagnosticReport/{target}"), 404)
    self_link = next(link.url for link in found.link or () if link.relation == "self")
    assert self_link.startswith("http://testserver/review/fhir/DiagnosticReport")


@pytest.mark.security
def test_a_revoked_token_is_refused_at_once(
    fhir: Fhir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fhir.world.hub.engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("EDGE_HUB__DATABASE_URL", url.replace("postgresql+psycopg://", "postgresql://"))
    run = CliRunner()
    made = run.invoke(
        cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "create", "openmrs", "--programme", "south"]
    )
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert token.startswith(fhir_tokens.PREFIX)
    client = fhir.client(None)
    client.headers["Authorization"] = f"Bearer {token}"
    assert search(client).total == len(fhir.world.south.results)
    again = run.invoke(
        cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "create", "openmrs", "--programme", "x"]
    )
    assert again.exit_code != 0
    assert "already an active token" in again.output
    listed = run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "list", "--json"])
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["openmrs"]["programmes"] == ["south"]
    assert not rows["openmrs"]["revoked"]
    assert rows["openmrs"]["last_used_at"] is not None
    assert token not in listed.output
    with fhir.world.hub.engine.connect() as conn:  # only a hash is stored
        assert token not in repr(conn.exec_driver_sql("SELECT * FROM fhir_tokens").all())
    revoked = run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "revoke", "openmrs"])
    assert revoked.exit_code == 0, revoked.output
    assert "login" in refused(client.get("/fhir/DiagnosticReport"), 401)
    assert (
        run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "revoke", "openmrs"]).exit_code
        != 0
    )


# ------------------------------------------------------------------ nothing identifying


@pytest.mark.security
def test_no_identifying_value_in_any_resource(fhir: Fhir) -> None:
    admin = fhir.client()
    texts = [admin.get("/fhir/DiagnosticReport?_count=100").text]
    for kind, resource_id in (("Patient", fhir.pseudonym), ("DiagnosticReport", fhir.phi_result)):
        texts.append(admin.get(f"/fhir/{kind}/{resource_id}").text)
    everything = "\n".join(texts)
    assert fhir.pseudonym in everything
    for keyword, value in PHI.items():
        for fragment in {value, *value.replace("^", " ").split()}:
            word = re.compile(rf"(?<![A-Za-z]){re.escape(fragment)}(?![A-Za-z])")  # "Clinic", not "Clinical"
            if len(fragment) >= 5:
                assert not word.search(everything), f"{keyword} ({fragment}) is in a FHIR resource"
    # The birth year and the study date as values of their own, not four digits inside a random
    # hex id or a uuid's group (a 1 in 16,000 chance per place that failed CI once).
    for value in ("1961", "20261015"):
        assert not re.search(rf"(?<![0-9A-Za-z-]){value}(?![0-9A-Za-z])", everything), value
    patient = json.loads(texts[1])
    assert set(patient) == {"resourceType", "id", "meta", "identifier", "managingOrganization"}
    assert patient["identifier"][0]["value"] == fhir.pseudonym
    assert patient["meta"]["security"][0]["code"] == "PSEUDED"
    for forbidden in ('"name"', '"birthDate"', '"gender"', '"address"', '"telecom"'):
        assert forbidden not in texts[1]


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("query", "status", "issue"),
    [
        ("colour=red", 400, "not-supported"),
        ("date=yesterday", 400, "invalid"),
        ("date=ge2026-02-30", 400, "invalid"),
        ("date=ap2026-01-01", 400, "invalid"),
        ("date=2026-01,2026-02", 400, "invalid"),
        ("_count=-1", 400, "invalid"),
        ("_count=ten", 400, "invalid"),
        ("page=abc", 400, "invalid"),
        ("status=done", 400, "invalid"),
        ("conclusion:text=pneumonia", 400, "not-supported"),
        ("site=", 400, "invalid"),
        ("performer=Patient/P-1", 400, "invalid"),
        ("_include=DiagnosticReport:specimen", 400, "not-supported"),
        ("_format=xml", 406, "not-supported"),
        # At the calendar's ends: a 500 each (an outside check)
        ("date=9999", 400, "invalid"),
        ("date=9999-12", 400, "invalid"),
        ("date=0001-01-01T00:00%2B23:59", 400, "invalid"),
        ("date=9999-12-31T23:59-23:59", 400, "invalid"),
        # A search costly beyond any reader's need: 400 times `status` held a SQLite hub 44 s
        (
            "&".join(
                f"status={v}"
                for v in ("preliminary", "final", "amended", "final,amended", "preliminary,final")
            ),
            400,
            "too-costly",
        ),
        ("_id=" + ",".join(f"r{i}" for i in range(33)), 400, "too-costly"),
    ],
)
def test_a_bad_parameter_is_an_operation_outcome(fhir: Fhir, query: str, status: int, issue: str) -> None:
    assert refused(fhir.client().get(f"/fhir/DiagnosticReport?{query}"), status).startswith(issue)


def test_a_page_past_any_number_is_an_empty_page(fhir: Fhir) -> None:
    response = fhir.client().get("/fhir/DiagnosticReport?page=9223372036854775808")
    assert response.status_code == 200  # was an OverflowError: 500
    assert not response.json().get("entry")
    again = fhir.client().get("/fhir/DiagnosticReport?" + "&".join(["status=final"] * 400))
    assert again.status_code == 200  # the same condition repeated is the condition once


def test_other_refusals_are_operation_outcomes_too(fhir: Fhir) -> None:
    admin = fhir.client()
    assert refused(admin.post("/fhir/DiagnosticReport", json={}), 405).startswith("not-supported")
    assert refused(admin.delete(f"/fhir/DiagnosticReport/{fhir.phi_result}"), 405)
    assert refused(admin.get("/fhir/ImagingStudy/1"), 404).startswith("not-found")
    assert refused(admin.get("/fhir/DiagnosticReport/no such id"), 400).startswith("invalid")
    assert refused(admin.get("/fhir/DiagnosticReport/0190a2b4-0000-7000-8000-000000000000"), 404)
    assert refused(admin.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}), 406)
    included = search(admin, "_include=DiagnosticReport:result&_include:iterate=Observation:device")
    assert included.total == len(fhir.all_results)  # accepted: everything is included anyway


# ------------------------------------------------------------------ the documented commands


def _documented_commands() -> list[str]:
    text = (Path(__file__).resolve().parent.parent / "docs" / "integration.md").read_text()
    section = text.split("\n## FHIR for health information systems\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def test_the_documented_commands_work(fhir: Fhir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/integration.md's commands, as written: the CLI's in-process, each curl against the
    hub served by uvicorn on a local port."""
    if fhir.world.hub.engine.dialect.name != "sqlite":
        pytest.skip("the commands are the same on PostgreSQL; run once")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    from tests.hubfixtures import LiveHub

    commands = _documented_commands()
    edge = [shlex.split(line) for line in commands if line.startswith("edge ")]
    curls = [line for line in commands if line.startswith("curl ")]
    assert len(edge) >= 2
    assert len(curls) >= 5
    assert " ".join(edge[0][:4]) == "edge hub fhir-token create"
    url = fhir.world.hub.engine.url.render_as_string(hide_password=False)
    monkeypatch.setenv("EDGE_HUB__DATABASE_URL", url)
    run = CliRunner()
    token = ""
    for words in edge:
        done = run.invoke(cli, ["--data-dir", str(tmp_path), *words[1:]])
        assert done.exit_code == 0, (words, done.output)
        if words[3] == "create":
            token = done.stdout.strip().splitlines()[-1]
    assert token.startswith(fhir_tokens.PREFIX)
    with LiveHub(fhir.world.hub.app) as live:
        env = {
            **os.environ,
            "HUB": live.url,
            "TOKEN": token,
            "REPORT": fhir.phi_result,
            "PATIENT": fhir.pseudonym,
        }
        kinds = []
        for line in curls:
            done = subprocess.run(
                ["bash", "-c", line], check=False, env=env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, (line, done.stderr)
            body = json.loads(done.stdout)
            kinds.append(body["resourceType"])
            if body["resourceType"] == "Bundle":
                Bundle.model_validate(body)
        assert kinds[0] == "CapabilityStatement"
        assert {"Bundle", "DiagnosticReport", "Patient"} <= set(kinds)
    revoked = run.invoke(cli, ["--data-dir", str(tmp_path), "hub", "fhir-token", "revoke", "dhis2-north"])
    assert revoked.exit_code == 0, revoked.output
