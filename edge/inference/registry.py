"""Model manifests (`models/<name>/model.toml`): schema, loading, file verification, routing.

The schema is documented field by field in docs/model-manifest.md. A manifest is data the
device trusts only after checking it: unknown keys are refused, and every model file is
verified against its sha256 before a backend may load it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edge.compat import tomllib
from edge.errors import Code, EdgeError
from edge.imaging.preprocess import PreprocessSpec
from edge.inference.scope import ScopeCheck

MANIFEST = "model.toml"
Precision = Literal["fp32", "fp16", "int8"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


BODY_PART_SYNONYMS = {"THORAX": "CHEST"}
"""Body Part Examined values scanners send for a defined term (PS3.16 CID 4031 has CHEST): a
chest film sent as CR / THORAX found no model."""


class Accepts(_Strict):
    """What inputs the model may score; the applicability gate reads this."""

    modalities: list[str] = Field(default_factory=list)
    """DICOM Modality values (e.g. CR, DX). Empty: any."""
    body_parts: list[str] = Field(default_factory=list)
    """DICOM Body Part Examined values (upper case). Empty: any."""
    views: list[str] = Field(default_factory=list)
    """DICOM View Position values (e.g. PA, AP). Empty: any."""
    age_years: tuple[float, float] | None = None
    """Inclusive patient age range the model was validated on."""
    unlabelled: bool = True
    """Whether PNG/JPEG inputs (no modality, body part or age) may be scored."""

    def takes_body_part(self, body_part: str) -> bool:
        """Whether `body_part` (as the header says it) is one of these, synonyms read as their
        defined term (`BODY_PART_SYNONYMS`)."""
        term = body_part.upper()
        listed = {BODY_PART_SYNONYMS.get(part, part) for part in self.body_parts}
        return not self.body_parts or BODY_PART_SYNONYMS.get(term, term) in listed


class InputSpec(_Strict):
    name: str = "image"
    shape: tuple[int, int, int]
    """Channels, height, width; the batch dimension is dynamic."""
    layout: Literal["NCHW"] = "NCHW"
    dtype: Literal["float32"] = "float32"
    colour: Literal["gray", "rgb"] = "gray"
    resize: Literal["stretch", "letterbox", "center_crop"] = "stretch"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        channels = self.shape[0]
        if channels != (1 if self.colour == "gray" else 3):
            raise ValueError(f"shape has {channels} channels but colour is {self.colour}")
        if len(self.mean) != channels or len(self.std) != channels:
            raise ValueError("mean and std need one value per channel")
        return self

    def preprocess_spec(self) -> PreprocessSpec:
        return PreprocessSpec(
            height=self.shape[1],
            width=self.shape[2],
            colour=self.colour,
            resize=self.resize,
            scale=self.scale,
            mean=self.mean,
            std=self.std,
        )


class OutputSpec(_Strict):
    logits: str = "logits"
    """Output tensor of shape [N, len(labels)]: raw (uncalibrated) class scores."""
    cam: str | None = None
    """Optional output [N, len(labels), h, w]: class activation maps for heatmaps."""
    labels: list[str]
    positive: str
    """The label thresholds apply to (the finding a site screens for)."""
    temperature: float = Field(default=1.0, gt=0)
    """Calibration temperature: probabilities are softmax(logits / temperature)."""

    @model_validator(mode="after")
    def _positive_known(self) -> OutputSpec:
        if self.positive not in self.labels:
            raise ValueError(f"positive label {self.positive!r} is not one of {self.labels}")
        return self


class OperatingPoint(_Strict):
    threshold: float = Field(ge=0, le=1)
    """Calibrated probability of the positive label at or above which it is the finding."""
    description: str = ""
    sensitivity: float | None = None
    specificity: float | None = None
    clip_threshold: float | None = Field(default=None, ge=0, le=1)
    """For a clip's probability (the mean of its frames'): chosen by the same rule on per-video
    validation predictions, since a mean of frames is not distributed like one frame. None: the
    frame threshold applies to clips too."""
    clip_sensitivity: float | None = None
    clip_specificity: float | None = None

    @property
    def threshold_for_clips(self) -> float:
        return self.threshold if self.clip_threshold is None else self.clip_threshold


class HeldOutGate(_Strict):
    """A cross-validated model's INT8 check on unseen images: each fold's model quantised the same
    way, compared with its FP32 on the images that fold never saw."""

    passed: bool
    images: int
    auc_reference: float
    auc: float
    auc_delta: float
    agreement: float
    accuracy_reference: float | None = None
    accuracy: float | None = None
    max_abs_logit_diff: float | None = None
    rule: str = ""


class Gate(HeldOutGate):
    """Acceptance of a reduced-precision variant against FP32 on the validation split (for a
    cross-validated model: fidelity on every image, plus `out_of_fold`; both must pass)."""

    out_of_fold: HeldOutGate | None = None


class QualityRule(_Strict):
    """Quality thresholds for the gate; None switches a check off (e.g. black borders are normal
    in ultrasound). Set from real images by tools/quality_stats.py."""

    min_side: int = 64
    max_black_fraction: float | None = None
    max_white_fraction: float | None = None
    min_dynamic_range: float | None = None
    min_sharpness: float | None = None
    max_uniform_fraction: float | None = None


class ParityRule(_Strict):
    """What an engine (or any non-reference runtime) must meet before it may serve."""

    max_auc_delta: float = 0.005
    min_agreement: float = 0.99
    max_abs_logit_diff: float = 0.5


class Variant(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    precision: Precision
    quantization: Literal["none", "qdq", "qoperator"] = "none"
    backends: list[Literal["onnxruntime", "tensorrt"]] = Field(
        default_factory=lambda: ["onnxruntime"]  # type: ignore[arg-type]
    )
    gate: Gate | None = None
    """Required for every precision but fp32; a variant that did not pass is never served."""

    @property
    def servable(self) -> bool:
        if self.precision == "fp32":
            return True
        # A cross-validated model's gate has two parts; both must pass, whatever wrote the file.
        return (
            self.gate is not None
            and self.gate.passed
            and (self.gate.out_of_fold is None or self.gate.out_of_fold.passed)
        )


class Applicability(_Strict):
    """The out-of-distribution check (edge/inference/scope.py): statistics of the model's own
    pooled features on its training images, in `file` (verified like a model file)."""

    method: Literal["mahalanobis"] = "mahalanobis"
    features: str = "features"
    """The ONNX output holding the pooled penultimate activations [N, C]."""
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    threshold: float = Field(gt=0)
    """Distances above this are refused (OUT_OF_SCOPE): exceeded by <= 1% of validation images."""
    variant_thresholds: dict[str, float] = Field(default_factory=dict)
    """The same rule on a reduced-precision variant's own features (INT8 rounding moves them):
    the served variant's threshold applies (a TensorRT engine: its source variant's)."""
    looks_like: str
    """What an in-scope input is, for the refusal sentence ("a paediatric chest X-ray")."""
    calibration: str = ""
    validation_refused: float | None = None
    measured: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)
    """Per variant, per out-of-distribution set: images, auroc, refused (tools/applicability.py)."""


class ShiftFigures(_Strict):
    auc: float
    auc_ci95: tuple[float, float]
    sensitivity: float
    specificity: float
    accuracy: float


class ShiftCheck(_Strict):
    """Held-out figures under each synthetic acquisition shift, at one operating point."""

    measured_on: str
    operating_point: str
    shifts: dict[str, ShiftFigures] = Field(min_length=1)


class ClipStability(_Strict):
    """One variant's clips through the product's clip path at other input sizes (tools/clip_scale.py)."""

    clips: int
    flipping_half_to_4x: int
    """Clips whose finding at 0.5x, 2x or 4x of their size differs from the one at 1x."""
    flipping_stretched: int
    flipping_stretched_with_profile: int
    largest_spread: float
    mean_spread: float
    flips: dict[str, list[str]] = Field(default_factory=dict)
    """Clip -> the sizes at which its finding changed (only clips that changed)."""


class Robustness(_Strict):
    """Measured at release, for the card and `edge models show`; never used to decide."""

    by_shift: ShiftCheck | None = None
    clip_scale: dict[str, ClipStability] = Field(default_factory=dict)
    """Per variant."""


MANIFEST_SCHEMA_VERSION: Literal[1] = 1
"""Raised only when an older reader would misread a manifest (not for new optional sections)."""


class Manifest(_Strict):
    schema_version: Literal[1] = MANIFEST_SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    version: str
    title: str
    task: Literal["classification"] = "classification"
    description: str = ""
    accepts: Accepts = Field(default_factory=Accepts)
    input: InputSpec
    output: OutputSpec
    default_operating_point: str
    operating_points: dict[str, OperatingPoint]
    variants: dict[str, Variant]
    quality: QualityRule = Field(default_factory=QualityRule)
    parity: ParityRule = Field(default_factory=ParityRule)
    metrics: dict[str, dict[str, Any]] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    samples: str | None = "samples"
    """Folder (relative to the manifest) of attributed sample images with a labels.csv."""
    applicability: Applicability | None = None
    robustness: Robustness | None = None

    @model_validator(mode="after")
    def _references(self) -> Manifest:
        if self.default_operating_point not in self.operating_points:
            raise ValueError(f"default_operating_point {self.default_operating_point!r} is not defined")
        if not any(v.precision == "fp32" for v in self.variants.values()):
            raise ValueError("an fp32 variant is required: it is the numerical reference")
        return self


class ModelEntry:
    """A manifest together with the folder it lives in."""

    def __init__(self, manifest: Manifest, folder: Path) -> None:
        self.manifest = manifest
        self.folder = folder

    @property
    def name(self) -> str:
        return self.manifest.name

    def variant_file(self, variant: str, *, verify: bool = True) -> Path:
        """The variant's file, verified against its sha256 (refused on mismatch)."""
        if variant not in self.manifest.variants:
            raise EdgeError(
                Code.MODEL_VARIANT_UNAVAILABLE,
                f"{self.name} has no variant {variant!r} (has {', '.join(self.manifest.variants)})",
            )
        spec = self.manifest.variants[variant]
        path = self.folder / spec.file
        if not path.is_file():
            raise EdgeError(Code.MODEL_FILE_MISSING, f"{self.name}: model file {spec.file} is missing")
        if verify:
            actual = sha256_file(path)
            if actual != spec.sha256:
                raise EdgeError(
                    Code.MODEL_CHECKSUM_MISMATCH,
                    f"{self.name}: {spec.file} has sha256 {actual[:12]}..., the manifest says "
                    f"{spec.sha256[:12]}...; refusing a modified or corrupt model",
                )
        return path

    def scope_check(self, variant: str = "fp32", *, verify: bool = True) -> ScopeCheck | None:
        """The applicability check's statistics for features computed by `variant`, verified
        against their sha256; None when the manifest has no check (a model released before it
        existed)."""
        spec = self.manifest.applicability
        if spec is None:
            return None
        path = self.folder / spec.file
        if not path.is_file():
            raise EdgeError(
                Code.MODEL_FILE_MISSING, f"{self.name}: applicability file {spec.file} is missing"
            )
        if verify and sha256_file(path) != spec.sha256:
            raise EdgeError(
                Code.MODEL_CHECKSUM_MISMATCH,
                f"{self.name}: {spec.file} does not match its sha256 in the manifest; refusing it",
            )
        if variant in spec.variant_thresholds:
            return ScopeCheck.load(path, spec.variant_thresholds[variant], variant)
        return ScopeCheck.load(path, spec.threshold)

    def operating_point(self, name: str | None) -> tuple[str, OperatingPoint]:
        chosen = name or self.manifest.default_operating_point
        if chosen not in self.manifest.operating_points:
            chosen = self.manifest.default_operating_point
        return chosen, self.manifest.operating_points[chosen]

    @cached_property
    def samples(self) -> list[tuple[Path, str]]:
        """(file, label) pairs of the model's bundled, attributed sample images."""
        if not self.manifest.samples:
            return []
        folder = self.folder / self.manifest.samples
        labels = folder / "labels.csv"
        if not labels.is_file():
            return []
        with labels.open(newline="") as handle:
            return [(folder / row["path"], row["label"]) for row in csv.DictReader(handle)]


PREVIOUS = ".previous"
"""`<models dir>/.previous/<model>-<unix time>`: a version a model update set aside."""


def set_aside_path(models_dir: Path, name: str, now: float) -> Path:
    """A free folder to set `name`'s installed version aside in, named by `now`, and always after
    every one already there: a second update within the same second, or a clock set back, must
    neither fail on a folder already there nor name the newest set-aside version as the oldest
    (pruning keeps the newest by name)."""
    earlier = set_aside(models_dir, name)
    stamp = int(now)
    if earlier:
        stamp = max(stamp, int(earlier[0].name.rsplit("-", 1)[1]) + 1)
    while (models_dir / PREVIOUS / f"{name}-{stamp}").exists():  # a file of that name, say
        stamp += 1
    return models_dir / PREVIOUS / f"{name}-{stamp}"


def set_aside(models_dir: Path, name: str) -> list[Path]:
    """The folders model updates set `name`'s earlier versions aside in, newest first (by the
    time in their names; another model whose name begins alike is not one of them)."""
    pattern = re.compile(re.escape(name) + r"-(\d+)")
    found = []
    for folder in (models_dir / PREVIOUS).glob(f"{name}-*"):
        matched = pattern.fullmatch(folder.name)
        if matched and folder.is_dir():
            found.append((int(matched.group(1)), folder))
    return [folder for _, folder in sorted(found, reverse=True)]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(path: Path) -> Manifest:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdgeError(Code.MODEL_MANIFEST_INVALID, f"{path} cannot be read: {exc}") from exc
    return manifest_from(raw, str(path))


def parse_manifest(text: str, where: str) -> Manifest:
    """A manifest's TOML text (a release's, before any of its files is downloaded)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EdgeError(Code.MODEL_MANIFEST_INVALID, f"{where} cannot be read: {exc}") from exc
    return manifest_from(raw, where)


def manifest_from(raw: dict[str, Any], where: str) -> Manifest:
    """The manifest, or a coded refusal that tells a manifest from newer software (a later
    schema, a key this reader does not know: update edge, the installed model keeps serving)
    from a broken one (reinstall)."""
    version = raw.get("schema_version", MANIFEST_SCHEMA_VERSION)
    if isinstance(version, int) and version > MANIFEST_SCHEMA_VERSION:
        raise EdgeError(
            Code.MODEL_NEEDS_NEWER_SOFTWARE,
            f"{where}: manifest schema {version}; this edge reads schema {MANIFEST_SCHEMA_VERSION}",
        )
    try:
        return Manifest(**raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        unknown = [e for e in exc.errors() if e["type"] == "extra_forbidden"]
        if unknown:  # with other errors too: a newer tool's new key often comes with new values
            key = ".".join(str(p) for p in unknown[0]["loc"])
            raise EdgeError(
                Code.MODEL_NEEDS_NEWER_SOFTWARE,
                f"{where}: {key}: a key this edge does not know (from a newer release tool, or misspelt)",
            ) from exc
        raise EdgeError(Code.MODEL_MANIFEST_INVALID, f"{where}: {field}: {first['msg']}") from exc


def manifest_schema_id() -> str:
    """A fingerprint of what this software's manifest reader accepts (fields, types, allowed
    values; not the prose). A release refused under another fingerprint (older software) is
    tried again: it may be readable now."""

    def without_prose(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: without_prose(v) for k, v in node.items() if k not in ("description", "title")}
        if isinstance(node, list):
            return [without_prose(v) for v in node]
        return node

    schema = json.dumps(without_prose(Manifest.model_json_schema()), sort_keys=True)
    return hashlib.sha256(schema.encode()).hexdigest()[:16]


class Registry:
    """The models installed on this device: one folder each under `models_dir`."""

    def __init__(self, models_dir: Path) -> None:
        self.models_dir = models_dir

    def names(self) -> list[str]:
        if not self.models_dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.models_dir.glob(f"*/{MANIFEST}"))

    def get(self, name: str) -> ModelEntry:
        path = self.models_dir / name / MANIFEST
        if not name or "/" in name or not path.is_file():
            known = ", ".join(self.names()) or "none installed"
            raise EdgeError(Code.MODEL_UNKNOWN, f"no model named {name!r} (known: {known})")
        manifest = read_manifest(path)
        if manifest.name != name:
            raise EdgeError(
                Code.MODEL_MANIFEST_INVALID, f"{path} names itself {manifest.name!r}, not {name!r}"
            )
        return ModelEntry(manifest, path.parent)

    def entries(self) -> list[ModelEntry]:
        return [self.get(name) for name in self.names()]

    def route(
        self, modality: str | None, body_part: str | None, entries: list[ModelEntry] | None = None
    ) -> list[str]:
        """Models whose manifest may score an input: for DICOM, those accepting its modality and
        (when it names one) its body part; for an input with no modality (PNG/JPEG), every model
        that takes unlabelled inputs. Which of several serves an input that names no body part is
        the applicability check's to decide (edge/pipeline.py), never a silent default.
        `entries`: the installed models, already read (else read here)."""
        chosen = []
        for entry in self.entries() if entries is None else entries:
            accepts = entry.manifest.accepts
            if not modality:
                if accepts.unlabelled:
                    chosen.append(entry.name)
                continue
            if accepts.modalities and modality.upper() not in accepts.modalities:
                continue
            if body_part and not accepts.takes_body_part(body_part):
                continue
            chosen.append(entry.name)
        return chosen
