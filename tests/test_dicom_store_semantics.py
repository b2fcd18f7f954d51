"""The listener as a PACS's store (issue 18): every well-formed instance is stored, whether it is
analysed is a separate, coded decision; associations up to the limit are served at once, and
every rejection says why. Against dcmtk's `storescu` and pynetdicom as the sender."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless
from pynetdicom import AE
from pynetdicom.association import Association

from edge.config import Settings
from edge.errors import Code
from edge.interop import cstore
from edge.pipeline import Pipeline
from edge.store import NOT_ANALYSED, Corrections, NewImage, Store
from edge.study import StudyInfo
from tests.conftest import eventually
from tests.pacs_study import expected, mixed_study, outcome
from tests.test_dicom_listener import Listening, counts, dcmtk_or_skip, free_port, send
from tools import dicomgen

VERIFICATION = "1.2.840.10008.1.1"


def listener_settings(settings: Settings, **dicom: object) -> Settings:
    update = {"enabled": True, "port": free_port(), "bind": "127.0.0.1", "allowed_callers": ["*"], **dicom}
    return settings.model_copy(update={"dicom": settings.dicom.model_copy(update=update)})


def analyse_queue(settings: Settings) -> None:
    """What the agent's worker does: every queued job to its result or refusal."""
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store, actor="worker")
        try:
            while pipeline.run_once():
                pass
        finally:
            pipeline.close()


def test_a_mixed_batch_is_stored_whole_and_storescu_does_not_halt(settings: Settings, tmp_path: Path) -> None:
    dcmtk_or_skip()
    instances = mixed_study(tmp_path / "study")
    configured = listener_settings(settings)
    with Listening(configured) as running:
        # storescu sends one transfer syntax per SOP class: the compressed files go on their own.
        by_syntax = {"rle": ("-xr",), "undecodable": ("-xv",)}
        plain = [i.path for i in instances if not any(k in i.label for k in by_syntax)]
        result = send(running, *plain, calling="ORTHANC", extra=("-R",))
        assert result.returncode == 0, result.stderr  # no halt at the CT, the MR or the hand
        assert result.stderr.count("Received Store Response (Success)") == len(plain), result.stderr
        for key, extra in by_syntax.items():
            one = next(i.path for i in instances if key in i.label)
            assert send(running, one, calling="ORTHANC", extra=extra).returncode == 0
        assert running.listener.stored == len(instances)
        assert running.listener.not_analysed == 4
    analyse_queue(configured)
    with Store(configured.data_dir) as store:
        assert outcome(store) == expected(instances)
        refusals = [r for r in store.audit_rows("image.ingested") if "refused" in r["detail"]]
        assert len(refusals) == 4  # the decision not to analyse is in the audit trail
        listed = store.technician.worklist(search="NO_MODEL_FOR_INPUT")
        assert len(listed) == 3
        assert {item.state for item in listed} == {"refused"}


@pytest.mark.security
def test_a_reused_sop_instance_uid_is_kept_alongside_logged_and_audited(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: another image under a stored UID, sent in another transfer syntax, was answered
    Success and dropped without a trace. Now: same pixels in another encoding is the same
    instance (a duplicate); other content under the UID is stored alongside, the first keeps
    the UID, and both the log and the audit trail say INSTANCE_UID_COLLISION."""
    dcmtk_or_skip()
    instances = mixed_study(tmp_path / "study")
    first, other = instances[0].path, instances[2].path
    reused = pydicom.dcmread(other)
    original = pydicom.dcmread(first)
    reused.SOPInstanceUID = reused.file_meta.MediaStorageSOPInstanceUID = original.SOPInstanceUID
    (tmp_path / "reused.dcm").write_bytes(dicomgen.to_bytes(reused))
    transcoded = pydicom.dcmread(first)
    transcoded.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (tmp_path / "transcoded.dcm").write_bytes(dicomgen.to_bytes(transcoded))
    reused.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (tmp_path / "reused-rle.dcm").write_bytes(dicomgen.to_bytes(reused))
    with Listening(listener_settings(settings)) as running, caplog.at_level(logging.WARNING):
        assert send(running, first).returncode == 0
        transcoded_answer = send(running, tmp_path / "transcoded.dcm", extra=("-xr",))
        assert "Received Store Response (Success)" in transcoded_answer.stderr  # the same object
        assert counts(running.settings)["images"] == 1
        reused_answer = send(running, tmp_path / "reused-rle.dcm", extra=("-xr",))
        again = send(running, tmp_path / "reused-rle.dcm", extra=("-xr",))
    for answer in (reused_answer, again):
        assert "Received Store Response (Success)" in answer.stderr, answer.stderr
    collisions = [r.getMessage() for r in caplog.records if "INSTANCE_UID_COLLISION" in r.getMessage()]
    assert len(collisions) == 1, collisions  # the second send is a duplicate of the kept one
    with Store(running.settings.data_dir) as store:
        assert store.counts()["images"] == 2
        rows = store.db.execute(
            "SELECT id, path, sop_instance_uid FROM images ORDER BY created_at, id"
        ).fetchall()
        audited = [json.loads(r["detail"]) for r in store.audit_rows("image.uid_collision")]
    holder = next(row for row in rows if row["sop_instance_uid"] == original.SOPInstanceUID)
    kept = next(row for row in rows if row["sop_instance_uid"] is None)
    assert pydicom.dcmread(running.settings.data_dir / holder["path"]).PixelData == original.PixelData
    assert pydicom.dcmread(running.settings.data_dir / kept["path"]).pixel_array.tolist() == (
        pydicom.dcmread(other).pixel_array.tolist()
    )
    assert [(a["code"], a["collides_with"]) for a in audited] == [("INSTANCE_UID_COLLISION", holder["id"])]


def test_bytes_that_are_not_dicom_are_the_only_cannot_understand(settings: Settings, tmp_path: Path) -> None:
    dcmtk_or_skip()
    ds = dicomgen.grey_dicom(dicomgen.twelve_bit(np.zeros((64, 64), np.uint8)), bits_stored=12)
    ds.Rows = 0  # an impossible header: no image has it
    broken = tmp_path / "impossible.dcm"
    broken.write_bytes(dicomgen.to_bytes(ds))
    with Listening(listener_settings(settings)) as running:
        result = send(running, broken)
    assert "Error: CannotUnderstand" in result.stderr, result.stderr
    assert counts(running.settings)["images"] == 0


def associate(port: int, calling: str, called: str = "EDGE") -> tuple[Association, tuple[int, ...] | None]:
    """An association requested as a modality would, and the A-ASSOCIATE-RJ received for it,
    if one came: (result, source, diagnostic). Read as the PDU arrives (`cstore.associate`),
    not from `Association.is_rejected`, which a loaded machine can miss (one CI run, December
    2026)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(VERIFICATION)
    assoc, pdu = cstore.associate(ae, "127.0.0.1", port, called)
    if pdu is None:
        return assoc, None
    return assoc, (int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0))


