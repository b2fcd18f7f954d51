"""Site profiles from the hub: signed like model releases (same pinned key, same scheme), never
a downgrade, installed atomically, the previous ones kept for a rollback. The sync runner pulls
them after the model releases; the HTTP goes through the `SyncClient` it is given.

On the device a model's profiles are `<data_dir>/profiles/<model>/<id>.toml`, and
`<data_dir>/profiles/<model>/active` holds the active one's id (the serving layer reads them).
A profile is refused, with a code, when its signature does not verify, when it does not parse,
when it is signed for another site than the one this device enrolled as, when its model version
is not the installed one, or when it is older (`created_at`) than the newest profile kept for the
installed weights (a reset or a rollback is no licence to install an older one): the refusal is
logged, audited and recorded in the sync state (`profiles_refused`), so it is not fetched and
refused again every round; one refused for the model version is tried again once another
version is installed (its model update may arrive later, over a slow link), and one that failed
for the device's own state (a full disk, an unwritable folder) at the next round. Each profile
is installed once, as its audit record says (written after the files: a power cut between the
install and the sync state's record of it must not undo a later rollback): one a technician
rolled back from, or reset, does not come back by itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pydantic import ValidationError

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference import site_profile
from edge.inference.registry import Registry
from edge.inference.site_profile import SiteProfile, parse_profile, serves
from edge.store import Store
from edge.store.files import write_atomically
from edge.sync import protocol
from edge.sync.client import SyncClient
from edge.sync.releases import verify_signature

log = logging.getLogger(__name__)
ACTIVE = "active"
ACTOR = "sync"


def profiles_dir(settings: Settings, model: str) -> Path:
    return site_profile.folder(settings.data_dir, model)


def active_id(settings: Settings, model: str) -> str | None:
    return site_profile.active_id(settings.data_dir, model)


def installed(settings: Settings, model: str) -> list[SiteProfile]:
    """The profiles kept for `model`, oldest first (unreadable files are logged and skipped)."""
    return site_profile.history(settings.data_dir, model)


PERMANENT = frozenset(
    {Code.PROFILE_SIGNATURE_INVALID, Code.PROFILE_INVALID, Code.PROFILE_DOWNGRADE, Code.PROFILE_OTHER_SITE}
)
"""Refusals of the profile itself: remembered, never tried again. Any other (PROFILE_MODEL_NOT_
INSTALLED waits for another version; DISK_FULL and the like for the next round) is the device's
state: a disk full for one round refused a valid profile for good."""
_PERMANENT_PREFIXES = tuple(f"{code.value}:" for code in PERMANENT)


def install(
    settings: Settings, store: Store, release: protocol.ProfileRelease, public_key: str, site: str
) -> SiteProfile:
    """Verify, check and install one profile and make it active; raises EdgeError with the code.
    `site`: the site this device enrolled as (the hub's name for it)."""
    if not verify_signature(release, public_key):
        raise EdgeError(
            Code.PROFILE_SIGNATURE_INVALID, f"site profile {release.id} is not signed by the pinned key"
        )
    try:
        profile = parse_profile(release.profile)
    except (ValueError, ValidationError) as error:
        raise EdgeError(Code.PROFILE_INVALID, f"site profile {release.id} does not parse: {error}") from error
    if (profile.id, profile.model, profile.model_version) != (
        release.id,
        release.model,
        release.model_version,
    ):
        raise EdgeError(Code.PROFILE_INVALID, f"site profile {release.id} says it is another profile")
    if release.site != site:  # signed for one site's films: another's thresholds are no better
        raise EdgeError(
            Code.PROFILE_OTHER_SITE,
            f"site profile {release.id} is signed for site {release.site or '(unnamed)'!r}; this"
            f" device enrolled as site {site or '(unnamed)'!r}",
        )
    registry = Registry(settings.models.dir)
    entry = registry.get(profile.model) if profile.model in registry.names() else None
    version = entry.manifest.version if entry is not None else None
    # A profile fitted for the weights installed here (an earlier version with the same files).
    if entry is None or not serves(settings.data_dir, profile, entry):
        raise EdgeError(
            Code.PROFILE_MODEL_NOT_INSTALLED,
            f"site profile {profile.id} is for {profile.model} {profile.model_version};"
            f" installed: {version or 'none'}",
        )
    current_id = active_id(settings, profile.model)
    # The newest kept for these weights, active or not: after a reset or a rollback the active
    # one is older or none; one made for weights no longer installed does not count.
    kept = [p for p in installed(settings, profile.model) if serves(settings.data_dir, p, entry)]
    newest = max(kept, key=lambda p: (p.created_at, p.id), default=None)
    if newest is not None and newest.id != profile.id and profile.created_at < newest.created_at:
        raise EdgeError(
            Code.PROFILE_DOWNGRADE,
            f"site profile {profile.id} ({profile.created_at}) is older than {newest.id}"
            f" ({newest.created_at}), kept for the same model weights",
        )
    folder = profiles_dir(settings, profile.model)
    mine = next((p for p in kept if p.id == profile.id and p.source != "hub"), None)
    if mine is not None and (folder / f"{profile.id}.toml").read_bytes() != release.profile.encode():
        # Ids name a model, version and second: one calibrated here in the same second as the
        # hub's would be overwritten, and the results it decided read with another temperature.
        raise EdgeError(
            Code.PROFILE_INVALID,
            f"site profile {profile.id} has the id of a profile made on this device ({mine.source}):"
            " not installed over it",
        )
    write_atomically(folder / f"{profile.id}.toml", release.profile.encode())
    write_atomically(folder / ACTIVE, f"{profile.id}\n".encode())
    store.audit(
        ACTOR,
        "profile.installed",
        None,
        {
            "model": profile.model,
            "version": profile.model_version,
            "profile": profile.id,
            "previous": current_id,
            "digest": _digest(release),
        },
    )
    log.info(
        "site profile %s installed and active for %s (previous: %s)", profile.id, profile.model, current_id
    )
    return profile


def _digest(release: protocol.ProfileRelease) -> str:
    return hashlib.sha256(protocol.canonical(release.model_dump())).hexdigest()[:16]


def _seen_key(release: protocol.ProfileRelease) -> str:
    """A profile as this device saw it: a corrected one (other bytes) under the same id is new."""
    return f"{release.model} {release.id} {_digest(release)}"


def _installed_before(store: Store) -> set[str]:
    """The seen keys of every profile whose install completed, by the audit trail."""
    keys = set()
    for row in store.audit_rows("profile.installed"):
        detail = json.loads(row["detail"] or "{}")
        if detail.get("digest"):
            keys.add(f"{detail.get('model')} {detail.get('profile')} {detail['digest']}")
    return keys


def pull_profiles(client: SyncClient) -> int:
    """Install every signed profile offered to this site not yet seen; returns how many were."""
    settings, store = client.settings, client.store
    public_key = settings.sync.public_key
    if not public_key:
        return 0
    state = store.outbox.sync_state()
    refused: dict[str, str] = state.get("profiles_refused", {})
    seen: list[str] = state.get("profiles_installed", [])
    count = 0
    registry = Registry(settings.models.dir)
    site = client.credential.site if client.credential.site is not None else settings.site
    offered = sorted(client.profiles(), key=lambda r: (r.created_at, r.id))
    done = _installed_before(store) if offered else set()
    for release in offered:
        key = _seen_key(release)
        # "Not for the installed version" holds until the installed version changes (a model
        # update still downloading over a slow link): that refusal is remembered per version.
        waiting = f"{key} while {_installed_version(registry, release.model)} is installed"
        if not refused.get(key, "").startswith(_PERMANENT_PREFIXES):
            refused.pop(key, None)  # the device's state then (or an older edge's note): once more
        in_force = active_id(settings, release.model) == release.id
        if (key in done or in_force) and key not in seen:  # installed, the power went before it was noted
            seen.append(key)
            store.outbox.set_sync_state(profiles_installed=seen)
        if key in refused or waiting in refused or key in seen:  # in force: seen, just above
            continue
        try:
            install(settings, store, release, public_key, site)
        except EdgeError as error:
            log.error("site profile %s refused: %s", release.id, error.one_line())
            for_now = error.code is Code.PROFILE_MODEL_NOT_INSTALLED
            refused[waiting if for_now else key] = error.one_line()[:300]
            store.outbox.set_sync_state(profiles_refused=refused)
            store.audit(
                ACTOR,
                "profile.refused",
                None,
                {"model": release.model, "profile": release.id, "code": error.code.value},
            )
            continue
        seen.append(key)
        # Installed now: no longer shown as refused, nor are other bytes of the same profile
        # refused before (a signature mended and published again under its id).
        for before in [k for k in refused if k.split(" ")[:2] == [release.model, release.id]]:
            del refused[before]
        store.outbox.set_sync_state(profiles_installed=seen, profiles_refused=refused)
        count += 1
    return count


def _installed_version(registry: Registry, model: str) -> str:
    try:
        return registry.get(model).manifest.version if model in registry.names() else "no version"
    except EdgeError:
        return "an unreadable version"


def rollback(settings: Settings, store: Store, model: str) -> SiteProfile | None:
    """Put back what was in force before the active profile became active: an earlier profile,
    or (None) the shipped calibration, as the audit trail recorded it. A profile with no such
    record goes back to the one before it by `created_at`. The one rolled back from stays on
    disk and is not installed again by sync."""
    current_id = active_id(settings, model)
    if current_id is None:
        raise EdgeError(
            Code.PROFILE_NO_PREVIOUS,
            f"{model}: no site profile is active (the shipped calibration serves): nothing to roll back",
        )
    kept = installed(settings, model)
    recorded, before_id = _in_force_before(store, model, current_id)
    if recorded and before_id is None:
        previous = None
    elif recorded and (found := next((p for p in kept if p.id == before_id), None)) is not None:
        previous = found
    else:  # no record, or the profile recorded is gone: the one before by date, else shipped
        index = next((i for i, p in enumerate(kept) if p.id == current_id), 0)
        # (a kill between a profile's activation and its audit row leaves no record: with no
        # profile before it, the shipped calibration was in force, not nothing to roll back to)
        previous = kept[index - 1] if index > 0 else None
    to = previous.id if previous is not None else None
    site_profile.activate(settings.data_dir, model, to)
    store.audit(ACTOR, "profile.rolled_back", None, {"model": model, "from": current_id, "to": to})
    log.info(
        "site profile of %s rolled back from %s to %s", model, current_id, to or "the shipped calibration"
    )
    return previous


def _in_force_before(store: Store, model: str, profile_id: str) -> tuple[bool, str | None]:
    """(found, id) of what was in force just before `profile_id` was last installed or made
    active (a roll back to it is not such a moment: it undoes, and the undo's undo is older)."""
    found: tuple[bool, str | None] = (False, None)
    rows = [*store.audit_rows("profile.installed"), *store.audit_rows("profile.activated")]
    for row in sorted(rows, key=lambda row: row["id"]):  # ids sort by time, as audit_rows orders
        detail = json.loads(row["detail"] or "{}")
        made_active = detail.get("profile") if row["action"] == "profile.installed" else row["subject_id"]
        if detail.get("model") == model and made_active == profile_id:
            found = (True, detail.get("previous"))
    return found
