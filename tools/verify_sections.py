"""The sections of `tools.verify_device` that need no TensorRT: versions and GPU facts, device
memory round trips, and ONNX Runtime on each model's samples (CPU always, CUDA where it exists).

The CPU section runs on every machine, so every report holds a baseline to compare a Jetson's
numbers with. Missing hardware is a skip with its reason, except on a Jetson, where the product
needs the GPU and TensorRT: there their absence is a failure.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import edge
from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.explain import evidence_map
from edge.inference.local_parity import judge, reference_variant, sample_batch
from edge.inference.pool import machine_key, tensor_names
from edge.inference.registry import ModelEntry
from edge.runtime import device_memory
from edge.runtime.onnxruntime import OnnxRuntimeRunner
from tools.check_device_memory import round_trip
from tools.verify_report import ROUND_TRIP_MISMATCH, CheckFailed, Skip, timed_ms


@dataclass(frozen=True)
class Reps:
    """How many times each measurement repeats; `--quick` (CI) cuts them to seconds."""

    warm_calls: int = 200
    thread_calls: int = 100
    threads: int = 4
    open_close: int = 50
    cpu_calls: int = 50
    round_trip_bytes: tuple[int, ...] = (1, 4096, 1 << 20, 16 << 20)
    warmup: int = 10

    @classmethod
    def quick(cls) -> Reps:
        return cls(
            warm_calls=20,
            thread_calls=10,
            open_close=5,
            cpu_calls=5,
            round_trip_bytes=(1, 4096, 1 << 20),
            warmup=2,
        )


@dataclass
class Machine:
    """What the checks need to know about this machine, found once."""

    root: Path = Path("/")
    jetson: bool = False
    l4t: str | None = None
    module: str | None = None
    tensorrt_problem: str | None = None  # why TensorRT cannot serve here, None when it can
    gpu_problem: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)


def jetson_facts(root: Path) -> tuple[bool, str | None, str | None]:
    """(is a Jetson, L4T release "R36.4.3", module name from the device tree), read by the
    product's own readers (the engine cache key holds the same two facts)."""
    release = device_memory.l4t_release(root / "etc/nv_tegra_release") or None
    module = device_memory.jetson_module(root / "proc/device-tree/model") or None
    jetson = release is not None or bool(module and "jetson" in module.lower())
    return jetson, release, module


def free_gpu_memory() -> int | None:
    """Free device memory in bytes (cuda-python's cudaMemGetInfo), None where it cannot be read.
    On a Jetson the GPU shares the board's RAM, so this is the system's free memory as CUDA sees it.
    The memory layer has no reader for it, so its own lookup of cuda-python's runtime is used."""
    try:
        runtime = device_memory._cudart()
    except EdgeError:
        return None
    error, free, _total = runtime.cudaMemGetInfo()
    return int(free) if int(error) == 0 else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip() or None
    except OSError:
        return None


def _module_version(name: str) -> str | None:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # noqa: BLE001 - absent or broken: the report says so by the null
        return None


def probe(settings: Settings, root: Path = Path("/")) -> Machine:
    """Find the Jetson facts, the GPU's and CUDA's, and whether TensorRT can serve here (the
    product's own answer, `availability_problem`: installed, a supported version, a GPU)."""
    from edge.runtime.tensorrt import availability_problem

    jetson, l4t, module = jetson_facts(root)
    machine = Machine(root=root, jetson=jetson, l4t=l4t, module=module)
    try:
        memory = device_memory.open_device_memory(settings.runtime.device_memory)
    except EdgeError as error:
        machine.gpu_problem = error.message
    else:
        try:
            machine.facts["gpu"] = {
                **asdict(memory.gpu_info()),
                "count": device_memory.gpu_count(memory.name),
                "implementation": memory.name,
                "free_memory": free_gpu_memory(),
            }
            machine.facts["cuda"] = {"bindings": memory.name, **asdict(memory.cuda_versions())}
        except EdgeError as error:
            machine.gpu_problem = error.message
        finally:
            memory.close()
    machine.tensorrt_problem = availability_problem()
    return machine


