"""Results back into the PACS: the queue, the objects, the C-STORE answers, the CLI and doctor,
against a C-STORE receiver in this process (tests/test_pacs_orthanc.py uses a real PACS)."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pydicom
import pytest
from click.testing import CliRunner

from edge.cli import cli
from edge.clock import utc_after
from edge.config import load_settings
from edge.errors import EdgeError
from edge.interop import pacs_export, sr
from edge.interop.pacs_export import PacsExporter, pacs_status
from edge.operations import doctor
from edge.store import Store, schema
from edge.store.pacs import PacsExports
from tests.pacsfixtures import STUDY_UID, Receiver, analyse, free_port, pacs_settings


@pytest.fixture
def receiver() -> Any:
    server = Receiver()
    yield server
    server.close()


def _rows(settings: Any) -> list[Any]:
    with Store(settings.data_dir) as store:
        return [dict(row) for row in store.db.execute("SELECT * FROM pacs_exports ORDER BY result_id, kind")]


def _round(settings: Any) -> bool:
    with Store(settings.data_dir) as store:
        return PacsExporter(settings, store).run_round()


def test_each_dicom_result_goes_back_into_its_study_as_a_report_and_a_heatmap(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    dicom_ids = analyse(settings, tmp_path, dicoms=2, pngs=1)[:2]
    assert _round(settings)
    expected = {sr.instance_uid(rid, kind) for rid in dicom_ids for kind in ("sr", "heatmap")}
    assert set(receiver.uids()) == expected
    assert set(receiver.uids().values()) == {1}
    source = pydicom.dcmread(tmp_path / "cr-0.dcm")
    for dataset in receiver.received:
        # The source's study and patient, copied; new series, never the source's.
        assert dataset.StudyInstanceUID == STUDY_UID
        assert (dataset.PatientName, dataset.PatientID) == ("Pacs^Synthetic", "SYNTH-PACS-1")
        assert (dataset.PatientBirthDate, dataset.IssuerOfPatientID) == ("20200101", "SYNTH")
        assert dataset.AccessionNumber == source.AccessionNumber
        assert dataset.SeriesInstanceUID != source.SeriesInstanceUID
        assert dataset.Modality in ("SR", "OT")
    reports = [ds for ds in receiver.received if ds.Modality == "SR"]
    assert len({ds.SeriesInstanceUID for ds in reports}) == 1  # one series per model in a study
    with Store(settings.data_dir) as store:
        result = store.result(dicom_ids[0])
        assert result is not None
        report = next(ds for ds in reports if ds.SOPInstanceUID == sr.instance_uid(result.id, "sr"))
        text = _dump(report)
        assert f"sha256={result.model_sha256}" in text
        assert "Calibrated probability of finding" in text
        assert "Decision threshold" in text
        status = pacs_status(settings, store)
    assert status["state"] == "up to date"
    assert status["counts"] == {"pending": 0, "sent": 4, "skipped": 2, "failed": 0}
    assert status["skipped"] == {pacs_export.NOT_DICOM: 2}


def _dump(dataset: pydicom.Dataset) -> str:
    return "\n".join(str(element.value) for element in dataset.iterall() if element.VR != "SQ")


@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="dcmtk's dsrdump is not installed")
def test_dsrdump_reads_every_report(tmp_path: Path, receiver: Receiver) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    analyse(settings, tmp_path, dicoms=3)
    assert _round(settings)
    reports = [ds for ds in receiver.received if ds.Modality == "SR"]
    assert len(reports) == 3
    for index, report in enumerate(reports):
        path = tmp_path / f"sr-{index}.dcm"
        report.save_as(path, enforce_file_format=True)
        done = subprocess.run(["dsrdump", "-Ee", str(path)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        assert "Imaging Measurement Report" in done.stdout
        assert "Algorithm Name" in done.stdout
        assert '"tiny"' in done.stdout
        assert "Operating point" in done.stdout
        assert "Pacs^Synthetic" in done.stdout


def test_a_rebuild_is_the_same_instance(tmp_path: Path, receiver: Receiver) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    [result_id] = analyse(settings, tmp_path, dicoms=1)
    with Store(settings.data_dir) as store:
        exporter = PacsExporter(settings, store)
        exporter.queue_new()
        builds = []
        for _ in range(2):
            for export in exporter.exports.exports_for_result(result_id):
                buffer = io.BytesIO()
                exporter._build(export, {}).save_as(buffer, enforce_file_format=True)
                builds.append(buffer.getvalue())
    assert builds[:2] == builds[2:]


@pytest.mark.parametrize("status", [0x0111, 0xB000])
def test_already_have_it_and_warnings_count_as_done(tmp_path: Path, status: int) -> None:
    server = Receiver(lambda _: status)
    try:
        settings = pacs_settings(tmp_path, server.port)
        analyse(settings, tmp_path, dicoms=1)
        assert _round(settings)
    finally:
        server.close()
    assert {(row["state"], row["status"]) for row in _rows(settings)} == {("sent", f"0x{status:04X}")}


def test_a_refusal_is_retried_with_backoff_then_fails_and_can_be_requeued(tmp_path: Path) -> None:
    server = Receiver(lambda _: 0xA700)  # out of resources
    try:
        settings = pacs_settings(tmp_path, server.port, max_attempts=2, interval_s=30, max_backoff_s=900)
        analyse(settings, tmp_path, dicoms=1)
        assert _round(settings)  # reachable: the loop does not back off, the rows do
        rows = _rows(settings)
        assert {(r["state"], r["attempts"], r["status"]) for r in rows} == {("pending", 1, "0xA700")}
        assert all(r["next_attempt_at"] > utc_after(5) for r in rows)
        assert len(server.received) == 2
        _round(settings)  # not due yet: nothing sent
        assert len(server.received) == 2
        with Store(settings.data_dir) as store:
            PacsExports(store.writer).retry_now(failed_too=False)
        _round(settings)
        assert {(r["state"], r["attempts"]) for r in _rows(settings)} == {("failed", 2)}
        server.answer = lambda _: 0x0000
        runner = CliRunner()
        args = ["--data-dir", str(settings.data_dir)]
        env = _env(settings)
        assert runner.invoke(cli, [*args, "pacs", "send-now"], env=env).exit_code == 0
        assert {r["state"] for r in _rows(settings)} == {"failed"}  # not without --retry-failed
        done = runner.invoke(cli, [*args, "pacs", "send-now", "--retry-failed"], env=env)
        assert done.exit_code == 0, done.output
        assert {r["state"] for r in _rows(settings)} == {"sent"}
    finally:
        server.close()


def test_an_object_that_cannot_be_built_ends_failed_and_says_why(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build failure (a Japanese study's character sets, before) was retried for ever, past
    max_attempts, `pacs status` saying only "sending", doctor passing: it is said while it is
    retried, ends failed after max_attempts, and goes with --retry-failed once it can be built."""
    settings = pacs_settings(tmp_path, receiver.port, max_attempts=2, interval_s=30, max_backoff_s=900)
    analyse(settings, tmp_path, dicoms=1)

    def cannot(*_: Any) -> Any:
        raise ValueError("'' is not a valid SpecificCharacterSetValues")

    monkeypatch.setattr(sr, "build_sr", cannot)
    assert _round(settings)
    [report] = [r for r in _rows(settings) if r["kind"] == "sr"]
    assert (report["state"], report["attempts"]) == ("pending", 1)
    with Store(settings.data_dir) as store:
        status = pacs_status(settings, store)
    [retrying] = status["retrying"]
    assert "cannot build" in retrying["error"]
    assert retrying["attempts"] == 1
    shown = CliRunner().invoke(
        cli, ["--data-dir", str(settings.data_dir), "pacs", "status"], env=_env(settings)
    )
    assert "retrying sr of result" in shown.output
    assert "SpecificCharacterSetValues" in shown.output
    shown = CliRunner().invoke(cli, ["--data-dir", str(settings.data_dir), "status"], env=_env(settings))
    [line] = [line for line in shown.output.splitlines() if line.startswith("pacs: ")]
    assert "1 object(s) waiting, 0 failed; the exporter is not running" in line
    assert line.endswith("SpecificCharacterSetValues")
    with Store(settings.data_dir) as store:
        PacsExports(store.writer).retry_now(failed_too=False)
    _round(settings)
    [report] = [r for r in _rows(settings) if r["kind"] == "sr"]
    assert (report["state"], report["attempts"]) == ("failed", 2)
    assert next(c for c in doctor.run_checks(settings) if c.name == "pacs").level == "warn"
    monkeypatch.undo()
    with Store(settings.data_dir) as store:
        PacsExports(store.writer).retry_now(failed_too=True)
    assert _round(settings)
    assert {r["state"] for r in _rows(settings)} == {"sent"}


