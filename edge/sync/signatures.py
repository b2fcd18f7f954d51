"""The ed25519 signatures of the sync link, in one place.

What the publisher signs for devices (model releases and site profiles): a document is a dict
with a "signature" field; the signature is over `protocol.release_to_sign(document)` (its
canonical JSON without that field). The private key never goes to a hub: `sign` runs where the
key is (tools/publish_model.py, `edge hub profile sign|publish --key`); devices pin the public key
(`[sync] public_key`).

What a device signs (its identity): each request and its enrolment, with the key pair made at
enrolment (`new_device_key`, kept owner-only by `save_private_key`); the hub holds only the
public half and checks with `verify_bytes`.
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


def verify_bytes(public_key_hex: str, message: bytes, signature_hex: str) -> bool:
    """Whether `signature_hex` is the key's signature of `message` (any malformed part: False)."""
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        return False
    return True


def new_device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def public_hex(key: Ed25519PrivateKey) -> str:
    """The raw public key, hex: what the hub stores and checks requests against."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the device's services read it unattended (the file is 0600)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an ed25519 private key")
    return key
