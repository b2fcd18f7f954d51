"""Which file names a model release may carry: relative paths in the shipped layout
(`samples/sample-01.png`, `plots/roc.png`), normalised, of plain characters. The hub checks them
when it publishes and serves a release, the device before it writes a downloaded file, so a name
can neither leave the release's folder nor mean two files (`a//b`, `./a`, `a/../a`).
"""

from __future__ import annotations

import re

_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")  # no leading dot: no ".", "..", hidden files
MAX_DEPTH = 4
MAX_LENGTH = 255


def release_path_problem(name: str) -> str | None:
    """None when `name` is a safe relative path for a release file; else why it is not."""
    if not name or len(name) > MAX_LENGTH:
        return f"a release file name is 1 to {MAX_LENGTH} characters"
    if name.startswith("/"):
        return f"{name!r} is an absolute path"
    parts = name.split("/")
    if len(parts) > MAX_DEPTH:
        return f"{name!r} is more than {MAX_DEPTH} folders deep"
    bad = next((part for part in parts if not _PART.match(part)), None)
    if bad is not None:
        shown = bad or "an empty part"
        return f"{name!r}: {shown!r} is not a plain file or folder name (letters, digits, '.', '_', '-')"
    return None
