"""Site profiles made from the specialists' reviews, signed like model releases and offered to
one site's devices. No HTTP.

The hub never holds the publisher's key, so a profile goes through three steps:
`draft` (here: the suggestion as an unsigned `ProfileRelease`), `signatures.sign` wherever the
key is (`edge hub profile sign`, or `edge hub profile publish --key` in one go), and `publish`
(here: checked against the draft's rules, stored, audited). Each device of the site is offered
the newest profile of each model version; it verifies the signature with its pinned key.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Engine, insert, select, update

from edge.hub import agreement, db
from edge.hub.audit import record_audit
from edge.hub.errors import HubError
from edge.hub.identities import Device
from edge.hub.releases import require_publisher_signature
from edge.inference.site_profile import (
    PointFigures,
    ProfilePoint,
    SiteProfile,
    parse_profile,
    profile_toml,
)
from edge.sync import protocol
from edge.sync.protocol import WireCode


def draft(
    engine: Engine,
    models_dir: Path | None,
    programme: str,
    site: str,
    model: str,
    version: str | None = None,
    now: datetime | None = None,
) -> protocol.ProfileRelease:
    """The unsigned profile of this site's suggestion (the newest model version reviewed there,
    unless `version` says which); refused with TOO_FEW_CASES or BAD_PROFILE and the reason."""
    groups = [
        group
        for key, group in agreement.reviewed_cases(engine, models_dir).items()
        if (key.programme, key.site, key.model) == (programme, site, model)
        and (version is None or version in group.versions)
    ]
    if not groups:
        raise HubError(
            404, WireCode.TOO_FEW_CASES, f"no reviewed results of {model} from site {site!r} ({programme})"
        )
    group = groups[-1]  # sorted by version: give --version for the weights of an older one
    manifest = group.manifest
    figures = agreement.figures(group, manifest)
    suggestion = figures["suggestion"]
    if suggestion is None:
        code = WireCode.TOO_FEW_CASES if manifest is not None else WireCode.BAD_PROFILE
        raise HubError(409, code, str(figures["refusal"]))
    moment = (now or datetime.now(timezone.utc)).replace(microsecond=0)
    created_at = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    before, after = _figures(suggestion["before"]), _figures(suggestion["after"])
    profile = SiteProfile(
        id=f"{model}-{group.key.version}-site-{moment.strftime('%Y%m%dT%H%M%SZ')}",
        model=model,
        model_version=group.key.version,
        created_at=created_at,
        source="hub",
        description=(
            f"Refitted on the hub from {suggestion['cases']} results of site {site or '(unnamed)'} "
            f"({programme}){_pooled(group.versions)} reviewed by its specialists; thresholds chosen "
            "on those same cases."
        ),
        temperature=suggestion["temperature"],
        cases=suggestion["cases"],
        cases_per_class=suggestion["cases_per_class"],
        operating_points={
            name: ProfilePoint(**point) for name, point in suggestion["operating_points"].items()
        },
        before=before,
        after=after,
    )
    return protocol.ProfileRelease(
        id=profile.id,
        model=model,
        model_version=group.key.version,
        programme=programme,
        site=site,
        created_at=created_at,
        profile=profile_toml(profile),
        signature="",
    )


def _pooled(versions: list[str]) -> str:
    return f" (versions {', '.join(versions)}: the same weights)" if len(versions) > 1 else ""


def _figures(side: dict[str, Any]) -> dict[str, float | PointFigures]:
    """The suggestion's before or after figures in the profile's schema: `auc`, and per
    operating point its accuracy, sensitivity and specificity (the threshold the page shows is
    the manifest's or the profile's own, not a figure). A point's figures are all or nothing: a
    suggestion whose figures could not all be computed (a class missing among the cases it was
    fitted on) is refused rather than signed with a gap."""
    out: dict[str, float | PointFigures] = {}
    for key, value in side.items():
        if key == "auc":
            if value is None:
                raise HubError(409, WireCode.TOO_FEW_CASES, "the AUC on the site's cases cannot be computed")
            out[key] = float(value)
            continue
        figures = {name: value.get(name) for name in PointFigures.model_fields}
        missing = [name for name, figure in figures.items() if figure is None]
        if missing:
            raise HubError(
                409,
                WireCode.TOO_FEW_CASES,
                f"{key}: the {', '.join(missing)} on the site's cases cannot be computed",
            )
        out[key] = PointFigures(**{name: float(figure) for name, figure in figures.items()})
    return out


def check(release: protocol.ProfileRelease) -> SiteProfile:
    """The release's profile, which must say what the release says it is."""
    if not release.signature:
        raise HubError(
            400, WireCode.BAD_PROFILE, "the profile is not signed: sign it with the publisher's key"
        )
    try:
        profile = parse_profile(release.profile)
    except (ValueError, ValidationError) as error:
        raise HubError(400, WireCode.BAD_PROFILE, f"the profile does not parse: {error}") from error
    if (profile.id, profile.model, profile.model_version, profile.created_at) != (
        release.id,
        release.model,
        release.model_version,
        release.created_at,
    ):
        raise HubError(
            400, WireCode.BAD_PROFILE, "the profile's id, model, version or time differ from the release's"
        )
    return profile


