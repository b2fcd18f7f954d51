"""The commands a technician or an administrator types beside the TUI (issue 20): `edge hub serve`
with its address, `edge sync now` in sentences, and library warnings kept off the terminal."""

from __future__ import annotations

import json
import logging
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from edge import log as edge_log
from edge.cli import cli
from edge.cli.sync import round_sentences


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """`uvicorn.run` and the hub app replaced: what `edge hub serve` would listen on."""
    seen: dict[str, Any] = {}
    monkeypatch.setattr("edge.hub.app.create_app", lambda settings: "hub-app")
    monkeypatch.setattr("uvicorn.run", lambda app, **options: seen.update(app=app, **options))
    monkeypatch.setattr("edge.cli.hub._start_purge_loop", lambda settings, app: seen.update(purging=app))
    yield seen
    edge_log.configure(logging.WARNING)  # the serve command logged to the runner's closed stream


def invoke(tmp_path: Path, *args: str) -> Any:
    return CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), *args], catch_exceptions=False)


def test_hub_serve_listens_where_it_is_told(tmp_path: Path, served: dict[str, Any]) -> None:
    result = invoke(tmp_path, "hub", "serve")
    assert result.exit_code == 0, result.output
    assert (served["app"], served["host"], served["port"]) == ("hub-app", "127.0.0.1", 8720)
    config = tmp_path / "edge.toml"
    config.write_text('[hub]\nbind = "127.0.0.1"\nport = 8731\n')
    result = CliRunner().invoke(
        cli, ["--config", str(config), "--data-dir", str(tmp_path / "d"), "hub", "serve"]
    )
    assert result.exit_code == 0, result.output
    assert served["port"] == 8731  # the [hub] keys
    result = invoke(tmp_path, "hub", "serve", "--bind", "0.0.0.0", "--port", "9000")
    assert result.exit_code == 0, result.output
    assert (served["host"], served["port"]) == ("0.0.0.0", 9000)  # the options win over the keys


@pytest.mark.security
def test_hub_serve_warns_about_plain_http_beyond_this_machine(tmp_path: Path, served: dict[str, Any]) -> None:
    exposed = invoke(tmp_path, "hub", "serve", "--bind", "192.0.2.10")
    assert "plain HTTP on 192.0.2.10: put a TLS reverse proxy in front" in exposed.stderr
    local = invoke(tmp_path, "hub", "serve", "--port", "8799")
    assert "hub listening on http://127.0.0.1:8799/" in local.stderr
    assert "TLS reverse proxy" not in local.stderr


def test_hub_serve_refuses_a_bad_port_or_address(
    tmp_path: Path, served: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    result = invoke(tmp_path, "hub", "serve", "--port", "70000")
    assert result.exit_code == 2
    assert "70000" in result.output
    assert "host" not in served

    def unknown(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)
    result = invoke(tmp_path, "hub", "serve", "--bind", "hub.example.invalid")
    assert result.exit_code == 2
    assert "CONFIG_INVALID: cannot listen on 'hub.example.invalid'" in result.stderr
    assert "host" not in served


def test_sync_now_speaks_in_sentences_and_keeps_json_for_scripts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("edge.sync.request_sync_now", lambda settings: True)
    result = invoke(tmp_path, "sync", "now")
    assert result.exit_code == 0
    assert result.stdout.startswith("Asked the running sync service (edge-sync) to sync now")
    result = invoke(tmp_path, "sync", "now", "--json")
    assert json.loads(result.stdout) == {"requested": True}
    monkeypatch.setattr("edge.sync.request_sync_now", lambda settings: False)
    result = invoke(tmp_path, "sync", "now")
    assert result.exit_code == 2
    assert "edge sync enroll HUB_URL CODE" in result.stderr


def test_a_sync_round_is_told_in_sentences() -> None:
    failed = {
        "hub": "https://hub.example.org",
        "pending": {"results": 4, "files": 9},
        "last_success": "2025-03-14T07:58:00.000Z",
        "last_error": "BAD_SIGNATURE: the request's signature does not match",
        "last_error_at": "2025-03-14T09:25:00.000Z",
        "models_refused": {},
    }
    lines = round_sentences(False, failed)
    assert lines[0] == "The sync with https://hub.example.org did not complete."
    assert "Still waiting to be sent: 4 result(s), 9 file(s)." in lines
    assert any("systemctl start edge-sync" in line for line in lines)
    done = round_sentences(True, {**failed, "pending": {"results": 0, "files": 0}})
    assert done[:2] == [
        "Synced with https://hub.example.org.",
        "Nothing is waiting: the hub has every result.",
    ]
    assert not any("{" in line for line in done)


def test_library_warnings_go_to_the_log_not_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 20: pydicom's warnings spilled onto the technician's terminal."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            edge_log.configure(logging.ERROR)  # the CLI's default level
            warnings.warn("Invalid value for VR UI: '1.2.3.abc'", UserWarning, stacklevel=1)
            assert capsys.readouterr().err == ""
            edge_log.configure(logging.INFO)  # -v, or a service: in the log, as a log line
            warnings.warn("Expected explicit VR, but found implicit VR", UserWarning, stacklevel=1)
            err = capsys.readouterr().err
            assert err.startswith("warning py.warnings: ")
            assert "found implicit VR" in err
    finally:
        logging.captureWarnings(False)
        edge_log.configure(logging.WARNING)


def test_sync_now_says_what_it_is_sending_before_a_long_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync of a day's results took minutes with nothing on the screen: it now says what
    it sends first (on stderr, so `--json` stays one document)."""
    from edge.config import load_settings
    from edge.pipeline import Pipeline
    from edge.store import Store
    from edge.sync import signatures
    from edge.sync.credential import Credential
    from tests.conftest import DEFAULT_MODEL, MODELS

    monkeypatch.setattr("edge.sync.request_sync_now", lambda settings: False)
    settings = load_settings(data_dir=tmp_path / "data", models={"dir": MODELS}, sync={"timeout_s": 1})
    with socket.socket() as probe:  # a port nobody listens on: the link is down
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    Credential(f"http://127.0.0.1:{dead}", "device-1", key=signatures.new_device_key()).save(settings, True)
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        [sample] = sorted((MODELS / DEFAULT_MODEL / "samples").glob("*.png"))[:1]
        assert all(a.ok for a in pipeline.analyse_file(sample))
        pipeline.close()
    result = invoke(tmp_path, "sync", "now")
    assert result.exit_code == 1, result.output
    assert f"Sending 1 result(s) to http://127.0.0.1:{dead}" in result.stderr
    assert "The sync with" in result.stdout
    assert "did not complete" in result.stdout
    result = invoke(tmp_path, "sync", "now", "--json")
    assert "Sending" not in result.stderr
    assert json.loads(result.stdout)["pending"]["results"] == 1
