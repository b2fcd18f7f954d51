"""DICOM C-STORE listener (pynetdicom): X-ray units and PACS push images here.

A thin handler, as pynetdicom advises: take the encoded dataset, hand it to the pipeline's
ingest (guarded decode, route, durable store, job queued) and answer only after the rows are
committed, so a sender whose image we did not keep will send it again.

Store semantics of a PACS: every well-formed DICOM instance is stored, and whether it is
analysed is a separate decision. A CT, an MR or an extremity film in a study a PACS forwards is
stored with a refused job naming why (`NO_MODEL_FOR_INPUT`, `DICOM_UNSUPPORTED`): the technician
sees it in the worklist, and the chest films of the same study are analysed. Answering such an
instance with a failure made Orthanc abort the whole C-MOVE, and dcmtk's storescu stop, so the
chest films were lost with it (issue 18). Status codes:

- 0x0000 Success: stored (analysed or not), a duplicate of what is already stored (same UID,
  same pixels, nothing the analysis reads changed), a header correction of a stored instance
  (same UID, patient and study, same pixels; attributes the analysis reads changed: a new
  version, analysed anew, issue 14), or another object under a stored UID (another patient or
  study, other pixels, which DICOM gives a new UID): kept alongside, the stored one untouched,
  logged and audited as `INSTANCE_UID_COLLISION` (issue 17: it was answered Success and dropped
  when it came in another transfer syntax);
- 0xA700 Refused, out of resources: the disk guard says no, or the disk is full; nothing is
  lost, the sender retries later;
- 0xC000 Error, cannot understand: bytes that are not a readable DICOM object (`DICOM_INVALID`,
  `DICOM_TRUNCATED`), or a file that hangs or kills the bounded decoder;
- 0x0110 Processing failure: the store could not write (`STORE_WRITE_FAILED`) or a bug.

Every non-success answer carries its refusal code in the Error Comment (0000,0902).

Associations: up to `[dicom] max_associations` are served at once, each in its own thread with
its own store connection (SQLite connections are per thread). Rejections say why, on the wire
and in the log: a calling AE title outside `[dicom] allowed_callers` (permanent, calling AE not
recognised, `CALLER_NOT_ALLOWED`; an empty list refuses everyone and records who tried, see
`dicom_access`), another called AE title than ours (permanent, called AE not recognised,
`CALLED_AE_UNKNOWN`), or all slots taken (transient, local limit exceeded, `LISTENER_BUSY`).
C-ECHO is answered, but is not work: when every slot is taken, the association that has stored
nothing for longest, beyond `[dicom] idle_timeout_s`, is aborted to admit the newcomer
(`LISTENER_IDLE_CLOSED`), so callers holding idle associations open with C-ECHO cannot lock the
modalities out (issue 17). Addresses and TLS: `dicom_access`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom import uid
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.association import Association

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.dicom_video import ffmpeg_available
from edge.ingest import dicom_access
from edge.ingest.dicom_access import CallerPolicy, SeenCallers
from edge.pipeline import Decoder, Pipeline

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
_STATUS = {
    Code.DISK_FULL: OUT_OF_RESOURCES,
    Code.DECODER_UNAVAILABLE: OUT_OF_RESOURCES,  # no decoder process could start: send again later
    Code.STORE_WRITE_FAILED: PROCESSING_FAILURE,
}
VERIFICATION = "1.2.840.10008.1.1"  # C-ECHO

TRANSFER_SYNTAXES = [
    uid.ExplicitVRLittleEndian,
    uid.ImplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.ExplicitVRBigEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
    # Cines as video streams (MPEG-2, H.264, HEVC): ultrasound machines store long loops so
    # (edge.imaging.dicom_video); refused in negotiation before, so the modality failed to send.
    # Offered only where they decode: a sender that could fall back to JPEG then does.
    *(uid.MPEGTransferSyntaxes if ffmpeg_available() else []),
]


def image_storage_classes() -> list[str]:
    """The storage SOP classes that carry images (not reports, waveforms or presentation states)."""
    return [
        str(context.abstract_syntax)
        for context in StoragePresentationContexts
        if "Image" in uid.UID(str(context.abstract_syntax)).name
    ]


def answer(code: Code | None) -> Dataset:
    """The C-STORE response's status (and the refusal code as its Error Comment)."""
    status = Dataset()
    if code is None:
        status.Status = SUCCESS
        return status
    status.Status = _STATUS.get(code, CANNOT_UNDERSTAND)
    status.ErrorComment = code.value
    return status


