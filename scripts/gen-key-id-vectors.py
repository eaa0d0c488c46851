#!/usr/bin/env python3
"""Writes Tests/Vectors/key-id/: secrets and the key ids derived from them (docs/spec/key-id.md).

Computed with the `cryptography` package's HKDF, independently of the Swift implementation, from
fixed seeds (running this again gives the same files). Never edit the vectors by hand: change
this script and run `make vectors`.
"""
import hashlib
import os
import uuid

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Vectors", "key-id")


def derive(secret: bytes) -> str:
    raw = HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=b"keyhold key id v1").derive(secret)
    return str(uuid.UUID(bytes=raw))


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    secrets = {
        "zeros": bytes(32),
        "ones": bytes([0xFF] * 32),
        "counting": bytes(range(32)),
    }
    for n in range(5):
        secrets[f"seeded-{n}"] = hashlib.sha256(f"keyhold-vectors/key-id/{n}".encode()).digest()
    for i, (name, secret) in enumerate(sorted(secrets.items())):
        with open(os.path.join(OUT, f"{i:02d}-{name}"), "w") as f:
            f.write(f"expect: success\nkey: {secret.hex()}\nid: {derive(secret)}\n\n")


if __name__ == "__main__":
    main()
