"""Does a reduced-precision variant compute here what FP32 computes here?

The INT8 gate in the manifest was measured on the machine that quantised the model. The same
graph can compute something else on another CPU: ONNX Runtime's x86 INT8 kernels without VNNI
(AVX2-only CPUs, e.g. many AMD EPYC and older Intel) multiply u8 by s8 into 16-bit pairs that
saturate, and a model quantised without `reduce_range` then drifts by far more than its gate
allowed (seen here: P(pneumonia) off by 0.65 on a shipped sample). So before a non-FP32 variant
is served on ONNX Runtime, it is run beside FP32 on the model's own sample images, on this
machine, and must meet the manifest's parity rule (the same one a TensorRT engine meets). The
verdict is remembered per (variant file, runtime version, machine); a variant that fails is not
served here, and the log, `edge doctor` and `edge models` say why.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from edge.config import Settings
from edge.errors import Code, EdgeError
from edge.imaging.decode import decode_bytes
from edge.imaging.preprocess import preprocess_batch
from edge.inference.parity import ParityReport, compare
from edge.inference.registry import ModelEntry
from edge.inference.scope import distance_ratio
from edge.runtime.base import Runner, TensorNames


def reference_variant(entry: ModelEntry, backend: str) -> str | None:
    """The servable FP32 variant this backend runs: the reference a cheaper one is held to."""
    return next(
        (
            name
            for name, variant in entry.manifest.variants.items()
            if variant.precision == "fp32" and variant.servable and backend in variant.backends
        ),
        None,
    )


def sample_batch(entry: ModelEntry, code: Code) -> tuple[np.ndarray, np.ndarray]:
    """The model's sample images as one preprocessed batch, and their labels as indices; a
    model without samples cannot be verified (`code` says which check refused)."""
    samples = entry.samples
    if not samples:
        raise EdgeError(code, f"{entry.name} ships no sample images to verify on")
    labels = entry.manifest.output.labels
    images = [decode_bytes(path.read_bytes(), path.name).pixels for path, _ in samples]
    truth = np.array([labels.index(label) for _, label in samples])
    return preprocess_batch(images, entry.manifest.input.preprocess_spec()), truth


def judge(entry: ModelEntry, expected: np.ndarray, actual: np.ndarray, truth: np.ndarray) -> ParityReport:
    """The manifest's parity rule applied to two runs' logits over the same samples."""
    rule = entry.manifest.parity
    return compare(
        expected,
        actual,
        truth,
        entry.manifest.output.labels.index(entry.manifest.output.positive),
        max_auc_delta=rule.max_auc_delta,
        min_agreement=rule.min_agreement,
        max_abs_logit_diff=rule.max_abs_logit_diff,
    )


def verify_here(
    entry: ModelEntry,
    runner_cls: type[Runner],
    names: TensorNames,
    reference: Path,
    candidate: Path,
    settings: Settings,
) -> ParityReport:
    """`candidate` against `reference` (both on `runner_cls`) over the model's sample images."""
    batch, truth = sample_batch(entry, Code.VARIANT_PARITY_FAILED)
    logits = entry.manifest.output.logits
    with runner_cls(reference, names, settings.runtime) as runner:
        expected = runner.infer(batch)
    with runner_cls(candidate, names, settings.runtime) as runner:
        actual = runner.infer(batch)
    report = judge(entry, expected[logits], actual[logits], truth)
    return with_scope_ratio(entry, report, expected, actual, settings)


def with_scope_ratio(
    entry: ModelEntry,
    report: ParityReport,
    fp32_outputs: dict[str, np.ndarray],
    candidate_outputs: dict[str, np.ndarray],
    settings: Settings,
) -> ParityReport:
    """The report with how far the candidate's applicability distances run from FP32's on this
    machine (`scope.localised` judges the candidate by it); as it was without a check."""
    spec = entry.manifest.applicability
    if spec is None or spec.features not in fp32_outputs or spec.features not in candidate_outputs:
        return report
    check = entry.scope_check("fp32", verify=settings.models.verify_checksums)
    if check is None:
        return report
    ratio = distance_ratio(check, fp32_outputs[spec.features], candidate_outputs[spec.features])
    return replace(report, scope_ratio=ratio)