def rejection(assoc: Association, busy: bool) -> EdgeError:
    """Why an association was rejected, in pynetdicom's order of precedence (the limit last)."""
    requestor = assoc.requestor
    who = f"association from AE {requestor.ae_title!r} at {requestor.address}"
    if busy:
        limit = assoc.ae.maximum_associations
        return EdgeError(Code.LISTENER_BUSY, f"{who} rejected: {limit} associations already served")
    called = str(getattr(requestor.primitive, "called_ae_title", "") or "").strip()
    if called != str(assoc.acceptor.ae_title).strip():
        return EdgeError(Code.CALLED_AE_UNKNOWN, f"{who} rejected: it called AE {called!r}, not ours")
    return EdgeError(Code.CALLER_NOT_ALLOWED, f"{who} rejected (not in [dicom] allowed_callers)")


class AdmittingAE(AE):
    """An AE whose association limit counts admitted associations only, and that gives an idle
    association's slot to a newcomer.

    pynetdicom checks `maximum_associations` against every acceptor thread alive, including
    those still negotiating and those being torn down after a rejection, so a burst of 12
    connections with a limit of 4 got 2 accepted (issue 18). Its check reads
    `active_associations` from the negotiating thread: answered here by admitting that thread
    when a slot is free (under a lock, so a burst admits exactly the limit), else by a list one
    longer than the limit, which pynetdicom rejects as local-limit-exceeded. Every other caller
    gets pynetdicom's own answer.

    A slot is free too when an admitted association has done no work (no C-STORE) for `idle_s`:
    the idlest is aborted and the newcomer admitted in its place (issue 17: four associations
    kept open with C-ECHO locked every modality out).
    """

    def __init__(
        self, ae_title: str, allowed: Callable[[Association], bool], policy: CallerPolicy, idle_s: float
    ) -> None:
        super().__init__(ae_title=ae_title)
        self._allowed = allowed
        self._policy = policy
        self.idle_s = idle_s
        self._admission = threading.Lock()
        self._admitted: list[Association] = []
        self._last_work: dict[Association, float] = {}
        self._working: set[Association] = set()
        self.busy: set[Association] = set()

    @property  # type: ignore[misc]
    def require_calling_aet(self) -> list[str]:
        """The policy's titles (none allowed: a title nobody can send), never pynetdicom's
        empty default that lets anyone in."""
        return self._policy.pynetdicom_titles()

    @property
    def active_associations(self) -> list[Association]:
        everyone = super().active_associations
        current = threading.current_thread()
        if not isinstance(current, Association) or not current.is_acceptor or current.is_established:
            return everyone
        if not self._allowed(current):
            return []  # rejected for its AE titles, which the log and the wire should say
        evicted = None
        with self._admission:
            self._admitted = [held for held in self._admitted if held.is_alive()]
            self._last_work = {held: at for held, at in self._last_work.items() if held in self._admitted}
            if current in self._admitted:
                return list(self._admitted)
            if len(self._admitted) >= self.maximum_associations:
                evicted = self._idlest()
                if evicted is not None:
                    self._admitted.remove(evicted)
            if len(self._admitted) < self.maximum_associations:
                self._admitted.append(current)
                self._last_work[current] = time.monotonic()
                admitted = list(self._admitted)
            else:
                self.busy.add(current)
                admitted = [*self._admitted, current]
        if evicted is not None:
            self._evict(evicted, current)
        return admitted

    def _idlest(self) -> Association | None:
        """The admitted association that did no work for longest, if beyond `idle_s`."""
        now = time.monotonic()
        idle = [
            (at, held)
            for held, at in self._last_work.items()
            if held not in self._working and now - at >= self.idle_s
        ]
        return min(idle, key=lambda entry: entry[0])[1] if idle else None

    def _evict(self, idle: Association, newcomer: Association) -> None:
        error = EdgeError(
            Code.LISTENER_IDLE_CLOSED,
            f"association from AE {idle.requestor.ae_title!r} at {idle.requestor.address} aborted:"
            f" no C-STORE for {self.idle_s:g} s and AE {newcomer.requestor.ae_title!r} needs its slot",
        )
        log.warning("%s", error.one_line())
        # Not from this (the newcomer's) thread: abort() waits for the idle one's connection to end.
        threading.Thread(target=idle.abort, name="DicomIdleAbort", daemon=True).start()

    def working(self, assoc: Association, busy: bool) -> None:
        """A C-STORE starts (`busy`) or ends on `assoc`: it is not idle."""
        with self._admission:
            if busy:
                self._working.add(assoc)
            else:
                self._working.discard(assoc)
            if assoc in self._admitted:
                self._last_work[assoc] = time.monotonic()


