"""The device store (SQLite via sqlite-utils) and the image files it owns."""

from edge.store.database import open_database
from edge.store.records import (
    NOT_ANALYSED,
    IngestOutcome,
    Job,
    NewImage,
    ResultRecord,
    StoredResult,
    WorklistItem,
)
from edge.store.store import Corrections, Store

__all__ = [
    "NOT_ANALYSED",
    "Corrections",
    "IngestOutcome",
    "Job",
    "NewImage",
    "ResultRecord",
    "Store",
    "StoredResult",
    "WorklistItem",
    "open_database",
]
