"""The hub's per-site agreement with the specialists and signed site profiles: figures on
synthetic reviewed results (SQLite and PostgreSQL), the admin page, publish -> device pull ->
verified -> installed and active, a tampered profile and a downgrade refused, rollback."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
from click.testing import CliRunner
from sqlalchemy import insert

from edge.config import Settings, load_settings
from edge.errors import Code, EdgeError
from edge.hub import agreement, agreement_figures, db, legacy_json, reviews, site_profiles
from edge.hub.errors import HubError
from edge.inference import metrics
from edge.inference.site_profile import PointFigures
from edge.store import Store
from edge.sync import profiles, protocol, signatures
from edge.sync.protocol import WireCode
from tests.hubfixtures import REVIEW_PASSWORD, Hub, database_url, login, postgres_url, reset  # noqa: F401 - a fixture
from tests.tinymodel import make_model_dir

SITE = "north-clinic"
PROGRAMME = "default"
T0 = 1.0  # the tiny model's shipped temperature (its manifest's default)


@pytest.fixture(params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Hub]:
    models = tmp_path / "models"
    make_model_dir(models)
    settings = load_settings(data_dir=tmp_path / "hub-host", models={"dir": models})
    url = database_url(request, tmp_path)
    running = Hub(settings, url)
    reset(running.engine)
    yield running
    running.client.close()


@pytest.fixture
def key(tmp_path: Path) -> tuple[str, Any]:
    from tools.publish_model import keygen

    public = keygen(tmp_path / "publisher.key")
    return public, signatures.load_private_key(tmp_path / "publisher.key")


def device_settings(hub: Hub, tmp_path: Path, public: str, name: str = "dev") -> Settings:
    return load_settings(
        data_dir=tmp_path / name,
        site=SITE,
        models={"dir": hub.settings.models.dir},
        sync={"public_key": public},
    )


def synthetic_cases(per_class: int, seed: int = 1) -> list[tuple[str, float]]:
    """(specialist's label, P(finding) as the device reported it): normals shifted upwards, as
    at a new site, so the shipped 0.5 flags too many of them."""
    rng = np.random.default_rng(seed)
    out = []
    for label, centre in (("normal", 0.6), ("finding", 2.5)):
        for z in rng.normal(centre, 1.0, per_class):
            out.append((label, float(round(1 / (1 + np.exp(-z)), 5))))
    return out


def add_reviewed(
    hub: Hub,
    device_id: str,
    cases: list[tuple[str, float]],
    uncertain: int = 2,
    version: str = "0.0.1",
    first_seq: int = 1,
) -> None:
    """Results as the device synced them, each reviewed: agree when the model was right,
    disagree naming the right finding otherwise; `uncertain` more reviewed "uncertain"."""
    rows = [*cases, *[("?", 0.5)] * uncertain]
    for seq, (label, p) in enumerate(rows, start=first_seq):
        result_uuid = str(uuid.uuid4())
        finding = "finding" if p >= 0.5 else "normal"
        payload = {
            "result": {
                "model": "tiny",
                "version": version,
                "finding": finding,
                "positive_label": "finding",
                "probability": p,
                "probabilities": {"normal": round(1 - p, 5), "finding": p},
                "threshold": 0.5,
                "operating_point": "balanced",
            },
            "site": SITE,
        }
        stored_result(hub, device_id, result_uuid, seq, payload)
        if label == "?":
            reviews.add_review(hub.engine, result_uuid, "uncertain", reviewer="dr")
        elif label == finding:
            reviews.add_review(hub.engine, result_uuid, "agree", reviewer="dr")
        else:
            reviews.add_review(hub.engine, result_uuid, "disagree", finding=label, reviewer="dr")


def stored_result(hub: Hub, device_id: str, result_uuid: str, seq: int, payload: dict[str, Any]) -> None:
    """A result record as intake stores one a device synced."""
    with hub.engine.begin() as conn:
        conn.execute(
            insert(db.records).values(
                device_id=device_id,
                uuid=result_uuid,
                seq=seq,
                kind="result",
                sha256=protocol.payload_hash(payload),
                payload=payload,
                received_at=db.now(),
            )
        )


def enrolled(hub: Hub, settings: Settings) -> tuple[str, Any]:
    credential = hub.enroll(settings)
    return credential.device_id, credential


def signed(release: protocol.ProfileRelease, private: Any) -> protocol.ProfileRelease:
    return release.model_copy(update={"signature": signatures.sign(release.model_dump(), private)})


# ------------------------------------------------------------------ the figures


def test_agreement_figures_on_synthetic_reviews(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    cases = synthetic_cases(40)
    add_reviewed(hub, device_id, cases)
    [figures] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    assert (figures["programme"], figures["site"], figures["model"], figures["model_version"]) == (
        PROGRAMME,
        SITE,
        "tiny",
        "0.0.1",
    )
    assert figures["cases"] == 80
    assert figures["unlabelled"] == 2
    assert figures["cases_per_class"] == {"finding": 40, "normal": 40}
    truth = np.array([label == "finding" for label, _ in cases])
    score = np.array([p for _, p in cases])
    model_positive = score >= 0.5
    labels = figures["labels"]  # sorted: finding, normal
    matrix = figures["confusion"]["matrix"]
    assert matrix[labels.index("normal")][labels.index("finding")] == int((~truth & model_positive).sum())
    assert matrix[labels.index("finding")][labels.index("finding")] == int((truth & model_positive).sum())
    assert sum(map(sum, matrix)) == 80
    assert figures["auc"] == round(metrics.roc_auc(truth, score), 4)
    low, high = figures["auc_ci95"]
    assert low <= figures["auc"] <= high
    # Seeded, and the cache (by content) gives what a fresh computation gives.
    assert agreement_figures.site_figures(hub.engine, hub.settings.models.dir) == [figures]
    [group] = agreement.reviewed_cases(hub.engine, hub.settings.models.dir).values()
    manifest = agreement.shipped_manifest(hub.engine, hub.settings.models.dir, "tiny", "0.0.1")
    assert agreement.figures(group, manifest) == figures
    agreement_figures.site_figures(hub.engine, hub.settings.models.dir)[0]["cases"] = -1  # the caller's copy
    assert agreement_figures.site_figures(hub.engine, hub.settings.models.dir)[0]["cases"] == 80
    suggestion = figures["suggestion"]
    assert figures["refusal"] is None
    assert suggestion["shipped_temperature"] == T0
    assert suggestion["temperature"] > 0
    points = suggestion["operating_points"]
    assert points["screening"]["threshold"] <= points["balanced"]["threshold"]
    assert points["screening"]["sensitivity"] >= 0.99
    # The shifted normals: the site's balanced point moves up and gains specificity.
    assert suggestion["after"]["balanced"]["specificity"] > suggestion["before"]["balanced"]["specificity"]
    # ... and read on cases it was not chosen on, it still reads more of them right.
    cross_validated = suggestion["after"]["balanced (cross-validated)"]
    assert cross_validated["accuracy"] > suggestion["before"]["balanced"]["accuracy"]
    gain = suggestion["gains"]["balanced"]  # paired, as the device's calibrate prints it
    assert 0.0 < gain["ci95"][0] <= gain["youden_j"] <= gain["ci95"][1]
    lo, hi = points["balanced"]["specificity_ci95"]
    assert lo <= points["balanced"]["specificity"] <= hi
    # A new review is new content: figured again, not served from the cache.
    add_reviewed(hub, device_id, synthetic_cases(1, seed=7), uncertain=0, first_seq=500)
    [grown] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    assert (grown["cases"], grown["cases_per_class"]) == (82, {"finding": 41, "normal": 41})


def publish_manifest(hub: Hub, version: str, temperature: float, weights: str | None = None) -> None:
    """A release of the tiny model as this hub would hold it: another version, its temperature,
    the same weights unless `weights` (a sha256) says otherwise."""
    from edge.inference.registry import Registry

    manifest = Registry(hub.settings.models.dir).get("tiny").manifest
    output = manifest.output.model_copy(update={"temperature": temperature})
    variants = {
        name: spec.model_copy(update={"sha256": weights or spec.sha256})
        for name, spec in manifest.variants.items()
    }
    text = tomli_w.dumps(
        manifest.model_copy(update={"version": version, "output": output, "variants": variants}).model_dump(
            mode="json", exclude_none=True
        )
    )
    with hub.engine.begin() as conn:
        conn.execute(
            insert(db.releases).values(
                name="tiny", version=version, release={"manifest": text}, created_at=db.now()
            )
        )


def test_versions_with_the_same_weights_are_pooled_each_read_at_its_temperature(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """A re-release (same weights, another temperature) does not start the site's count again:
    its cases and the earlier version's are one group, under the newest version, each case's
    logits recovered with the temperature that made it. Other weights stand apart."""
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    cases = synthetic_cases(20)
    add_reviewed(hub, device_id, cases, uncertain=1)  # 0.0.1 at T0 = 1, from the models folder
    publish_manifest(hub, "0.0.10", 2.0)
    # The same films as 0.0.10 reported them: the same logits, at twice the temperature.
    again = [(label, round(1 / (1 + (1 / p - 1) ** 0.5), 5)) for label, p in cases]
    add_reviewed(hub, device_id, again, uncertain=1, version="0.0.10", first_seq=100)
    publish_manifest(hub, "0.0.9", 1.0, weights="0" * 64)
    add_reviewed(hub, device_id, cases[:5], uncertain=0, version="0.0.9", first_seq=200)
    groups = agreement.reviewed_cases(hub.engine, hub.settings.models.dir)
    assert [(k.version, g.versions, len(g.cases)) for k, g in groups.items()] == [
        ("0.0.9", ["0.0.9"], 5),
        ("0.0.10", ["0.0.1", "0.0.10"], 80),  # 1.10 after 1.9: by number, not by text
    ]
    pooled = groups[next(k for k in groups if k.version == "0.0.10")]
    assert pooled.unlabelled == 2
    labels = ["normal", "finding"]
    logits = agreement.case_logits(pooled.cases, pooled, labels, 2.0)
    difference = logits[:, 1] - logits[:, 0]
    first = [c.version == "0.0.1" for c in pooled.cases]
    np.testing.assert_allclose(
        sorted(difference[np.array(first)]), sorted(difference[~np.array(first)]), atol=2e-3
    )
    every = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    [figures] = [f for f in every if f["cases"] == 80]
    assert (figures["model_version"], figures["model_versions"]) == ("0.0.10", ["0.0.1", "0.0.10"])
    assert figures["suggestion"]["shipped_temperature"] == 2.0
    # Its AUC ranks every case on one scale: the twins' AUC is the films' own.
    truth = np.array([label == "finding" for label, _ in cases])
    own = metrics.roc_auc(truth, np.array([p for _, p in cases]))
    mixed = metrics.roc_auc(np.concatenate([truth, truth]), np.array([p for _, p in cases + again]))
    assert abs(figures["auc"] - own) < 1e-3 < abs(mixed - own)
    draft = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", "0.0.1")
    assert draft.model_version == "0.0.10"
    assert "(versions 0.0.1, 0.0.10: the same weights)" in draft.profile


def test_too_few_cases_per_class_gives_no_suggestion(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(29))
    [figures] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    assert figures["suggestion"] is None
    assert "at least 30" in figures["refusal"]
    with pytest.raises(HubError) as refused:
        site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny")
    assert refused.value.code is WireCode.TOO_FEW_CASES


def test_a_draft_states_every_figure_of_a_point_or_is_refused() -> None:
    """The profile's before/after figures are the schema's (accuracy, sensitivity, specificity;
    the page's threshold is not one of them); one that could not be computed refuses the draft."""
    figures = site_profiles._figures(
        {"auc": 0.9, "balanced": {"threshold": 0.5, "accuracy": 0.8, "sensitivity": 0.7, "specificity": 0.9}}
    )
    assert figures["balanced"] == PointFigures(accuracy=0.8, sensitivity=0.7, specificity=0.9)
    with pytest.raises(HubError) as refused:
        site_profiles._figures({"balanced": {"accuracy": 0.8, "sensitivity": None, "specificity": 0.9}})
    assert refused.value.code is WireCode.TOO_FEW_CASES
    assert "sensitivity" in str(refused.value)


def test_an_odd_result_is_left_out_of_the_figures(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    """The scan reads each field of a result from the database; a result whose fields are not
    what a device sends (an older or broken one) is left out, never the page's failure."""
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    good = {"model": "tiny", "version": "0.0.1", "finding": "finding", "positive_label": "finding"}
    good["probabilities"] = {"normal": 0.2, "finding": 0.8}
    odd = [
        "not a result",
        {**good, "probability": "high"},
        {**good, "probabilities": [0.2, 0.8]},
        {**good, "probabilities": {"normal": "low", "finding": 0.8}},
        {**good, "model": None},
        {**good, "finding": ""},
    ]
    for seq, result in enumerate(odd, start=1000):
        result_uuid = str(uuid.uuid4())
        payload = {"result": result, "site": SITE}
        stored_result(hub, device_id, result_uuid, seq, payload)
        reviews.add_review(hub.engine, result_uuid, "agree", reviewer="dr")
    [figures] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    assert (figures["cases"], figures["unlabelled"]) == (80, 2)


@pytest.mark.parametrize("hub", ["sqlite"], indirect=True)  # PostgreSQL's json never took NaN
def test_an_older_hubs_nan_payloads_are_made_json_at_start(
    hub: Hub, tmp_path: Path, key: tuple[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Before intake refused them, a result with a NaN probability was stored as Python writes
    it, which SQLite's JSON functions refuse: the one row failed the whole agreement page (and
    retention's and FHIR's queries). A hub's start rewrites it with null; it is then left out."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    nan = float("nan")
    result = {"model": "tiny", "version": "0.0.1", "finding": "finding", "positive_label": "finding"}
    result |= {"probability": nan, "probabilities": {"normal": nan, "finding": float("inf")}}
    stored_result(hub, device_id, "0000-nan", 1000, {"result": result, "site": SITE})
    reviews.add_review(hub.engine, "0000-nan", "agree", reviewer="dr")
    with pytest.raises(OperationalError, match="malformed JSON"):
        agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    with hub.engine.begin() as conn:  # the database an older hub made was never marked
        conn.execute(text("PRAGMA user_version = 0"))

    db.make_engine(str(hub.engine.url)).dispose()  # the hub starts again
    [figures] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir)
    assert figures["cases"] == 80  # the NaN result has no probability: left out
    with hub.engine.connect() as conn:
        [payload] = conn.execute(text("SELECT payload FROM records WHERE uuid = '0000-nan'")).one()
    assert json.loads(payload)["result"]["probabilities"] == {"normal": None, "finding": None}
    assert legacy_json.repair(hub.engine, [("records", "payload")]) == 0  # done once: skipped

    with hub.engine.begin() as conn:  # a value not even Python reads (a restored older copy)
        conn.execute(text("UPDATE records SET payload = '{\"result\": ' WHERE uuid = '0000-nan'"))
        conn.execute(text("PRAGMA user_version = 0"))
    with caplog.at_level("ERROR"):
        assert legacy_json.repair(hub.engine, [("records", "payload")]) == 0
    assert "records.payload row" in caplog.text
    assert "cannot be read; left as it is" in caplog.text


def test_figures_past_the_pages_budget_come_from_the_background(
    hub: Hub, tmp_path: Path, key: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold hub of many sites kept the page computing for minutes (92 s at 200,000 results):
    past its budget a page shows the quick figures and the rest are computed meanwhile."""
    from fastapi.testclient import TestClient

    from edge.hub import accounts

    monkeypatch.setattr(agreement_figures, "_FIGURES", agreement_figures._FiguresCache())  # nothing known yet
    monkeypatch.setattr(agreement_figures, "FIGURES_BUDGET_S", 0.0)
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    accounts.create_user(hub.engine, "admin", REVIEW_PASSWORD, "administrator", ("*",))
    admin = TestClient(hub.app, base_url="http://testserver")
    assert login(admin, "admin") == 303
    page = admin.get("/review/admin/agreement")  # hands the figures to the background
    assert page.status_code == 200
    assert "Not yet shown: the interval" in page.text
    assert "80 labelled cases" in page.text
    [group] = agreement.reviewed_cases(hub.engine, hub.settings.models.dir).values()
    quick = agreement.figures(group, group.manifest, full=False)
    assert quick["pending"] == agreement.PENDING
    assert (quick["cases"], quick["suggestion"], quick["auc_ci95"]) == (80, None, None)
    assert quick["auc"] is not None
    assert sum(map(sum, quick["confusion"]["matrix"])) == 80
    agreement_figures.wait_for_figures()
    page = admin.get("/review/admin/agreement")
    assert "Suggested for this site" in page.text
    assert "Not yet shown" not in page.text
    [computed] = agreement_figures.site_figures(hub.engine, hub.settings.models.dir, budget_s=0.0)
    assert computed == agreement.figures(group, group.manifest)
    assert computed["pending"] is None
    assert computed["suggestion"] is not None


def test_a_hub_of_more_sites_than_the_cache_held_shows_them_all_once_computed(
    hub: Hub, tmp_path: Path, key: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more site x model groups than the cache held, the background's results evicted one
    another: some sites stayed "pending" on every load. The cache now holds twice a page's."""
    monkeypatch.setattr(agreement_figures, "_FIGURES", agreement_figures._FiguresCache(size=4))
    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    for index in range(6):  # versions the hub knows no release of: a group each
        add_reviewed(hub, device_id, synthetic_cases(3), uncertain=0, version=f"0.0.{index + 1}")
    first = agreement_figures.site_figures(hub.engine, hub.settings.models.dir, budget_s=0.0)
    assert [f["pending"] for f in first] == [agreement.PENDING] * 6
    agreement_figures.wait_for_figures()
    again = agreement_figures.site_figures(hub.engine, hub.settings.models.dir, budget_s=0.0)
    assert [f["pending"] for f in again] == [None] * 6


# ------------------------------------------------------------------ the admin page


@pytest.mark.security
def test_the_agreement_page_is_for_administrators_and_publishes_with_csrf(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    from fastapi.testclient import TestClient

    from edge.hub import accounts

    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    accounts.create_user(hub.engine, "admin", REVIEW_PASSWORD, "administrator", ("*",))
    accounts.create_user(hub.engine, "reader", REVIEW_PASSWORD, "specialist", ("*",))
    reader = TestClient(hub.app, base_url="http://testserver")
    assert login(reader, "reader") == 303
    assert reader.get("/review/admin/agreement", headers={"accept": "text/html"}).status_code == 403
    assert reader.get("/review/admin/agreement.json").status_code == 403
    admin = TestClient(hub.app, base_url="http://testserver")
    assert login(admin, "admin") == 303
    page = admin.get("/review/admin/agreement")
    assert page.status_code == 200
    assert SITE in page.text
    assert "Suggested for this site" in page.text
    assert "balanced, cross-validated against the shipped point: Youden's J +" in page.text
    data = admin.get("/review/admin/agreement.json").json()
    assert data["minimum_cases_per_class"] == 30
    assert data["sites"][0]["cases"] == 80
    draft_link = re.search(r'href="(/review/admin/profiles/draft\?[^"]+)"', page.text)
    assert draft_link is not None
    draft = protocol.ProfileRelease.model_validate_json(
        admin.get(draft_link.group(1).replace("&amp;", "&")).content
    )
    assert draft.signature == ""
    assert draft.site == SITE
    text = signed(draft, key[1]).model_dump_json()
    assert admin.post("/review/admin/profiles", data={"signed": text}).status_code == 403  # no CSRF token
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    unsigned = admin.post(
        "/review/admin/profiles", data={"signed": draft.model_dump_json(), "csrf": token.group(1)}
    )
    assert unsigned.status_code == 400
    assert "not signed" in unsigned.text
    done = admin.post("/review/admin/profiles", data={"signed": text, "csrf": token.group(1)})
    assert done.status_code == 200
    assert f"Profile {draft.id} published" in done.text
    assert [row["profile_id"] for row in site_profiles.list_profiles(hub.engine)] == [draft.id]


# ------------------------------------------------------------------ the device


def publish_at(hub: Hub, private: Any, moment: datetime) -> protocol.ProfileRelease:
    release = signed(
        site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", now=moment), private
    )
    site_profiles.publish(hub.engine, release, actor="test")
    return release


def test_publish_pull_install_rollback(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    other = device_settings(hub, tmp_path, key[0], "elsewhere").model_copy(update={"site": "south"})
    add_reviewed(hub, device_id, synthetic_cases(40))
    first_time = datetime(2026, 12, 2, 16, 5, 1, tzinfo=timezone.utc)
    first = publish_at(hub, key[1], first_time)
    assert first.id == "tiny-0.0.1-site-20261202T160501Z"
    folder = settings.data_dir / "profiles" / "tiny"
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 1
        assert (folder / f"{first.id}.toml").read_text() == first.profile
        assert (folder / "active").read_text().strip() == first.id
        assert profiles.pull_profiles(client) == 0  # installed once
        second = publish_at(hub, key[1], first_time + timedelta(days=1))
        assert profiles.pull_profiles(client) == 1
        assert profiles.active_id(settings, "tiny") == second.id
        assert [p.id for p in profiles.installed(settings, "tiny")] == [first.id, second.id]
        assert profiles.rollback(settings, store, "tiny").id == first.id
        assert (folder / "active").read_text().strip() == first.id
        assert profiles.pull_profiles(client) == 0  # the one rolled back from does not come back
        # An older one published after a newer: the publisher is told no device will get it.
        earlier = first_time - timedelta(days=1)
        draft = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", now=earlier)
        note = site_profiles.publish(hub.engine, signed(draft, key[1]), actor="test")
        assert note == (
            f"a newer profile, {second.id}, is published for this site and version: devices are "
            "offered the newest, so this one reaches none"
        )
        assert profiles.pull_profiles(client) == 0
        # the first was installed over the shipped calibration: rolling back from it puts that back
        assert profiles.rollback(settings, store, "tiny") is None
        assert profiles.active_id(settings, "tiny") is None
        assert profiles.pull_profiles(client) == 0  # and neither comes back by itself
        with pytest.raises(EdgeError) as none_before:
            profiles.rollback(settings, store, "tiny")
        assert none_before.value.code is Code.PROFILE_NO_PREVIOUS
        actions = [row["action"] for row in store.audit_rows() if row["action"].startswith("profile.")]
        assert actions == [
            "profile.installed",
            "profile.installed",
            "profile.rolled_back",
            "profile.rolled_back",
        ]
    # Offered to that site's devices only.
    with Store(other.data_dir) as store:
        client = hub.sync_client(other, store, hub.enroll(other))
        assert client.profiles() == []


@pytest.mark.security
def test_a_tampered_profile_is_refused_once(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    release = signed(
        site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny"), key[1]
    )
    tampered = release.model_copy(
        update={"profile": re.sub(r"temperature = [0-9.]+", "temperature = 9.0", release.profile)}
    )
    assert tampered.profile != release.profile
    site_profiles.publish(hub.engine, tampered, actor="test")  # the hub holds no key: devices check
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 0
        assert profiles.active_id(settings, "tiny") is None
        [reason] = store.outbox.sync_state()["profiles_refused"].values()
        assert reason.startswith("PROFILE_SIGNATURE_INVALID")
        assert profiles.pull_profiles(client) == 0
        refusals = list(store.audit_rows("profile.refused"))
        assert len(refusals) == 1  # not refused again every round
        # Said wherever the sync is shown (sync now|status, doctor, the TUI's sync screen).
        from edge.sync.runner import refused_updates, sync_status
        from edge.tui.data import sync_view

        status = sync_status(settings, store)
        [line] = refused_updates(status)
        assert line.startswith(f"site profile {release.id} refused (tiny keeps its calibration in force)")
        assert "PROFILE_SIGNATURE_INVALID" in line
        assert sync_view({"sync": status})["refused"] == [line]
        # Another profile under a published id is refused: a device may serve the first.
        with pytest.raises(HubError, match="draft a new one"):
            site_profiles.publish(hub.engine, release, actor="test")


@pytest.mark.security
def test_a_profile_signed_with_the_wrong_key_can_be_signed_again(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """As docs/codes.md advises for PROFILE_SIGNATURE_INVALID: the same profile, signed with
    the publisher's key and published again, replaces the bad one; devices install it and no
    longer show the refusal."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    draft = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny")
    site_profiles.publish(hub.engine, signed(draft, signatures.new_device_key()), actor="test")
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 0
        from edge.sync.runner import refused_updates, sync_status

        [line] = refused_updates(sync_status(settings, store))
        assert "PROFILE_SIGNATURE_INVALID" in line
        note = site_profiles.publish(hub.engine, signed(draft, key[1]), actor="test")
        assert note == f"its signature replaces the one published for {draft.id} before"
        assert profiles.pull_profiles(client) == 1
        assert profiles.active_id(settings, "tiny") == draft.id
        assert refused_updates(sync_status(settings, store)) == []


@pytest.mark.security
def test_a_downgrade_and_a_profile_for_another_model_version_are_refused(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    older = publish_at(hub, key[1], datetime(2026, 1, 1, tzinfo=timezone.utc))
    # A newer profile made on the device itself (e.g. `edge models calibrate`) is active.
    newer = older.profile.replace(older.id, "tiny-0.0.1-site-20270101T000000Z").replace(
        'created_at = "2026-01-01T00:00:00Z"', 'created_at = "2027-01-01T00:00:00Z"'
    )
    folder = settings.data_dir / "profiles" / "tiny"
    folder.mkdir(parents=True)
    (folder / "tiny-0.0.1-site-20270101T000000Z.toml").write_text(newer)
    (folder / "active").write_text("tiny-0.0.1-site-20270101T000000Z\n")
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 0
        assert profiles.active_id(settings, "tiny") == "tiny-0.0.1-site-20270101T000000Z"
        [reason] = store.outbox.sync_state()["profiles_refused"].values()
        assert reason.startswith("PROFILE_DOWNGRADE")
        assert profiles.pull_profiles(client) == 0
        assert len(list(store.audit_rows("profile.refused"))) == 1
        # A profile's id names its model version: another version is another id.
        other_id = older.id.replace("tiny-0.0.1-", "tiny-9.9.9-")
        other_text = older.profile.replace(older.id, other_id).replace('"0.0.1"', '"9.9.9"')
        other_version = signed(
            older.model_copy(update={"id": other_id, "model_version": "9.9.9", "profile": other_text}),
            key[1],
        )
        with pytest.raises(EdgeError) as refused:
            profiles.install(settings, store, other_version, key[0], SITE)
        assert refused.value.code is Code.PROFILE_MODEL_NOT_INSTALLED


def test_a_profile_for_a_version_not_yet_installed_waits_for_it(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """The hub pools 0.0.1 and its re-release 0.0.2 and makes the profile for 0.0.2; a device
    whose update to 0.0.2 has not arrived yet (a slow link) refuses it once, not every round,
    and installs it once 0.0.2 is installed."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    publish_manifest(hub, "0.0.2", T0)
    add_reviewed(hub, device_id, synthetic_cases(3, seed=3), uncertain=0, version="0.0.2", first_seq=300)
    release = publish_at(hub, key[1], datetime(2026, 12, 2, tzinfo=timezone.utc))
    assert release.model_version == "0.0.2"
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 0
        assert profiles.pull_profiles(client) == 0
        assert len(list(store.audit_rows("profile.refused"))) == 1  # once, not every round
        [(waiting, reason)] = store.outbox.sync_state()["profiles_refused"].items()
        assert reason.startswith("PROFILE_MODEL_NOT_INSTALLED")
        assert waiting.endswith(" while 0.0.1 is installed")
        # As an edge before this rule recorded it (for good): tried once more, then waits too.
        store.outbox.set_sync_state(profiles_refused={waiting.split(" while ")[0]: reason})
        assert profiles.pull_profiles(client) == 0
        assert store.outbox.sync_state()["profiles_refused"] == {waiting: reason}
        manifest = settings.models.dir / "tiny" / "model.toml"  # the update arrives
        manifest.write_text(manifest.read_text().replace('version = "0.0.1"', 'version = "0.0.2"', 1))
        assert profiles.pull_profiles(client) == 1
        assert profiles.active_id(settings, "tiny") == release.id
        assert store.outbox.sync_state()["profiles_refused"] == {}  # no longer shown as refused


def test_cli_publishes_with_the_key_and_lists(
    hub: Hub, tmp_path: Path, key: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.cli import cli

    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    monkeypatch.setenv(
        "EDGE_HUB__DATABASE_URL",
        str(hub.engine.url.render_as_string(hide_password=False)).replace("+psycopg", ""),
    )
    monkeypatch.setenv("EDGE_MODELS__DIR", str(hub.settings.models.dir))
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "cli")]
    draft_file = tmp_path / "draft.json"
    done = runner.invoke(
        cli, [*base, "hub", "profile", "draft", "--site", SITE, "--model", "tiny", "--out", str(draft_file)]
    )
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        cli, [*base, "hub", "profile", "sign", str(draft_file), "--key", str(tmp_path / "publisher.key")]
    )
    assert done.exit_code == 0, done.output
    release = protocol.ProfileRelease.model_validate_json(draft_file.read_text())
    signed_file = tmp_path / f"{release.id}.json"
    assert signatures.verify(
        protocol.ProfileRelease.model_validate_json(signed_file.read_text()).model_dump(), key[0]
    )
    done = runner.invoke(cli, [*base, "hub", "profile", "publish", "--signed", str(signed_file)])
    assert done.exit_code == 0, done.output
    done = runner.invoke(
        cli,
        [
            *base,
            "hub",
            "profile",
            "publish",
            "--site",
            SITE,
            "--model",
            "tiny",
            "--key",
            str(tmp_path / "publisher.key"),
        ],
    )
    assert done.exit_code == 0, done.output
    listed = runner.invoke(cli, [*base, "hub", "profile", "list"])
    assert release.id in listed.output


def test_rollback_undoes_an_install_over_a_profile_the_site_had_withdrawn(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """Found by following the docs: a local profile, `calibrate --reset`, then the hub's profile
    installed over the shipped calibration; rollback made the withdrawn local profile serve
    again, where undoing the install means the shipped calibration."""
    from edge.inference import site_calibration, site_profile
    from tests.test_site_calibration import tiny_profile

    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    local = tiny_profile(created_at="2026-12-01T00:00:00Z", id="tiny-0.0.1-site-20261201T000000Z", cases=60)
    with Store(settings.data_dir) as store:
        site_profile.write_profile(settings.data_dir, local)
        site_calibration.activate(settings, store, "tiny", local.id)
        site_calibration.activate(settings, store, "tiny", None)  # `calibrate --reset`: withdrawn
        published = publish_at(hub, key[1], datetime(2026, 12, 2, 16, 5, 1, tzinfo=timezone.utc))
        assert profiles.pull_profiles(hub.sync_client(settings, store, credential)) == 1
        assert profiles.active_id(settings, "tiny") == published.id
        assert profiles.rollback(settings, store, "tiny") is None
        assert profiles.active_id(settings, "tiny") is None
        # made active by hand later, it goes back to what was in force then (the hub's)
        site_calibration.activate(settings, store, "tiny", local.id)
        assert profiles.rollback(settings, store, "tiny") is None  # it was the shipped one then


@pytest.mark.security
def test_a_hub_that_knows_the_publishers_key_refuses_a_wrong_signature_at_publish(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """`[hub] publisher_public_key`: the administrator hears at once, on the page or the CLI,
    what every device would otherwise say at its next sync; nothing is stored."""
    from fastapi.testclient import TestClient

    from edge.cli import cli
    from edge.hub import accounts
    from edge.hub.app import create_app

    device_id, _ = enrolled(hub, device_settings(hub, tmp_path, key[0]))
    add_reviewed(hub, device_id, synthetic_cases(40))
    draft = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny")
    wrong = signed(draft, signatures.new_device_key())
    with pytest.raises(HubError, match="not the publisher's") as refused:
        site_profiles.publish(hub.engine, wrong, actor="test", publisher_key=key[0])
    assert refused.value.code == WireCode.BAD_PROFILE
    assert site_profiles.list_profiles(hub.engine) == []
    # The CLI reads the key from the hub's settings.
    (tmp_path / "wrong.json").write_text(wrong.model_dump_json())
    env = {
        "EDGE_DATA_DIR": str(hub.settings.data_dir),
        "EDGE_HUB__DATABASE_URL": str(hub.settings.hub.database_url),
        "EDGE_HUB__PUBLISHER_PUBLIC_KEY": key[0],
    }
    command = ["hub", "profile", "publish", "--signed", str(tmp_path / "wrong.json")]
    run = CliRunner().invoke(cli, command, env=env)
    assert run.exit_code != 0
    assert "BAD_PROFILE" in run.output
    assert "not the publisher's" in run.output
    assert site_profiles.list_profiles(hub.engine) == []
    # The admin page too, on a hub configured with the key.
    configured = hub.settings.model_copy(
        update={"hub": hub.settings.hub.model_copy(update={"publisher_public_key": key[0]})}
    )
    accounts.create_user(hub.engine, "admin", REVIEW_PASSWORD, "administrator", ("*",))
    admin = TestClient(create_app(configured, hub.engine), base_url="http://testserver")
    assert login(admin, "admin") == 303
    page = admin.get("/review/admin/agreement")
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text)
    assert token is not None
    csrf = token.group(1)
    answer = admin.post("/review/admin/profiles", data={"signed": wrong.model_dump_json(), "csrf": csrf})
    assert answer.status_code == 400
    assert "not the publisher" in answer.text
    assert site_profiles.list_profiles(hub.engine) == []
    right = admin.post(
        "/review/admin/profiles", data={"signed": signed(draft, key[1]).model_dump_json(), "csrf": csrf}
    )
    assert right.status_code == 200
    assert [row["profile_id"] for row in site_profiles.list_profiles(hub.engine)] == [draft.id]


def test_two_sites_profiles_of_one_id_keep_their_own_temperatures(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """A profile's id names its model, version and second, not its site: two sites' profiles
    drafted in one second share it. The hub read the results each recorded with the temperature
    of whichever it found first."""
    north = device_settings(hub, tmp_path, key[0])
    south = device_settings(hub, tmp_path, key[0], "south").model_copy(update={"site": "south"})
    north_id, _ = enrolled(hub, north)
    south_id, _ = enrolled(hub, south)
    add_reviewed(hub, north_id, synthetic_cases(40))
    moment = datetime(2026, 12, 2, 16, 5, 1, tzinfo=timezone.utc)
    mine = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", now=moment)
    theirs = mine.model_copy(
        update={
            "site": "south",
            "profile": re.sub(r"temperature = [0-9.]+", "temperature = 3.5", mine.profile),
        }
    )
    for release in (mine, theirs):
        site_profiles.publish(hub.engine, signed(release, key[1]), actor="test")
    for device_id, first_seq in ((north_id, 1000), (south_id, 2000)):
        result_uuid = str(uuid.uuid4())
        payload = {
            "result": {
                "model": "tiny", "version": "0.0.1", "finding": "finding", "positive_label": "finding",
                "probability": 0.8, "probabilities": {"normal": 0.2, "finding": 0.8}, "threshold": 0.5,
                "operating_point": "balanced", "profile_id": mine.id,
            },
        }  # fmt: skip
        stored_result(hub, device_id, result_uuid, first_seq, payload)
        reviews.add_review(hub.engine, result_uuid, "agree", reviewer="dr")
    found = {
        key.site: [c.temperature for c in group.cases if c.temperature is not None]
        for key, group in agreement._by_version(hub.engine).items()
    }
    published = site_profiles.list_profiles(hub.engine)
    assert {row["site"] for row in published} == {SITE, "south"}
    north_t = [row["temperature"] for row in published if row["site"] == SITE]
    assert found == {SITE: north_t, "south": [3.5]}
