"""The device store (SQLite via sqlite-utils) and the image files it owns."""

from edge.store.records import (
    NOT_ANALYSED,
    IngestOutcome,
    Job,
    NewImage,
    ResultRecord,
    StoredResult,
    WorklistItem,
)
from edge.store.store import Store, open_database

__all__ = [
    "NOT_ANALYSED",
    "IngestOutcome",
    "Job",
    "NewImage",
    "ResultRecord",
    "Store",
    "StoredResult",
    "WorklistItem",
    "open_database",
]
