"""A simulated fleet against a hub: N devices x M results, the real device protocol.

    python -m tools.fleet_sim --devices 1000 --results 20 --nodes 3 [--kill-every 5] [--images]
    python -m tools.fleet_sim --devices 200 --results 20 --scale 1,3 --plot docs/fleet-scaling.svg

Starts a throwaway PostgreSQL and tools/hub_cluster.py (nginx in front of `--nodes` hub
processes), unless `--hub URL --postgres URL` name a running one. Each device enrols with a
one-time code and its own ed25519 key (`edge.sync.credential.enroll`: the product's enrolment),
then sends its results as gzip batches signed per request (`Credential.headers`: key, clock,
nonce), `--per-batch` results each, in the payload shape of `edge/sync/deid.py`'s
`result_payload`; with `--images` each result's lean pictures go up as resumable uploads (start,
then PATCH at the offset the hub holds): a 256-px greyscale JPEG thumbnail (q80, as
edge/sync/outgoing.py makes it; this noise costs ~9 KB) and the evidence grid
(edge/imaging/evidence.py, ~75 B). A transient answer (no connection, 5xx, 429, or
`REPLAYED`: a request whose first copy reached a node that died) is sent again, newly signed,
as the device's sync does. Meanwhile a reviewer agrees with some results on the hub, and at the
end every device pulls its reviews back. `--kill-every S` SIGKILLs a random node about every S
seconds and restarts it a second later.

Reports (JSON with --json): results/s, p50/p99 request latency, results on the hub against
results sent (lost, duplicated, quarantined: read from the database), reviews made and pulled,
PostgreSQL bytes per 1,000 results (pg_total_relation_size of the tables that grow with them),
and CPU seconds per node (/proc).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
from sqlalchemy import Engine, func, select, text

from edge.config import load_settings
from edge.hub import db, devices, reviews
from edge.imaging import evidence
from edge.imaging.preprocess import PreprocessSpec
from edge.sync import protocol
from edge.sync.credential import Credential, enroll
from edge.sync.outgoing import THUMBNAIL_QUALITY
from tools import postgres_temp
from tools.hub_cluster import HubCluster

GROWING_TABLES = ("records", "worklist", "nonces", "uploads", "upload_chunks", "reviews", "audit")
TRANSIENT = {"REPLAYED", "RATE_LIMITED", "STALE_REQUEST"}


@dataclass
class Tally:
    """What the fleet saw, shared by the device threads."""

    latencies: list[float] = field(default_factory=list)
    sent: int = 0  # results the hub acknowledged (stored or duplicate)
    stored: int = 0
    duplicates: int = 0
    retries: int = 0
    uploads: int = 0
    reviews_pulled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SimDevice:
    """One enrolled device: its credential (with its private key) and an HTTP connection pool."""

    def __init__(self, index: int, credential: Credential, http: httpx.Client, tally: Tally) -> None:
        self.index, self.credential, self.http, self.tally = index, credential, http, tally
        self.uuids: list[str] = []

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        deadline_s: float = 300.0,
    ) -> httpx.Response:
        """Signed anew on every try (a fresh nonce); transient failures tried again."""
        until = time.monotonic() + deadline_s
        delay = 0.05
        while True:
            signed = {**self.credential.headers(method, path, body), **(headers or {})}
            started = time.perf_counter()
            try:
                response = self.http.request(
                    method, self.credential.hub_url + path, content=body, headers=signed
                )
            except httpx.TransportError:
                response = None
            elapsed = time.perf_counter() - started
            if response is not None:
                with self.tally.lock:
                    self.tally.latencies.append(elapsed)
                code = _code_of(response)
                if response.status_code < 400:
                    return response
                if response.status_code < 500 and response.status_code != 429 and code not in TRANSIENT:
                    raise RuntimeError(f"device {self.index}: {method} {path}: {response.status_code} {code}")
            if time.monotonic() > until:
                raise RuntimeError(f"device {self.index}: {method} {path}: no answer within {deadline_s} s")
            with self.tally.lock:
                self.tally.retries += 1
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 1.0)

    def send_results(self, count: int, per_batch: int, images: bool, rng: random.Random) -> None:
        records = []
        for seq in range(1, count + 1):
            payload = result_payload(rng, self.index)
            record_uuid = str(uuid.uuid4())
            records.append(
                {
                    "uuid": record_uuid,
                    "seq": seq,
                    "kind": "result",
                    "sha256": protocol.payload_hash(payload),
                    "payload": payload,
                }
            )
        for start in range(0, len(records), per_batch):
            chunk = records[start : start + per_batch]
            body = protocol.compress({"protocol": 1, "batch_id": str(uuid.uuid4()), "records": chunk})
            reply = protocol.BatchReply.model_validate_json(
                self.request(
                    "POST",
                    "/v1/batches",
                    body,
                    {"Content-Encoding": "gzip", "Content-Type": "application/json"},
                ).content
            )
            acknowledged = set(reply.stored) | set(reply.duplicates)
            if acknowledged != {r["uuid"] for r in chunk} or reply.quarantined:
                raise RuntimeError(f"device {self.index}: the hub did not acknowledge the whole batch")
            with self.tally.lock:
                self.tally.sent += len(chunk)
                self.tally.stored += len(reply.stored)
                self.tally.duplicates += len(reply.duplicates)
            self.uuids += [r["uuid"] for r in chunk]
            if images:
                for record in chunk:
                    self.upload(record["uuid"], "thumbnail", thumbnail(rng), "image/jpeg")
                    self.upload(record["uuid"], "heatmap", evidence_grid(rng), evidence.MEDIA_TYPE)

    def upload(self, result_uuid: str, kind: str, data: bytes, media_type: str) -> None:
        import hashlib

        start = protocol.UploadStart(
            record_uuid=uuid.UUID(result_uuid),
            kind=kind,  # type: ignore[arg-type]
            result_uuid=uuid.UUID(result_uuid),
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type=media_type,
        )
        state = protocol.UploadState.model_validate_json(
            self.request(
                "POST", "/v1/uploads", start.model_dump_json().encode(), {"Content-Type": "application/json"}
            ).content
        )
        while not state.complete:
            piece = data[state.offset : state.offset + protocol.CHUNK_BYTES]
            try:
                answer = self.request(
                    "PATCH", f"/v1/uploads/{state.upload_id}", piece, {"Upload-Offset": str(state.offset)}
                )
                state = protocol.UploadState.model_validate_json(answer.content)
            except RuntimeError as refused:  # WRONG_OFFSET after a failover: ask where it is
                if "WRONG_OFFSET" not in str(refused):
                    raise
                head = self.request("HEAD", f"/v1/uploads/{state.upload_id}")
                state = protocol.UploadState(
                    upload_id=state.upload_id, offset=int(head.headers["Upload-Offset"]), complete=False
                )
        with self.tally.lock:
            self.tally.uploads += 1

    def pull_reviews(self) -> int:
        cursor, pulled = 0, 0
        while True:
            page = protocol.ReviewPage.model_validate_json(
                self.request("GET", f"/v1/reviews?cursor={cursor}").content
            )
            pulled += len(page.reviews)
            if not page.reviews or page.cursor == cursor:
                return pulled
            cursor = page.cursor


def _code_of(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


def result_payload(rng: random.Random, device: int) -> dict[str, Any]:
    """A payload shaped as `Deidentifier.result_payload` makes it (codes and numbers only)."""
    probability = round(rng.random(), 5)
    positive = probability >= 0.5
    return {
        "result": {
            "model": "cxr-pneumonia",
            "version": "1.2.0",
            "model_sha256": "ab" * 32,
            "variant": "fp32",
            "backend": "onnxruntime",
            "precision": "fp32",
            "finding": "pneumonia" if positive else "normal",
            "positive_label": "pneumonia",
            "probability": probability,
            "probabilities": {"normal": round(1 - probability, 5), "pneumonia": probability},
            "threshold": 0.5,
            "operating_point": "balanced",
            "latency_ms": round(rng.uniform(20, 90), 2),
            "quality": {"contrast": 0.41},
            "created": "2026-11-30T10:00:00Z",
            "applicability": {"state": "in scope", "distance": 1.2, "p_value": 0.4, "threshold": 3.1},
        },
        "study": {
            "patient": f"{rng.getrandbits(96):024x}",
            "study": f"{rng.getrandbits(96):024x}",
            "age_years": round(rng.uniform(1, 90), 1),
            "sex": rng.choice("MF"),
            "modality": "DX",
            "body_part": "CHEST",
            "view": "PA",
            "study_date": "2026-11-30",
            "urgent": False,
        },
        "image": {"uuid": str(uuid.uuid4()), "format": "png", "width": 1024, "height": 1024, "frames": 1},
        "site": f"site-{device % 50}",
    }


def thumbnail(rng: random.Random) -> bytes:
    """A 256-px greyscale JPEG at the device's quality (~7 KB, the lean sync's thumbnail), unique
    bytes: smoothed noise stands in for an X-ray's texture."""
    noise = np.random.default_rng(rng.getrandbits(32)).integers(0, 255, (256, 256), dtype=np.uint8)
    smooth = cv2.GaussianBlur(noise, (9, 9), 0)
    return bytes(cv2.imencode(".jpg", smooth, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_QUALITY])[1])


