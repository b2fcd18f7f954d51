"""The device's client of the hub: signed requests, and each exchange of a round (who the device
is, enrolment and the refusals: edge/sync/credential.py).

(1) results, in batches of `batch_records`, oldest sequence first, gzip-compressed, signed;
what the hub stored or already had is acknowledged locally, never deleted; (2) then files, in
CHUNK_BYTES pieces that resume from the hub's offset after a cut: thumbnails and heatmaps, and
full images only if `[sync] images = "full"`, under a bandwidth cap; (3) reviews by cursor,
applied with the cursor in one transaction; (4) the release list and release files, for
`edge.sync.releases`. `edge.sync.runner` runs them in that order. A refusal is read by its
`protocol.WireCode` from the hub's JSON body. The HTTP client is injected (tests drive the real
hub app through it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import stamina
from pydantic import TypeAdapter

from edge.clock import utc_now
from edge.config import Settings
from edge.errors import Code
from edge.store import Store
from edge.store.reads import evidence_beside
from edge.sync import protocol
from edge.sync.cine import outgoing_cine
from edge.sync.credential import Answer, Credential, HubRefused, HubUnavailable, check_hub_url, hub_answer
from edge.sync.deid import Deidentifier
from edge.sync.outgoing import Outgoing, PixelGuard, withheld
from edge.sync.preparing import MAX_DEATHS, PreparationRecord
from edge.sync.protocol import WireCode

log = logging.getLogger(__name__)


# What httpx adds to every request beyond our own headers (Host, Accept, Accept-Encoding,
# Connection, User-Agent, Content-Length and the request line's constant part), measured on the
# wire by tools/wire_budget.py: the cap counts a request as the bytes it really costs.
_HTTPX_HEADER_BYTES = 170
# Link time left idle (preparing a file, waiting for the hub) that the cap lets the next request
# use: short, so that over any half-minute the rate stays within a few percent of the cap.
_IDLE_CREDIT_S = 0.5
# Every file kind, in the order a round sends them (pending_outbox orders by seq; the rendition
# and a clip's cine, edge/sync/cine.py, are queued last).
UPLOAD_KINDS = ("thumbnail", "heatmap", "image", "rendition", "cine")
# Kinds a hub older than them refuses (BAD_REQUEST): not sent, noted, and the round goes on.
_NEWER_KINDS = ("rendition", "cine")


def _request_bytes(method: str, path: str, body: bytes, headers: dict[str, str]) -> int:
    own = sum(len(name) + len(value) + 4 for name, value in headers.items())
    return len(method) + len(path) + own + _HTTPX_HEADER_BYTES + len(body)


def record_hub_clock(store: Store, offset_s: float) -> None:
    """Keep what the hub just told of this device's clock (its offset from the hub's), for the
    store: an image stored while the clock is off has its age unknown, and an offset within the
    hub's skew window confirms the clock (retention may tell ages by it). Enrolment records it
    too: a clock off at enrolment made images stored before the first round look months old."""
    state: dict[str, Any] = {"clock_offset_s": round(offset_s, 1)}
    if abs(offset_s) <= protocol.MAX_SKEW_S:
        state["clock_confirmed"] = utc_now()
    store.outbox.set_sync_state(**state)


class SyncClient:
    def __init__(self, settings: Settings, store: Store, http: httpx.Client, credential: Credential) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.credential = credential
        check_hub_url(credential.hub_url, credential.insecure)  # a hand-edited credential too
        self.deid = Deidentifier.for_device(settings.data_dir / "sync", settings.sync.dates)
        self.pixels = PixelGuard(settings.sync.burned_text)
        self.preparing = PreparationRecord(settings.data_dir / "sync" / "preparing.json")
        self._link_free_at = time.monotonic()  # when the capped link has carried what was sent
        self._confirmed = -60.0  # when a reply last confirmed the clock (monotonic)
        # Called after every answered request: the service's watchdog pets on progress, so a long
        # drain over a slow link is alive while a hung one is restarted.
        self.on_progress: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ transport

    def _send(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """One signed request, retried (exponential backoff with jitter, via stamina) only while
        the failure is transient; a refusal is raised at once."""
        for attempt in stamina.retry_context(on=HubUnavailable, attempts=3, wait_initial=0.2, wait_max=2.0):
            with attempt:
                return self._send_once(method, path, body, headers or {})
        raise AssertionError("unreachable")

    def _signed(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
        return {**self.credential.headers(method, path, body), **headers}

    def _send_once(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        signed = self._signed(method, path, body, headers)
        self._throttle(_request_bytes(method, path, body, signed))
        try:
            response = self.http.request(
                method,
                self.credential.hub_url + path,
                content=body,
                headers=signed,
                timeout=self.settings.sync.timeout_s,
            )
        except httpx.TransportError as exc:
            raise HubUnavailable(f"{type(exc).__name__}: {exc}") from exc
        self.on_progress()
        if response.status_code == 429 or response.status_code >= 500:
            raise HubUnavailable(f"hub answered {response.status_code}")
        if response.status_code >= 400:
            refused = HubRefused.from_response(response)
            if refused.code is WireCode.STALE_REQUEST:
                self._resync_clock()
                raise HubUnavailable("clock skew: resynchronised with the hub")
            if refused.code in (WireCode.DEVICE_REVOKED, WireCode.UPGRADE_REQUIRED):
                log.error("sync: %s", refused)  # not a passing fault: the technician must act
            raise refused
        return response

    def _answer(self, shape: type[Answer] | TypeAdapter[Answer], response: httpx.Response) -> Answer:
        """The hub's reply in its protocol (`hub_answer`). A reply of the hub's own, to a request
        signed with this clock (no large offset), confirms the clock: retention may tell ages
        by it (`housekeeping.clock_unconfirmed`), recorded at most once a minute. A round that
        never ends well (a quota refused) still confirms it: retention stopped for good."""
        answer = hub_answer(shape, response)
        now = time.monotonic()
        if abs(self.credential.clock_offset) <= protocol.MAX_SKEW_S and now - self._confirmed >= 60:
            record_hub_clock(self.store, self.credential.clock_offset)
            self._confirmed = now
        return answer

    def _resync_clock(self) -> None:
        try:
            hub_time = float(
                self.http.get(self.credential.hub_url + "/v1/health", timeout=10).json()["hub_time"]
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return
        self.credential.clock_offset = hub_time - time.time()
        self.credential.save(self.settings)
        record_hub_clock(self.store, self.credential.clock_offset)

    # ------------------------------------------------------------------ results

    def push_results(self) -> int:
        """Send every unacknowledged result; returns how many the hub now has."""
        sent = 0
        while True:
            rows = self.store.outbox.pending_outbox(["result"], self.settings.sync.batch_records)
            if not rows:
                return sent
            built = [(row, self._record(row)) for row in rows]
            gone = [row["id"] for row, record in built if record is None]
            if gone:
                # A study deleted on the device after its result was queued: nothing to send, and
                # a missing row must not wedge the queue behind it.
                log.warning("%d queued result(s) no longer on the device; not sent", len(gone))
                self.store.outbox.mark_acked(gone, note="withdrawn: the result is no longer on the device")
            rows = [row for row, record in built if record is not None]
            records = [record for _, record in built if record is not None]
            if not records:
                continue
            batch = protocol.Batch(batch_id=str(uuid.uuid4()), records=records)
            try:
                response = self._send(
                    "POST",
                    "/v1/batches",
                    protocol.compress(batch.model_dump()),
                    {"Content-Encoding": "gzip", "Content-Type": "application/json"},
                )
            except (HubUnavailable, HubRefused) as exc:
                self.store.outbox.mark_attempt([row["id"] for row in rows], str(exc)[:200])
                raise
            reply = self._answer(protocol.BatchReply, response)
            by_uuid = {row["ref_id"]: row["id"] for row in rows}
            self.store.outbox.mark_acked([by_uuid[u] for u in reply.stored + reply.duplicates])
            if reply.quarantined:
                log.error("the hub quarantined %d record(s) (same id, other content)", len(reply.quarantined))
                self.store.outbox.mark_acked(
                    [by_uuid[u] for u in reply.quarantined], note="quarantined by the hub"
                )
            sent += len(reply.stored) + len(reply.duplicates)

    def send_tombstones(self, batch: protocol.TombstoneBatch) -> protocol.TombstoneReply:
        """One batch of deletions (`edge.sync.deletions` decides what goes and marks it)."""
        body = protocol.compress(batch.model_dump(mode="json"))
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return self._answer(protocol.TombstoneReply, self._send("POST", "/v1/tombstones", body, headers))

    def _record(self, row: dict[str, Any]) -> protocol.Record | None:
        result = self.store.result(row["ref_id"])
        if result is None:
            return None
        image = self.store.image(result.image_id) or {}
        image["meta"] = json.loads(image.get("meta") or "{}")
        study = dict(
            self.store.db.execute("SELECT * FROM studies WHERE id = ?", [image["study_id"]]).fetchone()
        )
        clip = self.store.clip_for_result(result.id)
        payload = self.deid.result_payload(result, study, image, clip, self.settings.site)
        return protocol.Record(
            uuid=result.id,
            seq=row["seq"],
            kind="result",
            sha256=protocol.payload_hash(payload),
            payload=payload,
        )

    # ------------------------------------------------------------------ files

    def queue_uploads(self) -> int:
        """Upload tasks for results the hub has (results first), by the configured image policy."""
        mode = self.settings.sync.images
        kinds = [] if mode == "none" else ["thumbnail", "heatmap"] + (["image"] if mode == "full" else [])
        tasks = []
        for kind in kinds:
            for row in self.store.outbox.acked_results_without_uploads(kind):
                # Burned-in text (flagged or not) is decided when the file is prepared
                # (`edge.sync.outgoing`), so the technician sees each withheld file's reason.
                if kind == "heatmap" and not row.get("heatmap_path"):
                    continue
                ref = row["image_id"] if kind == "image" else row["result_id"]
                tasks.append((kind, ref, {"result_id": row["result_id"], "image_id": row["image_id"]}))
        # The diagnostic rendition last (the lean payload first), for urgent results by default.
        diagnostic = self.settings.sync.diagnostic
        if mode != "none" and diagnostic in ("positive", "always"):
            # A clip's cine goes under the same policy, after its rendition.
            for kind in ("rendition", "cine"):
                due = self.store.outbox.results_due_a_rendition(diagnostic == "positive", kind=kind)
                for row in due:
                    payload = {"result_id": row["result_id"], "image_id": row["image_id"]}
                    tasks.append((kind, row["result_id"], payload))
        return self.store.outbox.add_upload_tasks(tasks)

    def rendition_requests(self) -> protocol.RenditionRequests:
        """The results whose diagnostic rendition the hub asked for (edge/sync/renditions.py)."""
        return self._answer(protocol.RenditionRequests, self._send("GET", "/v1/renditions/requested"))

    def push_files(self) -> int:
        done = 0
        for row in self.store.outbox.pending_outbox(UPLOAD_KINDS, 1000):
            payload = json.loads(row["payload"])
            deaths = self.preparing.begin(row["id"])
            try:
                if deaths >= MAX_DEATHS:
                    data, media_type, note = self._noted(row["kind"], payload, _killed_us(deaths))
                else:
                    data, media_type, note = self._file_bytes(row["kind"], payload)
            except (KeyError, TypeError, FileNotFoundError) as exc:
                # Deleted with its study, or the file is gone: say so once, keep the queue moving.
                log.warning(
                    "%s for %s is no longer on the device (%s); not sent", row["kind"], row["ref_id"], exc
                )
                self.store.outbox.mark_acked(
                    [row["id"]], note="withdrawn: the file is no longer on the device"
                )
                continue
            finally:
                self.preparing.end()
            if data is None:
                self.store.outbox.mark_acked([row["id"]], note=note or "withheld: must not leave the device")
                continue
            try:
                self._upload(row["kind"], row["ref_id"], payload["result_id"], data, media_type)
            except HubRefused as exc:
                if exc.code is WireCode.RESULT_FIRST:
                    # The hub does not hold the result this device thought it had (a hub restored
                    # from an older backup, a device enrolled afresh): it goes again, the file
                    # waits for it, and the round goes on. Raised, it stopped every round before
                    # reviews, models and profiles, for good (an upgrade check).
                    self.store.outbox.mark_attempt([row["id"]], f"{exc}")
                    if self.store.outbox.send_result_again(payload["result_id"]):
                        log.warning("the hub does not hold result %s: sent again", payload["result_id"])
                    continue
                if row["kind"] not in _NEWER_KINDS or exc.code is not WireCode.BAD_REQUEST:
                    raise
                # A hub older than the diagnostic rendition (or the cine) refuses the kind: the
                # lean payload is there, so the round goes on and the technician sees why.
                note = f"not sent: the hub does not take {row['kind']}s"
                self.store.outbox.mark_acked([row["id"]], note=note)
                continue
            self.store.outbox.mark_acked([row["id"]], note=note)
            done += 1
        return done

    def _file_bytes(self, kind: str, payload: dict[str, Any]) -> tuple[bytes | None, str, str | None]:
        """The bytes of one outgoing file as `edge.sync.outgoing` lets them leave (sector only,
        burned-in text blacked out, or withheld), and the note for the technician."""
        store = self.store
        if kind == "cine":
            return self._noted(kind, payload, outgoing_cine(store, self.pixels, payload))
        heatmap = None
        if kind == "heatmap":
            result = store.result(payload["result_id"])
            if result is None or result.heatmap_path is None:
                raise FileNotFoundError(f"result {payload['result_id']} has no heatmap")
            # The evidence grid where the result has one (a few hundred bytes; the hub draws the
            # overlay), else the blended PNG of a result stored before grids were kept.
            grid = store.data_dir / evidence_beside(result.heatmap_path)
            if grid.exists():
                kind, heatmap = "evidence", grid.read_bytes()
            else:
                heatmap = (store.data_dir / result.heatmap_path).read_bytes()
        image = store.image(payload["image_id"]) or {}  # {} (deleted): KeyError below
        data = (store.data_dir / image["path"]).read_bytes()
        image["meta"] = json.loads(image.get("meta") or "{}")
        study = store.db.execute("SELECT * FROM studies WHERE id = ?", [image["study_id"]]).fetchone()
        outgoing = self.pixels.prepare(
            kind, image, dict(study) if study else None, data, heatmap, deidentify=self.deid.dicom
        )
        return self._noted(kind, payload, outgoing)

    def _noted(
        self, kind: str, payload: dict[str, Any], outgoing: Outgoing
    ) -> tuple[bytes | None, str, str | None]:
        """What was done to an outgoing file, in the log and the audit (a coded line each)."""
        store = self.store
        if outgoing.code is not None:
            withheld = outgoing.data is None
            log.log(
                logging.WARNING if withheld else logging.INFO,
                "%s: %s of result %s: %s",
                outgoing.code.value,
                kind,
                payload["result_id"],
                outgoing.note,
            )
            action = "pixels.withheld" if withheld else "pixels.redacted"
            store.audit(
                "sync",
                "cine.unavailable" if outgoing.code is Code.CINE_UNAVAILABLE else action,
                payload["result_id"],
                {"code": outgoing.code.value, "kind": kind, **outgoing.detail},
            )
        return outgoing.data, outgoing.media_type, outgoing.note

    def _upload(self, kind: str, record_uuid: str, result_uuid: str, data: bytes, media_type: str) -> None:
        start = protocol.UploadStart(
            record_uuid=record_uuid,
            kind=kind,
            result_uuid=result_uuid,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type=media_type,
        )
        state = self._answer(
            protocol.UploadState,
            self._send(
                "POST", "/v1/uploads", start.model_dump_json().encode(), {"Content-Type": "application/json"}
            ),
        )
        offset = state.offset
        while not state.complete:
            chunk = data[offset : offset + protocol.CHUNK_BYTES]
            try:
                response = self._send(
                    "PATCH",
                    f"/v1/uploads/{state.upload_id}",
                    chunk,
                    {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"},
                )
            except HubRefused as exc:
                if exc.code is not WireCode.WRONG_OFFSET:
                    raise
                head = self._send("HEAD", f"/v1/uploads/{state.upload_id}")  # resume where the hub is
                try:
                    offset = int(head.headers["Upload-Offset"])
                except (KeyError, ValueError) as exc:
                    raise HubUnavailable(
                        "the hub's answer carries no upload offset: not the edge hub?"
                    ) from exc
                continue
            state = self._answer(protocol.UploadState, response)
            offset = state.offset

    def _throttle(self, size: int) -> None:
        """`[sync] bandwidth_kbps` over every request (results, files, reviews), counted as the
        bytes it puts on the wire: a request goes once the link, at the cap, would have carried
        it after the ones before it. Link time left idle (OCR, a slow hub) is credited for at
        most `_IDLE_CREDIT_S`, and none before the client's first request, so no stretch of
        traffic from the client's start carries more than the cap. Before, only upload chunks
        waited, for their payload alone: small files (a grid, a thumbnail) went over the cap
        by their request headers."""
        kbps = self.settings.sync.bandwidth_kbps
        if kbps <= 0:
            return
        now = time.monotonic()
        start = max(self._link_free_at, now - _IDLE_CREDIT_S)
        self._link_free_at = start + size * 8 / (kbps * 1000)
        if self._link_free_at > now:
            time.sleep(self._link_free_at - now)

    # ------------------------------------------------------------------ reviews

    def pull_reviews(self) -> int:
        added = 0
        while True:
            cursor = int(self.store.outbox.sync_state().get("review_cursor", 0))
            page = self._answer(protocol.ReviewPage, self._send("GET", f"/v1/reviews?cursor={cursor}"))
            if page.cursor == cursor:
                return added
            added += self.store.outbox.apply_reviews([r.model_dump() for r in page.reviews], page.cursor)

    # ------------------------------------------------------------------ model releases

    def releases(self) -> list[protocol.ModelRelease]:
        """The signed releases the hub offers this device's programme (not yet verified)."""
        return self._answer(_RELEASES, self._send("GET", "/v1/models"))

    @contextmanager
    def release_file(
        self, release: protocol.ModelRelease, file: str, offset: int = 0
    ) -> Iterator[httpx.Response]:
        """One file of a release, from byte `offset` on (206) when the hub honours the Range, as a
        stream: the body is read in pieces by the caller, never whole into memory (a model file
        can be larger than the device's free memory)."""
        path = f"/v1/models/{release.name}/{release.version}/{file}"
        headers = self._signed("GET", path, b"", {"Range": f"bytes={offset}-"} if offset else {})
        try:
            with self.http.stream(
                "GET", self.credential.hub_url + path, headers=headers, timeout=self.settings.sync.timeout_s
            ) as response:
                self.on_progress()
                if response.status_code == 429 or response.status_code >= 500:
                    raise HubUnavailable(f"hub answered {response.status_code}")
                if response.status_code >= 400:
                    response.read()  # a refusal's JSON body: small (the hub's own answer)
                    raise HubRefused.from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise HubUnavailable(f"{type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------------ site profiles

    def profiles(self) -> list[protocol.ProfileRelease]:
        """The signed site profiles the hub offers this device's site (not yet verified)."""
        return self._answer(_PROFILES, self._send("GET", "/v1/profiles"))


_RELEASES = TypeAdapter(list[protocol.ModelRelease])
_PROFILES = TypeAdapter(list[protocol.ProfileRelease])


def _killed_us(deaths: int) -> Outgoing:
    """A file whose preparation the service died in, `deaths` times (`edge.sync.preparing`)."""
    sentence = (
        f"the sync service stopped {deaths} times while preparing this file (too large for its "
        "memory limit?); see docs/codes.md"
    )
    return withheld("application/octet-stream", "preparation_killed", sentence, deaths=deaths)
