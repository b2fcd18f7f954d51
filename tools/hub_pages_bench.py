"""Does the hub's reading side scale with the results it holds? Times the specialists' pages and the
devices' pull endpoints on the real app at N results, for each N of --sizes.

    python -m tools.hub_pages_bench [--sizes 20000,200000] [--devices 200] [--reps 20] [--out DIR]

A throwaway PostgreSQL (tools/postgres_temp.py) is filled through the product's own ingest
(`edge.hub.intake.store_batch`), `db.now` patched so received_at advances 1,000 results a day;
each result's upload rows and reviews (older results more often) are bulk-inserted. The app
(`create_app` under fastapi's TestClient) then serves a specialist of one programme and an
administrator: the worklist's variants, a study page, a verdict POST, the admin page, the agreement
page (up to --agreement-max: cold, then the figures it left to the background, then warm; above,
only its database scan), a device's GET /v1/reviews (cursor 0 and latest) and
/v1/renditions/requested. Printed: median and
p95 per endpoint. Written: <out>/N<size>.json (latencies, queries per request, the slowest SQL) and
<out>/N<size>-explain.txt (EXPLAIN ANALYZE of the statements slower than 5 ms).

The numbers show how each page and its SQL grow with N. They do not show load (one reader at a
time, no ingest meanwhile), a production server (a throwaway PostgreSQL with fsync off and the
default 128 MB shared_buffers unless --shared-buffers), or upload storage (rows, no bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from unittest import mock

from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, insert, select, text

import edge.config
from edge.config import load_settings
from edge.hub import accounts, agreement, agreement_figures, db, devices, intake
from edge.hub.app import create_app
from edge.hub.identities import Device
from edge.hub.limits import RateLimiter
from edge.sync import protocol
from edge.sync.credential import enroll
from tools import postgres_temp

PASSWORD = "correct horse battery staple"
HTML = {"accept": "text/html"}
BUDGET_S = 40.0  # per endpoint and N: a slow page gets fewer samples, but at least 5
EXPLAIN_OVER_MS = 5.0
GROWING_TABLES = ["records", "worklist", "reviews", "uploads", "audit", "nonces"]
TABLE_BYTES = "select relname, pg_total_relation_size(oid) from pg_class where relname = any(:names)"
COUNT_ROWS = " union all ".join(f"select '{table}', count(*) from {table}" for table in GROWING_TABLES)
BUSIEST_DEVICE = "select device_id, count(*) c, max(seq) m from reviews group by 1 order by 2 desc limit 1"
RATE_PER_DAY = 1000  # results all the devices together send per day
HISTORY_END = datetime(2026, 6, 1, tzinfo=timezone.utc)  # where a history of 1,000,000 results ends
HISTORY_START = HISTORY_END - timedelta(days=1_000_000 / RATE_PER_DAY)
MODELS = [  # (model, version, labels, positive label, threshold, share of results)
    ("cxr-pneumonia", "1.2.0", ["normal", "pneumonia"], "pneumonia", 0.5, 0.6),
    ("cxr-tb", "2.0.1", ["normal", "tb"], "tb", 0.35, 0.4),
]
MODEL_BUILD = {"model_sha256": "ab" * 32, "variant": "fp32", "backend": "onnxruntime", "precision": "fp32"}
# Each result's lean pictures, as the device uploads them: (kind, media type, bytes)
UPLOADS = [("thumbnail", "image/jpeg", 9400), ("heatmap", "application/x-edge-evidence", 75)]
REVIEWERS = [f"reader{i}" for i in range(12)]


# ------------------------------------------------------------------ filling the database


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def moment_of(index: int) -> datetime:
    """When result number `index` (0-based, over the whole history) reaches the hub."""
    return HISTORY_START + timedelta(days=index / RATE_PER_DAY)


def result_payload(rng: random.Random, site: str, when: datetime) -> dict[str, Any]:
    model, version, labels, positive, threshold, _ = rng.choices(MODELS, [m[5] for m in MODELS])[0]
    probability = round(rng.betavariate(0.6, 2.2), 5)  # mostly negative; ~15% over the threshold
    other = labels[0] if labels[0] != positive else labels[1]
    modality = rng.choices(["DX", "CR", None], [0.88, 0.10, 0.02])[0]
    # patient: a keyed pseudonym (the filler makes some come back)
    study = {"patient": f"{rng.getrandbits(60):015x}", "study": f"S-{rng.getrandbits(96):024x}"}
    study.update(age_years=round(rng.uniform(1, 90), 1), sex=rng.choice("MF"), body_part="CHEST")
    study.update(view=rng.choice(["PA", "AP"]), study_date=when.date().isoformat())
    study["urgent"] = rng.random() < 0.02
    if modality:
        study["modality"] = modality
    result = {**MODEL_BUILD, "model": model, "version": version, "positive_label": positive}
    result.update(finding=positive if probability >= threshold else other, probability=probability)
    result["probabilities"] = {other: round(1 - probability, 5), positive: probability}
    result.update(threshold=threshold, operating_point="balanced", latency_ms=round(rng.uniform(20, 90), 2))
    result.update(quality={"contrast": round(rng.uniform(0.2, 0.6), 2)})
    result.update(created=stamp(when - timedelta(minutes=rng.uniform(1, 600))))
    state = rng.choices(["in scope", "borderline"], [0.95, 0.05])[0]
    result.update(applicability={"state": state, "distance": 1.2, "p_value": 0.4, "threshold": 3.1})
    image = {"uuid": str(uuid.uuid4()), "format": "dicom", "width": 2048, "height": 2048, "frames": 1}
    return {"result": result, "study": study, "image": image, "site": site}


class Filler:
    """Grows the database to a number of results; each call continues the same history."""

    def __init__(self, engine: Engine, fleet: list[Device], seed: int = 7) -> None:
        self.engine, self.fleet = engine, fleet
        self.rng = random.Random(seed)
        self.held = 0  # results stored so far
        self.patients: list[str] = []  # pseudonyms that come back for another study
        self.seqs = {d.id: 0 for d in fleet}
        self.ingest_s = self.bulk_s = 0.0

    def fill_to(self, target: int, batch: int = 100) -> None:
        rng, real_now, last_log = self.rng, db.now, time.monotonic()
        try:
            while self.held < target:
                count = min(batch, target - self.held)
                device = rng.choice(self.fleet)
                when = moment_of(self.held + count)
                records = []
                for i in range(count):
                    self.seqs[device.id] += 1
                    payload = result_payload(rng, device.site, moment_of(self.held + i))
                    if self.patients and rng.random() < 0.15:
                        payload["study"]["patient"] = rng.choice(self.patients)
                    elif rng.random() < 0.01:
                        self.patients.append(payload["study"]["patient"])
                    digest, seq = protocol.payload_hash(payload), self.seqs[device.id]
                    record = protocol.Record(
                        uuid=str(uuid.uuid4()), seq=seq, kind="result", sha256=digest, payload=payload
                    )
                    records.append(record)
                db.now = lambda moment=when: stamp(moment)  # this batch's received_at
                started = time.perf_counter()
                sent = protocol.Batch(batch_id=str(uuid.uuid4()), records=records)
                reply = intake.store_batch(self.engine, device, sent)
                self.ingest_s += time.perf_counter() - started
                db.now = real_now
                assert len(reply.stored) == count, reply
                started = time.perf_counter()
                self._bulk_rows(device, records, when)
                self.bulk_s += time.perf_counter() - started
                self.held += count
                if time.monotonic() - last_log > 30:
                    last_log = time.monotonic()
                    took = f"ingest {self.ingest_s:.0f}s, bulk {self.bulk_s:.0f}s"
                    print(f"  filled {self.held}/{target} ({took})")
        finally:
            db.now = real_now

    def _bulk_rows(self, device: Device, records: list[protocol.Record], when: datetime) -> None:
        """Complete thumbnail and heatmap uploads of each result; reviews with their audit rows:
        the columns `intake.start_upload`/`append_chunk` and `reviews.add_review` write."""
        rng, uploads, reviews, audits = self.rng, [], [], []
        # Older results are more often reviewed; the history's last week carries the backlog.
        age_days = (HISTORY_END - when).total_seconds() / 86400
        stored = {"device_id": device.id, "complete": True, "created_at": stamp(when)}
        stored["path"] = f"/var/lib/edge/hub/files/{device.id}/x"
        for record in records:
            for kind, media_type, size in UPLOADS:  # complete: offset = size
                upload = {**stored, "id": str(uuid.uuid4()), "record_uuid": record.uuid, "kind": kind}
                upload.update(result_uuid=record.uuid, size=size, offset=size, media_type=media_type)
                uploads.append({**upload, "sha256": f"{rng.getrandbits(256):064x}"})
            payload = record.payload
            result = payload["result"]
            positive = result["probability"] >= result["threshold"] or payload["study"]["urgent"]
            chance = (0.95 if positive else 0.45) * (0.3 if age_days < 7 else 1.0)
            if rng.random() >= chance:
                continue
            for k in range(2 if rng.random() < 0.05 else 1):  # a few results are reviewed twice
                verdict = rng.choices(["agree", "disagree", "uncertain"], [0.85, 0.1, 0.05])[0]
                other = (set(result["probabilities"]) - {result["finding"]}).pop()
                finding = {"agree": result["finding"], "disagree": other}.get(verdict)
                review_id = str(uuid.uuid4())
                at = stamp(when + timedelta(hours=rng.uniform(1, 72) + 24 * k))
                reviewer = rng.choice(REVIEWERS)
                review = {"id": review_id, "device_id": device.id, "result_uuid": record.uuid, "note": None}
                review.update(verdict=verdict, finding=finding, reviewer=reviewer, reviewer_role="specialist")
                reviews.append({**review, "reviewed_at": at})
                detail = {"result": record.uuid, "review": review_id, "verdict": verdict, "finding": finding}
                audit = {"at": at, "actor": reviewer, "action": "review.added", "device_id": device.id}
                audits.append({**audit, "detail": detail})
        with self.engine.begin() as conn:
            conn.execute(insert(db.uploads), uploads)
            if reviews:
                conn.execute(insert(db.reviews), reviews)
                conn.execute(insert(db.audit), audits)


# ------------------------------------------------------------------ the app, its users, the timing


def login(client: TestClient, name: str) -> None:
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/review/login").text).group(1)
    form = {"name": name, "password": PASSWORD, "csrf": csrf, "next": "/review/"}
    assert client.post("/review/login", data=form, follow_redirects=False).status_code == 303


def html_get(client: TestClient, paths: str | Iterator[str]) -> Callable[[], int]:
    """A request for timing: one page, or the next page of `paths` each time."""
    return lambda: client.get(paths if isinstance(paths, str) else next(paths), headers=HTML).status_code


class HubPages:
    """The hub app on the database, its enrolled fleet, and the timing of its endpoints with the
    SQL each request runs (its statements, their parameters and milliseconds)."""

    def __init__(self, url: str, tmp: Path, n_devices: int) -> None:
        settings = load_settings(data_dir=tmp / "hub-host")
        settings = settings.model_copy(update={"hub": settings.hub.model_copy(update={"database_url": url})})
        self.engine = db.make_engine(url)
        self.app = create_app(settings, self.engine)
        # One client sends every request: the rate limits would answer the benchmark 429.
        self.app.state.device_api.limiter = RateLimiter(1e6, 1_000_000)
        web = next(r.app for r in self.app.routes if getattr(r, "path", "") == "/review")
        web.state.web.login_limiter = RateLimiter(1e6, 1_000_000)
        client = TestClient(self.app, base_url="http://testserver")
        self.fleet, self.credentials = [], {}
        for i in range(n_devices):  # the product's enrolment: one-time code, key pair, proof
            programme = "north" if i % 4 else "south"  # 3/4 of the devices in the programme read below
            site = f"{programme}-site-{i % 40}"
            code = devices.create_enroll_code(self.engine, programme)
            device_settings = load_settings(data_dir=tmp / f"dev{i}", site=site)
            credential = enroll(device_settings, "http://testserver", code, f"dev-{i}", client, insecure=True)
            self.fleet.append(Device(credential.device_id, f"dev-{i}", site, programme))
            self.credentials[credential.device_id] = credential
        accounts.create_user(self.engine, "reader", PASSWORD, "specialist", ("north",))
        accounts.create_user(self.engine, "admin", PASSWORD, "administrator", ("*",))
        self.capturing, self.log, self.started = False, [], {}
        event.listen(self.engine, "before_cursor_execute", self._before)
        event.listen(self.engine, "after_cursor_execute", self._after)
        self.results, self.sql = {}, {}  # of one N, by endpoint: latencies; the slowest SQL
        self.params: dict[str, Any] = {}  # each statement's last parameters, for EXPLAIN

    def _before(self, conn, cursor, statement, params, context, many) -> None:
        self.started[id(cursor)] = time.perf_counter()

    def _after(self, conn, cursor, statement, params, context, many) -> None:
        started = self.started.pop(id(cursor), None)
        if self.capturing and started is not None and not many:
            self.log.append((statement, params, time.perf_counter() - started))

    def time(self, label: str, request: Callable[[], int], reps: int) -> None:
        times, per_statement, began = [], defaultdict(list), time.monotonic()
        for i in range(reps):
            if i >= 5 and time.monotonic() - began > BUDGET_S:
                break
            self.log.clear()
            self.capturing, started = True, time.perf_counter()
            status = request()
            times.append((time.perf_counter() - started) * 1000)
            self.capturing = False
            assert status in (200, 303), (label, status)
            for statement, params, seconds in self.log:
                per_statement[statement].append(seconds * 1000)
                self.params[statement] = params
        times.sort()
        n = len(times)
        median, p95 = statistics.median(times), times[min(n - 1, round(0.95 * (n - 1)))]
        queries = round(sum(len(ms) for ms in per_statement.values()) / n, 1)
        stats = {"median_ms": round(median, 1), "p95_ms": round(p95, 1), "max_ms": round(times[-1], 1)}
        self.results[label] = {**stats, "n": n, "queries_per_request": queries}
        self.sql[label] = []
        for statement, ms in sorted(per_statement.items(), key=lambda item: -sum(item[1]))[:4]:
            slow = {"sql": statement, "calls": len(ms), "median_ms": round(statistics.median(ms), 2)}
            slow.update(total_ms_per_request=round(sum(ms) / n, 2), params=repr(self.params[statement]))
            self.sql[label].append(slow)
        print(f"  {label:40s} median {median:8.1f} ms  p95 {p95:8.1f} ms  ({queries} queries)")

    def measure(self, n: int, reps: int, agreement_max: int) -> dict:
        self.results, self.sql = {}, {}
        reader, admin = TestClient(self.app), TestClient(self.app)
        login(reader, "reader")
        login(admin, "admin")
        north = [d.id for d in self.fleet if d.programme == "north"]
        with self.engine.connect() as conn:
            newest = conn.execute(select(func.max(db.worklist.c.record_id))).scalar_one()
            last_day = conn.execute(select(func.max(db.worklist.c.received_at))).scalar_one()[:10]
            in_north = select(db.worklist.c.result_uuid).where(db.worklist.c.device_id.in_(north))
            study_uuids = conn.execute(in_north.order_by(func.random()).limit(reps * 3)).scalars().all()
            busiest = conn.execute(text(BUSIEST_DEVICE)).one()
        since = (date.fromisoformat(last_day) - timedelta(days=6)).isoformat()
        page = reader.get("/review/", headers=HTML).text
        csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)
        verdict, headers = {"verdict": "agree", "csrf": csrf}, {**HTML, "x-csrf-token": csrf}
        unused = iter(study_uuids)  # each request opens a study no request opened before
        listed = f"state=unreviewed&upto={newest}"  # as when opened from the unreviewed worklist
        credential = self.credentials[busiest.device_id]  # the device with the most reviews to pull

        def post_verdict() -> int:  # the reply redirects to the next unreviewed study
            path = f"/review/studies/{next(unused)}/review?{listed}"
            return reader.post(path, data=verdict, headers=headers, follow_redirects=False).status_code

        def device_get(path: str) -> Callable[[], int]:
            return lambda: reader.get(path, headers=credential.headers("GET", path, b"")).status_code

        for label, path in (
            ("worklist default", "/review/"),
            ("worklist page 50", f"/review/?upto={newest}&page=50"),
            ("worklist site", "/review/?site=north-site-1"),
            ("worklist urgent", "/review/?urgent=1"),
            ("worklist unreviewed", "/review/?state=unreviewed"),
            ("worklist last 7 days", f"/review/?since={since}&until={last_day}"),
            ("worklist unreviewed+site", "/review/?state=unreviewed&site=north-site-1"),
        ):
            self.time(label, html_get(reader, path), reps)
        self.time("study page", html_get(reader, (f"/review/studies/{u}" for u in unused)), reps)
        opened_from_list = (f"/review/studies/{u}?{listed}" for u in unused)
        self.time("study page (from unreviewed list)", html_get(reader, opened_from_list), reps)
        self.time("verdict POST (+next unreviewed)", post_verdict, reps)
        self.time("admin page", html_get(admin, "/review/admin"), max(5, reps // 4))
        if n <= agreement_max:
            self.time("agreement page (first, cold)", html_get(admin, "/review/admin/agreement"), 1)
            # what the first page had no time for, computed in the background (the page shows
            # the sites' quick figures meanwhile)
            background = "agreement figures, the rest (background)"
            self.time(background, lambda: (agreement_figures.wait_for_figures(), 200)[1], 1)
            self.time("agreement page (warm)", html_get(admin, "/review/admin/agreement"), 3)
        else:  # every site's figures take minutes at 200,000, cold: time only the page's DB scan
            scan_only = "agreement _by_version (its DB scan only)"
            self.time(scan_only, lambda: (agreement._by_version(self.engine), 200)[1], 1)
        self.time("device GET /v1/reviews cursor=0", device_get("/v1/reviews?cursor=0"), reps)
        self.time("device GET /v1/reviews cursor=latest", device_get(f"/v1/reviews?cursor={busiest.m}"), reps)
        self.time("device GET /v1/renditions/requested", device_get("/v1/renditions/requested"), reps)
        return {"n": n, "results": self.results, "sql": self.sql, "busiest_device_reviews": busiest.c}

    def explain(self, path: Path) -> None:
        """EXPLAIN (ANALYZE, BUFFERS) of each distinct statement slower than EXPLAIN_OVER_MS."""
        seen = set()
        with open(path, "w") as out, self.engine.connect() as conn:
            for label, statements in self.sql.items():
                for s in statements:
                    if s["median_ms"] < EXPLAIN_OVER_MS or s["sql"] in seen:
                        continue
                    sql = s["sql"]
                    seen.add(sql)
                    try:
                        rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", self.params[sql])
                        plan = [row[0] for row in rows]
                    except Exception as error:  # noqa: BLE001 (reported; the other plans still run)
                        plan = [f"EXPLAIN failed: {error}"]
                        conn.rollback()
                    out.write(f"===== {label}  (median {s['median_ms']} ms, {s['calls']} calls)\n{sql}\n")
                    out.write(f"-- params {s['params']}\n" + "\n".join(plan) + "\n\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="20000,200000", help="results in the database, comma separated")
    parser.add_argument("--devices", type=int, default=200, help="enrolled devices the results come from")
    parser.add_argument("--reps", type=int, default=20, help="requests per endpoint (fewer past 40 s)")
    parser.add_argument("--agreement-max", type=int, default=0, help="largest N for the agreement page")
    parser.add_argument("--out", type=Path, default=Path("hub-pages-bench"), help="folder for the reports")
    parser.add_argument("--shared-buffers", default="128MB", help="PostgreSQL's shared_buffers")
    args = parser.parse_args(argv)
    if not postgres_temp.available():
        print("PostgreSQL is not installed: apt-get install postgresql", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    sys.stdout.reconfigure(line_buffering=True)  # progress shows as it happens, also into a log file
    with (
        tempfile.TemporaryDirectory(prefix="hub-pages-bench-") as tmp,
        mock.patch.dict(os.environ),
        # The code's default settings, not this machine's: an EDGE_* variable or /etc/edge/edge.toml
        # (a hub or device set up here) would change what is measured, or point it at real data.
        mock.patch.object(edge.config, "SYSTEM_CONFIG", Path(tmp) / "no-system-config.toml"),
        postgres_temp.throwaway_postgres(settings=(f"shared_buffers={args.shared_buffers}",)) as url,
    ):
        for name in [name for name in os.environ if name.startswith("EDGE_")]:
            del os.environ[name]
        hub = HubPages(url, Path(tmp), args.devices)
        try:
            filler = Filler(hub.engine, hub.fleet)
            for n in [int(size) for size in args.sizes.split(",")]:
                started = time.perf_counter()
                filler.fill_to(n)
                fill_s = time.perf_counter() - started
                with hub.engine.connect() as conn:  # fresh statistics, as autovacuum would have by now
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
                    sizes = dict(conn.execute(text(TABLE_BYTES), {"names": GROWING_TABLES}).all())
                    counts = dict(conn.execute(text(COUNT_ROWS)).all())
                took = f"ingest {filler.ingest_s:.0f}s, bulk {filler.bulk_s:.0f}s"
                print(f"N={n}: filled in {fill_s:.0f}s ({took}); {counts}")
                report = hub.measure(n, args.reps, args.agreement_max)
                filling = {"fill_s": round(fill_s), "ingest_s_total": round(filler.ingest_s)}
                report.update(filling, bytes=sizes, counts=counts)
                (args.out / f"N{n}.json").write_text(json.dumps(report, indent=1) + "\n")
                hub.explain(args.out / f"N{n}-explain.txt")
                print(f"  wrote {args.out}/N{n}.json and N{n}-explain.txt")
        finally:  # PostgreSQL's shutdown waits for open connections
            hub.engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