def evidence_grid(rng: random.Random) -> bytes:
    """A 7x7 class-activation map as the device sends it (edge.imaging.evidence.encode)."""
    cam = np.random.default_rng(rng.getrandbits(32)).random((2, 7, 7)).astype(np.float32)
    return evidence.encode(cam, 1, PreprocessSpec(224, 224), 1024, 1024)


# ------------------------------------------------------------------ one run


def enroll_fleet(
    engine: Engine, hub_url: str, count: int, folder: Path, http: httpx.Client, workers: int
) -> list[Credential]:
    codes = [devices.create_enroll_code(engine, actor="fleet_sim") for _ in range(count)]

    def one(index: int) -> Credential:
        settings = load_settings(data_dir=folder / f"device{index}", site=f"site-{index % 50}")
        for attempt in range(20):
            try:
                return enroll(settings, hub_url, codes[index], f"sim-{index}", http, insecure=True)
            except Exception:
                if attempt == 19:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(count)))


def review_some(engine: Engine, stop: threading.Event, made: list[str], share: float = 0.1) -> None:
    """A specialist agreeing with about `share` of the results as they arrive."""
    seen = 0
    while not stop.is_set():
        with engine.connect() as conn:
            rows = conn.execute(
                select(db.records.c.id, db.records.c.uuid, db.records.c.device_id)
                .where(db.records.c.id > seen)
                .order_by(db.records.c.id)
                .limit(500)
            ).all()
        for row in rows:
            seen = row.id
            if random.random() < share:
                reviews.add_review(engine, row.uuid, "agree", reviewer="fleet-sim", device_id=row.device_id)
                made.append(row.uuid)
        if not rows:
            stop.wait(0.5)


