"""DICOM C-STORE listener (pynetdicom): X-ray units push images here.

A thin handler, as pynetdicom advises: take the encoded dataset, hand it to the pipeline's
ingest (guarded decode, route, durable store, job queued) and answer Success only after the job
row is committed, so a modality whose image we did not keep will send it again. Status codes:

- 0x0000 Success: stored and queued (or a duplicate of what is already stored: idempotent);
- 0xA700 Out of resources: the disk guard says no, or the store could not write; the modality
  retries later and nothing is lost;
- 0xC000 Cannot understand: the dataset cannot be decoded or no model accepts it; the refusal
  is in the log and the audit trail with its code.

Associations are refused from calling AE titles outside `[dicom] allowed_callers` (when set),
and to any called AE title but ours. C-ECHO is answered. Each association thread has its own
store connection (SQLite connections are per thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from pydicom import uid
from pynetdicom import AE, StoragePresentationContexts, evt

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.pipeline import Decoder, Pipeline

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
RETRY_LATER = {Code.DISK_FULL, Code.STORE_WRITE_FAILED}
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
]


def image_storage_classes() -> list[str]:
    """The storage SOP classes that carry images (not reports, waveforms or presentation states)."""
    return [
        str(context.abstract_syntax)
        for context in StoragePresentationContexts
        if "Image" in uid.UID(str(context.abstract_syntax)).name
    ]


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
        self.stored = 0

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

    def start(self) -> None:
        config = self.settings.dicom
        ae = AE(ae_title=config.ae_title)
        ae.maximum_associations = config.max_associations
        ae.require_called_aet = True
        if config.allowed_callers:
            ae.require_calling_aet = list(config.allowed_callers)
        else:
            log.warning("DICOM listener accepts any calling AE title: set [dicom] allowed_callers")
        ae.add_supported_context(VERIFICATION)
        for sop_class in image_storage_classes():
            ae.add_supported_context(sop_class, TRANSFER_SYNTAXES)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        self._server = ae.start_server((config.bind, config.port), block=False, evt_handlers=handlers)
        log.info("DICOM listener %s on %s:%d", config.ae_title, config.bind, config.port)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0 in tests)."""
        return int(self._server.server_address[1]) if self._server else self.settings.dicom.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()  # waits for the association threads, which close their stores
            self._server = None

    def _on_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        error = EdgeError(
            Code.CALLER_NOT_ALLOWED,
            f"association from AE {requestor.ae_title!r} at {requestor.address} rejected (not allowed)",
        )
        log.warning("%s", error.one_line())

    def _on_store(self, event: Any) -> int:
        accepting, reason = self._accepting()
        if not accepting:
            log.warning("C-STORE answered out-of-resources: %s", reason)
            return OUT_OF_RESOURCES
        caller = str(event.assoc.requestor.ae_title)
        try:
            data = event.encoded_dataset(include_meta=True)
            pipeline = self._pipeline()
            pipeline.ingest(data, f"C-STORE from {caller}", "dicom", decoder=self._decoder)
        except EdgeError as error:
            return OUT_OF_RESOURCES if error.code in RETRY_LATER else CANNOT_UNDERSTAND
        except Exception:  # a bug must not leave the modality without an answer
            log.exception("C-STORE handler failed")
            return OUT_OF_RESOURCES
        self.stored += 1
        self._on_queued()
        return SUCCESS