class DicomListener:
    def __init__(
        self,
        settings: Settings,
        make_pipeline: Callable[[], Pipeline],
        decoder: Decoder,
        *,
        on_queued: Callable[[], None] = lambda: None,
        accepting: Callable[[], tuple[bool, str]] = lambda: (True, ""),
    ) -> None:
        """`accepting()` is the disk guard: (False, reason) makes every store answer 0xA700."""
        self.settings = settings
        self._make_pipeline = make_pipeline
        self._decoder = decoder
        self._on_queued = on_queued
        self._accepting = accepting
        self._local = threading.local()
        self._server: Any = None
        self._ae: AdmittingAE | None = None
        self.policy = CallerPolicy(settings.dicom)
        self.seen = SeenCallers(settings.data_dir)
        self._count = threading.Lock()
        self.stored = 0
        """Instances stored (analysed or not); duplicates not counted."""
        self.not_analysed = 0
        """Of those, instances stored with a refusal instead of a job."""

    def _pipeline(self) -> Pipeline:
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is None:
            pipeline = self._make_pipeline()
            self._local.pipeline = pipeline
        return pipeline

    def _on_closed(self, event: Any) -> None:
        """The association's thread is ending: close its store connection in that thread."""
        pipeline = getattr(self._local, "pipeline", None)
        if pipeline is not None:
            self._local.pipeline = None
            pipeline.close()
            pipeline.store.close()

    def _allowed(self, assoc: Association) -> bool:
        """The AE title checks pynetdicom makes, repeated for the admission (`AdmittingAE`)."""
        config = self.settings.dicom
        calling = str(assoc.requestor.ae_title).strip()
        called = str(getattr(assoc.requestor.primitive, "called_ae_title", "") or "").strip()
        return called == config.ae_title.strip() and self.policy.title_allowed(calling)

    def start(self) -> None:
        config = self.settings.dicom
        ae = AdmittingAE(config.ae_title, self._allowed, self.policy, config.idle_timeout_s)
        ae.maximum_associations = config.max_associations
        ae.require_called_aet = True
        # Negotiation and each DIMSE message get 30 s; a connection silent for a minute is closed,
        # but never while one of its stores is still decoding (the idle timer runs meanwhile,
        # so a timeout shorter than the decoder's aborted the association after a slow store).
        ae.acse_timeout = 30
        ae.dimse_timeout = 30
        ae.network_timeout = max(60.0, self.settings.ingest.decode_timeout_s + 30)
        if self.policy.any_title:
            log.warning('DICOM listener accepts any calling AE title ([dicom] allowed_callers = ["*"])')
        elif not self.policy.titles:
            log.warning(
                "DICOM listener refuses every caller until [dicom] allowed_callers lists them;"
                " `edge doctor` names those refused"
            )
        ae.add_supported_context(VERIFICATION)
        for sop_class in image_storage_classes():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        self._ae = ae
        self._server = dicom_access.start_server(ae, config, self.policy, handlers, self.seen)
        log.info(
            "DICOM listener %s on %s:%d (%d associations at once%s)",
            config.ae_title,
            config.bind,
            config.port,
            config.max_associations,
            ", TLS only" if self._server.ssl_context is not None else "",
        )

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 in tests)."""
        return int(self._server.server_address[1]) if self._server else self.settings.dicom.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # waits for the association threads, which close their stores
            self._server = None

    def _on_rejected(self, event: Any) -> None:
        busy = self._ae is not None and event.assoc in self._ae.busy
        if busy and self._ae is not None:
            self._ae.busy.discard(event.assoc)
        error = rejection(event.assoc, busy)
        log.warning("%s", error.one_line())
        if error.code is Code.CALLER_NOT_ALLOWED:
            requestor = event.assoc.requestor
            title = str(requestor.ae_title).strip()
            self.seen.record(title, str(requestor.address))
            log.warning(
                "to accept it: %s",
                dicom_access.allow_line(sorted({*self.policy.titles, title}), self.settings.config_file),
            )

    def _on_store(self, event: Any) -> Dataset:
        accepting, reason = self._accepting()
        if not accepting:
            log.warning("C-STORE answered out-of-resources: %s", reason)
            return answer(Code.DISK_FULL)
        caller = str(event.assoc.requestor.ae_title)
        if self._ae is not None:
            self._ae.working(event.assoc, True)
        try:
            data = event.encoded_dataset(include_meta=True)
            pipeline = self._pipeline()
            ingested = pipeline.ingest(
                data, f"C-STORE from {caller}", "dicom", decoder=self._decoder, keep_dicom=True
            )
        except EdgeError as error:  # logged and audited by the pipeline
            return answer(error.code)
        except Exception:  # a bug must not leave the sender without an answer
            log.exception("C-STORE handler failed")
            return answer(Code.STORE_WRITE_FAILED)
        finally:
            if self._ae is not None:
                self._ae.working(event.assoc, False)
        if not ingested.outcome.duplicate:
            with self._count:
                self.stored += 1
                self.not_analysed += ingested.refusal is not None
        if ingested.refusal is None:
            self._on_queued()
        return answer(None)