def killer(cluster: HubCluster, every_s: float, stop: threading.Event, rng: random.Random) -> None:
    while not stop.wait(rng.uniform(every_s / 2, every_s * 1.5)):
        index = rng.randrange(len(cluster.ports))
        cluster.kill_node(index)
        stop.wait(1.0)
        cluster.start_node(index)
        with contextlib.suppress(RuntimeError):
            cluster.wait_node(index)


def database_figures(engine: Engine, sent_uuids: set[str]) -> dict[str, Any]:
    with engine.connect() as conn:
        rows = conn.execute(select(db.records.c.device_id, db.records.c.uuid)).all()
        quarantined = conn.execute(select(func.count()).select_from(db.quarantine)).scalar_one()
        sizes = {
            table: conn.execute(text("SELECT pg_total_relation_size(:t)"), {"t": table}).scalar_one()
            for table in GROWING_TABLES
        }
        complete = conn.execute(
            select(func.count()).select_from(db.uploads).where(db.uploads.c.complete.is_(True))
        ).scalar_one()
    on_hub = [row.uuid for row in rows]
    return {
        "on_hub": len(on_hub),
        "lost": len(sent_uuids - set(on_hub)),
        "duplicated": len(on_hub) - len(set(on_hub)),
        "unexpected": len(set(on_hub) - sent_uuids),
        "quarantined": quarantined,
        "uploads_complete": complete,
        "table_bytes": sizes,
    }


