"""How a device installs the hub's signed site profiles when things go wrong: a profile signed
for another site, a full disk mid-install, a power cut between the install and the sync state's
record of it, and what counts as a downgrade (after a reset, and against a profile made for
weights no longer installed). Each was found by an outside check: they installed another site's
thresholds, refused a valid profile for good, undid a technician's rollback, installed an older
profile, and refused a newer one."""

from __future__ import annotations

import errno
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from edge.errors import Code, EdgeError
from edge.hub import site_profiles
from edge.inference import site_calibration
from edge.store import Store
from edge.sync import profiles
from tests import test_site_profiles as shared
from tests.hubfixtures import Hub
from tests.test_site_profiles import (
    PROGRAMME,
    SITE,
    add_reviewed,
    device_settings,
    enrolled,
    publish_at,
    signed,
    synthetic_cases,
)

# The same fixtures: a hub on SQLite and on PostgreSQL (its throwaway server), a publisher's key.
hub, key, postgres_url = shared.hub, shared.key, shared.postgres_url
T = datetime(2026, 12, 2, 16, 5, 1, tzinfo=timezone.utc)


def _draft(hub: Hub, private: Any, moment: datetime) -> Any:
    return signed(
        site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", now=moment), private
    )


@pytest.mark.security
def test_a_profile_signed_for_another_site_is_refused(hub: Hub, tmp_path: Path, key: tuple[str, Any]) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    assert credential.site == SITE  # kept at enrolment
    add_reviewed(hub, device_id, synthetic_cases(40))
    draft = site_profiles.draft(hub.engine, hub.settings.models.dir, PROGRAMME, SITE, "tiny", now=T)
    foreign = signed(draft.model_copy(update={"site": "south"}), key[1])
    with Store(settings.data_dir) as store:
        with pytest.raises(EdgeError) as refused:
            profiles.install(settings, store, foreign, key[0], SITE)
        assert refused.value.code is Code.PROFILE_OTHER_SITE
        assert profiles.active_id(settings, "tiny") is None
        # The site this device enrolled as decides (the hub's name for it), not a `site`
        # edited in its settings since.
        own = publish_at(hub, key[1], T)
        client = hub.sync_client(settings.model_copy(update={"site": "south"}), store, credential)
        assert profiles.pull_profiles(client) == 1
        assert profiles.active_id(settings, "tiny") == own.id


