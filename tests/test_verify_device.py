"""`python -m tools.verify_device`: the whole command on this machine (no GPU, no TensorRT: every
GPU section skipped with its reason, the CPU baseline measured), its pure helpers, and its
TensorRT sections run against doubles (ONNX bytes as "engines", ONNX Runtime as the runner),
so the section logic runs everywhere. What only a Jetson can check is in docs/verify-device.md."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomli_w
import tomllib
from rich.console import Console

from edge.config import load_settings
from edge.errors import Code, EdgeError
from edge.runtime.base import Runner, TensorNames
from tests.conftest import REPO
from tests.engine_doubles import ORIN_NANO, Doubles
from tests.fake_tensorrt import FakeDeviceMemory, fake_tensorrt
from tests.tinymodel import make_model_dir
from tools import verify_device
from tools.verify_hooks import TensorRTHooks, execute_only, parse_onnx
from tools.verify_report import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNUSABLE,
    SCHEMA,
    CheckFailed,
    Report,
    Skip,
    summary_stats,
)
from tools.verify_sections import Machine, jetson_facts

HAS_GPU_STACK = any(importlib.util.find_spec(m) for m in ("tensorrt", "cuda", "pycuda"))
SECTION_KEYS = {"section", "model", "status", "seconds"}


def by_name(report: dict[str, Any]) -> dict[tuple[str, str | None], dict[str, Any]]:
    return {(s["section"], s["model"]): s for s in report["sections"]}


# ---------------------------------------------------------------------- the command, for real


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    """One `--quick` run of the real command in a subprocess, shared by the checks below."""
    if importlib.util.find_spec("tensorrt"):
        # It would build every engine for real (minutes): there, run the tool itself.
        pytest.skip("TensorRT is installed: run python -m tools.verify_device instead")
    folder = tmp_path_factory.mktemp("verify")
    out = folder / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_")}
    # The repository first, then whatever this interpreter was given (packages installed with
    # --target on a borrowed GPU machine come that way).
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env.update(PYTHONPATH=path, HOME=str(folder), XDG_DATA_HOME=str(folder / "xdg"))
    env["EDGE_CONFIG"] = str(folder / "none.toml")  # no /etc/edge of the developer's machine
    (folder / "none.toml").write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "tools.verify_device", "--quick", "--out", str(out)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return done.returncode, json.loads(out.read_text()), done.stderr


def test_quick_run_without_tensorrt_is_complete_and_honest(
    quick_run: tuple[int, dict[str, Any], str],
) -> None:
    code, report, stderr = quick_run
    assert report["schema"] == SCHEMA
    assert report["quick"] is True
    assert code == report["exit_code"]
    assert "passed" in stderr
    assert "skipped" in stderr  # the human summary
    models = sorted(p.name for p in (REPO / "models").iterdir() if (p / "model.toml").is_file())
    sections = by_name(report)
    for section in report["sections"]:
        assert set(section) >= SECTION_KEYS, section
        assert section["status"] in {"passed", "failed", "skipped"}
        if section["status"] == "skipped":
            assert section["reason"].strip(), section
    assert sections[("versions", None)]["status"] == "passed"
    for model in models:
        baseline = sections[("onnxruntime.cpu", model)]
        assert baseline["status"] == "passed", baseline
        data = baseline["data"]
        assert data["images"] > 0
        assert 0 < data["top1_matches_label"] <= data["images"]
        assert 0 < data["batch1"]["median_ms"] <= data["batch1"]["p90_ms"]
        assert data["other_variants"], "the INT8 variants are judged against FP32 on the CPU too"
    # Off a Jetson, without TensorRT (this fixture's machines), nothing is a failure: TensorRT's
    # sections are skipped, and the CUDA memory layer is checked where a GPU and a binding are.
    assert code == EXIT_OK, stderr
    assert report["failed"] == []
    versions = sections[("versions", None)]["data"]
    assert versions["tensorrt"] is None
    assert versions["cpu"].startswith(versions["machine"] + "|")
    assert "TensorRT is not installed" in sections[("tensorrt.version", None)]["reason"]
    memory = sections[("device_memory", None)]
    if memory["status"] == "passed":  # a CUDA GPU without TensorRT: a workstation, a cloud GPU
        assert memory["data"]["round_trips"] > 0
        assert versions["gpu"]["name"]
        assert versions["cuda"]["runtime"]
    else:
        assert memory["status"] == "skipped"
        assert memory["reason"].strip()
        if not HAS_GPU_STACK:
            assert "cuda-python is not installed" in memory["reason"]
    cuda_provider = "CUDAExecutionProvider" in versions["onnxruntime"]["providers"]
    for model in models:
        assert (sections[("onnxruntime.cuda", model)]["status"] == "skipped") is not cuda_provider
        for name, _ in verify_device.TENSORRT_SECTIONS:
            skipped = sections[(name, model)]
            assert skipped["status"] == "skipped"
            assert "see tensorrt.version" in skipped["reason"]


def test_exit_code_and_report_when_the_machine_is_a_jetson_without_tensorrt(tmp_path: Path) -> None:
    """On a Jetson the product needs TensorRT and a GPU: their absence fails, once each."""
    make_model_dir(tmp_path / "models")
    machine = Machine(
        jetson=True,
        l4t="R36.4.0",
        module="NVIDIA Jetson Orin Nano Developer Kit",
        tensorrt_problem="TensorRT is not installed: ...",
        gpu_problem="no CUDA device memory: cuda-python is not installed",
    )
    if importlib.util.find_spec("tensorrt"):
        pytest.skip("TensorRT is installed here")
    code, report = run_in_process(tmp_path, machine=machine)
    assert code == EXIT_FAILED == report["exit_code"]
    assert report["failed"] == ["tensorrt.version", "device_memory"]
    sections = by_name(report)
    assert sections[("tensorrt.version", None)]["code"] == Code.BACKEND_UNAVAILABLE.value
    assert sections[("versions", None)]["data"]["jetson"]["l4t"] == "R36.4.0"
    assert sections[("tensorrt.build", "tiny")]["status"] == "skipped"


def test_the_models_section_carries_the_broken_models_own_code(tmp_path: Path) -> None:
    """A model from newer software is not a broken manifest: the section says which it is, and
    the model that loads is still verified."""
    make_model_dir(tmp_path / "models")
    later = make_model_dir(tmp_path / "models", "later")
    manifest = tomllib.loads((later / "model.toml").read_text())
    (later / "model.toml").write_text(tomli_w.dumps({**manifest, "schema_version": 99}))
    code, report = run_in_process(tmp_path, machine=FAKE_GPU)
    assert code == EXIT_FAILED
    models = by_name(report)[("models", None)]
    assert models["code"] == Code.MODEL_NEEDS_NEWER_SOFTWARE.value
    assert models["data"]["broken"]["later"].startswith("MODEL_NEEDS_NEWER_SOFTWARE: ")
    assert list(models["data"]["models"]) == ["tiny"]


def test_no_models_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    args = argparse.Namespace(
        models=tmp_path / "empty", out=tmp_path / "r.json", quick=True, budget_s=60.0, work=None
    )
    assert verify_device.run(args, console=quiet()) == EXIT_UNUSABLE
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------------- pure helpers


def test_summary_statistics() -> None:
    stats = summary_stats([5.0, 1.0, 3.0, 2.0, 4.0, 10.0, 6.0, 7.0, 8.0, 9.0])
    assert stats == {"median_ms": 5.5, "p90_ms": 9.0, "min_ms": 1.0, "max_ms": 10.0, "n": 10}
    assert summary_stats([2.5])["p90_ms"] == 2.5
    with pytest.raises(ValueError, match="no timings"):
        summary_stats([])


def test_report_records_each_outcome_and_writes_after_each(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    seen: list[str] = []
    report = Report(
        path, argv=["--quick"], quick=True, budget_s=60, on_section=lambda s: seen.append(s["status"])
    )

    def fail_check() -> dict[str, Any]:
        raise CheckFailed("RESULTS_DIFFER", "3 calls differ", {"max_abs_diff": 0.5})

    def refuse() -> dict[str, Any]:
        raise EdgeError(Code.ENGINE_BUILD_FAILED, "int8: out of memory")

    def skip() -> dict[str, Any]:
        raise Skip("no GPU")

    def bug() -> dict[str, Any]:
        raise ZeroDivisionError("oops")

    report.run("a", None, lambda: {"x": 1})
    assert json.loads(path.read_text())["counts"] == {"passed": 1, "failed": 0, "skipped": 0}
    assert report.exit_code() == EXIT_OK
    report.run("b", "m", fail_check)
    report.run("c", "m", refuse)
    report.run("d", None, skip)
    report.run("e", None, bug)
    written = json.loads(path.read_text())
    assert seen == ["passed", "failed", "failed", "skipped", "failed"]
    assert written["failed"] == ["b:m", "c:m", "e"]
    assert written["exit_code"] == EXIT_FAILED
    b, c, d, e = written["sections"][1:]
    assert (b["code"], b["data"]) == ("RESULTS_DIFFER", {"max_abs_diff": 0.5})
    assert (c["code"], c["message"]) == ("ENGINE_BUILD_FAILED", "int8: out of memory")
    assert d["reason"] == "no GPU"
    assert e["code"] == "UNEXPECTED"
    assert "ZeroDivisionError" in e["traceback"]


def test_sections_past_the_time_budget_are_skipped_not_run(tmp_path: Path) -> None:
    now = [0.0]
    report = Report(tmp_path / "r.json", argv=[], quick=False, budget_s=10, clock=lambda: now[0])
    ran: list[str] = []
    report.run("first", None, lambda: ran.append("first") or {})
    now[0] = 11.0
    report.run("second", None, lambda: ran.append("second") or {})
    assert ran == ["first"]
    assert report.sections[1]["status"] == "skipped"
    assert "time budget" in report.sections[1]["reason"]


def test_jetson_facts_come_from_the_products_readers(tmp_path: Path) -> None:
    """The L4T release and module as `edge.runtime.device_memory` reads them for the engine
    cache key, so the report and the cache name the same machine the same way."""
    assert jetson_facts(tmp_path) == (False, None, None)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: ...\n"
    )
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text(
        "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit\x00"
    )
    assert jetson_facts(tmp_path) == (True, "R36.4.3", ORIN_NANO.module)


# ---------------------------------------------------------------------- TensorRT sections, with doubles


def doubled_hooks(doubles: Doubles, free: Callable[[], int | None] = lambda: 4 << 30) -> TensorRTHooks:
    """The sections' TensorRT calls on the suite's engine-manager doubles (tests/engine_doubles.py:
    an "engine" is the precision and the source ONNX bytes, opened by ONNX Runtime), on an Orin
    Nano's build host. The cache, manager, parity, threads, batches and recovery logic around them
    run for real. Two things the doubles leave out are added here: the builder reports a progress
    phase, as TensorRT's progress monitor does, and an engine cut short (tag intact, ONNX cut) is
    ENGINE_UNREADABLE, as TensorRT's deserialization makes it."""

    def builder(source: Path, precision: str, **kwargs: Any) -> bytes:
        data = doubles.builder(source, precision, **kwargs)
        if kwargs.get("progress") is not None:
            kwargs["progress"]("Building engine", 1.0)
        return data

    def runner(engine: Path, names: TensorNames) -> Runner:
        try:
            return doubles.runner(engine, names)
        except EdgeError as error:
            if "ONNX Runtime cannot load" not in error.message:
                raise
            raise EdgeError(Code.ENGINE_UNREADABLE, f"{engine.name} does not deserialize (cut)") from error

    def parse(path: Path, strongly_typed: bool) -> dict[str, Any]:
        import onnx

        return {"layers": len(onnx.load(str(path)).graph.node), "strongly_typed": strongly_typed}

    @contextlib.contextmanager
    def execute_only(engine: Path, names: TensorNames, batch: np.ndarray, settings: Any) -> Iterator[Any]:
        with runner(engine, names) as opened:
            yield lambda: opened.infer(batch)

    return TensorRTHooks(
        builder=builder,
        runner_factory=runner,
        identity=lambda: ORIN_NANO,
        parse=parse,
        execute_only=execute_only,
        free_memory=free,
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def run_in_process(
    tmp_path: Path, *, machine: Machine, hooks: TensorRTHooks | None = None
) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "report.json"
    args = argparse.Namespace(
        models=tmp_path / "models", out=out, quick=True, budget_s=300.0, work=tmp_path / "work"
    )
    code = verify_device.run(args, hooks=hooks, machine=machine, console=quiet(), argv=["--quick"])
    return code, json.loads(out.read_text())


# A machine where the doubles stand in for TensorRT; no GPU, so device memory is skipped.
FAKE_GPU = Machine(jetson=False, gpu_problem="no GPU here (the TensorRT sections run on doubles)")


def test_tensorrt_sections_run_against_the_fake(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "models")
    doubles = Doubles()
    code, report = run_in_process(tmp_path, machine=FAKE_GPU, hooks=doubled_hooks(doubles))
    assert code == EXIT_OK, report["failed"]
    sections = by_name(report)
    for name, _ in verify_device.TENSORRT_SECTIONS:
        section = sections[(name, "tiny")]
        assert section["status"] == "passed", section
    build = sections[("tensorrt.build", "tiny")]["data"]["engines"]
    assert list(build) == ["int8", "fp16", "fp32"]
    assert build["int8"]["progress_phases"] == ["Building engine"]
    # Three builds, the timing-cache rebuild, and the cut engine's rebuild (nothing else).
    assert doubles.builds == ["int8", "fp16", "fp32", "int8", "int8"]
    parity = sections[("tensorrt.parity", "tiny")]["data"]["engines"]
    assert parity["fp16"]["vs_source"]["max_abs_logit_diff"] == 0.0
    assert parity["int8"]["vs_fp32"]["max_abs_logit_diff"] > 0  # the tiny "INT8" computes 1.01x
    assert parity["fp32"]["max_heatmap_diff"] == 0.0
    batches = sections[("tensorrt.batches", "tiny")]["data"]
    assert batches["sizes"] == [1, 8, 11]  # 1, 8, max_batch (8), and one past it
    threads = sections[("tensorrt.threads", "tiny")]["data"]
    assert (threads["threads"], threads["calls_per_thread"], threads["mismatched_calls"]) == (4, 10, 0)
    latency = sections[("tensorrt.latency", "tiny")]["data"]["engines"]["int8"]
    for kind in ("execute_only", "infer", "predict"):
        assert latency[kind]["n"] == 20
        assert latency[kind]["median_ms"] > 0
    memory = sections[("tensorrt.open_close", "tiny")]["data"]
    assert (memory["cycles"], memory["drift_mib"]) == (5, 0.0)
    # The engine manager moves the cut engine aside, rebuilds it once, and serves it again.
    recovery = sections[("tensorrt.corrupt_engine", "tiny")]["data"]
    assert recovery["precision"] == recovery["served_after"] == "int8"
    assert recovery["truncated_to"] < recovery["bytes"]
    assert recovery["rebuilt"] is True
    assert recovery["moved_aside"] == recovery["engine"] + ".bad"
    assert recovery["parity_after"] is True  # the rebuilt engine was judged before serving
    assert (tmp_path / "work/engines" / recovery["moved_aside"]).stat().st_size == recovery["truncated_to"]


def test_a_failed_parity_and_a_memory_leak_are_failures_with_their_codes(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "models")
    leaked = iter(range(100))

    def leaking() -> int:  # 20 MiB less free memory after every cycle
        return (4 << 30) - next(leaked) * (20 << 20)

    hooks = doubled_hooks(Doubles(noisy={"int8"}), free=leaking)
    code, report = run_in_process(tmp_path, machine=FAKE_GPU, hooks=hooks)
    assert code == EXIT_FAILED
    sections = by_name(report)
    parity = sections[("tensorrt.parity", "tiny")]
    assert parity["code"] == Code.ENGINE_PARITY_FAILED.value
    assert parity["message"].startswith("int8:")
    assert parity["data"]["engines"]["fp16"]["vs_source"]["passed"]
    memory = sections[("tensorrt.open_close", "tiny")]
    assert memory["code"] == "GPU_MEMORY_DRIFT"
    assert memory["data"]["precision"] == "fp16"  # the one that would serve: INT8 failed parity
    assert memory["data"]["drift_mib"] == 80.0  # 4 cycles after the first, 20 MiB each


def test_a_failed_build_leaves_the_other_precisions_checked(tmp_path: Path) -> None:
    make_model_dir(tmp_path / "models")
    hooks = doubled_hooks(Doubles(fail={"int8"}))  # "DequantizeLinear: unsupported INT32 input"
    _, report = run_in_process(tmp_path, machine=FAKE_GPU, hooks=hooks)
    sections = by_name(report)
    build = sections[("tensorrt.build", "tiny")]
    assert build["status"] == "failed"
    assert build["code"] == Code.ENGINE_BUILD_FAILED.value
    assert "DequantizeLinear" in build["data"]["engines"]["int8"]["error"]
    assert list(sections[("tensorrt.parity", "tiny")]["data"]["engines"]) == ["fp16", "fp32"]
    assert sections[("tensorrt.timing_cache", "tiny")]["data"]["precision"] == "fp16"


# ---------------------------------------------------------------------- the hooks, on a fake TensorRT


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], FakeDeviceMemory]:
    """A fake `tensorrt` of a given version (tests/fake_tensorrt.py) where `import tensorrt`
    finds it, with the product's process-wide logger forgotten, and fake device memory."""
    from edge.runtime import device_memory
    from edge.runtime import tensorrt as backend

    def put(version: str) -> FakeDeviceMemory:
        monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt(version))
        monkeypatch.setattr(backend, "_shared_logger", None)
        memory = FakeDeviceMemory()
        monkeypatch.setattr(device_memory, "open_device_memory", lambda choice="auto": memory)
        return memory

    return put


