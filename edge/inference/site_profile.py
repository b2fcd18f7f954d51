"""A site profile: a site's own temperature and operating-point thresholds for one model
version, refitted on that site's labelled cases (never an edit of the shipped model).

(A minimal copy of the schema for the hub's profiles; the device-side module that applies
profiles replaces it with the same fields.)
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.compat import tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProfilePoint(_Strict):
    threshold: float = Field(ge=0.0, le=1.0)
    description: str
    sensitivity: float
    specificity: float
    sensitivity_ci95: tuple[float, float]
    specificity_ci95: tuple[float, float]


class SiteProfile(_Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=r"^[A-Za-z0-9._-]+$")  # model-version-site-<UTC stamp>: unique, sortable
    model: str
    model_version: str
    created_at: str
    source: Literal["data", "reviews", "hub"]
    description: str  # no patient data
    temperature: float = Field(gt=0.0)
    cases: int = Field(ge=0)
    cases_per_class: dict[str, int]
    operating_points: dict[str, ProfilePoint]
    before: dict[str, Any]  # per operating point: accuracy, sensitivity, specificity; and auc
    after: dict[str, Any]


def parse_profile(text: str) -> SiteProfile:
    """A profile from its TOML text (tomllib and pydantic errors propagate)."""
    return SiteProfile.model_validate(tomllib.loads(text))


def profile_toml(profile: SiteProfile) -> str:
    import tomli_w

    return tomli_w.dumps(profile.model_dump(mode="json"))
