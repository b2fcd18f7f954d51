"""One typed settings object for every process on the device.

Sources, later ones winning: built-in defaults, the TOML file (`--config FILE`, else
`$EDGE_CONFIG`, else `/etc/edge/edge.toml` when it exists), then `EDGE_*` environment variables
(nested with a double underscore: `EDGE_RUNTIME__THREADS=2`). Unknown keys are refused, so a
typo in a field engineer's config file fails loudly instead of being ignored.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge.compat import tomllib
from edge.errors import Code, EdgeError

SYSTEM_CONFIG = Path("/etc/edge/edge.toml")


DEMO_MODEL = "cxr-pneumonia"
"""The model `edge demo` and `edge bench` use when `[models] default` names none."""


def default_data_dir() -> Path:
    """`$STATE_DIRECTORY` under systemd (first entry if several), else a per-user folder."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Path(platformdirs.user_data_dir("edge", appauthor=False))


def default_models_dir() -> Path:
    """A source checkout's `models/`, else the copy installed beside the package."""
    checkout = Path(__file__).resolve().parent.parent / "models"
    if checkout.is_dir():
        return checkout
    return Path(sys.prefix) / "share" / "edge" / "models"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeSettings(_Section):
    backend: Literal["auto", "onnxruntime", "tensorrt"] = "auto"
    """`auto`: TensorRT where it imports and a GPU is present, else ONNX Runtime."""
    precision: Literal["auto", "fp32", "fp16", "int8"] = "auto"
    """`auto`: the fastest variant on this machine among those that passed their accuracy gate."""
    threads: int = Field(default=0, ge=0, le=256)
    """Intra-op threads for ONNX Runtime; 0 lets it use every core."""
    graph_optimization: Literal["disable", "basic", "extended", "all"] = "all"
    device_memory: Literal["auto", "cuda-python", "pycuda"] = "auto"
    """TensorRT's CUDA memory layer: `auto` takes cuda-python, else pycuda."""
    workspace_mb: int = Field(default=512, ge=16, le=65536)
    """TensorRT builder workspace limit; keep it small on an 8 GB Orin Nano."""
    max_batch: int = Field(default=8, ge=1, le=256)
    """Largest batch a TensorRT engine is built for (its optimisation profile)."""


class ModelSettings(_Section):
    dir: Path = Field(default_factory=default_models_dir)
    default: str | None = None
    """An explicit override: the model for every input with no modality (PNG/JPEG). Unset, such an
    input goes to the model whose applicability check accepts it best (never a silent default)."""
    """Model used for inputs that carry no modality (PNG/JPEG) when none is named."""
    operating_point: str | None = None
    """The site's chosen operating point (e.g. `screening`); None uses each manifest's default."""
    verify_checksums: bool = True


class StoreSettings(_Section):
    busy_timeout_ms: int = Field(default=10_000, ge=100)
    max_input_bytes: int = Field(default=512 * 1024 * 1024, ge=1024)
    """Inputs larger than this are refused before decoding (a DICOM can claim any size)."""
    min_free_mb: int = Field(default=500, ge=0)
    """Below this much free disk the agent stops accepting studies (the modality retries later)."""
    warn_free_mb: int = Field(default=2000, ge=0)
    """Below this, a warning (log, status, doctor) while studies are still accepted."""
    reserve_mb: int = Field(default=64, ge=0)
    """A file kept full to be deleted in an emergency: SQLite cannot even DELETE on a full disk."""
    retention_days: float = Field(default=30.0, ge=0)
    """Image files older than this are deleted once the hub has acknowledged them (never before)."""


class ExplainSettings(_Section):
    heatmaps: bool = True
    """Store a class-activation heatmap overlay (PNG) with every result whose model has one."""
    max_side: int = Field(default=512, ge=64, le=4096)
    """Longest side of the stored overlay: enough for the TUI and the review page, small to sync."""


