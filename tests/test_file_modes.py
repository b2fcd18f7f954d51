"""Issue 17: data files are their owner's alone, whatever umask the program was started with."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import Settings
from edge.operations import doctor, file_modes
from edge.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.security
def test_the_cli_creates_its_database_private_under_a_permissive_umask(tmp_path: Path) -> None:
    """Run from a shell with umask 022 (not under systemd's UMask=0077): edge.db, with patient
    names, was created world-readable (0644)."""
    data = tmp_path / "data"
    subprocess.run(
        [sys.executable, "-m", "edge", "--data-dir", str(data), "status"],
        check=True,
        capture_output=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: os.umask(0o022),  # sets the child's umask only
    )
    created = [data, *data.iterdir()]
    assert (data / "edge.db") in created
    for path in created:
        assert not _mode(path) & 0o077, f"{path.name} is {oct(_mode(path))}"


@pytest.mark.security
def test_doctor_tightens_existing_readable_data_files(settings: Settings) -> None:
    """Files made before the fix (or copied in) were left readable by `nobody`."""
    with Store(settings.data_dir):
        pass
    hub = settings.hub_dir
    hub.mkdir(parents=True)
    (hub / "hub.db").write_bytes(b"argon2 hashes")
    for path in (settings.data_dir, settings.db_path, hub, hub / "hub.db"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)

    lines = {check.name: check for check in doctor.run_checks(settings)}
    assert lines["file modes"].level == "warn", lines["file modes"]
    for path in (settings.data_dir, settings.db_path, hub, hub / "hub.db"):
        assert not _mode(path) & 0o077, f"{path} is {oct(_mode(path))}"
    assert _mode(settings.db_path) == 0o600

    again = {check.name: check for check in doctor.run_checks(settings)}
    assert again["file modes"].level == "pass"


def test_tighten_leaves_symlinked_targets_alone(tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    os.chmod(outside, 0o644)
    root = tmp_path / "data"
    root.mkdir(mode=0o700)
    (root / "link").symlink_to(outside)
    done = file_modes.tighten([root])
    assert done.changed == []
    assert _mode(outside) == 0o644
