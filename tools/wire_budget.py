"""What one result costs on the wire, measured (issue 21's budgets).

    python -m tools.wire_budget [--results 1000] [--pictures 21] [--cap-kbps 64] [--json out.json]
    python -m tools.wire_budget --small      # what CI runs (tests/test_wire_budget.py)

A real hub (the FastAPI app under uvicorn, SQLite) listens on loopback behind a byte-counting TCP
proxy (asyncio; every byte both ways, plain HTTP: TLS would add its own ~5% and is left out). A
device is enrolled through the proxy, real sample images (the shipped chest X-ray samples, each
copy a distinct file) go through the product's pipeline (inference, CAM, evidence grid), and the
sync client sends them:

1. results alone (`[sync] images = "none"`): batches of results, bytes per result;
2. pictures (`images = "thumbnails"`): one result at a time, its result batch, its thumbnail and
   its heatmap (the evidence grid), so each result's bytes are its own; negative and positive
   findings reported separately; the diagnostic rendition (issue 20: positive findings by
   default, `[sync] diagnostic`) apart, in KB each and how many results carried one, and not
   in those results' totals (it is a separate, lower-priority class);
3. the bandwidth cap (`[sync] bandwidth_kbps`): results sent under the cap, the device-to-hub
   rate measured at the proxy against it (budget: within 5%);
4. a clip's cine (issue 20, upload kind "cine"): the lung recording shipped in samples/video
   through the product's clip path, its study flagged urgent (as a technician does, so the
   default `[sync] diagnostic` sends it), the cine reported apart in KB and how many clips
   carried one (budget: `CINE_BUDGET`).

Fixed costs of a sync round that do not grow with the results (the review cursor, the release
and profile lists) are reported once, apart. Exit status 1 when a budget is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from edge.config import Settings, load_settings
from edge.imaging.decode import decode_bytes
from edge.operations.bench import png_variants
from edge.pipeline import Pipeline
from edge.store import Store
from edge.sync.client import SyncClient
from edge.sync.credential import enroll

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "models"
SAMPLES = MODELS / "cxr-pneumonia" / "samples"
RESULT_BUDGET = 200  # bytes per result, results alone
PICTURES_BUDGET = 15_000  # bytes per negative result with its thumbnail and heatmap
CAP_TOLERANCE = 0.05
CLIP = REPO / "samples" / "video" / "lung-regular-alines.mp4"
CINE_BUDGET = 250_000  # bytes on the wire for one clip's cine (edge/video/filmstrip.py)


# ------------------------------------------------------------------ the counting proxy


@dataclass
class Counts:
    up: int = 0  # device -> hub
    down: int = 0  # hub -> device
    first_up: float | None = None  # monotonic time of the first and last device bytes
    last_up: float | None = None

    @property
    def total(self) -> int:
        return self.up + self.down


class CountingProxy:
    """A TCP proxy on loopback that counts the bytes it forwards, in its own event loop thread."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.counts = Counts()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="counting-proxy", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the counting proxy did not start")
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def reset(self) -> Counts:
        """The counts so far, and zero from now on."""
        with self._lock:
            counts, self.counts = self.counts, Counts()
        return counts

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            hub_reader, hub_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        try:
            await asyncio.gather(
                self._pipe(reader, hub_writer, up=True), self._pipe(hub_reader, writer, up=False)
            )
        except asyncio.CancelledError:  # the proxy is closing: a kept-alive connection ends here
            hub_writer.close()
            writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        try:
            while data := await reader.read(65536):
                with self._lock:
                    if up:
                        now = time.monotonic()
                        self.counts.up += len(data)
                        self.counts.first_up = self.counts.first_up or now
                        self.counts.last_up = now
                    else:
                        self.counts.down += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


# ------------------------------------------------------------------ the hub


class LiveHub:
    """The hub app under a real uvicorn on a free loopback port (a thread of this process)."""

    def __init__(self, folder: Path) -> None:
        import uvicorn

        from edge.hub import db
        from edge.hub.app import create_app

        url = f"sqlite:///{folder / 'hub.db'}"
        # Many requests from one device in a few seconds: the per-device rate limit is not
        # what is measured here.
        self.settings = load_settings(
            data_dir=folder, hub={"database_url": url, "rate_per_s": 10_000, "rate_burst": 10_000}
        )
        self.engine = db.make_engine(url)
        config = uvicorn.Config(
            create_app(self.settings, self.engine),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="hub", daemon=True)
        self.port = 0

    def __enter__(self) -> LiveHub:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the hub did not start")
            time.sleep(0.05)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


