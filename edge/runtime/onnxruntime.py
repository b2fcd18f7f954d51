"""ONNX Runtime on the CPU: the backend of every machine without an NVIDIA GPU, and the
numerical reference every other backend is checked against."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from edge.config import RuntimeSettings
from edge.errors import Code, EdgeError
from edge.runtime.base import Runner, TensorNames

_OPTIMISATION = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


class OnnxRuntimeRunner(Runner):
    backend = "onnxruntime"

    @classmethod
    def is_available(cls) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def __init__(self, model_file: Path, names: TensorNames, settings: RuntimeSettings) -> None:
        super().__init__(model_file, names, settings)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = settings.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _OPTIMISATION[settings.graph_optimization]
        )
        options.log_severity_level = 3  # warnings about unused initialisers are noise here
        try:
            self._session: Any = ort.InferenceSession(
                str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ONNX Runtime raises its own exception types
            raise EdgeError(
                Code.MODEL_MANIFEST_INVALID, f"ONNX Runtime cannot load {model_file.name}: {exc}"
            ) from exc
        self._check_names()

    def _check_names(self) -> None:
        inputs = {i.name for i in self._session.get_inputs()}
        outputs = {o.name for o in self._session.get_outputs()}
        missing = [n for n in (self.names.input,) if n not in inputs]
        missing += [n for n in self.names.outputs if n not in outputs]
        if missing:
            raise EdgeError(
                Code.MODEL_MANIFEST_INVALID,
                f"{self.model_file.name} has no tensor(s) {', '.join(missing)} named in its manifest",
            )

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self._session is None:
            raise EdgeError(Code.INFERENCE_FAILED, "the ONNX Runtime session is closed")
        try:
            values = self._session.run(list(self.names.outputs), {self.names.input: batch})
        except Exception as exc:
            raise EdgeError(Code.INFERENCE_FAILED, f"ONNX Runtime failed: {exc}") from exc
        return dict(zip(self.names.outputs, values, strict=True))

    def close(self) -> None:
        self._session = None

    @property
    def session(self) -> Any:
        """The underlying `InferenceSession` (for the benchmark's raw `session.run`)."""
        return self._session