class GateSettings(_Section):
    enabled: bool = True
    """Refuse inputs a model must not score (wrong modality/view/age, poor quality), with codes."""
    applicability: bool = True
    """Refuse inputs unlike the model's training images (OUT_OF_SCOPE, edge/inference/scope.py),
    also when a model is forced. Off only to study what a model says outside its scope."""

    @property
    def refuses_out_of_scope(self) -> bool:
        """The one place that says whether OUT_OF_SCOPE is enforced (the gate on, and the check)."""
        return self.enabled and self.applicability


class IngestSettings(_Section):
    decode_timeout_s: float = Field(default=30.0, gt=0)
    """A decode taking longer is killed and refused (DECODE_TIMEOUT); for a cine, each frame."""
    decode_memory_mb: int = Field(default=2048, ge=256)
    """Address-space bound of the decoder process (DECODE_CRASHED beyond it)."""
    decode_workers: int = Field(default=1, ge=1, le=16)
    decode_recycle_mb: int = Field(default=512, ge=64)
    """A decoder process holding more than this after a job is replaced by a fresh one, so what
    one large input left behind does not count against the next input's memory bound."""


class DicomSettings(_Section):
    enabled: bool = False
    ae_title: str = Field(default="EDGE", min_length=1, max_length=16, pattern=r"^[^\\]*$")
    bind: str = "0.0.0.0"
    port: int = Field(default=11112, ge=1, le=65535)
    """11112 is the registered DICOM port that needs no privilege; 104 needs CAP_NET_BIND_SERVICE."""
    allowed_callers: list[str] = Field(default_factory=list)
    """Calling AE titles allowed to send. Empty (a fresh install) refuses every caller, each
    refusal logged and recorded with its AE title for `edge doctor`, which prints the line to
    add; `["*"]` accepts any calling AE title (a warning at start)."""
    allowed_networks: list[str] = Field(default_factory=list)
    """Addresses or networks (`10.0.5.7`, `10.0.5.0/24`) allowed to connect; empty: any."""
    max_associations: int = Field(default=4, ge=1, le=64)
    idle_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    """An association that stored nothing for this long gives its slot to a new one when all are
    taken (C-ECHO does not count as work). A connection silent for a minute is closed anyway."""
    tls_cert: Path | None = None
    """DICOM TLS: the listener's certificate chain (PEM). With `tls_key`, only TLS is accepted."""
    tls_key: Path | None = None
    tls_ca: Path | None = None
    """When set, callers must present a certificate signed by this CA (mutual TLS)."""

    @field_validator("allowed_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network, strict=False)  # a ValueError names the bad entry
        return value

    @model_validator(mode="after")
    def _tls_pair(self) -> DicomSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key are set together")
        if self.tls_ca is not None and self.tls_cert is None:
            raise ValueError("tls_ca needs tls_cert and tls_key")
        return self


class WatchSettings(_Section):
    enabled: bool = False
    inbox: Path | None = None
    """Drop folder; default `<data dir>/inbox`. processed/ and quarantine/ sit beside it."""
    interval_s: float = Field(default=2.0, gt=0)
    settle_s: float = Field(default=2.0, ge=0)
    """A file is picked up once its size and time have not changed for this long."""
    owners: list[str] = Field(default_factory=list)
    """User names or uids that may own dropped files; empty: the agent's own user. Files of any
    other owner, symbolic links and hard links are refused (quarantined) unread."""


class WorkerSettings(_Section):
    poll_s: float = Field(default=1.0, gt=0)
    """How often an idle worker looks for jobs queued by another process."""
    stall_s: float = Field(default=120.0, gt=0)
    """A worker loop silent for longer is wedged: the watchdog stops petting and systemd restarts."""
    lease_s: float = Field(default=300.0, gt=0, le=3600)
    """A claimed job is the worker's for this long, renewed at each step; then it is requeued."""
    max_attempts: int = Field(default=3, ge=1)
    """Claims that end without an answer (the worker died or went silent) before JOB_ABANDONED."""
    max_restarts: int = Field(default=10, ge=1)
    """Restarts of the device (power cuts, reboots) during one job before JOB_ABANDONED; they do
    not count as attempts: the input did not cause them."""


class VideoProfile(_Section):
    roi: tuple[int, int, int, int] | None = None
    """x, y, width, height of the imaging sector on this device's screen (skips detection). Live
    captures only (a device or a stream): a file or a DICOM cine is searched for its own sector."""
    horizontal_stretch: float = Field(default=1.0, ge=0.25, le=4.0)
    """How much wider the capture shows the picture than the scanner drew it: 1.78 where a
    capture card stretches a square picture to fill 16:9 (0.75 where it squeezes). The sector is
    brought back to its true shape before the model sees it or a frame is stored: the models were
    trained on undistorted images, and a stretched lung clip reads as `covid`
    (tools/clip_scale.py). Live captures only (a device or a stream): files and DICOM cines never
    went through the card."""
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    fourcc: str | None = Field(default=None, min_length=4, max_length=4)


class VideoSettings(_Section):
    model: str = "us-lung"
    """Model for live ultrasound and clips when none is named."""
    target_fps: float = Field(default=10.0, gt=0, le=60)
    """Frames analysed per second at most; the newest frame is taken, older ones dropped."""
    roi_seconds: float = Field(default=1.5, gt=0)
    """How much video the sector detection looks at (it needs the picture to move)."""
    roi_recheck_s: float = Field(default=5.0, gt=0)
    """How often the sector is looked for again (a depth or preset change, a new resolution)."""
    freeze_seconds: float = Field(default=3.0, gt=0)
    smoothing: float = Field(default=0.3, gt=0, le=1)
    """Weight of the newest frame in the live score's exponential moving average."""
    clip_max_seconds: float = Field(default=20.0, gt=0)
    clip_fps: float = Field(default=8.0, gt=0)
    clip_max_side: int = Field(default=480, ge=64)
    key_frames: int = Field(default=4, ge=1, le=16)
    reconnect_max_s: float = Field(default=8.0, gt=0)
    stall_s: float = Field(default=5.0, gt=0)
    """A live source without a frame this long is reopened; a stream's reads give up after it
    too, its open after at least 15 s (stopping a session waits for those at most)."""
    profile: str | None = None
    """Name of the device profile in use (a key of `profiles`)."""
    profiles: dict[str, VideoProfile] = Field(default_factory=dict)


class HubSettings(_Section):
    dir: Path | None = None
    """Hub files (uploads, releases) and its SQLite database; default `<data dir>/hub`."""
    database_url: str | None = None
    """`postgresql://user:pass@host/db` to run on PostgreSQL; default SQLite in `dir`."""
    bind: str = "127.0.0.1"
    port: int = Field(default=8720, ge=1, le=65535)
    rate_per_s: float = Field(default=20.0, gt=0)
    """Requests per second per device (a token bucket); beyond it: 429."""
    rate_burst: int = Field(default=60, ge=1)
    code_ttl_hours: float = Field(default=72.0, gt=0)
    upload_result_mb: float = Field(default=520.0, gt=0)
    """MB a device may upload for one result (thumbnail, heatmap, full image up to the protocol's
    512 MB, diagnostic rendition, cine); beyond it, or past `upload_result_files`, a new upload
    is refused (QUOTA_EXCEEDED)."""
    upload_result_files: int = Field(default=5, ge=1)
    """Files per result: one of each upload kind (thumbnail, heatmap, image, rendition, cine)."""
    upload_device_gb: float = Field(default=50.0, gt=0)
    """GB one device may keep on the hub in uploads, all results together (and `upload_device_files`)."""
    upload_device_files: int = Field(default=500_000, ge=1)
    render_memory_mb: int = Field(default=1024, ge=128)
    """Address-space bound of the process that decodes device images for the review pages."""
    render_max_pixels: int = Field(default=80_000_000, ge=1)
    """An uploaded image above this many pixels (read from its header) is not decoded."""
    tombstone_purge_after_days: float = Field(default=7.0, ge=0)
    """A result deleted on its device is hidden on the hub at once and its rows and files are
    purged this many days later (the grace lets an administrator look into a mistaken deletion
    in the audit; 0: at the next purge)."""
    keep_images_days: float = Field(default=0.0, ge=0)
    """Days the hub keeps uploaded files (thumbnails, heatmaps, full images) and their cached
    renditions after upload; 0 keeps them as long as their result (docs/install.md, "Retention")."""
    keep_records_days: float = Field(default=0.0, ge=0)
    """Days the hub keeps a result (its row, reviews, files) after receiving it; 0 for ever."""
    keep_renditions_days: float = Field(default=30.0, ge=0)
    """Days a cached rendition (made again on demand from its upload) is kept after it was made;
    0 for ever."""
    purge_interval_s: float = Field(default=3600.0, ge=0)
    """How often `edge hub serve` runs the purge (`edge hub purge` runs it once); 0: never."""
    publisher_public_key: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    """Hex ed25519 public key of the publisher: the one the devices pin as `[sync] public_key`.
    When set, `edge hub publish` and `edge hub profile publish` refuse a release or profile its
    signature does not verify with, at once, instead of every device refusing it at its next
    sync; unset, the hub cannot tell (it never holds the publisher's key) and devices check."""
    nodes: int = Field(default=1, ge=1)
    """How many hub processes serve this database (behind one load balancer). Above 1 the
    database must be PostgreSQL (`HUB_NODES_NEED_POSTGRESQL`); docs/install.md, "A programme's hub"."""


class SyncSettings(_Section):
    hub_url: str | None = None
    """Set by `edge sync enroll`; the credential itself lives in the state directory."""
    images: Literal["none", "thumbnails", "full"] = "thumbnails"
    """Results always travel first; then thumbnails (and heatmaps); full images only if "full"."""
    diagnostic: Literal["positive", "always", "on-request", "never"] = "positive"
    """The 1024-px greyscale diagnostic rendition (edge/sync/outgoing.py), sent after the lean
    payload: "positive" for positive findings and flagged (urgent) studies and whenever the hub
    asks; "always" for every result; "on-request" only when the hub asks; "never". Never sent
    when `images = "none"`."""
    dates: Literal["keep", "shift", "remove"] = "shift"
    burned_text: Literal["any", "identifiers"] = "any"
    """Text OCR finds in outgoing pixels that is blacked out: "any" (every word), or only words
    matching the patient's identifiers (every word still when none is known). Unreadable pixels
    are withheld either way (edge/sync/outgoing.py)."""
    bandwidth_kbps: float = Field(default=0.0, ge=0)
    """Upload cap in kilobits per second; 0 for none (a satellite link bills by the byte). Every
    request is paced by its bytes on the wire, headers included (edge/sync/client.py)."""
    batch_records: int = Field(default=100, ge=1, le=200)
    interval_s: float = Field(default=30.0, gt=0)
    """Between rounds when all is sent; failures back off exponentially up to `max_backoff_s`."""
    max_backoff_s: float = Field(default=900.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    public_key: str | None = None
    """Hex ed25519 public key that model releases must be signed with (pinned on the device)."""


class SecuritySettings(_Section):
    require_encrypted_storage: bool | Literal["warn"] = "warn"
    """Whether the data folder must be on encrypted storage (edge/operations/storage_encryption.py):
    `warn` (default) logs and `edge doctor` warns; true: `edge run` refuses to start
    (STORAGE_NOT_ENCRYPTED); false: the risk is accepted (e.g. a self-encrypting drive)."""


_AE_TITLE = r"^[ -\[\]-~]{1,16}$"  # 1-16 printable ASCII characters, no backslash


class PacsSettings(_Section):
    """Results back into the hospital's PACS: a structured report and a heatmap secondary
    capture per result of a DICOM input, sent by C-STORE (edge/interop, `edge pacs run`)."""

    enabled: bool = False
    host: str | None = None
    """The PACS (or router) that receives the results; required when enabled."""
    port: int = Field(default=104, ge=1, le=65535)
    called_ae: str = Field(default="PACS", pattern=_AE_TITLE)
    """The PACS's AE title."""
    calling_ae: str = Field(default="EDGE", pattern=_AE_TITLE)
    """This device's AE title, as the PACS knows it (many PACS accept only known callers)."""
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    """Connection, association and per-object answer timeout."""
    heatmaps: bool = True
    """Send the heatmap overlay as a secondary capture next to each report."""
    interval_s: float = Field(default=10.0, gt=0)
    """How often the exporter looks for new results when nothing failed."""
    max_backoff_s: float = Field(default=900.0, gt=0)
    """Longest wait after failures (unreachable PACS, refused objects), growing exponentially."""
    max_attempts: int = Field(default=10, ge=1)
    """Refusals by the PACS of one object before it is marked failed (`edge pacs send-now
    --retry-failed` queues it again)."""
    backfill_days: float = Field(default=7.0, ge=0)
    """Results older than this when the exporter first sees them (PACS export switched on
    later) are recorded as skipped, not sent."""

    @field_validator("called_ae", "calling_ae", mode="after")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("an AE title cannot be only spaces")
        return value.strip()

    @model_validator(mode="after")
    def _host_when_enabled(self) -> PacsSettings:
        if self.enabled and not self.host:
            raise ValueError("pacs.host is required when pacs.enabled is true")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    site: str = "unnamed-site"
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    explain: ExplainSettings = Field(default_factory=ExplainSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    watch: WatchSettings = Field(default_factory=WatchSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    video: VideoSettings = Field(default_factory=VideoSettings)
    hub: HubSettings = Field(default_factory=HubSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    pacs: PacsSettings = Field(default_factory=PacsSettings)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    config_file: Path | None = None
    """Where the file-level values came from (informational; not read from the file)."""

    @field_validator("data_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def db_path(self) -> Path:
        return self.data_dir / "edge.db"

    @property
    def hub_dir(self) -> Path:
        return self.hub.dir or self.data_dir / "hub"

    @property
    def hub_database_url(self) -> str:
        return self.hub.database_url or f"sqlite:///{self.hub_dir / 'hub.db'}"

    @property
    def inbox(self) -> Path:
        return self.watch.inbox or self.data_dir / "inbox"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's values arrive as init kwargs (see load_settings); the environment must
        # override them, so it comes first. No .env or secrets directory on the device.
        return env_settings, init_settings


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError as exc:
        raise EdgeError(Code.CONFIG_INVALID, f"config file {path} does not exist") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise EdgeError(Code.CONFIG_INVALID, f"config file {path} cannot be read: {exc}") from exc


def _describe(exc: ValidationError, path: Path | None) -> str:
    """The first problem, where it came from (an EDGE_* variable set, else the file) and in
    plain words ("unknown key", not pydantic's "Extra inputs are not permitted")."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
    variable = "EDGE_" + "__".join(str(part).upper() for part in first["loc"])
    if first["loc"] and variable in os.environ:
        return f"environment variable {variable}: {message}{more}"  # its value may be a secret
    source = f"config {path}" if path else "settings"
    return f"{source}: {where}: {message}{more}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings; a bad file or variable becomes one coded, readable error."""
    path = config_file
    if path is None and os.environ.get("EDGE_CONFIG"):
        path = Path(os.environ["EDGE_CONFIG"])
    if path is None and SYSTEM_CONFIG.is_file():
        path = SYSTEM_CONFIG
    values: dict[str, Any] = _read_toml(path) if path is not None else {}
    values.pop("config_file", None)
    values.update(overrides)
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise EdgeError(Code.CONFIG_INVALID, _describe(exc, path)) from exc
    settings.config_file = path
    return settings