@pytest.mark.parametrize("version", ["8.6.2", "10.3.0", "11.4.0"])
def test_the_execute_only_timer_binds_every_tensor_and_frees_it(
    fake_trt: Callable[[str], FakeDeviceMemory], tmp_path: Path, version: str
) -> None:
    from edge.runtime.tensorrt import build_engine

    memory = fake_trt(version)
    (tmp_path / "model.onnx").write_bytes(b"an onnx model")
    engine = tmp_path / "model.engine"
    engine.write_bytes(
        build_engine(
            tmp_path / "model.onnx",
            "fp32",
            input_name="image",
            input_shape=(1, 8, 8),
            max_batch=4,
            workspace_mb=64,
            timing_cache=tmp_path / "timing.cache",
        )
    )
    names = TensorNames("image", ("logits", "cam"))
    with execute_only(engine, names, np.zeros((1, 1, 8, 8), np.float32), load_settings()) as run:
        assert len(memory.allocated) == 4  # "features", which no manifest names, too
        for _ in range(3):
            run()  # execute_async_v3 refuses (INFERENCE_FAILED) if a tensor has no address
    assert memory.allocated == {}


def test_the_parse_hook_uses_the_products_network_and_version_gate(
    fake_trt: Callable[[str], FakeDeviceMemory], tmp_path: Path
) -> None:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"not onnx")
    fake_trt("8.6.2")
    with pytest.raises(EdgeError) as caught:
        parse_onnx(onnx_file, strongly_typed=True)
    # TensorRT's own words about the file, not about an implicit-batch network: the 8.6 network
    # is made explicit-batch, as the product's build makes it.
    assert caught.value.code is Code.ENGINE_BUILD_FAILED
    assert "failed to parse the ONNX model" in caught.value.message
    fake_trt("10.1.0")
    with pytest.raises(EdgeError) as caught:
        parse_onnx(onnx_file, strongly_typed=True)
    assert caught.value.code is Code.BACKEND_UNAVAILABLE
    assert "older than 10.3" in caught.value.message
