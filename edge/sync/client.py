"""The device's client of the hub: enrolment, signed requests, and each exchange of a round.

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
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import stamina

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.store import Store
from edge.store.files import write_atomically
from edge.sync import protocol
from edge.sync.deid import Deidentifier
from edge.sync.protocol import WireCode

log = logging.getLogger(__name__)
THUMBNAIL_SIDE = 256


class HubRefused(Exception):
    """The hub answered with a refusal that retrying will not fix (4xx): its status, its wire
    code (None when the body was not the hub's refusal, e.g. a proxy's page) and its sentence."""

    def __init__(self, status: int, code: WireCode | None, message: str) -> None:
        super().__init__(f"{status} {code.value}: {message}" if code else f"{status} {message}")
        self.status, self.code, self.message = status, code, message

    @classmethod
    def from_response(cls, response: httpx.Response) -> HubRefused:
        refusal = protocol.read_refusal(response.content)
        if refusal is None:
            return cls(response.status_code, None, response.text[:300])
        return cls(response.status_code, refusal.code, refusal.message[:300])


class HubUnavailable(Exception):
    """Connection refused, cut, timed out, or the hub answered 5xx/429: try again later."""


@dataclass
class Credential:
    hub_url: str
    device_id: str
    secret: str
    clock_offset: float = 0.0

    @property
    def signing_key(self) -> str:
        return protocol.signing_key(self.secret)

    @staticmethod
    def path(settings: Settings) -> Path:
        return settings.data_dir / "sync" / "credential.json"

    @classmethod
    def load(cls, settings: Settings) -> Credential | None:
        try:
            return cls(**json.loads(cls.path(settings).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, settings: Settings) -> None:
        write_atomically(self.path(settings), json.dumps(self.__dict__, indent=1).encode())


def enroll(settings: Settings, hub_url: str, code: str, device_name: str, http: httpx.Client) -> Credential:
    """Exchange the one-time code for this device's credential and keep it (owner-only file)."""
    body = protocol.EnrollRequest(code=code, device_name=device_name, site=settings.site).model_dump_json()
    response = http.post(
        hub_url.rstrip("/") + "/v1/enroll", content=body, headers={"Content-Type": "application/json"}
    )
    if response.status_code != 200:
        raise EdgeError(Code.CONFIG_INVALID, f"enrolment refused: {HubRefused.from_response(response)}")
    reply = protocol.EnrollResponse.model_validate_json(response.content)
    credential = Credential(hub_url.rstrip("/"), reply.device_id, reply.secret, reply.hub_time - time.time())
    credential.save(settings)
    return credential


