"""Everything about running and judging models: the registry of installed models and their
manifests, the model pool that serves them (and the TensorRT engines behind it), the
applicability and quality gate, calibrated decisions, metrics, parity and evaluation."""