def run_fleet(
    hub_url: str,
    engine: Engine,
    devices_n: int,
    results: int,
    per_batch: int = 1,
    workers: int = 32,
    images: bool = False,
    cluster: HubCluster | None = None,
    kill_every: float = 0.0,
    kill_at: Callable[[int], None] | None = None,
    seed: int = 1,
) -> dict[str, Any]:
    """The fleet against a running hub; `kill_at(sent)` is called after each batch (tests kill a
    node at a chosen point with it)."""
    tally = Tally()
    folder = Path(tempfile.mkdtemp(prefix="edge-fleet-"))
    limits = httpx.Limits(max_connections=workers * 2, max_keepalive_connections=workers)
    with httpx.Client(limits=limits, timeout=30) as http:
        started = time.monotonic()
        credentials = enroll_fleet(engine, hub_url, devices_n, folder, http, workers)
        enrol_s = time.monotonic() - started
        fleet = [SimDevice(i, c, http, tally) for i, c in enumerate(credentials)]
        stop = threading.Event()
        made: list[str] = []
        helpers = [threading.Thread(target=review_some, args=(engine, stop, made), daemon=True)]
        if cluster is not None and kill_every > 0:
            helpers.append(
                threading.Thread(
                    target=killer, args=(cluster, kill_every, stop, random.Random(seed + 1)), daemon=True
                )
            )
        for helper in helpers:
            helper.start()
        cpu_before = cluster.node_cpu_seconds() if cluster else []

        def drive(device: SimDevice) -> None:
            device.send_results(results, per_batch, images, random.Random(seed * 100_003 + device.index))
            if kill_at is not None:
                kill_at(tally.sent)

        started = time.monotonic()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(drive, fleet))
        send_s = time.monotonic() - started
        stop.set()
        for helper in helpers:
            helper.join()
        cpu = [a - b for a, b in zip(cluster.node_cpu_seconds(), cpu_before, strict=False)] if cluster else []
        expected_reviews: dict[str, int] = {}
        with engine.connect() as conn:
            for row in conn.execute(
                select(db.reviews.c.device_id, func.count()).group_by(db.reviews.c.device_id)
            ):
                expected_reviews[row[0]] = row[1]
        with ThreadPoolExecutor(workers) as pool:
            pulled = list(pool.map(lambda d: d.pull_reviews(), fleet))
        mismatched = sum(
            1
            for d, n in zip(fleet, pulled, strict=False)
            if n != expected_reviews.get(d.credential.device_id, 0)
        )
    shutil.rmtree(folder, ignore_errors=True)  # the devices' keys and credentials
    sent_uuids = {u for d in fleet for u in d.uuids}
    figures = database_figures(engine, sent_uuids)
    latencies = sorted(tally.latencies)
    growing = sum(figures["table_bytes"].values())
    return {
        "devices": devices_n,
        "results_per_device": results,
        "per_batch": per_batch,
        "images": images,
        "nodes": len(cluster.ports) if cluster else None,
        "kills": cluster.kills if cluster else 0,
        "enrol_s": round(enrol_s, 1),
        "send_s": round(send_s, 1),
        "results_sent": len(sent_uuids),
        "results_per_s": round(len(sent_uuids) / send_s, 1),
        "requests": len(latencies),
        "retries": tally.retries,
        "latency_p50_ms": round(1000 * statistics.median(latencies), 1) if latencies else None,
        "latency_p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1) if latencies else None,
        "stored_answers": tally.stored,
        "duplicate_answers": tally.duplicates,
        "reviews_made": len(made),
        "reviews_pulled": sum(pulled),
        "devices_missing_reviews": mismatched,
        "uploads_sent": tally.uploads,
        "pg_bytes_per_1000_results": round(1000 * growing / max(1, figures["on_hub"])),
        "cpu_s_per_node": [round(c, 1) for c in cpu],
        **figures,
    }