def versions(machine: Machine) -> dict[str, Any]:
    """Software versions and hardware facts: what a field engineer would otherwise ask for."""
    try:
        import onnxruntime

        ort: dict[str, Any] | None = {
            "version": onnxruntime.__version__,
            "providers": onnxruntime.get_available_providers(),
        }
    except ImportError:
        ort = None
    data = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        # The key the device files its INT8 parity verdicts under (CPU model, VNNI and the other
        # integer-kernel features ONNX Runtime's kernels depend on): the CPU sections' INT8
        # verdicts hold for this kind of CPU only.
        "cpu": machine_key(),
        "edge": edge.__version__,
        "numpy": np.__version__,
        "onnxruntime": ort,
        "tensorrt": _module_version("tensorrt"),
        # CUDA runtime and driver versions, through the memory layer that opened the GPU.
        "cuda": machine.facts.get("cuda") or {"bindings": None, "problem": machine.gpu_problem},
        "gpu": machine.facts.get("gpu") or {"problem": machine.gpu_problem},
        "jetson": {
            "is_jetson": machine.jetson,
            "l4t": machine.l4t,
            "module": machine.module,
            # nvpmodel's current mode (`pmode:0000 ...`): timings mean little without it.
            "nvpmodel": _read(machine.root / "var/lib/nvpmodel/status"),
        },
    }
    gpu = machine.facts.get("gpu")
    data["headline"] = (
        f"{gpu['name']} sm{gpu['compute_capability']}, TensorRT {data['tensorrt'] or 'absent'}"
        if gpu
        else f"no GPU; onnxruntime {ort['version'] if ort else 'absent'}"
    )
    return data


def tensorrt_support(machine: Machine) -> dict[str, Any]:
    """TensorRT's version and the product's verdict on it (the version gate, `version_support`)."""
    from edge.runtime.tensorrt import tensorrt_version, version_support

    try:
        version = tensorrt_version()
    except EdgeError as error:  # not installed, or does not import
        if machine.jetson:
            raise
        raise Skip(error.message) from None
    verdict = version_support(version)
    data: dict[str, Any] = {
        "version": version,
        "supported": verdict.supported,
        "flavour": verdict.flavour,
        "message": verdict.message,
        "headline": f"TensorRT {version}, API flavour {verdict.flavour}",
    }
    if not verdict.supported:
        machine.tensorrt_problem = verdict.message
        raise CheckFailed(Code.BACKEND_UNAVAILABLE.value, verdict.message, data)
    if machine.gpu_problem:
        # Installed without a GPU to run on (a CI machine with the bindings): nothing to verify.
        problem = f"TensorRT {version} is installed but has no GPU: {machine.gpu_problem}"
        if machine.jetson:
            raise CheckFailed(Code.BACKEND_UNAVAILABLE.value, problem, data)
        raise Skip(problem)
    return data


