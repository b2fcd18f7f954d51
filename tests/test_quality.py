"""Lint, types and the import contracts are part of the test suite, so CI runs them too."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)


def test_ruff_lint() -> None:
    result = run(sys.executable, "-m", "ruff", "check", "edge", "tools", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run(sys.executable, "-m", "ruff", "format", "--check", "edge", "tools", "tests")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_core() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_import_contracts() -> None:
    binary = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("lint-imports (import-linter) is not installed")
    result = run(binary, "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr
