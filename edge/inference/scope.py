"""Applicability: is this image the kind of image the model was trained on? Pure numpy.

The score is the class-conditional Mahalanobis distance with a shared covariance (Lee et al.
2018, "A simple unified framework for detecting out-of-distribution samples and adversarial
attacks") of the model's own pooled activations (the ONNX output `features`): the squared
distance to the nearest class mean under one covariance fitted on the training images, for the
stem and every residual block, combined as Lee et al. do across layers (here without tuning on
outliers: each layer is scaled by its own 99th validation percentile and the largest counts).
Why this one:
- it uses what the network already computes in the same forward pass, so it runs the same on
  ONNX Runtime and TensorRT, with no gradients and no second network;
- it needs only a mean per class and one precision matrix (about 100 KB per model), where a
  k-nearest-neighbour score (Sun et al. 2022) would ship features of thousands of training
  images and search them on a $250 box;
- the energy score (Liu et al. 2020) reads only the logits, which in a two-class model trained
  without outlier exposure say little about what the picture is: a breast scan can still give
  a large "normal" logit. Distance in feature space sees that the picture itself is unlike any
  training image. The last layer alone was not enough for the small ultrasound models (a chest
  X-ray given to us-breast: AUROC 0.81); the early layers see grey levels and texture.

The threshold is the score that at most 1% of in-distribution validation images (out of fold
where the model was cross-validated) exceed (tools/applicability.py computes it at release). A
conformal p-value against those validation scores turns the distance into words a reader can
use: in scope, borderline (p < 5%), out of scope (p < 1%: refused). The same p-value ranks the
models for an input that names no body part (edge/pipeline.py's routing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import Code, EdgeError

IN_SCOPE = "in scope"
BORDERLINE = "borderline"
OUT_OF_SCOPE = "out of scope"
BORDERLINE_P = 0.05


@dataclass(frozen=True)
class Scope:
    """One image's applicability: the distance, its p-value among validation images, the word."""

    distance: float
    p_value: float
    threshold: float
    state: str
    frame_filled: float | None = None
    """Where the film was read with its thin frame filled (`framing.read_through_frame`): the
    frame's widest side as a share of that side; the distance is the filled film's."""

    @property
    def refused(self) -> bool:
        return self.state == OUT_OF_SCOPE

    def as_dict(self) -> dict[str, float | str]:
        verdict: dict[str, float | str] = {
            "state": self.state,
            "distance": round(self.distance, 3),
            "p_value": round(self.p_value, 4),
            "threshold": round(self.threshold, 3),
        }
        if self.frame_filled is not None:
            verdict["frame_filled"] = round(self.frame_filled, 3)
        return verdict


def layer_values(features: np.ndarray, start: int, size: int) -> np.ndarray:
    """One layer's pooled activations as the check scores them: square-rooted (pooled ReLU outputs
    are skewed; the root brings them closer to the Gaussian the distance assumes)."""
    return np.sqrt(np.clip(features[:, start : start + size], 0, None))


