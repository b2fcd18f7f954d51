"""Model releases from the hub: signed, resumable, verified, installed atomically, self-tested,
rolled back on failure, never a downgrade. The sync runner pulls them after each round's
results, files and reviews; the HTTP goes through the `SyncClient` it is given.

A release is signed with the publisher's ed25519 key (tools/publish_model.py); the device pins
the public key (`[sync] public_key`) and ignores anything else, so neither the hub nor the link
can change what runs on the device. Files stream to disk in the state directory with HTTP Range
(a cut resumes where it stopped), never more than their signed size (the transfer stops at the
first byte past it), each checked against the signed sha256; a file the installed version already
holds with that size and sha256 (the weights of a release that changed only its calibration) is
copied instead of fetched. A file name must be a safe relative path (`release_paths.py`: the
shipped layout's samples/ and plots/ folders, nothing outside).
Installation swaps the model folder with renames and keeps the previous one (the newest
`KEEP_PREVIOUS` per model: older ones are deleted); a self-test
(manifest, checksums, ONNX Runtime on the model's samples) runs before and after the swap, and
failure restores the old one.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
from packaging.version import InvalidVersion, Version

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.inference import site_profile
from edge.inference.pool import tensor_names
from edge.inference.registry import (
    ModelEntry,
    Registry,
    manifest_schema_id,
    parse_manifest,
    read_manifest,
    set_aside,
    set_aside_path,
    sha256_file,
)
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from edge.store.files import write_atomically
from edge.sync import protocol, signatures
from edge.sync.client import SyncClient
from edge.sync.credential import HubUnavailable
from edge.sync.release_paths import release_path_problem

log = logging.getLogger(__name__)
KEEP_PREVIOUS = 2  # versions set aside per model in models/.previous (newest first)


def verify_signature(release: protocol.ModelRelease | protocol.ProfileRelease, public_key_hex: str) -> bool:
    """A model release or a site profile, signed by the pinned key (one scheme: signatures.py)."""
    return signatures.verify(release.model_dump(), public_key_hex)


def is_newer(candidate: str, installed: str | None) -> bool:
    if installed is None:
        return True
    try:
        return Version(candidate) > Version(installed)
    except InvalidVersion:
        return False


def self_test(models_dir: Path, name: str, settings: Settings) -> None:
    """The model loads, its files match their checksums, and FP32 gives finite outputs of the
    declared shape on its own samples (or a blank image if it ships none)."""
    entry = Registry(models_dir).get(name)
    for variant in entry.manifest.variants:
        entry.variant_file(variant)
    spec = entry.manifest.input.preprocess_spec()
    images = [decode_bytes(path.read_bytes(), path.name).pixels for path, _ in entry.samples[:8]]
    if not images:
        images = [np.zeros((spec.height, spec.width), np.uint8)]
    from edge.imaging.preprocess import preprocess_batch

    with OnnxRuntimeRunner(entry.variant_file("fp32"), tensor_names(entry), settings.runtime) as runner:
        logits = runner.infer(preprocess_batch(images, spec))[entry.manifest.output.logits]
    if logits.shape != (len(images), len(entry.manifest.output.labels)) or not np.isfinite(logits).all():
        raise EdgeError(Code.MODEL_OUTPUT_INVALID, f"{name}: the self-test produced unusable outputs")


def install(settings: Settings, staged: Path, name: str) -> None:
    """Swap `staged` (a complete model folder) in for `name`; restore the old one on failure."""
    models_dir = settings.models.dir
    self_test(staged.parent, name, settings)
    target = models_dir / name
    backup = set_aside_path(models_dir, name, time.time())
    had_old = target.exists()
    # Until the new version has passed its self-test in place, a kill leaves a marker naming the
    # version set aside: `recover_installs` puts it back at the next start (the model was gone,
    # every film refused NO_MODEL_FOR_INPUT, until a later round installed the release again).
    marker = models_dir / f"{INSTALLING}{name}"
    write_atomically(marker, json.dumps({"backup": str(backup) if had_old else None}).encode())
    if had_old:  # which weights the outgoing version had: its site profiles may follow
        try:
            site_profile.remember_weights(settings.data_dir, Registry(models_dir).get(name))
        except EdgeError as error:
            log.warning("%s: the installed version cannot be read: %s", name, error.one_line())
        backup.parent.mkdir(parents=True, exist_ok=True)
        target.rename(backup)
    try:
        staged.rename(target)
        self_test(models_dir, name, settings)
    except Exception:
        log.exception("model %s failed after installation: rolling back", name)
        if target.exists():
            shutil.rmtree(target)
        if had_old:
            backup.rename(target)
        raise
    finally:
        marker.unlink(missing_ok=True)
    log.info("installed model %s (previous kept in %s)", name, backup if had_old else "nowhere: new model")
    prune_previous(settings, name, backup if had_old else None)


INSTALLING = ".installing-"
"""`<models dir>/.installing-<model>`: an install in progress, naming the version set aside."""


def recover_installs(models_dir: Path) -> list[str]:
    """Undo every install a kill or a power cut interrupted (`install`'s marker): the version it
    set aside goes back, an unverified new one out (the release is installed again by a later
    round). At the start of the sync service and the agent; a model already back is left.
    Returns the models put back."""
    restored = []
    for marker in sorted(models_dir.glob(f"{INSTALLING}*")):
        name = marker.name.removeprefix(INSTALLING)
        try:
            backup = json.loads(marker.read_text()).get("backup")
        except (OSError, ValueError, AttributeError):
            backup = None
        target = models_dir / name
        try:
            if backup and Path(backup).is_dir():
                if target.exists():
                    shutil.rmtree(target)
                Path(backup).rename(target)
                restored.append(name)
                log.warning("model %s: an interrupted update was undone (%s put back)", name, backup)
            marker.unlink(missing_ok=True)
        except OSError as exc:  # another process recovering at the same start, or a read-only disk
            log.warning("model %s: an interrupted update could not be undone yet: %s", name, exc)
    return restored


def prune_previous(
    settings: Settings, name: str, keep_also: Path | None = None, keep: int = KEEP_PREVIOUS
) -> None:
    """Delete all but the newest `keep` folders an update set aside for `name` (and never
    `keep_also`, the one just set aside, whatever a wrong clock made of its name): a device
    updated every few weeks must not fill its disk with old weights. What each deleted version
    was is recorded first (`site_profile.remember_weights`: its weights and temperature, so its
    reviewed results still count). Failures are logged."""
    candidates = [folder for folder in set_aside(settings.models.dir, name) if folder != keep_also]
    for folder in candidates[keep - (keep_also is not None) :]:
        try:
            site_profile.remember_weights(
                settings.data_dir, ModelEntry(read_manifest(folder / "model.toml"), folder)
            )
        except EdgeError as error:
            log.info("model %s: %s holds no readable manifest: %s", name, folder, error.one_line())
        try:
            shutil.rmtree(folder)
        except OSError as exc:
            log.warning("model %s: the old version in %s could not be deleted: %s", name, folder, exc)
        else:
            log.info("model %s: deleted %s (the %d newest set-aside versions are kept)", name, folder, keep)


def _room_for(settings: Settings, release: protocol.ModelRelease, staging: Path) -> None:
    """DISK_FULL (tried again next round) unless the release's files fit beside the room the
    agent keeps for studies (`[store] min_free_mb`): a release larger than the free space filled
    the data disk, the agent stopped taking studies, and its partial files stayed. What an
    earlier round downloaded counts as had; where there is no room it is deleted."""
    had = sum(f.stat().st_size for f in staging.rglob("*") if f.is_file()) if staging.exists() else 0
    needed = max(0, sum(release.sizes.values()) - had)
    free = shutil.disk_usage(settings.data_dir).free
    keep = settings.store.min_free_mb * 1024 * 1024
    if free - needed >= keep:
        return
    shutil.rmtree(staging, ignore_errors=True)
    raise EdgeError(
        Code.DISK_FULL,
        f"{release.name} {release.version}: {needed / 1e6:.0f} MB to download, {free / 1e6:.0f} MB free,"
        f" {settings.store.min_free_mb} MB kept for studies: not downloaded; tried again next round",
    )


def _download(client: SyncClient, release: protocol.ModelRelease, file: str, target: Path) -> None:
    """Stream one file to disk, resumable: a partial file continues from its size (HTTP Range).
    The signed size is enforced while the bytes arrive (the transfer stops at the first byte
    past it) and the signed sha256 is checked before the file takes its name."""
    signed_size, partial = release.sizes[file], target.with_name(target.name + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    if have > signed_size:
        partial.unlink()
        have = 0
    if have < signed_size:
        with client.release_file(release, file, have) as response:
            resumed = have > 0 and response.status_code == 206
            try:
                written = _stream(response, partial, have if resumed else 0, signed_size, resumed)
            except OSError as exc:  # the disk filled meanwhile (another writer): nothing kept
                partial.unlink(missing_ok=True)
                if exc.errno != errno.ENOSPC:
                    raise
                raise EdgeError(
                    Code.DISK_FULL, f"no space left to download {file}: tried again next round"
                ) from exc
            if written > signed_size:
                partial.unlink()
                raise EdgeError(
                    Code.MODEL_SIZE_MISMATCH,
                    f"{release.name} {release.version}: {file} is larger than its signed "
                    f"{signed_size} bytes: download stopped",
                )
        if written < signed_size:  # cut short: the next round resumes from here
            raise HubUnavailable(f"{file}: {written} of {signed_size} bytes arrived")
    if sha256_file(partial) != release.files[file]:
        partial.unlink(missing_ok=True)
        raise EdgeError(Code.MODEL_CHECKSUM_MISMATCH, f"{release.name} {release.version}: {file} is corrupt")
    partial.rename(target)


def _stream(response: Any, partial: Path, written: int, signed_size: int, resumed: bool) -> int:
    """The response's bytes appended to `partial` as they arrive (a cut loses nothing written),
    stopping at the first byte past `signed_size`; returns the bytes the file holds (or would)."""
    with partial.open("ab" if resumed else "wb") as out:
        for piece in response.iter_bytes():
            written += len(piece)
            if written > signed_size:
                return written
            out.write(piece)
    return written


def _fetch_files(client: SyncClient, release: protocol.ModelRelease, folder: Path, installed: Path) -> None:
    """Every file of `release` into `folder`: kept from an earlier round, copied from the
    `installed` version where it is the same, else downloaded."""
    reused = 0
    for file in release.files:
        if (folder / file).exists():
            continue
        (folder / file).parent.mkdir(parents=True, exist_ok=True)
        if _reuse_installed(installed / file, release, file, folder / file):
            reused += release.sizes[file]
        else:
            _download(client, release, file, folder / file)
    if reused:
        log.info(
            "%s %s: %d bytes already on this device (same signed sha256): not downloaded",
            release.name,
            release.version,
            reused,
        )


def _reuse_installed(source: Path, release: protocol.ModelRelease, file: str, target: Path) -> bool:
    """Copy `file` from the installed version where it has the signed size and sha256 (a release
    that keeps its weights and changes its calibration costs a slow link only its manifest).
    The copy itself is hashed, once: what takes the name is what was checked."""
    partial = target.with_name(target.name + ".part")
    try:
        if not source.is_file() or source.stat().st_size != release.sizes[file]:
            return False
        shutil.copyfile(source, partial)
    except OSError:
        return False  # unreadable here: the download path fetches it
    if sha256_file(partial) != release.files[file]:  # other bytes, or changed while copied
        partial.unlink(missing_ok=True)
        return False
    partial.rename(target)
    return True


def _unsafe_names(release: protocol.ModelRelease) -> str | None:
    """Why this release's file list cannot be written under its folder, or None."""
    if set(release.sizes) != set(release.files):
        return "its sizes and files name different files"
    for name in (release.name, release.version, *release.files):
        if release_path_problem(name) is not None:
            return release_path_problem(name)
    if "/" in release.name or "/" in release.version:
        return "a name or version with '/'"
    return None


class _Refusals:
    """Releases this device refused (a manifest of newer software, a failed self-test), kept in
    the sync state so that they are not downloaded again every round; a later version of the
    model is tried afresh, and so is every refused release once this edge reads manifests
    differently (it was updated): the refusals carry the schema fingerprint they were made under."""

    def __init__(self, client: SyncClient) -> None:
        self.outbox = client.store.outbox
        state = self.outbox.sync_state()
        self.schema = manifest_schema_id()
        self.by_key: dict[str, str] = state.get("models_refused", {})
        if self.by_key and state.get("models_refused_schema") != self.schema:
            log.info("this edge reads manifests differently now: trying %d refused again", len(self.by_key))
            self.by_key = {}
            self._save()

    def add(self, key: str, error: EdgeError) -> None:
        log.error("model release %s refused: %s", key, error.one_line())
        self.by_key[key] = error.one_line()[:300]
        self._save()

    def _save(self) -> None:
        self.outbox.set_sync_state(models_refused=self.by_key, models_refused_schema=self.schema)


def pull_models(client: SyncClient) -> int:
    """Install every signed release newer than what is installed; returns how many were."""
    settings = client.settings
    public_key = settings.sync.public_key
    if not public_key:
        return 0
    releases = client.releases()
    registry = Registry(settings.models.dir)
    refused = _Refusals(client)
    installed = 0
    for release in releases:
        current = registry.get(release.name).manifest.version if release.name in registry.names() else None
        if not is_newer(release.version, current):
            continue  # same or older: never a downgrade
        key = f"{release.name} {release.version}"
        if key in refused.by_key:
            continue
        if not verify_signature(release, public_key):
            log.error("release %s is not signed by the pinned key: ignored", key)
            continue
        unsafe = _unsafe_names(release)
        if unsafe is not None:  # signed, but a name that could write outside its folder
            refused.add(key, EdgeError(Code.MODEL_MANIFEST_INVALID, f"{key}: {unsafe}"))
            continue
        try:  # the manifest travels in the release: one this edge cannot read costs no download
            parse_manifest(release.manifest, key)
        except EdgeError as error:
            refused.add(key, error)
            continue
        # Download faults (the link, a corrupt transfer) propagate: the round is retried and
        # the download resumes. What fails installation is this release's own fault.
        staging = settings.data_dir / "sync" / "incoming" / f"{release.name}-{release.version}"
        folder = staging / release.name
        _room_for(settings, release, staging)
        folder.mkdir(parents=True, exist_ok=True)
        _fetch_files(client, release, folder, settings.models.dir / release.name)
        (folder / "model.toml").write_text(release.manifest)
        try:
            install(settings, folder, release.name)
            installed += 1
        except EdgeError as error:
            refused.add(key, error)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return installed
