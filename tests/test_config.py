from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import default_data_dir, load_settings
from edge.errors import Code, EdgeError


def test_defaults_need_no_file(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.runtime.backend == "auto"
    assert settings.runtime.precision == "auto"
    assert settings.models.default is None  # no silent default model: routing by applicability
    assert settings.data_dir == tmp_path / "xdg" / "edge"  # platformdirs honours XDG_DATA_HOME
    assert settings.config_file is None


def test_state_directory_under_systemd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert default_data_dir() == tmp_path / "state"
    assert load_settings().data_dir == tmp_path / "state"


def test_file_then_environment_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "edge.toml"
    config.write_text('site = "clinic-a"\n[runtime]\nthreads = 3\nprecision = "fp32"\n')
    settings = load_settings(config)
    assert (settings.site, settings.runtime.threads, settings.runtime.precision) == ("clinic-a", 3, "fp32")
    assert settings.config_file == config
    monkeypatch.setenv("EDGE_RUNTIME__THREADS", "1")
    monkeypatch.setenv("EDGE_SITE", "clinic-b")
    settings = load_settings(config)
    # The environment wins over the file, and leaves the file's other values alone.
    assert (settings.site, settings.runtime.threads, settings.runtime.precision) == ("clinic-b", 1, "fp32")


def test_edge_config_variable_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text('[models]\noperating_point = "screening"\n')
    monkeypatch.setenv("EDGE_CONFIG", str(config))
    assert load_settings().models.operating_point == "screening"


def test_system_file_is_read_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    system = tmp_path / "etc-edge.toml"
    system.write_text('site = "from-etc"\n')
    monkeypatch.setattr("edge.config.SYSTEM_CONFIG", system)
    assert load_settings().site == "from-etc"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[runtime]\nthreds = 2\n", "runtime.threds: unknown key"),  # typo: refused, not ignored
        ('[runtime]\nbackend = "cuda"\n', "runtime.backend"),
        ("[runtime]\nthreads = -1\n", "runtime.threads"),
        ("this is = not [toml", "cannot be read"),
    ],
)
def test_bad_config_is_one_coded_line(tmp_path: Path, text: str, fragment: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(EdgeError) as caught:
        load_settings(config)
    assert caught.value.code is Code.CONFIG_INVALID
    assert fragment in caught.value.message
    assert "\n" not in caught.value.one_line()


def test_missing_config_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(EdgeError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_RUNTIME__THREADS", "many")
    config = tmp_path / "site.toml"
    config.write_text('site = "x"\n')
    with pytest.raises(EdgeError) as caught:
        load_settings(config)
    assert caught.value.code is Code.CONFIG_INVALID
    # The variable is named, not the file (which said nothing of threads).
    assert "environment variable EDGE_RUNTIME__THREADS: " in caught.value.message
    assert str(config) not in caught.value.message