# ------------------------------------------------------------------ the device


def sample_files() -> list[Path]:
    """The shipped samples, normal and pneumonia in turn (the model's finding, not the label,
    decides which row a result is counted in)."""
    lines = (SAMPLES / "labels.csv").read_text().splitlines()[1:]
    rows = [line.split(",") for line in lines if line.startswith("sample-")]
    normal = [SAMPLES / row[0] for row in rows if row[1] == "normal"]
    pneumonia = [SAMPLES / row[0] for row in rows if row[1] != "normal"]
    mixed = [path for pair in zip(normal, pneumonia, strict=False) for path in pair]
    return mixed or sorted(SAMPLES.glob("sample-*.png"))


def analyse(settings: Settings, store: Store, count: int, tag: str) -> Iterator[tuple[str, bool]]:
    """`count` studies of the samples in turn (each a distinct file) through the pipeline, one
    at a time: (result id, positive) as each is stored."""
    pipeline = Pipeline(settings, store, actor="wire_budget")
    files = sample_files()
    try:
        for index in range(count):
            blob = png_variants(files[index % len(files)].read_bytes(), 1, f"{tag}{index}")[0]
            decoded = decode_bytes(blob)
            image = Pipeline.new_image(decoded, blob, "wire_budget", None)
            outcome = store.ingest(image, ["cxr-pneumonia"], actor="wire_budget")
            job = store.claim_job(pipeline.worker_id, outcome.job_ids[0])
            if job is None:
                raise RuntimeError("the job was not claimable")
            result = store.result(pipeline.process(job, decoded))
            if result is None:
                raise RuntimeError(f"no result for study {index}")
            yield result.id, result.finding == result.finding_label
    finally:
        pipeline.close()


def device_settings(folder: Path, images: str, cap_kbps: float = 0.0, **more: Any) -> Settings:
    return load_settings(
        **more,
        data_dir=folder,
        models={"dir": MODELS},
        explain={"heatmaps": images != "none"},  # results alone: no CAM work to wait for
        sync={"images": images, "bandwidth_kbps": cap_kbps},
        store={"min_free_mb": 0, "reserve_mb": 0},
    )


