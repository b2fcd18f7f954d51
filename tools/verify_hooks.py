"""What `tools.verify_device`'s TensorRT sections call that needs TensorRT itself, gathered in
`TensorRTHooks` so the tests can run the sections against doubles. The defaults are the real
thing: the product's engine manager and runner, TensorRT's ONNX parser, and an execute-only
timer on a context of its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.inference.engine_manager import Builder, Identity, RunnerFactory
from edge.runtime import device_memory
from edge.runtime.base import TensorNames, concrete_shape
from edge.runtime.tensorrt_versions import version_support
from tools.verify_sections import free_gpu_memory

ExecuteOnly = Callable[[Path, TensorNames, np.ndarray, Settings], contextlib.AbstractContextManager]


def dequantize_inputs(path: Path) -> dict[str, int]:
    """DequantizeLinear nodes, and those fed an int32 initializer (TensorRT refuses them:
    onnx-tensorrt#850; the INT8 build fails on exactly these)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
    nodes = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    return {
        "dequantize_linear": len(nodes),
        "dequantize_int32_inputs": sum(n.input[0] in int32 for n in nodes),
    }


def _trt_logger() -> Any:
    """The product's logger bridge. TensorRT keeps the first logger of the process and ignores
    later ones (NVIDIA/TensorRT#1475): had this tool's parse made its own first, the product's
    builds would lose the error messages they report. Getting it passes the version gate."""
    from edge.runtime import tensorrt as backend

    return backend._logger().bridge


def parse_onnx(onnx_file: Path, strongly_typed: bool) -> dict[str, Any]:
    """The ONNX file through TensorRT's parser alone, on the network the product's build makes
    for it (explicit batch on 8.6, strongly typed for a QDQ file on 10, always on 11): layers,
    inputs, outputs or its errors."""
    import tensorrt as trt

    from edge.runtime import tensorrt as backend

    logger = _trt_logger()  # first: BACKEND_UNAVAILABLE on a version the gate refuses
    flavour = version_support(str(trt.__version__)).flavour or ""
    flags = backend._network_flags(trt, flavour, "int8" if strongly_typed else "fp32")
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_file.read_bytes(), str(onnx_file)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EdgeError(
            Code.ENGINE_BUILD_FAILED, f"{onnx_file.name} does not parse: {'; '.join(errors)[:400]}"
        )
    return {
        "layers": network.num_layers,
        "inputs": [network.get_input(i).name for i in range(network.num_inputs)],
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "flavour": flavour,
        "strongly_typed": flavour == "11" or (flavour == "10" and strongly_typed),
    }


@contextlib.contextmanager
def execute_only(
    engine_file: Path, names: TensorNames, batch: np.ndarray, settings: Settings
) -> Iterator[Callable[[], None]]:
    """`execute_async_v3` + synchronise on a context of its own, input already on the device:
    the GPU time, comparable with trtexec's and with published figures. Every engine tensor
    gets a buffer, as TensorRT requires."""
    import tensorrt as trt

    from edge.runtime.tensorrt import engine_tensors

    memory = device_memory.open_device_memory(settings.runtime.device_memory)
    pointers: list[int] = []
    host = stream = context = engine = None
    try:
        runtime = trt.Runtime(_trt_logger())
        engine = runtime.deserialize_cuda_engine(engine_file.read_bytes())
        if engine is None:
            raise EdgeError(Code.ENGINE_BUILD_FAILED, f"{engine_file.name} does not deserialize")
        context = engine.create_execution_context()
        stream = memory.stream_create()
        for spec in engine_tensors(engine):
            shape = concrete_shape(spec, len(batch))
            pointers.append(memory.malloc(int(np.prod(shape)) * spec.dtype.itemsize))
            context.set_tensor_address(spec.name, pointers[-1])
            if spec.is_input:
                context.set_input_shape(spec.name, shape)
                host = memory.pinned_empty(shape, spec.dtype)
                host[...] = batch.astype(spec.dtype)
                memory.copy_to_device(pointers[-1], host, stream)
        memory.synchronize(stream)
        handle = memory.stream_handle(stream)

        def run() -> None:
            if not context.execute_async_v3(handle):
                raise EdgeError(Code.INFERENCE_FAILED, "execute_async_v3 failed")
            memory.synchronize(stream)

        yield run
    finally:
        for pointer in pointers:
            memory.free(pointer)
        if host is not None:
            memory.pinned_free(host)
        if stream is not None:
            memory.stream_destroy(stream)
        context = engine = None  # context before engine: TensorRT's teardown order
        memory.close()


@dataclass
class TensorRTHooks:
    """What the sections call that needs TensorRT; None means the product's real default."""

    builder: Builder | None = None
    runner_factory: RunnerFactory | None = None
    identity: Identity | None = None
    parse: Callable[[Path, bool], dict[str, Any]] = field(default=parse_onnx)
    execute_only: ExecuteOnly | None = field(default=execute_only)
    free_memory: Callable[[], int | None] = free_gpu_memory
