"""Sign a model release for the hub (the publisher's side; the private key never goes to a hub).

    python -m tools.publish_model keygen --out publisher.key          # once; keep it offline
    python -m tools.publish_model sign models/us-lung --key publisher.key --out release/
    edge hub publish release/release.json

`sign` copies the model's files into --out with release.json: name, version, every file's sha256
and size, the manifest text, and an ed25519 signature over all of that. Devices pin the public
key (`[sync] public_key`, printed by keygen) and install only releases it verifies.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.inference.registry import read_manifest
from edge.sync import protocol, signatures


def keygen(out: Path) -> str:
    key = Ed25519PrivateKey.generate()
    out.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    out.chmod(0o600)
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return public.hex()


def sign_release(model_dir: Path, key: Ed25519PrivateKey, out: Path) -> protocol.ModelRelease:
    manifest = read_manifest(model_dir / "model.toml")
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file() and p.name != "model.toml"):
        relative = str(path.relative_to(model_dir))
        data = path.read_bytes()
        files[relative] = hashlib.sha256(data).hexdigest()
        sizes[relative] = len(data)
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, out / relative)
    unsigned = {
        "name": manifest.name,
        "version": manifest.version,
        "files": files,
        "sizes": sizes,
        "manifest": (model_dir / "model.toml").read_text(),
        "signature": "",
    }
    signature = signatures.sign(unsigned, key)
    release = protocol.ModelRelease(**{**unsigned, "signature": signature})
    (out / "release.json").write_text(json.dumps(release.model_dump(), indent=1))
    return release


def load_key(path: Path) -> Ed25519PrivateKey:
    try:
        return signatures.load_private_key(path)
    except ValueError as error:
        raise SystemExit(str(error)) from error


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("keygen")
    make.add_argument("--out", type=Path, required=True)
    sign = commands.add_parser("sign")
    sign.add_argument("model_dir", type=Path)
    sign.add_argument("--key", type=Path, required=True)
    sign.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "keygen":
        print(f"public key (pin it on devices as [sync] public_key): {keygen(args.out)}")
    else:
        release = sign_release(args.model_dir, load_key(args.key), args.out)
        target = args.out / "release.json"
        print(f"signed {release.name} {release.version}: {len(release.files)} files -> {target}")


if __name__ == "__main__":
    main()