@dataclass
class Report:
    results: int = 0
    results_bytes: int = 0
    round_fixed_bytes: int = 0
    pictures: dict[str, list[int]] = field(default_factory=lambda: {"negative": [], "positive": []})
    files: dict[str, list[int]] = field(
        default_factory=lambda: {"thumbnail": [], "heatmap": [], "rendition": [], "cine": []}
    )
    carried: dict[str, int] = field(default_factory=lambda: {"negative": 0, "positive": 0})
    clips: int = 0  # clip results measured
    clips_carried: int = 0  # of which sent a cine
    cap_kbps: float = 0.0
    cap_measured_kbps: float = 0.0
    cap_up_bytes: int = 0

    def per_result(self) -> float:
        return self.results_bytes / max(1, self.results)

    def cap_ratio(self) -> float:
        return self.cap_measured_kbps / self.cap_kbps if self.cap_kbps else 0.0

    def failures(self) -> list[str]:
        failed = []
        if self.per_result() > RESULT_BUDGET:
            failed.append(f"results alone: {self.per_result():.1f} B/result > {RESULT_BUDGET}")
        worst = max(self.pictures["negative"], default=0)
        if not self.pictures["negative"]:
            failed.append("no negative finding among the pictures")
        elif worst > PICTURES_BUDGET:
            failed.append(f"a negative result with its pictures: {worst} B > {PICTURES_BUDGET}")
        measured = sum(len(sizes) for sizes in self.pictures.values())
        for kind in ("thumbnail", "heatmap"):  # a picture sent without one would pass more easily
            if len(self.files[kind]) < measured:
                failed.append(f"{len(self.files[kind])} {kind} upload(s) for {measured} pictures measured")
        if max(self.files["cine"], default=0) > CINE_BUDGET:
            failed.append(f"a clip's cine: {max(self.files['cine'])} B > {CINE_BUDGET}")
        if self.cap_kbps and abs(self.cap_ratio() - 1) > CAP_TOLERANCE:
            failed.append(f"bandwidth cap: {self.cap_measured_kbps:.1f} kbit/s against {self.cap_kbps:g}")
        return failed

    def rendition_row(self) -> str:
        sizes = self.files["rendition"]
        mean_kb = statistics.mean(sizes) / 1000 if sizes else 0.0
        measured = sum(len(v) for v in self.pictures.values())
        return (
            f"| results that carried a diagnostic rendition: positive {self.carried['positive']}"
            f" of {len(self.pictures['positive'])}, negative {self.carried['negative']}"
            f" of {len(self.pictures['negative'])} | {sum(self.carried.values())} of {measured}"
            f" | {mean_kb:.1f} KB each | | |"
        )

    def table(self) -> str:
        def row(what: str, values: list[int]) -> str:
            if not values:
                return f"| {what} | 0 | - | - | - |"
            mean = statistics.mean(values)
            return f"| {what} | {len(values)} | {mean:,.0f} | {min(values):,} | {max(values):,} |"

        lines = [
            "| on the wire (bytes, both ways) | n | mean | min | max |",
            "|---|---:|---:|---:|---:|",
            f"| result alone (images = none, batches) | {self.results} | {self.per_result():,.1f} | | |",
            row("negative result + thumbnail + heatmap", self.pictures["negative"]),
            row("positive result + thumbnail + heatmap", self.pictures["positive"]),
            row("  of which the thumbnail upload", self.files["thumbnail"]),
            row("  of which the heatmap (grid) upload", self.files["heatmap"]),
            row("diagnostic rendition upload (apart from the totals above)", self.files["rendition"]),
            self.rendition_row(),
            row("clip cine upload (apart from the totals above)", self.files["cine"]),
            f"| clips that carried a cine (flagged urgent) | {self.clips_carried} of {self.clips} | | | |",
            f"| a sync round's fixed cost (reviews, releases...) | 1 | {self.round_fixed_bytes:,} | | |",
        ]
        if self.cap_kbps:
            lines.append(
                f"| bandwidth cap {self.cap_kbps:g} kbit/s: device->hub measured | {self.cap_up_bytes:,} B "
                f"| {self.cap_measured_kbps:.2f} kbit/s | ratio {self.cap_ratio():.3f} | |"
            )
        return "\n".join(lines)


def measure(folder: Path, results: int, pictures: int, cap_kbps: float, clips: bool = True) -> Report:
    from edge.hub import devices
    from edge.sync.runner import exchange

    report = Report(cap_kbps=cap_kbps)
    with LiveHub(folder / "hub") as hub, CountingProxy(hub.port) as proxy, httpx.Client() as http:
        url = f"http://127.0.0.1:{proxy.port}"
        # 1. results alone, in the client's batches.
        settings = device_settings(folder / "device-results", "none")
        credential = enroll(settings, url, devices.create_enroll_code(hub.engine), "budget-results", http)
        with Store(settings.data_dir) as store:
            for _ in analyse(settings, store, results, "r"):
                pass
            client = SyncClient(settings, store, http, credential)
            proxy.reset()
            report.results = client.push_results()
            report.results_bytes = proxy.reset().total
            exchange(client)  # nothing left to send: what a round costs anyway
            report.round_fixed_bytes = proxy.reset().total
            # 3. the cap: the same results sent again under it (the hub answers "duplicate";
            # the device sends every byte again), the link the only wait.
            if cap_kbps:
                store.db.execute("UPDATE outbox SET acked_at = NULL WHERE kind = 'result'")
                store.db.conn.commit()
                capped = SyncClient(
                    device_settings(settings.data_dir, "none", cap_kbps), store, http, credential
                )
                started = time.monotonic()
                capped.push_results()
                counts = proxy.reset()
                report.cap_up_bytes = counts.up
                elapsed = (counts.last_up or time.monotonic()) - started
                report.cap_measured_kbps = counts.up * 8 / 1000 / max(1e-6, elapsed)
        # 2. pictures: each result analysed, then sent with its thumbnail and heatmap.
        settings = device_settings(folder / "device-pictures", "thumbnails")
        credential = enroll(settings, url, devices.create_enroll_code(hub.engine), "budget-pictures", http)
        with Store(settings.data_dir) as store:
            client = SyncClient(settings, store, http, credential)
            _count_uploads(client, proxy, report.files)
            for _, positive in analyse(settings, store, pictures, "p"):
                finding = "positive" if positive else "negative"
                renditions = len(report.files["rendition"])
                proxy.reset()
                client.push_results()
                client.queue_uploads()
                client.push_files()
                rendition = sum(report.files["rendition"][renditions:])
                report.carried[finding] += int(rendition > 0)
                report.pictures[finding].append(proxy.reset().total - rendition)
        if clips:
            _measure_clip(folder, url, http, hub.engine, proxy, report)
    return report


