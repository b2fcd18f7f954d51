"""The device store's schema, as ordered migrations (sqlite-utils `Migrations`).

Each migration runs in one transaction together with the record of it having run, so a power
cut during an upgrade leaves the previous schema intact. Never edit a shipped migration; add one.

Conventions: ids are device-made UUIDv7 strings (time-ordered), times are UTC ISO-8601 strings
with milliseconds and a `Z`, JSON columns hold no patient-identifying data unless named `phi_*`.
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

migrations = Migrations("edge")

JOB_STATES = ("queued", "running", "done", "refused", "failed")

_INITIAL = [
    """
    CREATE TABLE studies (
        id TEXT PRIMARY KEY,
        study_uid TEXT UNIQUE,              -- DICOM StudyInstanceUID when the input has one
        phi_patient_id TEXT,                -- kept on the device only; pseudonymised before sync
        phi_patient_name TEXT,
        phi_accession TEXT,
        patient_age_years REAL,
        patient_sex TEXT,
        modality TEXT,
        body_part TEXT,
        description TEXT,
        study_date TEXT,
        source TEXT NOT NULL,               -- cli | demo | dicom | watch | video
        urgent INTEGER NOT NULL DEFAULT 0 CHECK (urgent IN (0, 1)),
        received_at TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE images (
        id TEXT PRIMARY KEY,
        study_id TEXT NOT NULL REFERENCES studies(id),
        sop_instance_uid TEXT UNIQUE,
        sha256 TEXT NOT NULL UNIQUE,        -- the same bytes twice are one image
        path TEXT NOT NULL,                 -- relative to the data directory
        format TEXT NOT NULL CHECK (format IN ('dicom', 'png', 'jpeg')),
        bytes INTEGER NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        frames INTEGER NOT NULL DEFAULT 1,
        meta TEXT NOT NULL DEFAULT '{}',    -- technical metadata only (JSON)
        phi_original_name TEXT,           -- the file name as received (may name a patient)
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX images_study ON images(study_id)",
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        image_id TEXT NOT NULL REFERENCES images(id),
        model_name TEXT NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'refused', 'failed')),
        priority INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        worker TEXT,
        claimed_at TEXT,
        error_code TEXT,
        error_message TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (image_id, model_name)
    )
    """,
    "CREATE INDEX jobs_queue ON jobs(state, priority DESC, created_at)",
    """
    CREATE TABLE results (
        id TEXT PRIMARY KEY,
        job_id TEXT NOT NULL UNIQUE REFERENCES jobs(id),
        image_id TEXT NOT NULL REFERENCES images(id),
        model_name TEXT NOT NULL,
        model_version TEXT NOT NULL,
        model_sha256 TEXT NOT NULL,
        variant TEXT NOT NULL,
        backend TEXT NOT NULL,
        precision TEXT NOT NULL,
        finding TEXT NOT NULL,
        probability REAL NOT NULL,          -- calibrated probability of `finding_label`
        finding_label TEXT NOT NULL,        -- the label the threshold applies to
        probabilities TEXT NOT NULL,        -- JSON {label: calibrated probability}
        threshold REAL NOT NULL,
        operating_point TEXT NOT NULL,
        latency_ms REAL NOT NULL,           -- the backend's inference call alone
        total_ms REAL NOT NULL,             -- decode + preprocess + infer + postprocess
        heatmap_path TEXT,
        created_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX results_image ON results(image_id)",
    """
    CREATE TABLE reviews (
        id TEXT PRIMARY KEY,                -- made by the hub
        result_id TEXT NOT NULL REFERENCES results(id),
        verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree', 'uncertain')),
        finding TEXT,
        note TEXT,
        reviewer_role TEXT,
        reviewed_at TEXT NOT NULL,
        received_at TEXT NOT NULL
    )
    """,
    "CREATE INDEX reviews_result ON reviews(result_id)",
    """
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, -- gapless per-device sequence for the hub
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,                 -- result | image | refusal
        ref_id TEXT NOT NULL,
        payload TEXT NOT NULL,              -- JSON snapshot, de-identified at send time
        created_at TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        last_error TEXT,
        sent_at TEXT,
        acked_at TEXT
    )
    """,
    "CREATE INDEX outbox_pending ON outbox(acked_at, seq)",
    """
    CREATE TABLE audit (
        id TEXT PRIMARY KEY,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject_id TEXT,
        detail TEXT NOT NULL DEFAULT '{}'   -- JSON, never patient-identifying
    )
    """,
    "CREATE INDEX audit_at ON audit(at)",
]


@migrations()
def m001_initial(db: Database) -> None:
    for statement in _INITIAL:
        db.execute(statement)


