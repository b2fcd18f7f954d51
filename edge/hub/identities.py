"""Who acts on the hub: an enrolled `Device` (the API under /v1) and a `User` (the review pages).

The lowest of the hub's modules: it imports none of them, so every one of them can name these.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("specialist", "administrator")
ALL_PROGRAMMES = "*"


@dataclass(frozen=True)
class Device:
    id: str
    name: str
    site: str
    programme: str


@dataclass(frozen=True)
class User:
    id: str
    name: str
    role: str
    programmes: tuple[str, ...]

    @property
    def is_admin(self) -> bool:
        return self.role == "administrator"

    @property
    def sees_all(self) -> bool:
        """Administrators, and readers bound to every programme, see every device's results."""
        return self.is_admin or ALL_PROGRAMMES in self.programmes
