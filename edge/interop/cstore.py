"""The C-STORE and C-ECHO client (pynetdicom SCU) for the configured PACS.

One association carries a round's objects. What an answer means for the exporter:
- success (0x0000), a warning (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does
  not match the SOP class) and 0x0111 (duplicate SOP instance: "I already have it") mean the
  PACS holds the instance: done;
- any other status is a refusal of this object: retried with backoff, failed after
  `[pacs] max_attempts`;
- no answer (association dropped, timeout) says nothing about the object: retried, never failed.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge.config import PacsSettings

log = logging.getLogger(__name__)

HELD_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007, 0x0111})


class DestinationUnavailable(Exception):
    """No association with the PACS (refused, rejected, timed out, dropped)."""


@dataclass(frozen=True)
class StoreAnswer:
    status: int | None
    """The C-STORE status; None when no answer came."""
    comment: str = ""

    @property
    def held(self) -> bool:
        return self.status in HELD_STATUSES

    @property
    def hex(self) -> str | None:
        return None if self.status is None else f"0x{self.status:04X}"


def destination(config: PacsSettings) -> str:
    return f"{config.called_ae}@{config.host}:{config.port}"


def _application_entity(config: PacsSettings) -> AE:
    ae = AE(ae_title=config.calling_ae)
    ae.acse_timeout = config.timeout_s
    ae.dimse_timeout = config.timeout_s
    ae.network_timeout = config.timeout_s
    ae.connection_timeout = config.timeout_s
    return ae


def associate(ae: AE, host: str, port: int, called_ae: str) -> tuple[Association, A_ASSOCIATE_RJ | None]:
    """The association `ae` requests, and the peer's A-ASSOCIATE-RJ if it sent one. The
    rejection is taken from the PDU as it arrives: pynetdicom checks that its socket is still
    connected after sending the request, and a rejection that arrived (and closed the
    connection) before that check is reported as a failed connection, its reason unread (a
    peer on the LAN, a busy box)."""
    rejections: list[A_ASSOCIATE_RJ] = []

    def on_pdu(event: Any) -> None:
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    handlers: list[Any] = [(evt.EVT_PDU_RECV, on_pdu)]
    assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=handlers)
    return assoc, rejections[0] if rejections else None


def _refusal(assoc: Association, config: PacsSettings, rejection: A_ASSOCIATE_RJ | None) -> str:
    where = destination(config)
    if rejection is not None:
        lasting = "for now" if rejection.result == 2 else "permanently"
        return (
            f"{where} rejected the association ({lasting}): {rejection.reason_str}{_hint(rejection, config)}"
        )
    if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
        # It took the association but none of what was offered, and pynetdicom aborted: said
        # as an abort, it sent IT staff after the network for a setting of the PACS's.
        offered = sorted({_class_name(c.abstract_syntax) for c in assoc.rejected_contexts})
        return (
            f"{where} accepts none of what this device sends ({', '.join(offered)}, in explicit or"
            " implicit VR little endian): allow these storage classes and transfer syntaxes there"
        )
    if assoc.is_aborted:
        # pynetdicom flags a TCP connect that failed as aborted too: what the installer must
        # hear then is that nothing answers at that address (host, port, firewall), not a PACS's abort
        unreachable = _connect_problem(config)
        if unreachable is None:
            return f"{where} aborted the association"
        return f"{where} does not answer ({unreachable})"
    return f"{where} does not answer (connection refused or no answer within {config.timeout_s:g} s)"


def _class_name(abstract_syntax: str | None) -> str:
    """A SOP class by its name (e.g. "Comprehensive SR Storage"), else its UID."""
    name = UID(abstract_syntax or "").name
    return name or str(abstract_syntax)


def _hint(rejection: A_ASSOCIATE_RJ, config: PacsSettings) -> str:
    """What the installer can change, for the rejections the PACS's user (not its protocol
    stack) gives for the AE titles."""
    if rejection.source != 1:
        return ""
    if rejection.reason_diagnostic == 3:
        return f" (add {config.calling_ae} to its known callers, or set [pacs] calling_ae)"
    if rejection.reason_diagnostic == 7:
        return f" (is {config.called_ae} its AE title? [pacs] called_ae)"
    return f" (is {config.calling_ae} a known caller, and {config.called_ae} its AE title?)"


def _connect_problem(config: PacsSettings) -> str | None:
    """Why a TCP connection to the PACS cannot be opened, or None when it can."""
    try:
        socket.create_connection((config.host or "", config.port), timeout=min(config.timeout_s, 10)).close()
    except OSError as exc:
        return (exc.strerror or str(exc) or type(exc).__name__).lower()
    return None


class Sender:
    """An open association to the PACS for the given SOP classes (a context manager)."""

    def __init__(self, config: PacsSettings, sop_classes: Iterable[str]) -> None:
        self.config = config
        self.sop_classes = sorted(set(sop_classes))
        self._assoc: Association | None = None

    def __enter__(self) -> Sender:
        ae = _application_entity(self.config)
        for sop_class in self.sop_classes:
            # One context per transfer syntax: the PACS picks what it takes, and each object is
            # sent in the syntax of the context accepted for it.
            ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
            ae.add_requested_context(sop_class, ImplicitVRLittleEndian)
        assoc, rejection = associate(ae, self.config.host or "", self.config.port, self.config.called_ae)
        if not assoc.is_established:
            raise DestinationUnavailable(_refusal(assoc, self.config, rejection))
        self._assoc = assoc
        return self

    def send(self, dataset: Dataset) -> StoreAnswer:
        assoc = self._assoc
        if assoc is None or not assoc.is_established:
            return StoreAnswer(None, "the association is closed")
        try:
            answer = assoc.send_c_store(_in_accepted_syntax(assoc, dataset))
        except (ValueError, RuntimeError) as exc:  # no accepted context for it, or a dropped link
            if not assoc.is_established:
                return StoreAnswer(None, str(exc))
            return StoreAnswer(0xA900, f"not sendable: {exc}")  # nothing the PACS will take: refused
        if "Status" not in answer:
            return StoreAnswer(None, "no answer (association dropped or timed out)")
        return StoreAnswer(int(answer.Status), str(answer.get("ErrorComment", "")))

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._assoc is not None:
            if self._assoc.is_established:
                self._assoc.release()
            self._assoc = None


def _in_accepted_syntax(assoc: Association, dataset: Dataset) -> Dataset:
    """The object in a transfer syntax the PACS accepted for its class (both are uncompressed
    little endian, so only the meta header says which)."""
    accepted = {
        str(context.transfer_syntax[0])
        for context in assoc.accepted_contexts
        if context.abstract_syntax == dataset.SOPClassUID
    }
    current = str(dataset.file_meta.TransferSyntaxUID)
    if current in accepted or not accepted:
        return dataset
    dataset.file_meta.TransferSyntaxUID = UID(sorted(accepted)[0])
    return dataset


def echo(config: PacsSettings) -> str | None:
    """C-ECHO the PACS: None when it answered, else why not (for `edge doctor`)."""
    ae = _application_entity(config)
    ae.add_requested_context(Verification)
    assoc, rejection = associate(ae, config.host or "", config.port, config.called_ae)
    if not assoc.is_established:
        return _refusal(assoc, config, rejection)
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if "Status" not in status:
        return f"{destination(config)} did not answer the C-ECHO"
    if int(status.Status) != 0:
        return f"{destination(config)} answered the C-ECHO with 0x{int(status.Status):04X}"
    return None
