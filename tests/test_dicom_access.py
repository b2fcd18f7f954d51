"""Issue 17: who may talk to the DICOM listener, over what, and for how long (dcmtk and pynetdicom
as the callers)."""

from __future__ import annotations

import datetime
import logging
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE

from edge.config import Settings
from edge.operations import doctor, health
from edge.tui.screens import device as device_screen
from tests.conftest import eventually
from tests.test_dicom_listener import Listening, counts, dcmtk_or_skip, demo_dicoms, free_port, send

VERIFICATION = "1.2.840.10008.1.1"


def configured(settings: Settings, **dicom: object) -> Settings:
    update = {"enabled": True, "port": free_port(), "bind": "127.0.0.1", **dicom}
    return settings.model_copy(update={"dicom": settings.dicom.model_copy(update=update)})


def one_file() -> Path:
    return next(p for p in demo_dicoms() if b"1.2.840.10008.1.2.5" not in p.read_bytes()[:400])


@pytest.mark.security
def test_a_fresh_install_refuses_every_caller_and_doctor_names_the_line_to_allow_it(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """With no `allowed_callers`, main accepted any calling AE title. Now: refused, recorded,
    and `edge doctor` prints the exact setting; once set, the same modality stores."""
    dcmtk_or_skip()
    fresh = configured(settings)
    assert fresh.dicom.allowed_callers == []
    with Listening(fresh) as running, caplog.at_level(logging.WARNING):
        refused = send(running, one_file(), calling="XRAY1")
        assert refused.returncode != 0
        assert "Association Rejected" in refused.stderr

        def listener_lines() -> list[str]:  # written in the association's thread, after its answer
            return [r.getMessage() for r in caplog.records if r.name == "edge.ingest.dicom_listener"]

        assert eventually(lambda: any("allowed_callers = " in line for line in listener_lines()))
    assert counts(fresh)["images"] == 0
    lines = listener_lines()
    assert any(line.startswith("CALLER_NOT_ALLOWED: ") and "'XRAY1'" in line for line in lines), lines
    assert any('allowed_callers = ["XRAY1"]' in line for line in lines), lines

    check = next(c for c in doctor.run_checks(fresh) if c.name == "dicom callers")
    assert check.level == "warn"
    assert "'XRAY1' from 127.0.0.1" in check.message
    assert '[dicom] allowed_callers = ["XRAY1"]' in check.message
    snap = health.snapshot(fresh)  # the technician's Device screen shows the same line
    snap["agent"] = {"running": True, "sources": {"dicom": "listening"}}
    assert 'allowed_callers = ["XRAY1"]' in device_screen.services(snap, str)

    allowed = configured(settings, allowed_callers=["XRAY1"])
    with Listening(allowed) as running:
        assert send(running, one_file(), calling="XRAY1").returncode == 0
    assert counts(allowed)["images"] == 1


@pytest.mark.security
def test_addresses_outside_allowed_networks_are_closed(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    dcmtk_or_skip()
    elsewhere = configured(settings, allowed_callers=["XRAY1"], allowed_networks=["10.99.0.0/16"])
    with Listening(elsewhere) as running, caplog.at_level(logging.WARNING):
        result = send(running, one_file())
        assert result.returncode != 0
        time.sleep(0.2)
    assert counts(elsewhere)["images"] == 0
    assert any(r.getMessage().startswith("CALLER_ADDRESS_NOT_ALLOWED: ") for r in caplog.records)
    # doctor said "pass" here: only refused AE titles were recorded, so the installer saw nothing
    check = next(c for c in doctor.run_checks(elsewhere) if c.name == "dicom callers")
    assert check.level == "warn", check.message
    assert "connections from 127.0.0.1 (1x" in check.message
    assert "not in [dicom] allowed_networks" in check.message
    local = configured(settings, allowed_callers=["XRAY1"], allowed_networks=["127.0.0.0/8"])
    with Listening(local) as running:
        assert send(running, one_file()).returncode == 0
    check = next(c for c in doctor.run_checks(local) if c.name == "dicom callers")
    assert check.level == "pass", check.message  # allowed since


class IdleHolder:
    """An association kept open by a C-ECHO every `every_s` seconds: the attack of issue 17."""

    def __init__(self, port: int, every_s: float = 0.3) -> None:
        ae = AE(ae_title="XRAY1")
        ae.add_requested_context(VERIFICATION)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="EDGE")
        assert self.assoc.is_established
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._keep_alive, args=(every_s,), daemon=True)
        self._thread.start()

    def _keep_alive(self, every_s: float) -> None:
        while not self._stop.wait(every_s) and self.assoc.is_established:
            self.assoc.send_c_echo()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.assoc.is_established:
            self.assoc.release()


@pytest.fixture
def idle_holders() -> Iterator[list[IdleHolder]]:
    held: list[IdleHolder] = []
    yield held
    for holder in held:
        holder.close()


