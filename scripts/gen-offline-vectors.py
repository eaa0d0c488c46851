#!/usr/bin/env python3
"""Writes Tests/Vectors/offline-access/: request and response codes (docs/spec/offline-access.md).

X25519, HKDF-SHA256 and AES-256-GCM from the `cryptography` package; base32 through the standard
library's RFC 4648 codec with Crockford's alphabet swapped in; the check characters by the Luhn
mod N algorithm written out here — all independently of the Swift implementation, from fixed
seeds (running this again gives the same files). Never edit the vectors by hand: change this
script and run `make vectors`.
"""
import base64
import hashlib
import os
import struct
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Vectors", "offline-access")
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
RFC4648 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def seeded(label: str, n: int = 32) -> bytes:
    return hashlib.sha256(f"keyhold-vectors/offline-access/{label}".encode()).digest()[:n]


def raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def luhn_check(values: list[int]) -> int:
    """Luhn mod 32: the check value for `values` (rightmost value doubled first)."""
    total = 0
    factor = 2
    for v in reversed(values):
        addend = factor * v
        total += addend // 32 + addend % 32
        factor = 1 if factor == 2 else 2
    return (32 - total % 32) % 32


def text(payload: bytes) -> str:
    encoded = base64.b32encode(payload).decode().rstrip("=")
    chars = encoded.translate(str.maketrans(RFC4648, CROCKFORD))
    # b32encode pads to whole 5-byte blocks; keep exactly ceil(bits / 5) characters.
    chars = chars[: (len(payload) * 8 + 4) // 5]
    groups = [chars[i : i + 5] for i in range(0, len(chars), 5)]
    out = []
    for index, group in enumerate(groups):
        check = luhn_check([index % 32] + [CROCKFORD.index(c) for c in group])
        out.append(group + CROCKFORD[check])
    return "-".join(out)


def request(key_id: bytes, device_id: bytes, request_id: bytes, private: X25519PrivateKey) -> bytes:
    return bytes([0x11]) + key_id + device_id + request_id + raw_public(private)


def response(req: bytes, secret: bytes, expiry: int, ephemeral: X25519PrivateKey, device_private_public: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(device_private_public))
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=hashlib.sha256(req).digest(), info=b"keyhold offline response v1").derive(shared)
    header = bytes([0x21]) + req[33:41] + struct.pack(">I", expiry) + raw_public(ephemeral)
    sealed = AESGCM(key).encrypt(bytes(12), secret, header)
    return header + sealed


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    for name in os.listdir(OUT):
        os.remove(os.path.join(OUT, name))
    for n in range(4):
        device_private = X25519PrivateKey.from_private_bytes(seeded(f"{n}/device-private"))
        server_private = X25519PrivateKey.from_private_bytes(seeded(f"{n}/response-private"))
        key_id, device_id, request_id = seeded(f"{n}/key-id", 16), seeded(f"{n}/device-id", 16), seeded(f"{n}/request-id", 8)
        secret = seeded(f"{n}/secret")
        expiry = 1_800_000_000 + n * 3600
        req = request(key_id, device_id, request_id, device_private)
        resp = response(req, secret, expiry, server_private, raw_public(device_private))
        with open(os.path.join(OUT, f"{n:02d}-exchange"), "w") as f:
            f.write(
                "expect: success\n"
                f"key_id: {uuid.UUID(bytes=key_id)}\n"
                f"device_id: {uuid.UUID(bytes=device_id)}\n"
                f"request_id: {request_id.hex()}\n"
                f"device_private: {seeded(f'{n}/device-private').hex()}\n"
                f"response_private: {seeded(f'{n}/response-private').hex()}\n"
                f"secret: {secret.hex()}\n"
                f"expiry: {expiry}\n"
                f"request: {req.hex()}\n"
                f"request_code: {text(req)}\n"
                f"response: {resp.hex()}\n"
                f"response_code: {text(resp)}\n\n"
            )
    # Codes with one character changed: the group that holds it is reported.
    device_private = X25519PrivateKey.from_private_bytes(seeded("typo/device-private"))
    req = request(seeded("typo/key-id", 16), seeded("typo/device-id", 16), seeded("typo/request-id", 8), device_private)
    good = text(req)
    for n, position in enumerate([0, 8, 40, len(good) - 1]):
        c = good[position]
        wrong = CROCKFORD[(CROCKFORD.index(c) + 1 + n) % 32]
        bad = good[:position] + wrong + good[position + 1 :]
        group = bad[:position].count("-") + 1
        with open(os.path.join(OUT, f"{10 + n:02d}-typo"), "w") as f:
            f.write(f"expect: error invalid_code\ngroup: {group}\ncode: {bad}\nfixed: {good}\n\n")
    # Two neighbouring groups swapped: a check fails at the first of them.
    groups = good.split("-")
    groups[3], groups[4] = groups[4], groups[3]
    with open(os.path.join(OUT, "20-swapped-groups"), "w") as f:
        f.write(f"expect: error invalid_code\ngroup: 4\ncode: {'-'.join(groups)}\nfixed: {good}\n\n")


if __name__ == "__main__":
    main()