def device_memory_round_trips(machine: Machine, settings: Settings, reps: Reps) -> dict[str, Any]:
    """Host -> device -> host through page-locked buffers: the bytes must come back equal."""
    if machine.gpu_problem:
        if machine.jetson:
            raise EdgeError(Code.BACKEND_UNAVAILABLE, machine.gpu_problem)
        raise Skip(machine.gpu_problem)
    memory = device_memory.open_device_memory(settings.runtime.device_memory)
    rng = np.random.default_rng(0)
    failures, done = [], 0
    try:
        stream = memory.stream_create()
        for nbytes in reps.round_trip_bytes:
            for dtype in (np.uint8, np.float16, np.float32):
                count = max(1, nbytes // np.dtype(dtype).itemsize)
                if not round_trip(memory, rng.integers(0, 127, count).astype(dtype), stream):
                    failures.append(f"{np.dtype(dtype).name} x {count}")
                done += 1
        memory.stream_destroy(stream)
    finally:
        memory.close()
    data = {"implementation": memory.name, "round_trips": done, "sizes_bytes": list(reps.round_trip_bytes)}
    if failures:
        raise CheckFailed(ROUND_TRIP_MISMATCH, f"data changed on the way: {', '.join(failures)}", data)
    data["headline"] = f"{done} round trips equal ({memory.name})"
    return data


@dataclass
class Baseline:
    """ONNX Runtime CPU outputs of one model's FP32 variant on its samples, shared by sections."""

    batch: np.ndarray
    truth: np.ndarray
    logits: np.ndarray
    cam: np.ndarray | None


def heatmap_differences(entry: ModelEntry, reference: np.ndarray | None, other: np.ndarray | None) -> dict:
    """Largest raw CAM difference, and largest difference of the heatmap a reader sees (the
    positive class's evidence map, 0..1)."""
    if reference is None or other is None:
        return {"max_abs_cam_diff": None, "max_heatmap_diff": None}
    positive = entry.manifest.output.labels.index(entry.manifest.output.positive)
    shown = max(
        float(np.abs(evidence_map(a, positive) - evidence_map(b, positive)).max())
        for a, b in zip(reference, other, strict=True)
    )
    return {
        "max_abs_cam_diff": round(float(np.abs(reference - other).max()), 6),
        "max_heatmap_diff": round(shown, 6),
    }


def onnxruntime_cpu(entry: ModelEntry, settings: Settings, reps: Reps, baselines: dict) -> dict[str, Any]:
    """FP32 on ONNX Runtime's CPU provider over the model's samples; other CPU variants judged
    against it (informative: the pool refuses those that fail, as `edge doctor` shows)."""
    if not entry.samples:
        raise Skip(f"{entry.name} ships no sample images")
    names = tensor_names(entry)
    out = entry.manifest.output
    reference = reference_variant(entry, "onnxruntime")
    if reference is None:
        raise Skip(f"{entry.name} has no FP32 variant for ONNX Runtime")
    batch, truth = sample_batch(entry, Code.VARIANT_PARITY_FAILED)
    verify = settings.models.verify_checksums
    with OnnxRuntimeRunner(entry.variant_file(reference, verify=verify), names, settings.runtime) as runner:
        outputs = runner.infer(batch)
        timing = timed_ms(lambda: runner.infer(batch[:1]), reps.cpu_calls, reps.warmup)
    logits = outputs[out.logits]
    if logits.shape != (len(batch), len(out.labels)) or not np.isfinite(logits).all():
        raise EdgeError(Code.MODEL_OUTPUT_INVALID, f"{entry.name}: logits {logits.shape}, finite: False")
    baselines[entry.name] = Baseline(batch, truth, logits, outputs.get(out.cam) if out.cam else None)
    matches = int((logits.argmax(1) == truth).sum())
    variants = {}
    for name, variant in entry.manifest.variants.items():
        if name == reference or not variant.servable or "onnxruntime" not in variant.backends:
            continue
        path = entry.variant_file(name, verify=verify)
        with OnnxRuntimeRunner(path, names, settings.runtime) as runner:
            other = runner.infer(batch)[out.logits]
            other_timing = timed_ms(lambda r=runner: r.infer(batch[:1]), reps.cpu_calls, reps.warmup)
        variants[name] = {**judge(entry, logits, other, truth).as_dict(), "batch1": other_timing}
    return {
        "variant": reference,
        "images": len(batch),
        "top1_matches_label": matches,
        "batch1": timing,
        "other_variants": variants,
        "headline": f"{reference} median {timing['median_ms']:.2f} ms at batch 1, "
        f"{matches}/{len(batch)} samples as labelled",
    }


def onnxruntime_cuda(entry: ModelEntry, settings: Settings, reps: Reps, baselines: dict) -> dict[str, Any]:
    """ONNX Runtime's CUDA provider against its CPU provider on the same FP32 file and samples."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise Skip("this onnxruntime has no CUDAExecutionProvider (the CPU wheel)")
    baseline = baselines.get(entry.name)
    if baseline is None:
        raise Skip("no CPU baseline for this model (see onnxruntime.cpu)")
    names = tensor_names(entry)
    path = entry.variant_file(reference_variant(entry, "onnxruntime") or "fp32")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(path), sess_options=options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    if session.get_providers()[0] != "CUDAExecutionProvider":
        # ONNX Runtime falls back to the CPU silently when CUDA's libraries do not load.
        raise Skip(f"the CUDA provider did not start (session runs on {session.get_providers()})")

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(list(names.outputs), {names.input: batch})

    values = dict(zip(names.outputs, run(baseline.batch), strict=True))
    logits = values[entry.manifest.output.logits]
    report = judge(entry, baseline.logits, logits, baseline.truth)
    cam = values.get(entry.manifest.output.cam) if entry.manifest.output.cam else None
    data = {
        **report.as_dict(),
        **heatmap_differences(entry, baseline.cam, cam),
        "batch1": timed_ms(lambda: run(baseline.batch[:1]), reps.warm_calls // 2, reps.warmup),
        "provider_options": session.get_provider_options().get("CUDAExecutionProvider", {}),
    }
    if not report.passed:
        raise CheckFailed(Code.VARIANT_PARITY_FAILED.value, f"CUDA differs from CPU: {report.rule}", data)
    data["headline"] = (
        f"max |logit diff| {report.max_abs_logit_diff}, agreement {report.agreement:.0%}, "
        f"median {data['batch1']['median_ms']:.2f} ms"
    )
    return data