def publish(
    engine: Engine, release: protocol.ProfileRelease, actor: str, publisher_key: str | None = None
) -> str | None:
    """Store a signed profile for its site's devices (the signature is the devices' to verify;
    the hub holds no private key, and checks it too when it knows the publisher's public key,
    `[hub] publisher_public_key`). Publishing the same one again changes nothing; the same profile
    with another signature replaces it (one devices refused, signed again with the publisher's
    key as docs/codes.md advises; a device takes its other bytes as new); another profile under
    a published id is refused (devices may already serve the first: one id, one calibration).
    Returns what the publisher must know: that it replaced one, or that a newer profile of the
    same site and version is published, which devices are offered instead."""
    profile = check(release)
    require_publisher_signature(release.model_dump(), publisher_key, WireCode.BAD_PROFILE)
    here = (
        db.site_profiles.c.programme == release.programme,
        db.site_profiles.c.site == release.site,
    )
    values = {
        "model": release.model,
        "model_version": release.model_version,
        "created_at": release.created_at,
        "temperature": profile.temperature,
        "release": release.model_dump(),
        "published_at": db.now(),
        "published_by": actor,
    }
    with engine.begin() as conn:
        this_id = (*here, db.site_profiles.c.profile_id == release.id)
        known = conn.execute(select(db.site_profiles.c.release).where(*this_id)).first()
        if known is not None and known.release == release.model_dump():
            return None
        if known is not None and _unsigned(known.release) != _unsigned(release.model_dump()):
            raise HubError(
                409,
                WireCode.BAD_PROFILE,
                f"another profile {release.id} is published for this site: draft a new one (a new id)",
            )
        if known is None:
            conn.execute(
                insert(db.site_profiles).values(
                    profile_id=release.id, programme=release.programme, site=release.site, **values
                )
            )
        else:
            conn.execute(update(db.site_profiles).where(*this_id).values(**values))
        newer = conn.execute(
            select(db.site_profiles.c.profile_id)
            .where(
                *here,
                db.site_profiles.c.model == release.model,
                db.site_profiles.c.model_version == release.model_version,
                db.site_profiles.c.created_at > release.created_at,
            )
            .order_by(db.site_profiles.c.created_at.desc())
        ).first()
    record_audit(
        engine,
        actor,
        "profile.published" if known is None else "profile.republished",
        profile=release.id,
        programme=release.programme,
        site=release.site,
        model=release.model,
        version=release.model_version,
    )
    notes = []
    if known is not None:
        notes.append(f"its signature replaces the one published for {release.id} before")
    if newer is not None:
        notes.append(
            f"a newer profile, {newer.profile_id}, is published for this site and version: devices "
            "are offered the newest, so this one reaches none"
        )
    return "; ".join(notes) or None


def _unsigned(release: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in release.items() if k != "signature"}


def profiles_for(engine: Engine, device: Device) -> list[protocol.ProfileRelease]:
    """The newest profile of each model version for this device's site."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(db.site_profiles.c.release)
            .where(db.site_profiles.c.programme == device.programme, db.site_profiles.c.site == device.site)
            .order_by(db.site_profiles.c.created_at, db.site_profiles.c.seq)
        ).all()
    newest: dict[tuple[str, str], protocol.ProfileRelease] = {}
    for row in rows:
        release = protocol.ProfileRelease(**row.release)
        newest[(release.model, release.model_version)] = release
    return list(newest.values())


def list_profiles(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                db.site_profiles.c.profile_id,
                db.site_profiles.c.programme,
                db.site_profiles.c.site,
                db.site_profiles.c.model,
                db.site_profiles.c.model_version,
                db.site_profiles.c.created_at,
                db.site_profiles.c.temperature,
                db.site_profiles.c.published_at,
                db.site_profiles.c.published_by,
            ).order_by(db.site_profiles.c.programme, db.site_profiles.c.site, db.site_profiles.c.created_at)
        ).all()
    return [dict(row._mapping) for row in rows]