def _associate(
    port: int, start: threading.Barrier, answered: list[object], out: list[object], calling: str = "XRAY1"
) -> None:
    start.wait()
    assoc, rejected = associate(port, calling)
    answered.append(assoc)
    if assoc.is_established:
        # Hold the slot until every caller of the burst has its answer (a fixed hold let a
        # negotiation slowed by a loaded machine find a slot freed already).
        eventually(lambda: len(answered) == start.parties, timeout_s=60)
        status = assoc.send_c_echo()
        assoc.release()
        out.append(("accepted", int(status.Status)))
    elif rejected is not None:
        out.append(("rejected", *rejected))
    else:
        out.append(("failed",))


def burst(port: int, count: int) -> list[object]:
    start = threading.Barrier(count)
    answered: list[object] = []
    out: list[object] = []
    threads = [threading.Thread(target=_associate, args=(port, start, answered, out)) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    return out


def test_associations_up_to_the_limit_are_served_at_once_and_the_rest_told_busy(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 18: 12 simultaneous associations with max_associations = 4 got 2 accepted, and
    every rejection was logged as CALLER_NOT_ALLOWED."""
    configured = listener_settings(settings, max_associations=4)
    with Listening(configured) as running, caplog.at_level(logging.WARNING):
        port = running.settings.dicom.port
        listener_ae = running.listener._ae
        assert listener_ae is not None
        # Connections that have not asked for an association yet (a slow sender, a port scan)
        # counted against pynetdicom's limit: with three of them, 1 of 12 was accepted.
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        time.sleep(0.3)
        for _ in range(2):  # the slots come back once the first four release
            answers = burst(port, 12)
            accepted = [a for a in answers if a[0] == "accepted"]
            rejected = [a for a in answers if a[0] == "rejected"]
            assert len(accepted) == 4, answers
            assert all(a[1] == 0 for a in accepted), answers
            # transient (2), from the presentation layer (3): local limit exceeded (2)
            assert rejected == [("rejected", 2, 3, 2)] * 8, answers
            # pynetdicom's threads of the released associations end in their own time
            assert eventually(lambda: not any(held.is_alive() for held in listener_ae._admitted))
        for connection in idle:
            connection.close()
    messages = [
        record.getMessage() for record in caplog.records if record.name == "edge.ingest.dicom_listener"
    ]
    assert sum("LISTENER_BUSY" in m for m in messages) == 16
    assert not any("CALLER_NOT_ALLOWED" in m for m in messages)


def test_concurrent_senders_all_store(settings: Settings, tmp_path: Path) -> None:
    dcmtk_or_skip()
    instances = mixed_study(tmp_path / "study")
    configured = listener_settings(settings, max_associations=4)
    results: list[object] = []
    with Listening(configured) as running:
        plain = [i.path for i in instances if i.label not in ("chest-cr-rle-ap", "undecodable")]
        threads = [
            threading.Thread(
                target=lambda chunk=plain[i::4]: results.append(send(running, *chunk, extra=("-R",)))
            )
            for i in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert [r.returncode for r in results] == [0, 0, 0, 0]  # type: ignore[attr-defined]
    assert counts(configured)["images"] == len(plain)


@pytest.mark.parametrize(
    ("allowed", "calling", "called", "code", "reason"),
    [
        ([], "ANYONE", "NOTEDGE", "CALLED_AE_UNKNOWN", 7),
        (["XRAY1"], "XRAY1", "NOTEDGE", "CALLED_AE_UNKNOWN", 7),
        (["XRAY1"], "INTRUDER", "EDGE", "CALLER_NOT_ALLOWED", 3),
    ],
)
def test_each_rejection_is_logged_with_its_own_code(
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
    allowed: list[str],
    calling: str,
    called: str,
    code: str,
    reason: int,
) -> None:
    configured = listener_settings(settings, allowed_callers=allowed)
    with Listening(configured) as running, caplog.at_level(logging.WARNING):
        assoc, rejected = associate(running.settings.dicom.port, calling, called)
        assert not assoc.is_established
        assert rejected == (1, 1, reason)  # permanent, by the service user, this reason

        def rejections() -> list[str]:  # logged in the listener's association thread
            return [
                record.getMessage().split(":")[0]
                for record in caplog.records
                if record.name == "edge.ingest.dicom_listener" and "rejected" in record.getMessage()
            ]

        assert eventually(rejections)
    assert rejections() == [code]


# ------------------------------------------------------------------ the store's side


def _image(data: bytes, syntax: str, study_uid: str = "1.2.9") -> NewImage:
    return NewImage(
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        format="dicom",
        width=4,
        height=3,
        study=StudyInfo(study_uid=study_uid, modality="CT"),
        source="dicom",
        sop_instance_uid="1.2.3.4",
        meta={"transfer_syntax": syntax},
    )


def test_a_stored_unanalysed_instance_gets_its_job_once_a_model_accepts_it(store: Store) -> None:
    kept = store.ingest(
        _image(b"ct", "1.2.840.10008.1.2.1"), [], actor="dicom", refusal=(Code.NO_MODEL_FOR_INPUT, "no model")
    )
    [refused] = kept.job_ids
    assert store.job(refused)["model_name"] == NOT_ANALYSED  # type: ignore[index]
    assert store.job(refused)["state"] == "refused"  # type: ignore[index]
    again = store.ingest(
        _image(b"ct", "1.2.840.10008.1.2.1"), [], actor="dicom", refusal=(Code.NO_MODEL_FOR_INPUT, "no")
    )
    assert (again.duplicate, again.job_ids) == (True, (refused,))  # nothing doubled
    later = store.ingest(_image(b"ct", "1.2.840.10008.1.2.1"), ["ct-model"], actor="dicom")
    rows = store.db.execute("SELECT model_name, state FROM jobs").fetchall()
    assert [tuple(r) for r in rows] == [("ct-model", "queued")]
    assert later.image_id == kept.image_id


def test_one_rule_for_a_stored_uid_same_pixels_duplicate_other_content_kept_apart(store: Store) -> None:
    same_pixels = Corrections(lambda old, new: [], pixels=False)
    first = store.ingest(_image(b"first", "1.2.840.10008.1.2.1"), ["m"], actor="dicom")
    transcoded = store.ingest(
        _image(b"first as rle", "1.2.840.10008.1.2.5"), ["m"], actor="dicom", corrections=same_pixels
    )
    assert (transcoded.duplicate, transcoded.collides_with) == (True, None)
    reused = store.ingest(_image(b"another object", "1.2.840.10008.1.2.1"), ["m"], actor="dicom")
    assert (reused.duplicate, reused.collides_with) == (False, first.image_id)
    other_study = store.ingest(
        _image(b"x", "1.2.840.10008.1.2.5", study_uid="9.9"), ["m"], actor="dicom", corrections=same_pixels
    )
    assert other_study.collides_with == first.image_id
    assert store.counts()["images"] == 3
    assert store.counts()["jobs"] == 3


@pytest.mark.security
def test_other_pixels_under_a_stored_uid_in_another_syntax_are_not_dropped_as_a_transcode(
    settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The attack of issue 17: the same header, other pixels, RLE-encoded. Main took it for a
    lossy transcode of the stored instance: Success, nothing kept, nothing logged."""
    dcmtk_or_skip()
    first = mixed_study(tmp_path / "study")[0].path
    other = pydicom.dcmread(first)
    other.PixelData = np.ascontiguousarray(other.pixel_array[::-1]).tobytes()  # another picture
    other.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)
    (tmp_path / "other.dcm").write_bytes(dicomgen.to_bytes(other))
    with Listening(listener_settings(settings)) as running, caplog.at_level(logging.WARNING):
        assert send(running, first).returncode == 0
        answer = send(running, tmp_path / "other.dcm", extra=("-xr",))
    assert "Received Store Response (Success)" in answer.stderr, answer.stderr
    assert counts(running.settings)["images"] == 2
    assert any(r.getMessage().startswith("INSTANCE_UID_COLLISION: ") for r in caplog.records)
    with Store(running.settings.data_dir) as store:
        [audited] = [json.loads(r["detail"]) for r in store.audit_rows("image.uid_collision")]
    assert audited["changed"] == ["pixels"]