class ScopeCheck:
    """The statistics of one model's applicability check, loaded from its model folder.

    `features` concatenates the pooled activations of several layers (`sizes` values each);
    each layer has its class means, shared precision matrix and scale (its own 99th percentile
    of validation distances). An image's distance is the largest of its layers' scaled
    distances: an X-ray given to an ultrasound model is caught by the early layers (texture,
    grey levels), an ultrasound of the wrong organ by the late ones.
    """

    def __init__(
        self,
        sizes: list[int],
        means: list[np.ndarray],
        precisions: list[np.ndarray],
        scales: np.ndarray,
        calibration: np.ndarray,
        threshold: float,
    ) -> None:
        self.sizes = [int(n) for n in sizes]
        self.means = [np.asarray(m, np.float64) for m in means]
        self.precisions = [np.asarray(p, np.float64) for p in precisions]
        self.scales = np.asarray(scales, np.float64)
        self.calibration = np.sort(np.asarray(calibration, np.float64))
        self.threshold = float(threshold)
        for size, mean, precision in zip(self.sizes, self.means, self.precisions, strict=True):
            if mean.shape[1] != size or precision.shape != (size, size):
                raise ValueError("layer statistics do not match the layer sizes")
        if len(self.scales) != len(self.sizes) or not len(self.calibration):
            raise ValueError("scales or calibration missing")

    @classmethod
    def load(cls, path: Path, threshold: float, variant: str | None = None) -> ScopeCheck:
        """`variant`: judge features that variant computes, against its own validation
        distances (`calibration_<variant>`), where the file has them."""
        try:
            with np.load(path, allow_pickle=False) as data:
                sizes = [int(n) for n in data["sizes"]]
                layers = range(len(sizes))
                calibration = f"calibration_{variant}" if variant else "calibration"
                return cls(
                    sizes,
                    [data[f"means_{k}"] for k in layers],
                    [data[f"precision_{k}"] for k in layers],
                    data["scales"],
                    data[calibration if calibration in data.files else "calibration"],
                    threshold,
                )
        except (OSError, KeyError, ValueError) as exc:
            raise EdgeError(
                Code.MODEL_MANIFEST_INVALID, f"{path.name}: applicability statistics unusable: {exc}"
            ) from exc

    @property
    def width(self) -> int:
        return sum(self.sizes)

    def layer_distances(self, features: np.ndarray) -> list[np.ndarray]:
        """Per layer: squared Mahalanobis distance of each row to its nearest class mean, on
        square-rooted activations (pooled ReLU outputs are skewed; the root makes them closer
        to the Gaussian the distance assumes)."""
        features = np.asarray(features, np.float64).reshape(len(features), -1)
        if features.shape[1] != self.width:
            raise EdgeError(
                Code.MODEL_OUTPUT_INVALID,
                f"features have {features.shape[1]} values, the check expects {self.width}",
            )
        out = []
        start = 0
        for size, means, precision in zip(self.sizes, self.means, self.precisions, strict=True):
            layer = layer_values(features, start, size)
            start += size
            centred = layer[:, None, :] - means[None, :, :]  # N x classes x width
            out.append(np.einsum("ncd,de,nce->nc", centred, precision, centred).min(axis=1))
        return out

    def distances(self, features: np.ndarray) -> np.ndarray:
        """The largest scaled layer distance of each row (inf for non-finite features)."""
        features = np.asarray(features, np.float64).reshape(len(features), -1)
        scaled = np.max(np.stack(self.layer_distances(features)) / self.scales[:, None], axis=0)
        return np.where(np.isfinite(features).all(axis=1), scaled, np.inf)

    def p_values(self, distances: np.ndarray) -> np.ndarray:
        """Conformal p-value: the share of validation images at least as far out (+1 smoothing)."""
        at_least = len(self.calibration) - np.searchsorted(self.calibration, distances, side="left")
        return (1 + at_least) / (1 + len(self.calibration))

    def judge(self, features: np.ndarray) -> list[Scope]:
        return self.judge_distances(self.distances(features))

    def judge_distances(self, distances: np.ndarray) -> list[Scope]:
        out = []
        for distance, p_value in zip(distances, self.p_values(distances), strict=True):
            if distance > self.threshold:
                state = OUT_OF_SCOPE
            elif p_value < BORDERLINE_P:
                state = BORDERLINE
            else:
                state = IN_SCOPE
            out.append(Scope(float(distance), float(p_value), self.threshold, state))
        return out

    def judge_clip(self, distances: list[float]) -> Scope | None:
        """A clip by the median of its frames' distances: a few odd frames (a probe lifted off
        the skin) neither refuse a clip nor let one through."""
        if not distances:
            return None
        return self.judge_distances(np.array([float(np.median(distances))]))[0]


