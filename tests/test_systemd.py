"""The unit files: `systemd-analyze verify` passes and the hardening scores <= 2.0 (offline)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = sorted((Path(__file__).resolve().parent.parent / "systemd").glob("*.service"))


def analyze_or_skip() -> str:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run must apt-get install systemd")
        pytest.skip("systemd-analyze is not installed")
    return binary


def installed_copy(unit: Path, folder: Path) -> Path:
    """The unit as installed, with ExecStart pointing at this environment's `edge`."""
    edge = Path(sys.executable).parent / "edge"
    text = unit.read_text().replace("/opt/edge/.venv/bin/edge", str(edge))
    target = folder / unit.name
    target.write_text(text)
    return target


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_verifies(unit: Path, tmp_path: Path) -> None:
    analyze = analyze_or_skip()
    result = subprocess.run(
        [analyze, "verify", str(installed_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if (unit.name in line and "Unknown" not in line) or "Failed" in line
    ]
    assert result.returncode == 0, result.stdout + result.stderr
    assert not problems, problems


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_unit_hardening_scores_at_most_2(unit: Path, tmp_path: Path) -> None:
    analyze = analyze_or_skip()
    result = subprocess.run(
        [analyze, "security", "--offline=yes", str(installed_copy(unit, tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout + result.stderr)
    if match is None and "offline" in (result.stderr or ""):
        pytest.skip(f"this systemd cannot score offline: {result.stderr.strip()[:200]}")
    assert match, result.stdout[-2000:] + result.stderr
    score = float(match.group(1))
    print(f"\n{unit.name}: systemd-analyze security exposure {score}")
    assert score <= 2.0


def test_units_name_what_the_issue_requires() -> None:
    text = (Path(__file__).resolve().parent.parent / "systemd" / "edge-agent.service").read_text()
    for setting in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=edge",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectHome=yes",
        "RestrictAddressFamilies=",
        "CapabilityBoundingSet=",
        "DevicePolicy=closed",
        "DeviceAllow=",
        "OPENBLAS_CORETYPE=ARMV8",
    ):
        assert setting in text, setting
    assert "PrivateDevices=yes" not in text  # it would hide the GPU


@pytest.mark.security
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_units_bound_their_memory(unit: Path) -> None:
    """Issue 17: a service without a memory bound could take the whole 8 GB of a Jetson (shared
    with the GPU) and make the kernel kill another one. MemoryHigh below MemoryMax, both set."""
    settings = dict(line.split("=", 1) for line in unit.read_text().splitlines() if line.startswith("Memory"))
    units = {"K": 2**10, "M": 2**20, "G": 2**30}

    def size(value: str) -> int:
        return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)

    assert "MemoryMax" in settings, unit.name
    assert "MemoryHigh" in settings, unit.name
    assert 0 < size(settings["MemoryHigh"]) < size(settings["MemoryMax"]) <= 4 * 2**30


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_a_refusal_that_needs_a_person_is_not_restarted(unit: Path) -> None:
    """A service refusing for a reason a restart cannot mend exits EXIT_NEEDS_A_PERSON (a bad
    configuration: EXIT_USAGE); the unit must not restart it into its start limit."""
    from edge.cli.base import EXIT_NEEDS_A_PERSON, EXIT_USAGE

    [line] = [line for line in unit.read_text().splitlines() if line.startswith("RestartPreventExitStatus=")]
    assert set(line.split("=", 1)[1].split()) == {str(EXIT_USAGE), str(EXIT_NEEDS_A_PERSON)}
