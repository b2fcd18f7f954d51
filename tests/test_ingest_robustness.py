"""Hostile and odd input at the ingest boundary: every pydicom test file, and mutated DICOM bytes
(hypothesis), go through the guarded decoder and the pipeline: each is ingested or refused with
a code; nothing crashes or hangs."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config import Settings
from edge.errors import EdgeError
from edge.ingest.guard import GuardedDecoder
from edge.pipeline import Pipeline
from edge.store import Store
from tests.conftest import DEFAULT_MODEL, MODELS

SEEDS = sorted((MODELS / DEFAULT_MODEL / "samples" / "demo").glob("*.dcm"))


@pytest.fixture(scope="module")
def decoder() -> Iterator[GuardedDecoder]:
    with GuardedDecoder(timeout_s=10, memory_mb=1024) as guarded:
        yield guarded


def pydicom_bundled_files() -> list[Path]:
    root = Path(pydicom.__file__).parent / "data"
    skip = {".py", ".pyc", ".json", ".txt", ".md", ".dump", ".gz", ".icc"}
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix not in skip)


def test_every_pydicom_file_through_ingestion_and_the_worker(
    settings: Settings, store: Store, decoder: GuardedDecoder
) -> None:
    pipeline = Pipeline(settings, store, actor="test")
    outcomes: Counter[str] = Counter()
    for path in pydicom_bundled_files():
        try:
            ingested = pipeline.ingest(path.read_bytes(), path.name, "test", decoder=decoder.decode)
        except EdgeError as error:
            outcomes[f"refused {error.code.value}"] += 1
            continue
        outcomes["duplicate" if ingested.outcome.duplicate else "ingested"] += 1
    while pipeline.run_once():  # the worker: scored, or refused by the gate with a code
        pass
    pipeline.close()
    for state, count in store.db.execute(
        "SELECT state || ' ' || coalesce(error_code, ''), count(*) FROM jobs GROUP BY 1"
    ):
        outcomes[f"job {state.strip()}"] += count
    total = len(pydicom_bundled_files())
    print(f"\npydicom's {total} bundled files: {dict(sorted(outcomes.items()))}")
    assert sum(v for k, v in outcomes.items() if not k.startswith("job")) == total
    assert outcomes["ingested"] >= 1
    assert store.counts()["jobs_running"] == 0
    assert store.counts()["jobs_queued"] == 0


def mutate(data: bytes, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "overwrite", "zero_run"]))
    buffer = bytearray(data)
    if kind == "truncate":
        return bytes(buffer[: draw(st.integers(0, len(buffer)))])
    position = draw(st.integers(0, len(buffer) - 1))
    if kind == "flip":
        for offset in draw(st.lists(st.integers(0, 2000), min_size=1, max_size=8)):
            index = min(len(buffer) - 1, position + offset)
            buffer[index] ^= draw(st.integers(1, 255))
    elif kind == "insert":
        buffer[position:position] = draw(st.binary(min_size=1, max_size=64))
    elif kind == "overwrite":
        # Aim at the header and element lengths, where parsers are most fragile.
        start = draw(st.integers(128, min(len(buffer) - 1, 1200)))
        chunk = draw(st.binary(min_size=1, max_size=16))
        buffer[start : start + len(chunk)] = chunk
    else:
        length = draw(st.integers(1, 512))
        buffer[position : position + length] = bytes(min(length, len(buffer) - position))
    return bytes(buffer)


@settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_mutated_dicom_is_decoded_or_refused(decoder: GuardedDecoder, data: st.DataObject) -> None:
    seed = SEEDS[data.draw(st.integers(0, len(SEEDS) - 1))].read_bytes()
    mutated = mutate(seed, data.draw)
    try:
        decoded = decoder.decode(mutated, "fuzz.dcm")
    except EdgeError:
        return  # a coded refusal is the right answer for most mutations
    assert decoded.pixels.ndim in (2, 3)
    assert decoded.pixels.dtype.name == "uint8"