def run_with_cluster(nodes: int, args: argparse.Namespace) -> dict[str, Any]:
    with postgres_temp.throwaway_postgres() as url:
        engine = db.make_engine(url)
        with HubCluster(nodes, url) as cluster:
            report = run_fleet(
                cluster.url,
                engine,
                args.devices,
                args.results,
                args.per_batch,
                args.workers,
                args.images,
                cluster,
                args.kill_every,
                seed=args.seed,
            )
        engine.dispose()
    return report


def scaling_svg(reports: list[dict[str, Any]], path: Path) -> None:
    """Results/s and p99 latency against node count, drawn by hand (no matplotlib in the venv)."""
    width, height, left, bottom, top = 520, 300, 60, 250, 30
    nodes = [r["nodes"] for r in reports]
    rates = [r["results_per_s"] for r in reports]
    p99 = [r["latency_p99_ms"] for r in reports]
    top_rate, top_p99 = max(rates) * 1.2, max(p99) * 1.2
    span = max(nodes) - min(nodes) or 1

    def x(n: int) -> float:
        return left + 40 + (n - min(nodes)) / span * (width - left - 120)

    def y(value: float, top_value: float) -> float:
        return bottom - value / top_value * (bottom - top)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{width - 40}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{width - 40}" y1="{top}" x2="{width - 40}" y2="{bottom}" stroke="black"/>',
        f'<text x="{width / 2}" y="{height - 10}" text-anchor="middle">'
        "hub nodes behind nginx (one PostgreSQL)</text>",
        f'<text x="{left - 8}" y="{top - 10}" fill="#1f77b4">results/s</text>',
        f'<text x="{width - 40}" y="{top - 10}" fill="#d62728" text-anchor="middle">p99 ms</text>',
    ]
    # results/s labelled above its points, p99 below (their lines may meet at the last count)
    for values, top_value, colour, unit, shift in (
        (rates, top_rate, "#1f77b4", "results/s", -8),
        (p99, top_p99, "#d62728", "ms p99", 18),
    ):
        points = " ".join(f"{x(n):.1f},{y(v, top_value):.1f}" for n, v in zip(nodes, values, strict=True))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for n, v in zip(nodes, values, strict=True):
            parts.append(f'<circle cx="{x(n):.1f}" cy="{y(v, top_value):.1f}" r="4" fill="{colour}"/>')
            parts.append(
                f'<text x="{x(n):.1f}" y="{y(v, top_value) + shift:.1f}" fill="{colour}"'
                f' text-anchor="middle">{v:g} {unit}</text>'
            )
    for n in nodes:
        parts.append(f'<text x="{x(n):.1f}" y="{bottom + 16}" text-anchor="middle">{n}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--results", type=int, default=5, help="results per device")
    parser.add_argument("--per-batch", type=int, default=1, help="results per batch request")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--scale", help="node counts to compare, e.g. 1,3 (one fresh database each)")
    parser.add_argument("--workers", type=int, default=32, help="devices sending at once")
    parser.add_argument(
        "--images",
        action="store_true",
        help="also upload the lean pictures (thumbnail, evidence grid)",
    )
    parser.add_argument("--kill-every", type=float, default=0.0, help="SIGKILL a random node about every S s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the report(s) here")
    parser.add_argument("--plot", type=Path, help="with --scale: write the scaling plot (SVG) here")
    args = parser.parse_args()
    if not postgres_temp.available():
        sys.exit("PostgreSQL is not installed: apt-get install postgresql")
    counts = [int(n) for n in args.scale.split(",")] if args.scale else [args.nodes]
    reports = []
    for nodes in counts:
        report = run_with_cluster(nodes, args)
        print(json.dumps(report), flush=True)
        reports.append(report)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")
    if args.plot and len(reports) > 1:
        scaling_svg(reports, args.plot)
    bad = [
        r for r in reports if r["lost"] or r["duplicated"] or r["quarantined"] or r["devices_missing_reviews"]
    ]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