class SyncClient:
    def __init__(self, settings: Settings, store: Store, http: httpx.Client, credential: Credential) -> None:
        self.settings = settings
        self.store = store
        self.http = http
        self.credential = credential
        self.deid = Deidentifier.for_device(settings.data_dir / "sync", settings.sync.dates)
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

    def _send_once(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        timestamp = f"{time.time() + self.credential.clock_offset:.3f}"
        nonce = secrets.token_hex(16)
        signed = {
            "Authorization": f"Bearer {self.credential.device_id}.{self.credential.secret}",
            "X-Edge-Timestamp": timestamp,
            "X-Edge-Nonce": nonce,
            "X-Edge-Signature": protocol.sign(
                self.credential.signing_key, method, path, timestamp, nonce, body
            ),
            **headers,
        }
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
            raise refused
        return response

    def _resync_clock(self) -> None:
        try:
            hub_time = float(
                self.http.get(self.credential.hub_url + "/v1/health", timeout=10).json()["hub_time"]
            )
        except (httpx.HTTPError, ValueError, KeyError):
            return
        self.credential.clock_offset = hub_time - time.time()
        self.credential.save(self.settings)

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
            reply = protocol.BatchReply.model_validate_json(response.content)
            by_uuid = {row["ref_id"]: row["id"] for row in rows}
            self.store.outbox.mark_acked([by_uuid[u] for u in reply.stored + reply.duplicates])
            if reply.quarantined:
                log.error("the hub quarantined %d record(s) (same id, other content)", len(reply.quarantined))
                self.store.outbox.mark_acked(
                    [by_uuid[u] for u in reply.quarantined], note="quarantined by the hub"
                )
            sent += len(reply.stored) + len(reply.duplicates)

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
                meta = json.loads(row.get("meta") or "{}")
                if str(meta.get("burned_in_annotation") or "").upper() == "YES":
                    continue  # pixels with burned-in text never leave the device
                if kind == "heatmap" and not row.get("heatmap_path"):
                    continue
                ref = row["image_id"] if kind == "image" else row["result_id"]
                tasks.append((kind, ref, {"result_id": row["result_id"], "image_id": row["image_id"]}))
        return self.store.outbox.add_upload_tasks(tasks)

    def push_files(self) -> int:
        done = 0
        for row in self.store.outbox.pending_outbox(["thumbnail", "heatmap", "image"], 1000):
            payload = json.loads(row["payload"])
            try:
                data, media_type = self._file_bytes(row["kind"], payload)
            except (KeyError, TypeError, FileNotFoundError) as exc:
                # Deleted with its study, or the file is gone: say so once, keep the queue moving.
                log.warning(
                    "%s for %s is no longer on the device (%s); not sent", row["kind"], row["ref_id"], exc
                )
                self.store.outbox.mark_acked(
                    [row["id"]], note="withdrawn: the file is no longer on the device"
                )
                continue
            if data is None:
                self.store.outbox.mark_acked([row["id"]], note="withheld: must not leave the device")
                continue
            self._upload(row["kind"], row["ref_id"], payload["result_id"], data, media_type)
            self.store.outbox.mark_acked([row["id"]])
            done += 1
        return done

    def _file_bytes(self, kind: str, payload: dict[str, Any]) -> tuple[bytes | None, str]:
        store = self.store
        if kind == "heatmap":
            result = store.result(payload["result_id"])
            if result is None or result.heatmap_path is None:
                raise FileNotFoundError(f"result {payload['result_id']} has no heatmap")
            return (store.data_dir / result.heatmap_path).read_bytes(), "image/png"
        image = store.image(payload["image_id"]) or {}  # {} (deleted): KeyError below
        data = (store.data_dir / image["path"]).read_bytes()
        if kind == "image" and image["format"] == "dicom":
            return self.deid.dicom(data), "application/dicom"
        pixels = decode_bytes(data, "stored image").pixels  # PNG re-encoded: no metadata travels
        if kind == "thumbnail":
            scale = min(1.0, THUMBNAIL_SIDE / max(pixels.shape[:2]))
            if scale < 1.0:
                size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
                pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        ok, encoded = cv2.imencode(
            ".png", np.ascontiguousarray(pixels[:, :, ::-1] if pixels.ndim == 3 else pixels)
        )
        return (encoded.tobytes() if ok else None), "image/png"

    def _upload(self, kind: str, record_uuid: str, result_uuid: str, data: bytes, media_type: str) -> None:
        start = protocol.UploadStart(
            record_uuid=record_uuid,
            kind=kind,
            result_uuid=result_uuid,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type=media_type,
        )
        state = protocol.UploadState.model_validate_json(
            self._send(
                "POST", "/v1/uploads", start.model_dump_json().encode(), {"Content-Type": "application/json"}
            ).content
        )
        offset = state.offset
        while not state.complete:
            chunk = data[offset : offset + protocol.CHUNK_BYTES]
            self._throttle(len(chunk))
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
                offset = int(head.headers["Upload-Offset"])
                continue
            state = protocol.UploadState.model_validate_json(response.content)
            offset = state.offset

    def _throttle(self, size: int) -> None:
        kbps = self.settings.sync.bandwidth_kbps
        if kbps > 0:
            time.sleep(size * 8 / (kbps * 1000))

    # ------------------------------------------------------------------ reviews

    def pull_reviews(self) -> int:
        added = 0
        while True:
            cursor = int(self.store.outbox.sync_state().get("review_cursor", 0))
            page = protocol.ReviewPage.model_validate_json(
                self._send("GET", f"/v1/reviews?cursor={cursor}").content
            )
            if page.cursor == cursor:
                return added
            added += self.store.outbox.apply_reviews([r.model_dump() for r in page.reviews], page.cursor)

    # ------------------------------------------------------------------ model releases

    def releases(self) -> list[protocol.ModelRelease]:
        """The signed releases the hub offers this device's programme (not yet verified)."""
        return [protocol.ModelRelease(**r) for r in self._send("GET", "/v1/models").json()]

    def release_file(self, release: protocol.ModelRelease, file: str, offset: int = 0) -> httpx.Response:
        """One file of a release, from byte `offset` on (206) when the hub honours the Range."""
        return self._send(
            "GET",
            f"/v1/models/{release.name}/{release.version}/{file}",
            headers={"Range": f"bytes={offset}-"} if offset else {},
        )

    # ------------------------------------------------------------------ site profiles

    def profiles(self) -> list[protocol.ProfileRelease]:
        """The signed site profiles the hub offers this device's site (not yet verified)."""
        return [protocol.ProfileRelease(**p) for p in self._send("GET", "/v1/profiles").json()]
