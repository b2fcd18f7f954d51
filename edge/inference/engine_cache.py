"""TensorRT engine bookkeeping that needs no GPU: cache keys, the precision fallback plan,
binding manifest tensor names to engine tensors, and the build/parity records.

Engines do not move between GPUs or TensorRT versions (NVIDIA/TensorRT#2176, #2195), so the
cache key holds everything that invalidates one: the source ONNX file's sha256, the precision,
the TensorRT version, the GPU's name and compute capability. An upgrade therefore rebuilds
instead of failing to deserialize. Each engine has a JSON record beside it: how it was built,
and the parity verdict that allows it to serve.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge.errors import Code, EdgeError
from edge.inference.registry import ModelEntry
from edge.store.files import write_atomically

# Fallback order for `precision = "auto"`: INT8 from the QDQ graph, FP16 then FP32 from the FP32
# graph; after that the caller falls back to ONNX Runtime.
AUTO_ORDER = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Attempt:
    precision: str  # the engine's precision
    variant: str  # the manifest variant (ONNX file) it is built from


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

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @property
    def stem(self) -> str:
        """Readable and unique: what it is, for which GPU and TensorRT, then the full digest."""
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu.lower()).strip("-")[:24]
        sm = self.compute_capability.replace(".", "")
        return f"{self.model}-{self.precision}-trt{self.tensorrt}-sm{sm}-{gpu}-{self.digest[:16]}"


def build_plan(entry: ModelEntry, requested: str) -> list[Attempt]:
    """The engines to try, best first, for a requested precision (`auto` tries them all)."""
    variants = entry.manifest.variants
    qdq = [
        n for n, v in variants.items() if v.quantization == "qdq" and v.servable and "tensorrt" in v.backends
    ]
    fp32 = [n for n, v in variants.items() if v.precision == "fp32" and "tensorrt" in v.backends]
    available = {"int8": qdq[:1], "fp16": fp32[:1], "fp32": fp32[:1]}
    order = AUTO_ORDER if requested == "auto" else (requested,)
    plan = [Attempt(precision, available[precision][0]) for precision in order if available.get(precision)]
    if not plan:
        raise EdgeError(
            Code.MODEL_VARIANT_UNAVAILABLE, f"{entry.name} has no variant TensorRT can build at {requested}"
        )
    return plan


class EngineCache:
    """Engines and their records under one folder, plus one timing cache per TensorRT and GPU."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def engine_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}.engine"

    def record_path(self, key: EngineKey) -> Path:
        return self.folder / f"{key.stem}.json"

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
