"""`HubError`: a refusal of the hub's logic, with its HTTP status, its wire code and a sentence.

The codes are `edge.sync.protocol.WireCode` (one enum for the hub and the device, documented in
docs/codes.md); the device API answers each as the JSON body `protocol.Refusal`.
"""

from __future__ import annotations

from edge.sync.protocol import WireCode


class HubError(Exception):
    """A refusal with its HTTP status, its wire code and a sentence (the API returns all three)."""

    def __init__(self, status: int, code: WireCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.status, self.code, self.message = status, code, message