@migrations()
def m002_result_quality(db: Database) -> None:
    # The quality measures the gate saw, shown with the result (JSON).
    db.execute("ALTER TABLE results ADD COLUMN quality TEXT")


@migrations()
def m003_image_purge(db: Database) -> None:
    # When retention deleted the image file (after the hub acknowledged it); the row stays.
    db.execute("ALTER TABLE images ADD COLUMN purged_at TEXT")


@migrations()
def m004_clips(db: Database) -> None:
    # A clip result: the series of per-frame scores, a few key frames, the bounded ROI video.
    db.execute(
        """
        CREATE TABLE clips (
            id TEXT PRIMARY KEY,
            result_id TEXT NOT NULL UNIQUE REFERENCES results(id),
            source TEXT NOT NULL,              -- file | capture | dicom
            source_sha256 TEXT UNIQUE,         -- the input file, so the same file is one clip
            roi TEXT,                          -- JSON [x, y, w, h] on the source screen
            frames_analysed INTEGER NOT NULL,
            frames_excluded INTEGER NOT NULL,  -- frozen or black: not aggregated
            duration_s REAL NOT NULL,
            aggregate TEXT NOT NULL,           -- how the clip's probability was made
            series TEXT NOT NULL,              -- JSON [[seconds, calibrated P(positive)], ...]
            key_frames TEXT NOT NULL,          -- JSON [{path, heatmap, t, p}, ...]
            video_path TEXT,                   -- the ROI-only, bounded MP4 (no screen UI)
            events TEXT NOT NULL DEFAULT '[]', -- JSON: freeze, black, reconnects, size changes
            created_at TEXT NOT NULL
        )
        """
    )


def schema_version(db: Database) -> int:
    """Number of applied migrations (shown by `edge doctor`)."""
    return len(migrations.applied(db))


def latest_version() -> int:
    return len(migrations._migrations)