def test_a_full_disk_while_installing_is_tried_again_at_the_next_round(
    hub: Hub, tmp_path: Path, key: tuple[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    release = publish_at(hub, key[1], T)
    written = os.write

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        monkeypatch.setattr("edge.store.files.os.write", full)
        assert profiles.pull_profiles(client) == 0
        [reason] = store.outbox.sync_state()["profiles_refused"].values()
        assert reason.startswith("DISK_FULL"), reason  # said, for the technician
        monkeypatch.setattr("edge.store.files.os.write", written)  # the disk is freed
        assert profiles.pull_profiles(client) == 1
        assert profiles.active_id(settings, "tiny") == release.id
        assert store.outbox.sync_state()["profiles_refused"] == {}


def test_a_power_cut_after_an_install_does_not_undo_a_later_rollback(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """The install writes the files and its audit record; the sync state records it after. A
    power cut between the two left it unrecorded, and the next round installed it again over
    the technician's rollback. The audit record now counts as installed."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    first = publish_at(hub, key[1], T)
    with Store(settings.data_dir) as store:
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 1
        second = publish_at(hub, key[1], T + timedelta(days=1))
        profiles.install(settings, store, second, key[0], SITE)  # ... and the power goes here
        profiles.rollback(settings, store, "tiny")
        assert profiles.active_id(settings, "tiny") == first.id
        assert profiles.pull_profiles(client) == 0
        assert profiles.active_id(settings, "tiny") == first.id


def test_an_older_profile_is_a_downgrade_after_a_reset_too(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    settings = device_settings(hub, tmp_path, key[0])
    device_id, _ = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    old, new = _draft(hub, key[1], T), _draft(hub, key[1], T + timedelta(days=200))
    with Store(settings.data_dir) as store:
        profiles.install(settings, store, new, key[0], SITE)
        site_calibration.activate(settings, store, "tiny", None)  # `edge models calibrate --reset`
        with pytest.raises(EdgeError) as refused:
            profiles.install(settings, store, old, key[0], SITE)  # replayed, 200 days older
        assert refused.value.code is Code.PROFILE_DOWNGRADE
        assert profiles.active_id(settings, "tiny") is None


def test_a_profile_for_weights_no_longer_installed_is_no_reason_to_refuse(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """A newer profile for 0.0.1, then an update to 0.0.2 with other weights: serving ignores
    the old profile, and the hub's profile for 0.0.2, made earlier, is no downgrade of it."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, _ = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    local = _draft(hub, key[1], T + timedelta(days=10))
    with Store(settings.data_dir) as store:
        profiles.install(settings, store, local, key[0], SITE)
        manifest = settings.models.dir / "tiny" / "model.toml"
        text = manifest.read_text().replace('version = "0.0.1"', 'version = "0.0.2"', 1)
        manifest.write_text(re.sub(r'sha256 = "[0-9a-f]{64}"', f'sha256 = "{"ab" * 32}"', text, count=1))
        new_id, moment = "tiny-0.0.2-site-20261202T160501Z", "2026-12-02T16:05:01Z"
        text = local.profile.replace(local.id, new_id).replace('"0.0.1"', '"0.0.2"')
        update = {"id": new_id, "model_version": "0.0.2", "created_at": moment}
        release = signed(
            local.model_copy(update={**update, "profile": text.replace(local.created_at, moment)}), key[1]
        )
        profiles.install(settings, store, release, key[0], SITE)
        assert profiles.active_id(settings, "tiny") == new_id


def test_a_hub_profile_never_overwrites_one_made_on_the_device(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """Ids name a model, version and second: a profile calibrated on the device in the same
    second as the hub's has its id. Overwritten, the results it decided would be read back with
    another temperature."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, _ = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    release = _draft(hub, key[1], T)
    local = release.profile.replace('source = "hub"', 'source = "data"')
    assert local != release.profile
    folder = settings.data_dir / "profiles" / "tiny"
    folder.mkdir(parents=True)
    (folder / f"{release.id}.toml").write_text(local)
    with Store(settings.data_dir) as store, pytest.raises(EdgeError) as refused:
        profiles.install(settings, store, release, key[0], SITE)
    assert refused.value.code is Code.PROFILE_INVALID
    assert (folder / f"{release.id}.toml").read_text() == local


def test_a_profile_nested_beyond_reason_is_refused_not_a_crash() -> None:
    """Arrays nested 3,000 deep made tomllib recurse out: a 500 on the hub's publish."""
    from edge.inference.site_profile import parse_profile

    with pytest.raises(ValueError, match="nested too deeply"):
        parse_profile("a = " + "[" * 3000 + "]" * 3000)


def test_a_kill_between_activation_and_its_audit_row_undoes_nothing_later(
    hub: Hub, tmp_path: Path, key: tuple[str, Any]
) -> None:
    """The profile's file and `active` written, then the kill (no audit row): the next round
    skipped it as in force without noting it, and after a reset installed it again; rollback
    said there was nothing before it, where the shipped calibration was."""
    settings = device_settings(hub, tmp_path, key[0])
    device_id, credential = enrolled(hub, settings)
    add_reviewed(hub, device_id, synthetic_cases(40))
    release = publish_at(hub, key[1], T)
    folder = settings.data_dir / "profiles" / "tiny"
    folder.mkdir(parents=True)
    (folder / f"{release.id}.toml").write_text(release.profile)
    (folder / "active").write_text(f"{release.id}\n")  # ... and the power went
    with Store(settings.data_dir) as store:
        assert profiles.rollback(settings, store, "tiny") is None  # the shipped calibration
        site_calibration.activate(settings, store, "tiny", release.id)
        client = hub.sync_client(settings, store, credential)
        assert profiles.pull_profiles(client) == 0  # in force: noted as installed
        site_calibration.activate(settings, store, "tiny", None)  # `--reset`
        assert profiles.pull_profiles(client) == 0
        assert profiles.active_id(settings, "tiny") is None
