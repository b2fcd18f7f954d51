"""The drop folder's note of attempts at a dropped video (edge.ingest.recording_attempts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.errors import Code, EdgeError
from edge.ingest.recording_attempts import FILE, RecordingAttempts
from edge.processes import boot_id


def test_deaths_in_one_boot_give_up_at_max_attempts_and_restarts_at_max_restarts(tmp_path: Path) -> None:
    attempts = RecordingAttempts(tmp_path, max_attempts=2, max_restarts=3)
    attempts.begin("a" * 64, "loop.mp4")
    attempts.begin("a" * 64, "loop.mp4")  # the first was cut short: one death
    with pytest.raises(EdgeError) as given_up:
        attempts.begin("a" * 64, "loop.mp4")
    assert given_up.value.code is Code.JOB_ABANDONED
    assert not (tmp_path / FILE).exists()  # forgotten with it
    (tmp_path / FILE).write_text(json.dumps({"b" * 64: {"deaths": 0, "restarts": 2, "boot": "another"}}))
    with pytest.raises(EdgeError):
        attempts.begin("b" * 64, "other.mp4")  # a third restart of the device during it


def test_a_damaged_note_counts_as_none_and_an_unwritable_one_does_not_stop_the_work(tmp_path: Path) -> None:
    attempts = RecordingAttempts(tmp_path, max_attempts=3, max_restarts=10)
    (tmp_path / FILE).write_text(
        json.dumps({"c" * 64: {"deaths": "two", "restarts": None, "boot": boot_id()}})
    )
    attempts.begin("c" * 64, "loop.mp4")  # no TypeError: counted from one death
    assert json.loads((tmp_path / FILE).read_text())["c" * 64]["deaths"] == 1
    (tmp_path / FILE).write_text("{not json")
    attempts.begin("d" * 64, "loop.mp4")
    blocked = RecordingAttempts(tmp_path / "nowhere", max_attempts=3, max_restarts=10)
    (tmp_path / "nowhere").write_text("a file where the folder should be")
    blocked.begin("e" * 64, "loop.mp4")  # logged, not raised
    blocked.end("e" * 64)
