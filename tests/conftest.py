from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.config import Settings, load_settings
from edge.inference.registry import Registry
from edge.store import Store

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
DEFAULT_MODEL = "cxr-pneumonia"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test reads the developer's /etc/edge, $EDGE_* or per-user data directory."""
    for name in list(os.environ):
        if name.startswith("EDGE_") or name in ("STATE_DIRECTORY", "JOURNAL_STREAM"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("edge.config.SYSTEM_CONFIG", tmp_path / "no-system-config.toml")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture(autouse=True)
def _root_logger_restored() -> Iterator[None]:
    """A command run in a test (`edge.log.configure`) sets the root logger's level (ERROR for
    some) and installs its handler: undo both, so a later test's caplog sees warnings whatever
    ran before it. (pytest's own capture handlers come and go with each phase: left alone.)"""
    from edge.log import is_configured_handler

    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)
    root.handlers[:] = [handler for handler in root.handlers if not is_configured_handler(handler)]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_dir=tmp_path / "data", models={"dir": MODELS})


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    with Store(settings.data_dir) as opened:
        yield opened


@pytest.fixture(scope="session")
def registry() -> Registry:
    return Registry(MODELS)


@pytest.fixture(scope="session")
def samples(registry: Registry) -> list[tuple[Path, str]]:
    return registry.get(DEFAULT_MODEL).samples


@pytest.fixture(scope="session")
def sample_png(samples: list[tuple[Path, str]]) -> Path:
    return next(path for path, _ in samples if path.suffix == ".png")


@pytest.fixture(scope="session")
def sample_dcm(samples: list[tuple[Path, str]]) -> Path:
    return next(path for path, _ in samples if path.suffix == ".dcm")


def png_bytes(image: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", image if image.ndim == 2 else image[:, :, ::-1])
    assert ok
    return encoded.tobytes()


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def gradient(height: int = 64, width: int = 48) -> np.ndarray:
    """A deterministic uint8 test image with structure in both directions."""
    y, x = np.mgrid[0:height, 0:width]
    return ((x * 255 // (width - 1) + y * 3) % 256).astype(np.uint8)


def eventually(condition: Callable[[], object], timeout_s: float = 10.0) -> bool:
    """Whether `condition` holds within `timeout_s`, asked every 20 ms: for what another thread
    or process does in its own time (a log line, a file, a thread ending), where a fixed sleep
    fails on a loaded machine."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's temporary folder for the test: what was written there, and left, shows."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