def test_a_corrected_instances_report_names_the_report_it_replaces(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A corrected instance (same UID, a header fixed) is analysed again: its report sat beside
    the first in the PACS with nothing to tell the current one (an outside-style check). It
    names the report it replaces in its Predecessor Documents Sequence; the first names none."""
    from edge.pipeline import Pipeline

    settings = pacs_settings(tmp_path, receiver.port)
    [first_id] = analyse(settings, tmp_path, dicoms=1)
    assert _round(settings)
    corrected = pydicom.dcmread(tmp_path / "cr-0.dcm")
    corrected.ViewPosition = "AP"
    corrected.save_as(tmp_path / "cr-0-fixed.dcm", enforce_file_format=True)
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        [analysis] = pipeline.analyse_file(tmp_path / "cr-0-fixed.dcm")
        pipeline.close()
    assert analysis.ok
    assert analysis.result is not None
    assert analysis.result.id != first_id
    assert _round(settings)
    first, second = [ds for ds in receiver.received if ds.Modality == "SR"]
    assert "PredecessorDocumentsSequence" not in first
    [study] = second.PredecessorDocumentsSequence
    assert study.StudyInstanceUID == first.StudyInstanceUID
    [series] = study.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    [item] = series.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == first.SOPInstanceUID
    path = tmp_path / "second.dcm"
    second.save_as(path, enforce_file_format=True)
    if shutil.which("dciodvfy"):
        found = subprocess.run(["dciodvfy", "-new", str(path)], check=False, capture_output=True, text=True)
        said = found.stdout + found.stderr
        assert not [line for line in said.splitlines() if line.startswith("Error")], said


def test_objects_already_sent_can_be_sent_again_the_same_instances(
    tmp_path: Path, receiver: Receiver
) -> None:
    """A PACS restored from a backup that lacks a week of reports (or one that answered Success
    and dropped them): `--retry-failed` covered only refusals. `--resend-since DAY` sends the
    objects it took since then again, the same instances, audited."""
    settings = pacs_settings(tmp_path, receiver.port)
    analyse(settings, tmp_path, dicoms=1)
    assert _round(settings)
    first = receiver.uids()
    assert set(first.values()) == {1}
    args = ["--data-dir", str(settings.data_dir), "pacs", "send-now"]
    later = CliRunner().invoke(cli, [*args, "--resend-since", "2099-01-01"], env=_env(settings))
    assert "0 object(s) sent since 2099-01-01 queued to go again" in later.output
    again = CliRunner().invoke(cli, [*args, "--resend-since", "2024-01-01"], env=_env(settings))
    assert again.exit_code == 0, again.output
    assert "2 object(s) sent since 2024-01-01 queued to go again" in again.output
    assert receiver.uids() == dict.fromkeys(first, 2)  # the same instances, once more each
    assert {r["state"] for r in _rows(settings)} == {"sent"}
    with Store(settings.data_dir) as store:
        [audit] = [json.loads(row["detail"]) for row in store.audit_rows("pacs.resend")]
        assert audit == {"since": "2024-01-01", "objects": 2, "source_deleted": 0}
        store.db.execute("UPDATE images SET purged_at = '2026-12-05T00:00:00.000Z'")  # retention
        store.db.conn.commit()
    gone = CliRunner().invoke(cli, [*args, "--resend-since", "2024-01-01"], env=_env(settings))
    assert "0 object(s) sent since 2024-01-01 queued" in gone.output
    assert "2 object(s) sent since then cannot go again: retention deleted their source" in gone.output
    assert {r["state"] for r in _rows(settings)} == {"sent"}  # the record of what went stays


def _correct(settings: Any, tmp_path: Path, name: str, view: str = "AP", age: str | None = None) -> None:
    """The archive's correction of cr-0.dcm (a header fixed, the same UID), analysed."""
    from edge.pipeline import Pipeline

    corrected = pydicom.dcmread(tmp_path / "cr-0.dcm")
    corrected.ViewPosition = view
    if age is not None:
        corrected.PatientAge = age
    corrected.save_as(tmp_path / name, enforce_file_format=True)
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        [analysis] = pipeline.analyse_file(tmp_path / name)
        pipeline.close()
    assert analysis.ok


def test_a_report_names_only_earlier_reports_the_pacs_took(tmp_path: Path) -> None:
    """A re-check: a correction's report named the first report, which the PACS had refused (it
    never arrived: the reference dangled). One waiting is waited for; one that failed is not
    named."""
    server = Receiver()
    try:
        settings = pacs_settings(tmp_path, server.port, max_attempts=1)
        analyse(settings, tmp_path, dicoms=1)
        _correct(settings, tmp_path, "fixed.dcm")  # both wait: the correction's report waits for the first's
        assert _round(settings)
        first, second = [ds for ds in server.received if ds.Modality == "SR"]
        [named] = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
        assert named.ReferencedSOPInstanceUID == first.SOPInstanceUID
        server.answer = lambda ds: 0xA900 if ds.Modality == "SR" else 0x0000  # SRs refused now
        _correct(settings, tmp_path, "fixed-again.dcm", age="005Y")
        _round(settings)
        server.answer = lambda _: 0x0000
        _correct(settings, tmp_path, "fixed-a-third-time.dcm", age="006Y")
        assert _round(settings)
        last = [ds for ds in server.received if ds.Modality == "SR"][-1]
        [study] = last.PredecessorDocumentsSequence
        [series] = study.ReferencedSeriesSequence
        named = [item.ReferencedSOPInstanceUID for item in series.ReferencedSOPSequence]
        # Every earlier report the PACS took, the refused one in between left out.
        assert named == [first.SOPInstanceUID, second.SOPInstanceUID]
    finally:
        server.close()


def _env(settings: Any) -> dict[str, str]:
    pacs = settings.pacs
    return {
        "EDGE_PACS__ENABLED": "true",
        "EDGE_PACS__HOST": pacs.host,
        "EDGE_PACS__PORT": str(pacs.port),
        "EDGE_PACS__CALLED_AE": pacs.called_ae,
        "EDGE_PACS__TIMEOUT_S": "5",
        "EDGE_MODELS__DIR": str(settings.models.dir),
    }


def test_an_unreachable_pacs_keeps_everything_and_doctor_names_it(tmp_path: Path) -> None:
    settings = pacs_settings(tmp_path, free_port(), timeout_s=2)
    analyse(settings, tmp_path, dicoms=1)
    assert not _round(settings)
    assert {(r["state"], r["attempts"]) for r in _rows(settings)} == {("pending", 0)}
    with Store(settings.data_dir) as store:
        status = pacs_status(settings, store)
    assert status["state"] == "unreachable"
    assert f"ORTHANC@127.0.0.1:{settings.pacs.port}" in status["last_error"]
    [check] = doctor._pacs(settings)
    assert check.level == "fail"
    assert f"ORTHANC@127.0.0.1:{settings.pacs.port}" in check.message
    assert "2 object(s) waiting" in check.message
    result = CliRunner().invoke(
        cli, ["--data-dir", str(settings.data_dir), "pacs", "status", "--json"], env=_env(settings)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["counts"]["pending"] == 2


def test_doctor_passes_a_live_pacs_and_a_disabled_one(tmp_path: Path, receiver: Receiver) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    [check] = doctor._pacs(settings)
    assert check.level == "warn"  # answers C-ECHO, but no exporter runs
    assert "answers C-ECHO" in check.message
    assert "not running" in check.message
    [disabled] = doctor._pacs(load_settings(data_dir=tmp_path / "other"))
    assert (disabled.level, disabled.message) == ("pass", "disabled")


def test_a_crash_after_the_pacs_answered_sends_the_same_uid_again(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between the PACS's answer and the commit: the row is still pending, the resend
    carries the same SOP Instance UID (the PACS keeps it once), and the row ends sent once."""
    settings = pacs_settings(tmp_path, receiver.port, heatmaps=False)
    [result_id] = analyse(settings, tmp_path, dicoms=1)

    def crash(*_: Any, **__: Any) -> None:
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(PacsExports, "mark_sent", crash)
    with pytest.raises(KeyboardInterrupt):
        _round(settings)
    assert [r["state"] for r in _rows(settings) if r["kind"] == "sr"] == ["pending"]
    monkeypatch.undo()
    assert _round(settings)
    assert receiver.uids() == {sr.instance_uid(result_id, "sr"): 2}
    rows = _rows(settings)
    assert sorted((r["kind"], r["state"]) for r in rows) == [("heatmap", "skipped"), ("sr", "sent")]


def test_queueing_is_once_per_result_and_kind(tmp_path: Path, receiver: Receiver) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    analyse(settings, tmp_path, dicoms=2)
    with Store(settings.data_dir) as store, Store(settings.data_dir) as other:
        assert PacsExporter(settings, store).queue_new() == 4
        assert PacsExporter(settings, other).queue_new() == 0
        # Two exporters racing on the same candidates: the (result, kind) pair keeps one row.
        exports = PacsExports(other.writer)
        rows = exports.due(10, settings.pacs.max_backoff_s)
        from edge.store.pacs import NewExport

        again = [NewExport(r.result_id, r.image_id, r.kind, r.sop_instance_uid) for r in rows]
        assert exports.queue(again) == 0
    assert len(_rows(settings)) == 4


def test_old_results_are_not_backfilled(tmp_path: Path, receiver: Receiver) -> None:
    settings = pacs_settings(tmp_path, receiver.port, backfill_days=0)
    analyse(settings, tmp_path, dicoms=1)
    assert _round(settings)
    assert {(r["state"], r["reason"]) for r in _rows(settings)} == {("skipped", pacs_export.TOO_OLD)}
    assert receiver.received == []


def test_what_a_wrong_clock_stamped_still_goes_to_the_pacs(tmp_path: Path, receiver: Receiver) -> None:
    """A box without a clock battery stamps 1970 until NTP steps it: a result so stamped was
    skipped as older than the backfill window, never sent; a retry a clock ahead put in 2041
    waited until 2041. Both are sent at the next round."""
    settings = pacs_settings(tmp_path, receiver.port, heatmaps=False)
    [first, second] = analyse(settings, tmp_path, dicoms=2)
    with Store(settings.data_dir) as store:
        store.db.execute("UPDATE results SET created_at = '1970-01-02T00:00:00.000Z' WHERE id = ?", [first])
        store.db.conn.commit()
        exporter = PacsExporter(settings, store)
        exporter.queue_new()
        store.db.execute(
            "UPDATE pacs_exports SET next_attempt_at = '2041-06-01T00:00:00.000Z' WHERE result_id = ?",
            [second],
        )
        store.db.conn.commit()
        assert exporter.run_round()
    sent = {r["result_id"] for r in _rows(settings) if r["kind"] == "sr" and r["state"] == "sent"}
    assert sent == {first, second}
    assert receiver.uids() == {sr.instance_uid(first, "sr"): 1, sr.instance_uid(second, "sr"): 1}


def test_a_pending_export_keeps_the_source_image_and_a_deleted_study_is_skipped(
    tmp_path: Path, receiver: Receiver
) -> None:
    settings = pacs_settings(tmp_path, receiver.port)
    analyse(settings, tmp_path, dicoms=1)
    with Store(settings.data_dir) as store:
        exporter = PacsExporter(settings, store)
        exporter.queue_new()
        future = utc_after(86400 * 365)
        store.db.execute("UPDATE outbox SET acked_at = created_at")  # the hub has everything
        assert store.purgeable_images(future, image_upload=False) == []  # the PACS has not
        [study] = [row["id"] for row in store.db.execute("SELECT id FROM studies")]
        store.technician.delete_study(study, "tester")  # no foreign key stops a deletion
        assert exporter.run_round()
    assert {(r["state"], r["reason"]) for r in _rows(settings)} == {("skipped", pacs_export.RESULT_GONE)}
    assert receiver.received == []


def test_the_migration_and_the_settings(tmp_path: Path) -> None:
    assert "m013_pacs_exports" in [m.name for m in schema.migrations._migrations]
    with Store(tmp_path / "data") as store:
        columns = {row[1] for row in store.db.execute("PRAGMA table_info(pacs_exports)")}
    assert {"sop_instance_uid", "state", "attempts", "next_attempt_at", "status"} <= columns
    assert load_settings(data_dir=tmp_path).pacs.enabled is False
    with pytest.raises(EdgeError, match=r"pacs\.host is required"):
        load_settings(pacs={"enabled": True})
    with pytest.raises(EdgeError, match="called_ae"):
        load_settings(pacs={"called_ae": "BAD\\AE"})
    with pytest.raises(EdgeError, match="called_ae"):
        load_settings(pacs={"called_ae": "X" * 17})


def test_run_refuses_when_disabled(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "pacs", "run"])
    assert result.exit_code == 2
    status = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "data"), "pacs", "status"])
    assert status.exit_code == 0
    assert status.output.startswith("disabled")


@pytest.mark.security
def test_a_result_of_an_object_kept_beside_a_reused_uid_is_not_sent(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Issue 17: another object under a stored SOP Instance UID is kept alongside; in the PACS
    that UID is the first object, so a report referencing it would describe the wrong image."""
    from edge.pipeline import Pipeline
    from tests.pacsfixtures import chest_dicom

    settings = pacs_settings(tmp_path, receiver.port)
    analyse(settings, tmp_path, dicoms=1)
    reused = pydicom.dcmread(io.BytesIO(chest_dicom(1)))
    first = pydicom.dcmread(io.BytesIO(chest_dicom(0)))
    reused.SOPInstanceUID = reused.file_meta.MediaStorageSOPInstanceUID = first.SOPInstanceUID
    reused.PatientID = "SOMEONE-ELSE"  # not a correction of the first: another object
    path = tmp_path / "reused.dcm"
    reused.save_as(path)
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store)
        try:
            [analysis] = pipeline.analyse_file(path)
        finally:
            pipeline.close()
        assert analysis.ok, analysis.message
        assert store.counts()["images"] == 2
    assert _round(settings)
    reasons = {(r["kind"], r["state"], r["reason"]) for r in _rows(settings)}
    assert ("sr", "skipped", pacs_export.UID_COLLISION) in reasons
    assert ("sr", "sent", None) in reasons


def test_a_pacs_nobody_answers_for_is_told_apart_from_one_that_aborts(tmp_path: Path) -> None:
    """pynetdicom flags a failed TCP connect as an abort: the installer read "aborted the
    association" for a wrong port or a firewall. A closed port now says it does not answer."""
    import socket
    import threading

    from edge.interop import cstore

    closed = pacs_settings(tmp_path, free_port())
    assert cstore.echo(closed.pacs) == (
        f"ORTHANC@127.0.0.1:{closed.pacs.port} does not answer (connection refused)"
    )
    with socket.socket() as server:  # something listens there, and hangs up on every caller
        server.bind(("127.0.0.1", 0))
        server.listen()

        def hang_up() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                connection.close()

        threading.Thread(target=hang_up, daemon=True).start()
        rude = pacs_settings(tmp_path, server.getsockname()[1])
        answer = cstore.echo(rude.pacs)
    assert answer == f"ORTHANC@127.0.0.1:{rude.pacs.port} aborted the association", answer


def test_a_pacs_that_takes_none_of_our_classes_is_told_apart_from_an_abort(tmp_path: Path) -> None:
    """A PACS accepting the association but no context offered (only Verification allowed, or
    only JPEG) was reported as "aborted the association" (the docs: another service on the port)
    and retried as an outage; it names what to allow there."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    from edge.interop import cstore

    pacs = AE(ae_title="ORTHANC")
    pacs.add_supported_context(Verification)
    port = free_port()
    server = pacs.start_server(("127.0.0.1", port), block=False)
    try:
        settings = pacs_settings(tmp_path, port)
        with (
            pytest.raises(cstore.DestinationUnavailable) as caught,
            cstore.Sender(settings.pacs, ["1.2.840.10008.5.1.4.1.1.88.33"]),
        ):
            pass
    finally:
        server.shutdown()
    assert "accepts none of what this device sends (Comprehensive SR Storage" in str(caught.value)
    assert "allow these storage classes and transfer syntaxes there" in str(caught.value)


def test_the_report_and_fhir_code_every_shipped_label_alike() -> None:
    """One table: a PACS reading the SR and an EHR reading FHIR see the same SNOMED CT code."""
    from edge.hub import fhir, fhir_codes
    from edge.inference.registry import read_manifest

    seen = {}
    for manifest_path in sorted(Path(__file__).parents[1].glob("models/*/model.toml")):
        manifest = read_manifest(manifest_path)
        for label in manifest.output.labels:
            in_report = sr.label_code(manifest.name, label)
            in_fhir = fhir.finding_concept(manifest.name, label).coding or []
            snomed = [c.code for c in in_fhir if c.system == fhir_codes.SNOMED]
            if in_report.scheme_designator == "SCT":
                assert snomed == [in_report.value], (manifest.name, label)
            else:
                assert snomed == [], (manifest.name, label)
                assert (in_report.scheme_designator, in_report.meaning) == (sr.PRIVATE_SCHEME, label)
            seen[(manifest.name, label)] = in_report.value
    assert seen[("us-breast", "malignant")] == "254837009"  # of the breast, not any malignancy
    assert seen[("us-lung", "regular")] == seen[("cxr-pneumonia", "normal")] == "17621005"
    assert seen[("us-breast", "benign")] == "BENIGN"  # cysts too: no neoplasm concept fits


@pytest.mark.parametrize(
    ("known_callers", "ae_title", "said"),
    [
        (["SOMEONE"], "ORTHANC", "Calling AE title not recognised (add EDGE to its known callers"),
        ([], "NOTORTHANC", "Called AE title not recognised (is ORTHANC its AE title?"),
    ],
)
@pytest.mark.parametrize("answer_first", [False, True])
def test_a_pacs_that_rejects_us_is_told_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, known_callers: list[str], ae_title: str, said: str,
    answer_first: bool,
) -> None:  # fmt: skip
    """The PACS's reason reaches the installer, even when its rejection arrives (and closes the
    connection) before pynetdicom looks at its socket, which pynetdicom reports as a failed
    connection: `answer_first` holds the requestor up until then, as a busy box can."""
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from edge.interop import cstore

    pacs = AE(ae_title=ae_title)
    pacs.add_supported_context(Verification)
    pacs.require_called_aet = True
    pacs.require_calling_aet = known_callers
    server = pacs.start_server(("127.0.0.1", 0), block=False)
    seen: list[Any] = []
    if answer_first:
        associate = AE.associate

        def held_up(self: AE, *args: Any, **kwargs: Any) -> Any:
            closed = threading.Event()  # pynetdicom closes the connection once the rejection is in
            kwargs["evt_handlers"] = [
                *kwargs.get("evt_handlers", []),
                (evt.EVT_REQUESTED, lambda _: closed.wait(10)),
                (evt.EVT_CONN_CLOSE, lambda _: closed.set()),
            ]
            seen.append(assoc := associate(self, *args, **kwargs))
            return assoc

        monkeypatch.setattr(AE, "associate", held_up)
    try:
        settings = pacs_settings(tmp_path, server.server_address[1])
        answer = cstore.echo(settings.pacs)
    finally:
        server.shutdown()
    assert answer is not None
    assert answer.startswith(
        f"ORTHANC@127.0.0.1:{settings.pacs.port} rejected the association (permanently): "
    )
    assert said in answer, answer
    if answer_first:  # the race was run: pynetdicom itself did not see the rejection
        assert [(a.is_rejected, a.is_aborted) for a in seen] == [(False, True)]