def _measure_clip(
    folder: Path, url: str, http: httpx.Client, engine: Any, proxy: CountingProxy, report: Report
) -> None:
    """4. the shipped lung recording as a clip result, flagged urgent, sent with its pictures:
    its cine's upload counted by kind (`_count_uploads`)."""
    from edge.hub import devices

    settings = device_settings(folder / "device-clip", "thumbnails", video={"model": "us-lung"})
    credential = enroll(settings, url, devices.create_enroll_code(engine), "budget-clip", http)
    with Store(settings.data_dir) as store:
        pipeline = Pipeline(settings, store, actor="wire_budget")
        try:
            analyses = [a for a in pipeline.analyse_file(CLIP, model="us-lung") if a.ok and a.result]
        finally:
            pipeline.close()
        client = SyncClient(settings, store, http, credential)
        counted: dict[str, list[int]] = {}  # the clip's other pictures stay out of rows 2.
        _count_uploads(client, proxy, counted)
        for analysis in analyses:
            assert analysis.result is not None
            image = store.image(analysis.result.image_id) or {}  # a clip's study: its key frame's
            store.technician.set_urgent(str(image["study_id"]), True, "wire_budget")
            cines = len(counted.get("cine", []))
            client.push_results()
            client.queue_uploads()
            client.push_files()
            report.clips += 1
            report.clips_carried += int(len(counted.get("cine", [])) > cines)
        report.files["cine"] += counted.get("cine", [])


def _count_uploads(client: SyncClient, proxy: CountingProxy, files: dict[str, list[int]]) -> None:
    """Each upload's own bytes (start, chunks, answers), by kind: the client's upload step
    wrapped with the proxy's counter (measurement only; what it sends is unchanged)."""
    upload = client._upload

    def counted(kind: str, *args: Any) -> None:
        before = proxy.counts.total
        upload(kind, *args)
        files.setdefault(kind, []).append(proxy.counts.total - before)

    client._upload = counted  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=int, default=1000, help="results sent alone (images = none)")
    parser.add_argument("--pictures", type=int, default=21, help="results sent one by one with pictures")
    parser.add_argument("--cap-kbps", type=float, default=64.0, help="bandwidth cap to check (0: skip)")
    parser.add_argument("--no-clip", action="store_true", help="skip the clip's cine (4.)")
    parser.add_argument("--small", action="store_true", help="CI size: 200 results, 7 with pictures")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args(argv)
    if args.small:
        args.results, args.pictures = 200, 7
    with tempfile.TemporaryDirectory(prefix="wire-budget-") as folder:
        report = measure(Path(folder), args.results, args.pictures, args.cap_kbps, not args.no_clip)
    print(report.table())
    failures = report.failures()
    for failure in failures:
        print(f"OVER BUDGET: {failure}")
    if args.json:
        figures: dict[str, Any] = {
            "results": report.results,
            "bytes_per_result": report.per_result(),
            "round_fixed_bytes": report.round_fixed_bytes,
            "pictures": report.pictures,
            "files": report.files,
            "renditions_carried": report.carried,
            "cines_carried": {"clips": report.clips, "carried": report.clips_carried},
            "cap_kbps": report.cap_kbps,
            "cap_measured_kbps": report.cap_measured_kbps,
            "failures": failures,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
