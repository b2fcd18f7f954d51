"""Body Part Examined as a code, and whether the part is paired: PS3.16 Table L-1, read from the
copy highdicom ships (`_standard/anatomic_regions.json`, kept with the standard by its authors;
the pairing is theirs, not the standard's). A newer highdicom without that table makes every
answer None, which its callers take as "not known"."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Region:
    scheme: str  # SCT
    code: str
    meaning: str
    paired: bool


@cache
def _regions() -> dict[str, Region]:
    try:
        from highdicom._standard_utils import get_anatomic_region_map
    except ImportError:  # pragma: no cover - a highdicom that moved its table
        return {}
    return {
        part: Region(str(concept.scheme_designator), str(concept.value), str(concept.meaning), bool(paired))
        for part, (concept, paired) in get_anatomic_region_map().items()
    }


def region(body_part: object) -> Region | None:
    """The region a Body Part Examined value names; None when it names none."""
    return _regions().get(str(body_part or "").strip().upper())
