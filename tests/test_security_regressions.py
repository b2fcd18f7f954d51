"""Security regressions docs/security.md listed without a test of their own: SQL injection through
the review pages' filters and the FHIR search parameters, and a model release older than the
installed one signed with the real key (a downgrade)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from edge.config import load_settings
from edge.hub import releases
from edge.store import Store
from tests.hubfixtures import (  # noqa: F401 - postgres_url and world are fixtures
    Hub,
    World,
    postgres_url,
    reader,
    reset,
    review_count,
    world_fixture,
)

# Each closes a quote or a statement, ORs in a true clause, or is a LIKE wildcard: any of them
# reaching SQL as text would widen the filter (or drop a table) instead of matching nothing.
HOSTILE = [
    "' OR '1'='1",
    "x' OR 1=1 --",
    '" OR ""="',
    "north-clinic' OR site <> '",
    "') UNION SELECT id, id FROM users --",
    "1; DROP TABLE reviews; --",
    "%",
    "_%",
]


@pytest.mark.security
@pytest.mark.parametrize("field", ["site", "device", "modality", "finding"])
def test_hostile_worklist_filters_match_nothing(world: World, field: str) -> None:
    client = reader(world, "north-reader")
    everyone = world.north.results + world.south.results
    for value in HOSTILE:
        reply = client.get("/review/", params={field: value})
        assert reply.status_code == 200, (field, value)
        shown = [uuid for uuid in everyone if uuid in reply.text]
        assert shown == [], (field, value, shown)  # a filter that matches nothing shows nothing
    assert all(uuid in client.get("/review/").text for uuid in world.north.results)  # tables intact
    review_count(world)


@pytest.mark.security
@pytest.mark.parametrize("parameter", ["site", "conclusion", "patient", "_id", "performer", "date"])
def test_hostile_fhir_search_parameters_find_nothing(world: World, parameter: str) -> None:
    client = reader(world, "north-reader")  # a session reads /review/fhir with its programmes
    for value in HOSTILE:
        reply = client.get("/review/fhir/DiagnosticReport", params={parameter: value})
        assert reply.status_code in (200, 400), (parameter, value, reply.status_code)
        if reply.status_code == 200:
            assert reply.json()["total"] == 0, (parameter, value)
        else:
            assert reply.json()["resourceType"] == "OperationOutcome"
    found = client.get("/review/fhir/DiagnosticReport", params={"_count": "100"}).json()
    assert found["total"] == len(world.north.results)


def _release(hub: Hub, model: Path, version: str, key: Any, out: Path) -> None:
    """Publish a copy of `model` under another version, signed with `key`, on the hub."""
    from tools.publish_model import sign_release

    folder = out / "src" / model.name
    shutil.copytree(model, folder)
    manifest = folder / "model.toml"
    text = manifest.read_text()
    manifest.write_text(text.replace('version = "0.0.1"', f'version = "{version}"', 1))
    release = sign_release(folder, key, out / "release")
    releases.publish_release(hub.engine, hub.settings.hub_dir / "files", release, out / "release")


@pytest.mark.security
def test_an_older_or_same_version_release_is_never_installed(tmp_path: Path) -> None:
    """Signed by the publisher's real key, so only the version rule stands between a hub (or the
    link) replaying an old release with a known flaw and the device."""
    from edge.inference.registry import Registry
    from edge.sync.releases import pull_models
    from tests.tinymodel import make_model_dir
    from tools.publish_model import keygen, load_key

    hub = Hub(load_settings(data_dir=tmp_path / "hub-host"), f"sqlite:///{tmp_path / 'hub.db'}")
    reset(hub.engine)
    models = tmp_path / "models"
    make_model_dir(models)
    public = keygen(tmp_path / "publisher.key")
    key = load_key(tmp_path / "publisher.key")
    installed = Registry(models).get("tiny").manifest
    assert installed.version == "0.0.1"
    _release(hub, models / "tiny", "0.0.0", key, tmp_path / "older")
    _release(hub, models / "tiny", "0.0.1", key, tmp_path / "same")  # same version, re-signed
    device = load_settings(data_dir=tmp_path / "dev", models={"dir": models}, sync={"public_key": public})
    with Store(device.data_dir) as store:
        client = hub.sync_client(device, store, hub.enroll(device))
        assert {r.version for r in client.releases()} == {"0.0.0", "0.0.1"}  # both offered
        assert pull_models(client) == 0
    assert Registry(models).get("tiny").manifest.version == "0.0.1"
    assert not (models / ".previous").exists()  # nothing was swapped in and back
    hub.client.close()
