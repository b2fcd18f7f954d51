"""The one ed25519 signature scheme of everything the publisher signs for devices: model
releases and site profiles. A document is a dict with a "signature" field; the signature is over
`protocol.release_to_sign(document)` (its canonical JSON without that field).

The private key never goes to a hub: `sign` runs where the key is (tools/publish_model.py,
`edge hub profile sign|publish --key`); devices pin the public key (`[sync] public_key`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.sync import protocol


def sign(document: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """The hex signature of `document` (its "signature" field, if any, is not signed)."""
    return key.sign(protocol.release_to_sign(document)).hex()


def verify(document: dict[str, Any], public_key_hex: str) -> bool:
    """Whether `document["signature"]` is the pinned key's signature of the rest of it."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(str(document.get("signature", ""))), protocol.release_to_sign(document))
    except (InvalidSignature, ValueError):
        return False
    return True


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an ed25519 private key")
    return key
