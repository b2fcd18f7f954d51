"""TensorRT engine bookkeeping that needs no GPU: cache keys, the precision fallback plan, and
the build/parity records with the rules for retrying a failed build.

Engines do not move between GPUs or TensorRT versions (NVIDIA/TensorRT#2176, #2195), so the
cache key holds everything that invalidates one or changes what the builder may choose: the
source ONNX file's sha256, the precision, the batch profile and workspace limit, the TensorRT,
CUDA runtime and driver versions, the GPU's name and compute capability, and on a Jetson the L4T
release and the module (every Orin module names its GPU "Orin", yet an Orin Nano and an AGX Orin
differ). An upgrade therefore rebuilds instead of failing to deserialize. Each engine has a JSON
record beside it: how it was built, and the parity verdict that allows it to serve.

A failed build is recorded with everything it was built from (the key and this software's
version) and is not retried until one of those changes or `--force`: a parse error or an
unsupported layer fails the same way every time, and a build takes minutes. Out of memory is
different (another program held the GPU's memory): it is retried after `TRANSIENT_RETRY_S`, up to
`TRANSIENT_ATTEMPTS` times, before it is recorded like any other failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge.errors import Code, EdgeError
from edge.inference.registry import ModelEntry
from edge.runtime.device_memory import GpuInfo
from edge.store.files import write_atomically

# Fallback order for `precision = "auto"`: INT8 from the QDQ graph, FP16 then FP32 from the FP32
# graph; after that the caller falls back to ONNX Runtime.
AUTO_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Attempt:
    precision: str  # the engine's precision
    variant: str  # the manifest variant (ONNX file) it is built from


# Out of memory, in TensorRT's words and Python's: worth another try once memory is free.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|outofmemory|could not be allocated|bad_alloc|MemoryError|cudaErrorMemoryAllocation",
    re.IGNORECASE,
)
TRANSIENT_RETRY_S = 600
TRANSIENT_ATTEMPTS = 3


@dataclass(frozen=True)
class BuildHost:
    """This machine, as far as it decides whether an engine built here loads and runs well here."""

    tensorrt: str
    gpu: GpuInfo
    cuda_runtime: str  # "12.6"
    cuda_driver: str  # the newest CUDA the driver supports, "12.6"
    l4t: str = ""  # Jetson Linux release, "R36.4.3"; "" off a Jetson
    module: str = ""  # "NVIDIA Jetson Orin Nano Developer Kit"; "" off a Jetson


@dataclass(frozen=True)
class EngineKey:
    model: str
    version: str
    onnx_sha256: str
    precision: str
    tensorrt: str
    gpu: str
    compute_capability: str
    max_batch: int
    workspace_mb: int
    cuda_runtime: str
    cuda_driver: str
    l4t: str
    module: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        """Readable and unique: what it is, for which GPU and TensorRT, then the full digest."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")[:24]
        sm = self.compute_capability.replace(".", "")
        return f"{self.model}-{self.precision}-trt{self.tensorrt}-sm{sm}-{gpu}-{self.digest[:16]}"


def build_plan(entry: ModelEntry, requested: str, *, flavour: str = "10") -> list[Attempt]:
    """The engines to try, best first, for a requested precision (`auto` tries them all), on a
    TensorRT API flavour (`edge.runtime.tensorrt_versions`). TensorRT 11 has no FP16 builder
    flag: there an FP16 engine comes only from an FP16 ONNX variant, so a model without one is
    planned INT8 then FP32."""
    variants = entry.manifest.variants
    for_tensorrt = {n: v for n, v in variants.items() if "tensorrt" in v.backends}
    qdq = [n for n, v in for_tensorrt.items() if v.quantization == "qdq" and v.servable]
    fp32 = [n for n, v in for_tensorrt.items() if v.precision == "fp32"]
    fp16 = [n for n, v in for_tensorrt.items() if v.precision == "fp16" and v.servable]
    available = {"int8": qdq[:1], "fp16": fp16[:1] if flavour == "11" else fp32[:1], "fp32": fp32[:1]}
    order = AUTO_ORDER if requested == "auto" else (requested,)
    plan = [Attempt(precision, available[precision][0]) for precision in order if available.get(precision)]
    if not plan:
        hint = " (TensorRT 11 builds FP16 only from an FP16 ONNX file)" if flavour == "11" else ""
        raise EdgeError(
            Code.MODEL_VARIANT_UNAVAILABLE,
            f"{entry.name} has no variant TensorRT can build at {requested}{hint}",
        )
    return plan


