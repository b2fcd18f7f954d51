"""Site profiles: a site's own temperature and thresholds for one model version, beside the data.

A profile never edits the shipped model. It lives at `<data_dir>/profiles/<model>/<id>.toml`,
immutable once written; `<data_dir>/profiles/<model>/active` holds the id in force (absent or
empty: the shipped calibration). The serving layer (`ActiveProfiles`, read by `ServedModel`)
applies the active profile's temperature and the thresholds of the operating points it names
(the others, and a clip threshold it does not give, keep the manifest's). A profile is fitted to
weights: it also serves a later version whose every variant has the same sha256 as the version
it was made for (a release that chose only its operating points again, tools/rerelease.py), as
`<data_dir>/profiles/<model>/weights` records them on this device (when a profile serves or is
made, and when a model update replaces a version, with its shipped temperature in
`temperatures`, so the results it made can be read back there); a profile made for other
weights is ignored with a warning. Every result records the profile's id.

Profiles come from `edge models calibrate` (source "data" or "reviews") or from the hub
(source "hub", signed and installed like a model update); the file format is the same.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import uuid
from pathlib import Path
from typing import Literal

import tomli_w
from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.compat import tomllib
from edge.errors import Code, EdgeError
from edge.inference.registry import Manifest, ModelEntry, OperatingPoint
from edge.store.files import fsync_dir, write_atomically

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROFILES = "profiles"
ACTIVE = "active"
WEIGHTS = "weights"
"""Lines `<version> <weights id>`: each version's weights, as this device met them (remember_weights)."""
TEMPERATURES = "temperatures"
"""Lines `<version> <temperature>`: each version's shipped temperature, recorded with its weights
(its results' logits are read back with it once the version is replaced). A file of its own: edges
older than it read `weights` as they did."""
STAMP = re.compile(r"^\d{8}T\d{6}Z$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfilePoint(_Strict):
    """One operating point as the site refitted it, with its figures on the site's cases."""

    threshold: float = Field(ge=0, le=1)
    description: str = ""
    sensitivity: float | None = None
    specificity: float | None = None
    sensitivity_ci95: tuple[float, float] | None = None
    specificity_ci95: tuple[float, float] | None = None
    clip_threshold: float | None = Field(default=None, ge=0, le=1)
    """For clips; None keeps the manifest's clip threshold."""


class PointFigures(_Strict):
    accuracy: float
    sensitivity: float
    specificity: float


class SiteProfile(_Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.+-]*-site-\d{8}T\d{6}Z$")
    """`<model>-<model_version>-site-<UTC stamp>`: unique per model, sorts by time."""
    model: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    model_version: str
    created_at: str = Field(pattern=r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
    source: Literal["data", "reviews", "hub"]
    description: str = ""
    """What the cases were (never patient data or file names)."""
    temperature: float = Field(gt=0)
    cases: int = Field(ge=0)
    cases_per_class: dict[str, int] = Field(default_factory=dict)
    operating_points: dict[str, ProfilePoint] = Field(default_factory=dict)
    before: dict[str, float | PointFigures] = Field(default_factory=dict)
    """The shipped calibration on the same cases: `auc`, and per operating point name its
    accuracy, sensitivity and specificity."""
    after: dict[str, float | PointFigures] = Field(default_factory=dict)
    """The same with this profile (on the cases it was fitted on: optimistic), and per refitted
    point `<name> (cross-validated)`: each case read by a point chosen on the others
    (`calibration.out_of_fold`), the figure to set beside `before`."""

    @model_validator(mode="after")
    def _consistent(self) -> SiteProfile:
        if not self.id.startswith(f"{self.model}-{self.model_version}-site-"):
            raise ValueError(f"id {self.id!r} does not name {self.model} {self.model_version}")
        for side in (self.before, self.after):
            for key, value in side.items():
                if (key == "auc") != isinstance(value, float):
                    raise ValueError(f"{key!r}: auc is a number, an operating point has its figures")
        return self

    def point(self, name: str, shipped: OperatingPoint) -> OperatingPoint:
        """The operating point `name` as served under this profile."""
        mine = self.operating_points.get(name)
        if mine is None:
            return shipped
        return OperatingPoint(
            threshold=mine.threshold,
            description=mine.description,
            sensitivity=mine.sensitivity,
            specificity=mine.specificity,
            clip_threshold=shipped.clip_threshold if mine.clip_threshold is None else mine.clip_threshold,
        )


def new_id(model: str, version: str, created_at: str) -> str:
    """`created_at` as the profile's UTC stamp: 2026-12-02T16:05:01Z -> 20261202T160501Z."""
    stamp = created_at.replace("-", "").replace(":", "")
    return f"{model}-{version}-site-{stamp}"


def folder(data_dir: Path, model: str) -> Path:
    return data_dir / PROFILES / model


def read_profile(path: Path) -> SiteProfile:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
        profile = SiteProfile(**raw)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdgeError(Code.PROFILE_INVALID, f"site profile {path.name} cannot be read: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise EdgeError(Code.PROFILE_INVALID, f"site profile {path.name}: {where}: {first['msg']}") from exc
    if path.stem != profile.id:
        raise EdgeError(Code.PROFILE_INVALID, f"site profile {path.name} names itself {profile.id!r}")
    return profile


class ProfileExists(EdgeError):
    """A profile with this id is on disk already (two calibrations in one second)."""


def write_profile(data_dir: Path, profile: SiteProfile) -> Path:
    """Write a new profile, never over an existing one (profiles are history), even when two
    are written at once: the whole file is linked into place, which fails if the name is taken."""
    path = folder(data_dir, profile.model) / f"{profile.id}.toml"
    data = profile.model_dump(mode="json", exclude_none=True)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}.new")
    write_atomically(staged, tomli_w.dumps(data).encode())
    try:
        os.link(staged, path)
    except FileExistsError:
        raise ProfileExists(Code.PROFILE_INVALID, f"site profile {profile.id} already exists") from None
    except OSError as exc:  # a file system without hard links, a full disk
        raise EdgeError(Code.STORE_WRITE_FAILED, f"site profile {profile.id} not written: {exc}") from exc
    finally:
        staged.unlink(missing_ok=True)
    fsync_dir(path.parent)
    return path


def load(data_dir: Path, model: str, profile_id: str) -> SiteProfile:
    path = folder(data_dir, model) / f"{profile_id}.toml"
    if "/" in profile_id or not path.is_file():
        raise EdgeError(Code.PROFILE_INVALID, f"no site profile {profile_id!r} for {model}")
    return read_profile(path)


def history(data_dir: Path, model: str) -> list[SiteProfile]:
    """Every readable profile of `model`, oldest first (ids sort by time); unreadable ones logged."""
    out = []
    for path in sorted(folder(data_dir, model).glob("*.toml")):
        try:
            out.append(read_profile(path))
        except EdgeError as error:
            log.warning("%s", error.one_line())
    return sorted(out, key=lambda p: (p.created_at, p.id))


def active_id(data_dir: Path, model: str) -> str | None:
    try:
        text = (folder(data_dir, model) / ACTIVE).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgeError(Code.PROFILE_INVALID, f"{model}: the active profile cannot be read: {exc}") from exc
    return text or None


def activate(data_dir: Path, model: str, profile_id: str | None) -> None:
    """Make `profile_id` the one in force (None: the shipped calibration), atomically."""
    if profile_id is not None:
        load(data_dir, model, profile_id)  # refuses an unknown or unreadable id
    write_atomically(folder(data_dir, model) / ACTIVE, ((profile_id or "") + "\n").encode())


def weights_id(entry: ModelEntry) -> str:
    """One id for a version's weights: every variant's name and signed sha256."""
    return manifest_weights_id(entry.manifest)


def manifest_weights_id(manifest: Manifest) -> str:
    variants = sorted(manifest.variants.items())
    return hashlib.sha256("\n".join(f"{name} {spec.sha256}" for name, spec in variants).encode()).hexdigest()


def _record(data_dir: Path, model: str, name: str) -> dict[str, str]:
    """version -> value, from one of the per-version records (unreadable: none, logged)."""
    try:
        text = (folder(data_dir, model) / name).read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s: the record of its versions' %s cannot be read: %s", model, name, exc)
        return {}
    return dict(line.split(" ", 1) for line in text.splitlines() if line.count(" ") == 1)


def recorded_weights(data_dir: Path, model: str) -> dict[str, str]:
    """version -> weights id, as `remember_weights` wrote them."""
    return _record(data_dir, model, WEIGHTS)


def recorded_temperatures(data_dir: Path, model: str) -> dict[str, float]:
    """version -> shipped temperature, as `remember_weights` wrote them (since this record began)."""
    out = {}
    for version, text in _record(data_dir, model, TEMPERATURES).items():
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            out[version] = value
        else:
            log.warning("%s: the recorded temperature of %s is not one: %r", model, version, text)
    return out


def remember_weights(data_dir: Path, entry: ModelEntry) -> None:
    """Record which weights and temperature this version has, so that a profile fitted for it
    can follow a later version with the same weights, and its reviewed results still count
    there. A failure (a full disk) is logged: serving goes on."""
    version = entry.manifest.version
    records = (
        (WEIGHTS, recorded_weights(data_dir, entry.name), weights_id(entry)),
        (TEMPERATURES, _record(data_dir, entry.name, TEMPERATURES), repr(entry.manifest.output.temperature)),
    )
    for name, known, value in records:
        if known.get(version) == value:
            continue
        known[version] = value
        try:
            write_atomically(
                folder(data_dir, entry.name) / name,
                "".join(f"{v} {w}\n" for v, w in sorted(known.items())).encode(),
            )
        except (OSError, EdgeError) as exc:  # a full disk (DISK_FULL) must not stop serving
            log.warning("%s %s: its %s could not be recorded: %s", entry.name, version, name, exc)


def same_weights(data_dir: Path, entry: ModelEntry) -> list[str]:
    """The other versions this device recorded with this version's weights, oldest first by
    their version number."""
    mine = weights_id(entry)
    versions = [v for v, w in recorded_weights(data_dir, entry.name).items() if w == mine]
    return sorted((v for v in versions if v != entry.manifest.version), key=version_order)


def version_order(version: str) -> tuple[int, Version | str]:
    """Sort key: release numbers by their value (1.10.0 after 1.9.0); other text (a hand-made
    version a release would refuse) before them all, as text, so it is never taken as newest."""
    try:
        return (1, Version(version))
    except InvalidVersion:
        return (0, version)


def serves(data_dir: Path, profile: SiteProfile, entry: ModelEntry) -> bool:
    """Whether `profile` applies to the installed `entry`: made for this version, or for one whose
    weights this device recorded as identical to this version's."""
    if profile.model_version == entry.manifest.version:
        return True
    return recorded_weights(data_dir, entry.name).get(profile.model_version) == weights_id(entry)


class ActiveProfiles:
    """What serving applies: each model's active profile, re-read when the `active` file changes.

    One stat per call (the file is replaced atomically, so its inode changes with every write):
    a profile activated or reset by the CLI or the sync agent is in force in a running agent
    from its next batch, without a restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._seen: dict[str, tuple[tuple[int, int, int] | None, SiteProfile | None]] = {}
        self._serves: dict[tuple[str, str], bool] = {}  # (profile id, model version)

    def get(self, entry: ModelEntry) -> SiteProfile | None:
        name, version = entry.name, entry.manifest.version
        path = folder(self.data_dir, name) / ACTIVE
        try:
            st = os.stat(path)
            key: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        seen = self._seen.get(name)
        if seen is not None and seen[0] == key:
            profile = seen[1]
        else:
            profile = self._read(name, key)
            self._seen[name] = (key, profile)
        if profile is None:
            return None
        verdict = self._serves.get((profile.id, version))
        if verdict is None:  # once per profile and version, not once per image
            verdict = self._serves[(profile.id, version)] = serves(self.data_dir, profile, entry)
            if profile.model_version == version:
                remember_weights(self.data_dir, entry)
            elif verdict:
                log.info(
                    "%s: site profile %s, fitted for version %s, serves %s: the same weights",
                    name,
                    profile.id,
                    profile.model_version,
                    version,
                )
            else:
                log.warning(
                    "%s: site profile %s is for version %s, this is %s with other weights: "
                    "ignored, the shipped calibration serves (calibrate again for this version)",
                    name,
                    profile.id,
                    profile.model_version,
                    version,
                )
        return profile if verdict else None

    def _read(self, name: str, key: tuple[int, int, int] | None) -> SiteProfile | None:
        if key is None:
            return None
        try:
            chosen = active_id(self.data_dir, name)
            profile = load(self.data_dir, name, chosen) if chosen else None
        except EdgeError as error:
            # Loudly: the shipped calibration serves, and results record no profile.
            log.error("%s: serving the shipped calibration: %s", name, error.one_line())
            return None
        if profile is not None:
            log.info("%s: site profile %s in force", name, profile.id)
        return profile


def parse_profile(text: str) -> SiteProfile:
    """A profile from its TOML text, as a signed release carries it (tomllib's and pydantic's
    errors propagate: the caller says which release was refused). Arrays nested thousands deep
    exhaust tomllib's recursion: a ValueError too (it was a hub's 500)."""
    try:
        raw = tomllib.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be a site profile") from None
    return SiteProfile(**raw)


def profile_toml(profile: SiteProfile) -> str:
    """A profile as TOML text (what is signed and installed): no nulls, TOML has none."""
    return tomli_w.dumps(profile.model_dump(mode="json", exclude_none=True))
