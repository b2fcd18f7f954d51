"""`edge store backup`, `edge store restore`: the device database's backups (edge/store/backup.py)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from edge.cli.base import Context, cli, pass_context
from edge.errors import Code, EdgeError
from edge.processes import InstanceLock, holder


@cli.group("store")
def store_group() -> None:
    """The device database: backup and restore (images are not in a backup; see --help of each)."""


@store_group.command("backup")
@click.argument("dest", required=False, type=click.Path(path_type=Path))
@pass_context
def store_backup(obj: Context, dest: Path | None) -> None:
    """Copy the database to DEST (a new file, or a folder; default: <data dir>/backups/).

    Safe while the agent runs: one consistent snapshot through SQLite's backup API, checked
    with integrity_check, renamed into place only when sound, readable by its owner only. It
    holds every row (results, jobs, reviews, notes, the outbox, the audit trail), not the
    image, heatmap and clip files, nor the sync credential.
    """
    from edge.store.backup import backup

    settings = obj.settings
    info = backup(settings.data_dir, dest, busy_timeout_ms=settings.store.busy_timeout_ms)
    click.echo(
        f"backed up {info.results} result(s), schema {info.schema_version}, "
        f"{info.size / 2**20:.1f} MB, integrity ok: {info.path}"
    )


@store_group.command("restore")
@click.argument("src", type=click.Path(dir_okay=False, path_type=Path))
@pass_context
def store_restore(obj: Context, src: Path) -> None:
    """Put the backup SRC in place of the database (stop the agent and the sync agent first).

    SRC must pass integrity_check and come from this version of edge or an older one (an older
    one is upgraded). The database it replaces is kept as edge.db.damaged-<time>. Images stored
    after the backup was made have no row in it: the agent sets them aside in orphans/ when it
    starts; files set aside earlier that rows of the backup point at are put back now.
    """
    from edge.operations.health import agent_lock
    from edge.operations.housekeeping import put_back_orphans
    from edge.store.backup import restore
    from edge.sync import sync_lock

    settings = obj.settings
    with contextlib.ExitStack() as held:
        # Hold the agent's and the sync agent's instance locks while the files change: neither
        # may be running, and neither can start halfway through.
        for path, who, unit in (
            (agent_lock(settings), "agent", "edge-agent"),
            (sync_lock(settings), "sync agent", "edge-sync"),
        ):
            held.callback(_hold(path, who, unit).release)
        info = restore(settings.data_dir, src, busy_timeout_ms=settings.store.busy_timeout_ms)
        # Before anything syncs: a file still set aside would be withdrawn from the hub.
        returned = put_back_orphans(settings)
    aside = f"; the database it replaced is kept as {info.kept_aside}" if info.kept_aside else ""
    back = f"; {returned} file(s) put back from orphans/" if returned else ""
    restored = f"restored {info.results} result(s) (schema {info.schema_version}) from {info.restored_from}"
    click.echo(f"{restored}{aside}{back}")


def _hold(path: Path, who: str, unit: str) -> InstanceLock:
    lock = InstanceLock(path, "restore (`edge store restore`)")
    try:
        lock.acquire()
    except EdgeError as error:
        if error.code is not Code.ALREADY_RUNNING:
            raise
        first = holder(path) or {}
        raise EdgeError(
            Code.STORE_IN_USE,
            f"the {who} is running (pid {first.get('pid', '?')}): stop it (`systemctl stop {unit}`), "
            "then restore again",
        ) from None
    return lock