def localised(variant_check: ScopeCheck, fp32_check: ScopeCheck, ratio: float | None) -> ScopeCheck:
    """The check a reduced-precision variant is judged by on this machine.

    Its manifest threshold and calibration were fitted on the features that variant computed on
    the machine that quantised it. INT8 kernels differ between machines (ONNX Runtime's x86
    kernels with and without VNNI; TensorRT), so there the variant's distances may have run
    well above FP32's and its threshold with them (cxr-pneumonia: 1.79 for INT8 against 1.39
    for FP32), while here it computes nearly what FP32 computes (median distance ratio 1.01 on
    the samples): judged by the manifest's threshold, a photograph refused by FP32 (distance
    1.51) was only borderline under INT8 (1.55). So where FP32's threshold and calibration,
    scaled by this machine's measured ratio (`ParityReport.scope_ratio`, from the local parity
    run over the model's samples), are stricter, they are used; never looser than the manifest.
    """
    if ratio is None or not np.isfinite(ratio) or ratio <= 0:
        return variant_check
    here = fp32_check.threshold * ratio
    if here >= variant_check.threshold:
        return variant_check
    return ScopeCheck(
        fp32_check.sizes,
        fp32_check.means,
        fp32_check.precisions,
        fp32_check.scales,
        fp32_check.calibration * ratio,
        here,
    )


def distance_ratio(check: ScopeCheck, reference: np.ndarray, candidate: np.ndarray) -> float | None:
    """Median of candidate / reference distances over the same images (finite, positive ones)."""
    before, after = check.distances(reference), check.distances(candidate)
    usable = np.isfinite(before) & np.isfinite(after) & (before > 0)
    return round(float(np.median(after[usable] / before[usable])), 6) if usable.any() else None


# What each word means, in a technician's words (edge infer, the TUI; the hub says the same).
MEANINGS = {
    IN_SCOPE: "like the images the model was trained on",
    BORDERLINE: "near the edge of what the model was trained on; read the result with extra care",
    OUT_OF_SCOPE: "unlike the images the model was trained on; no result",
}


def p_text(p_value: float) -> str:
    """`0.03`, `0.004`: two decimals, three below 1% (the refusal's own range)."""
    return f"{p_value:.2f}" if p_value >= 0.01 else f"{p_value:.3f}"


def plain_words(applicability: Mapping[str, Any] | None) -> str | None:
    """One result's applicability (a stored `Scope.as_dict`) as one plain line:
    'borderline (p = 0.03): near the edge of what the model was trained on; ...'; None when the
    result has none (a model released without the check) or it is unreadable."""
    if not applicability:
        return None
    state = applicability.get("state")
    if state not in MEANINGS:
        return None
    p_value = applicability.get("p_value")
    number = f" (p = {p_text(p_value)})" if isinstance(p_value, (int, float)) else ""
    frame = frame_words(applicability)
    return f"{state}{number}: {MEANINGS[state]}" + (f"; {frame}" if frame else "")


def frame_words(applicability: Mapping[str, Any] | None) -> str | None:
    """'read with the flat frame along its edges (1% of a side) filled from the film's own edge'
    where a result was so read (`Scope.frame_filled`), else None: whoever reads the result knows
    the picture was not read exactly as sent."""
    share = (applicability or {}).get("frame_filled")
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 < share < 1:
        return None
    width = "under 1%" if share < 0.005 else f"{share:.0%}"
    return f"read with the flat frame along its edges ({width} of a side) filled from the film's own edge"


def refusal(model: str, looks_like: str, scope: Scope) -> EdgeError:
    """OUT_OF_SCOPE: the sentence a technician reads."""
    return EdgeError(
        Code.OUT_OF_SCOPE,
        f"this does not look like {looks_like}: check the model or the image ({model}'s"
        f" applicability check: distance {scope.distance:.2f}, limit {scope.threshold:.2f})",
    )