@migrations()
def m005_technician_marks(db: Database) -> None:
    # The technician's own marks (the TUI): when a result was looked at and by whom, and free-text
    # notes on a study. A note may name a patient (hence phi_): it stays on the device.
    db.execute("ALTER TABLE results ADD COLUMN seen_at TEXT")
    db.execute("ALTER TABLE results ADD COLUMN seen_by TEXT")
    db.execute(
        """
        CREATE TABLE notes (
            id TEXT PRIMARY KEY,
            study_id TEXT NOT NULL REFERENCES studies(id),
            result_id TEXT REFERENCES results(id),  -- the result the note is about, if any
            phi_text TEXT NOT NULL,
            author TEXT NOT NULL,
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX notes_study ON notes(study_id)")


@migrations()
def m010_sync(db: Database) -> None:
    # The sync agent's own state (cursor, last success, last error) and review idempotency.
    db.execute(
        "CREATE TABLE sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX outbox_kind_ref ON outbox(kind, ref_id)")


@migrations()
def m011_clip_per_model(db: Database) -> None:
    # The same recording analysed by another model is another clip: a file is one clip per model,
    # not one clip in all (which returned the first model's answer to a question about the second).
    # SQLite cannot drop a UNIQUE column constraint in place, so the table is rebuilt.
    db.execute(
        """
        CREATE TABLE clips_new (
            id TEXT PRIMARY KEY,
            result_id TEXT NOT NULL UNIQUE REFERENCES results(id),
            source TEXT NOT NULL,              -- file | capture | dicom
            source_sha256 TEXT,                -- the input file: with model_name, one clip per pair
            model_name TEXT,                   -- the model that analysed it (results.model_name)
            roi TEXT,                          -- JSON [x, y, w, h] on the source screen
            frames_analysed INTEGER NOT NULL,
            frames_excluded INTEGER NOT NULL,  -- frozen or black: not aggregated
            duration_s REAL NOT NULL,
            aggregate TEXT NOT NULL,           -- how the clip's probability was made
            series TEXT NOT NULL,              -- JSON [[seconds, calibrated P(positive)], ...]
            key_frames TEXT NOT NULL,          -- JSON [{path, heatmap, t, p}, ...]
            video_path TEXT,                   -- the ROI-only, bounded MP4 (no screen UI)
            events TEXT NOT NULL DEFAULT '[]', -- JSON: freeze, black, reconnects, size changes
            created_at TEXT NOT NULL
        )
        """
    )
    db.execute(
        """
        INSERT INTO clips_new (id, result_id, source, source_sha256, model_name, roi,
            frames_analysed, frames_excluded, duration_s, aggregate, series, key_frames,
            video_path, events, created_at)
        SELECT c.id, c.result_id, c.source, c.source_sha256, r.model_name, c.roi,
            c.frames_analysed, c.frames_excluded, c.duration_s, c.aggregate, c.series,
            c.key_frames, c.video_path, c.events, c.created_at
        FROM clips c LEFT JOIN results r ON r.id = c.result_id
        """
    )
    # Lossless or nothing: the whole migration rolls back if a row did not come across.
    moved, had = (db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("clips_new", "clips"))
    if moved != had:
        raise RuntimeError(f"m011: {moved} of {had} clips copied; the clips table is left as it was")
    db.execute("DROP TABLE clips")
    db.execute("ALTER TABLE clips_new RENAME TO clips")
    db.execute("CREATE UNIQUE INDEX clips_source_model ON clips(source_sha256, model_name)")


@migrations()
def m012_job_leases(db: Database) -> None:
    # A claimed job is held until `lease_until` (UTC, the store's time format); its worker renews
    # it. Jobs running under older software have none: they count as expired (edge.store.leases).
    db.execute("ALTER TABLE jobs ADD COLUMN lease_until TEXT")


@migrations()
def m013_pacs_exports(db: Database) -> None:
    # Results sent back into the hospital's PACS (edge/interop): one row per (result, kind), kind
    # `sr` (the structured report) or `heatmap` (the secondary capture). The SOP Instance UID is
    # made from the result id, so a resend after a crash is the same instance (the PACS keeps
    # it once). A row is `pending` until the PACS answered success, `sent` after, `skipped`
    # (with its reason) when the result has nothing a PACS can file (a PNG/JPEG input, no
    # heatmap), `failed` after the PACS refused it `[pacs] max_attempts` times.
    db.execute(
        """
        CREATE TABLE pacs_exports (
            id TEXT PRIMARY KEY,
            result_id TEXT NOT NULL,           -- no foreign keys: a deleted study's rows stay as
            image_id TEXT NOT NULL,            -- the record of what the PACS was sent
            kind TEXT NOT NULL CHECK (kind IN ('sr', 'heatmap')),
            sop_instance_uid TEXT UNIQUE,      -- NULL when skipped
            state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'skipped', 'failed')),
            reason TEXT,                       -- why skipped or failed (never patient-identifying)
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at TEXT,              -- NULL: at once
            last_error TEXT,
            status TEXT,                       -- the PACS's last C-STORE status, hex
            destination TEXT,                  -- called AE@host:port that acknowledged it
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            sent_at TEXT,
            UNIQUE (result_id, kind)
        )
        """
    )
    db.execute("CREATE INDEX pacs_exports_due ON pacs_exports(state, next_attempt_at)")
    db.execute("CREATE INDEX pacs_exports_image ON pacs_exports(image_id, state)")
    db.execute(
        "CREATE TABLE pacs_state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )


@migrations()
def m014_image_versions(db: Database) -> None:
    # A corrected instance (issue 14: the same SOP Instance UID, other content, from the same
    # patient and study) is a new image row, analysed again; the version it replaces stays with
    # its jobs and results, marked here: `superseded_by` the image that replaced it (NULL: the
    # current version). `sop_instance_uid` is UNIQUE, so only the current version carries the
    # UID; a superseded one has NULL there and its UID is that of the image it names.
    db.execute("ALTER TABLE images ADD COLUMN superseded_by TEXT")
    db.execute("ALTER TABLE images ADD COLUMN superseded_at TEXT")


@migrations()
def m015_result_applicability(db: Database) -> None:
    # The applicability check's verdict with each result (JSON: state, distance, p_value,
    # threshold; edge/inference/scope.py). NULL for results of models released without one.
    db.execute("ALTER TABLE results ADD COLUMN applicability TEXT")


@migrations()
def m016_result_profile(db: Database) -> None:
    # The site profile (temperature and thresholds, edge/inference/site_profile.py) in force
    # when the result was made. NULL: the model's shipped calibration.
    db.execute("ALTER TABLE results ADD COLUMN profile_id TEXT")


@migrations()
def m017_job_restarts(db: Database) -> None:
    # Claims of a job that a restart of the device ended (a power cut, a reboot): they are not
    # counted in `attempts`, and `[worker] max_restarts` of them end the job (edge.store.leases).
    db.execute("ALTER TABLE jobs ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0")


@migrations()
def m018_image_aged_from(db: Database) -> None:
    # When an image's retention age starts where a clock that was wrong stamped it (before 2024:
    # a box without a clock battery after a power cut; or ahead of the clock); NULL: its
    # created_at (edge.operations.housekeeping.purge_expired).
    db.execute("ALTER TABLE images ADD COLUMN aged_from TEXT")