@pytest.mark.security
def test_idle_echo_associations_cannot_lock_out_a_modality(
    settings: Settings, idle_holders: list[IdleHolder], caplog: pytest.LogCaptureFixture
) -> None:
    """Four associations held open with C-ECHO took every slot (max_associations = 4) and every
    modality was rejected as busy. Now the idlest is aborted for the newcomer: dcmtk's storescu
    stores while the four are still pinging."""
    dcmtk_or_skip()
    limited = configured(settings, allowed_callers=["XRAY1"], max_associations=4, idle_timeout_s=1.0)
    first, second = [p for p in demo_dicoms() if b"1.2.840.10008.1.2.5" not in p.read_bytes()[:400]][:2]
    with Listening(limited) as running, caplog.at_level(logging.WARNING):
        started = time.perf_counter()
        assert send(running, first).returncode == 0
        baseline = time.perf_counter() - started
        # its association's thread ends in its own time: until then it holds a slot
        listener_ae = running.listener._ae
        assert listener_ae is not None
        assert eventually(lambda: not any(held.is_alive() for held in listener_ae._admitted))
        for _ in range(4):
            idle_holders.append(IdleHolder(running.settings.dicom.port))
        time.sleep(1.5)  # idle for longer than idle_timeout_s, but still pinging
        assert sum(holder.assoc.is_established for holder in idle_holders) == 4
        started = time.perf_counter()
        result = send(running, second)
        took = time.perf_counter() - started
        assert result.returncode == 0, result.stderr
        assert "Received Store Response (Success)" in result.stderr
        time.sleep(0.5)
    print(f"\nstorescu: {baseline:.2f} s alone, {took:.2f} s with 4 idle C-ECHO associations held open")
    assert counts(limited)["images"] == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("LISTENER_IDLE_CLOSED: ") for m in messages), messages
    assert not any(m.startswith("LISTENER_BUSY: ") for m in messages), messages


def test_a_working_association_is_not_evicted(settings: Settings, idle_holders: list[IdleHolder]) -> None:
    """Only idle ones give up their slot: with every slot doing work (or idle for less than the
    timeout) a newcomer is rejected as busy, as before."""
    dcmtk_or_skip()
    limited = configured(settings, allowed_callers=["XRAY1"], max_associations=1, idle_timeout_s=30.0)
    with Listening(limited) as running:
        idle_holders.append(IdleHolder(running.settings.dicom.port))
        result = send(running, one_file())
        assert result.returncode != 0
        assert idle_holders[0].assoc.is_established


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.mark.security
def test_dicom_tls_with_client_certificates(settings: Settings, tmp_path: Path) -> None:
    """TLS only once a certificate is configured; with `tls_ca`, only callers whose certificate
    that CA signed. A plain TCP caller is not served."""
    server_cert, server_key = _certificate(tmp_path, "edge")
    client_cert, client_key = _certificate(tmp_path, "xray1")
    secured = configured(
        settings, allowed_callers=["XRAY1"], tls_cert=server_cert, tls_key=server_key, tls_ca=client_cert
    )
    with Listening(secured) as running:
        port = running.settings.dicom.port

        def echo(context: ssl.SSLContext | None) -> bool:
            ae = AE(ae_title="XRAY1")
            ae.acse_timeout = 5
            ae.network_timeout = 5
            ae.add_requested_context(VERIFICATION)
            tls = (context, "edge") if context is not None else None
            assoc = ae.associate("127.0.0.1", port, ae_title="EDGE", tls_args=tls)
            if not assoc.is_established:
                return False
            status = assoc.send_c_echo()
            assoc.release()
            return bool(status) and status.Status == 0

        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        client.load_cert_chain(client_cert, client_key)
        assert echo(client)
        assert not echo(None)  # plain TCP
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(server_cert))
        assert not echo(anonymous)  # no client certificate
        assert echo(client)  # and the listener still serves after the failures
    check = next(c for c in doctor.run_checks(secured) if c.name == "dicom callers")
    assert check.level == "warn", check.message
    assert "connections from 127.0.0.1" in check.message
    assert "TLS handshake failed" in check.message


def test_tls_settings_are_checked(settings: Settings, tmp_path: Path) -> None:
    from edge.config import DicomSettings

    with pytest.raises(ValueError, match="together"):
        DicomSettings(tls_cert=tmp_path / "a.crt")
    with pytest.raises(ValueError, match="not-a-network"):
        DicomSettings(allowed_networks=["not-a-network"])


def test_a_caller_retrying_in_a_loop_is_counted_without_a_write_each_time(tmp_path: Path) -> None:
    from edge.ingest.dicom_access import SeenCallers

    seen = SeenCallers(tmp_path)
    seen.record("XRAY1", "10.0.0.5")
    written = seen.path.stat().st_mtime_ns
    for _ in range(50):
        seen.record("XRAY1", "10.0.0.5")
    assert seen.path.stat().st_mtime_ns == written
    assert seen.read()["XRAY1"]["count"] == 1
    seen._written["XRAY1"] -= 120  # a minute later: the next refusal writes them all
    seen.record("XRAY1", "10.0.0.5")
    assert seen.read()["XRAY1"]["count"] == 52


def test_doctor_warns_about_refused_connections_for_a_day_and_never_offers_them_as_titles(
    settings: Settings,
) -> None:
    import json

    from edge.clock import utc_after
    from edge.ingest.dicom_access import SEEN_FILE, SeenCallers, callers_verdict

    device = configured(settings, allowed_callers=["XRAY1"], allowed_networks=["10.1.0.0/16"])
    seen = SeenCallers(device.data_dir)
    seen.record_connection("tls", "10.2.0.7")
    level, message = callers_verdict(device)
    assert level == "warn"
    assert "connections from 10.2.0.7 (1x" in message
    assert "TLS handshake failed" in message
    assert "allowed_callers" not in message  # a connection is not a title to allow
    entries = json.loads((device.data_dir / SEEN_FILE).read_text())
    for entry in entries.values():
        entry["last"] = utc_after(-2 * 24 * 3600)  # two days ago: a scan then, quiet since
    entries["OLDXRAY"] = {"address": "10.1.0.9", "count": 3, "first": "x", "last": "y"}  # as before kinds
    (device.data_dir / SEEN_FILE).write_text(json.dumps(entries))
    level, message = callers_verdict(device)
    assert level == "warn"
    assert "10.2.0.7" not in message
    assert "'OLDXRAY' from 10.1.0.9" in message
    assert '[dicom] allowed_callers = ["OLDXRAY", "XRAY1"]' in message