def build_inputs(key: EngineKey, software: str) -> dict[str, Any]:
    """What a build was made from: a recorded failure stands only while all of it is the same."""
    return {**asdict(key), "software": software}


def is_out_of_memory(message: str) -> bool:
    return _OUT_OF_MEMORY.search(message) is not None


def failure_record(
    message: str, previous: dict[str, Any], inputs: dict[str, Any], now: float
) -> dict[str, Any]:
    """The record of a failed build; out-of-memory failures count their attempts and say when
    to try again."""
    transient = is_out_of_memory(message)
    same_trouble = previous.get("build") == "failed" and previous.get("inputs") == inputs
    attempts = int(previous.get("attempts", 0)) + 1 if same_trouble and previous.get("transient") else 1
    record: dict[str, Any] = {
        "build": "failed",
        "error": message,
        "at": _utc(now),
        "inputs": inputs,
        "transient": transient,
        "attempts": attempts,
    }
    if transient:
        record["retry_after"] = now + TRANSIENT_RETRY_S
    return record


def retry_verdict(record: dict[str, Any], inputs: dict[str, Any], now: float) -> tuple[bool, str]:
    """Whether a recorded failure may be built again now, and the sentence that says why (or,
    when not, the refusal)."""
    before = record.get("inputs")
    if before != inputs:
        if not isinstance(before, dict):
            return True, "the failure was recorded without its inputs"
        changed = sorted(k for k in {*before, *inputs} if before.get(k) != inputs.get(k))
        return True, "what it is built from changed: " + ", ".join(
            f"{k} {before.get(k)!r} -> {inputs.get(k)!r}" for k in changed
        )
    error = record.get("error", "failed before")
    attempts = int(record.get("attempts", 1))
    if record.get("transient") and attempts < TRANSIENT_ATTEMPTS:
        due = float(record.get("retry_after", 0))
        # A clock stepped back (no RTC before NTP) must not postpone the retry for hours.
        if now >= due or due - now > TRANSIENT_RETRY_S:
            return True, f"out of memory last time (attempt {attempts} of {TRANSIENT_ATTEMPTS}): trying again"
        return False, f"{error} (out of memory; tried again after {_utc(due)}, or --force now)"
    if record.get("transient"):
        return False, (
            f"{error} (out of memory {attempts} times: free GPU memory or lower runtime.workspace_mb, "
            "then --force)"
        )
    return False, (
        f"{error} (recorded {record.get('at', '')}; retried when TensorRT, CUDA, the workspace, the "
        "model or this software changes, or with --force)"
    )


def _utc(epoch: float) -> str:
    """`epoch` in the store's one time format (`edge.clock.utc_now`'s)."""
    moment = datetime.fromtimestamp(epoch, timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EngineCache:
    """Engines and their records under one folder, plus one timing cache per TensorRT and GPU."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}.engine"

    def record_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}.json"

    def move_aside(self, key: EngineKey) -> Path:
        """An engine that does not load, renamed `<stem>.engine.bad` (kept for a bug report, and
        replacing an older one), so it is rebuilt and never loaded again."""
        engine = self.engine_path(key)
        bad = engine.with_name(engine.name + ".bad")
        with contextlib.suppress(FileNotFoundError):  # already gone: nothing to keep
            os.replace(engine, bad)
        return bad

    def timing_cache_path(self, tensorrt: str, compute_capability: str) -> Path:
        # Timing results are reusable across models on the same GPU and TensorRT version.
        return self.folder / f"timing-trt{tensorrt}-sm{compute_capability.replace('.', '')}.cache"

    def record(self, key: EngineKey) -> dict[str, Any] | None:
        try:
            loaded = json.loads(self.record_path(key).read_text())
        except (OSError, ValueError):
            return None
        return loaded if isinstance(loaded, dict) else None

    def write_record(self, key: EngineKey, record: dict[str, Any]) -> None:
        write_atomically(self.record_path(key), json.dumps({"key": asdict(key), **record}, indent=2).encode())

    def records(self) -> list[dict[str, Any]]:
        """Every record here (for `edge doctor` and `edge models verify`)."""
        out = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        return out
