#!/usr/bin/env python3
"""Writes Tests/Vectors/file-format/: one Keyhold file per case with its expected outcome.

The files are built from docs/spec/file-format.md with the `cryptography` package (AES-GCM, HKDF),
independently of the Swift implementation; Tests/python/test_tink_interop.py checks that every
"success" vector also decrypts with Tink. Everything is derived from fixed seeds, so running this
again gives the same bytes. Never edit the vectors by hand: change this script and run `make vectors`.
"""
import hashlib
import os
import struct
import sys

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC = bytes([0x89, 0x4B, 0x48, 0x46, 0x0D, 0x0A, 0x1A, 0x0A])
TINK_HEADER_LEN = 40
TAG = 16
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Vectors", "file-format")


def seeded(label: str, n: int) -> bytes:
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"keyhold-vectors/{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


KEY = seeded("key", 32)
OTHER_KEY = seeded("other-key", 32)
KEY_ID = seeded("key-id", 16)
SERVER_ID = seeded("server-id", 16)
S = 1024
FIRST = S - TINK_HEADER_LEN - TAG  # plaintext bytes in segment 0
FULL = S - TAG                     # plaintext bytes in later segments


def keyhold_header(version=1, key_id=KEY_ID, server_id=SERVER_ID, seg=S, magic=MAGIC) -> bytes:
    return magic + bytes([version]) + key_id + server_id + struct.pack(">I", seg)


def split(plaintext: bytes, seg=S):
    """Cuts plaintext into segments the way a writer must (no empty trailing segment)."""
    first, full = seg - TINK_HEADER_LEN - TAG, seg - TAG
    parts = [plaintext[:first]]
    rest = plaintext[first:]
    while rest:
        parts.append(rest[:full])
        rest = rest[full:]
    return parts


def encrypt(plaintext: bytes, *, key=KEY, header=None, seg=S, label="file", parts=None, last_flags=None):
    header = keyhold_header(seg=seg) if header is None else header
    salt = seeded(label + "/salt", 32)
    prefix = seeded(label + "/prefix", 7)
    dk = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=header).derive(key)
    aead = AESGCM(dk)
    parts = split(plaintext, seg) if parts is None else parts
    body = b""
    segments = []
    for i, p in enumerate(parts):
        last = (i == len(parts) - 1) if last_flags is None else last_flags[i]
        nonce = prefix + struct.pack(">I", i) + bytes([1 if last else 0])
        segments.append(aead.encrypt(nonce, p, None))
    tink = bytes([TINK_HEADER_LEN]) + salt + prefix
    return header, tink, segments


def join(header, tink, segments):
    return header + tink + b"".join(segments)


def flip(data: bytes, index: int, bit=0) -> bytes:
    b = bytearray(data)
    b[index] ^= 1 << bit
    return bytes(b)


def write(name, data, expect, comment, plaintext=None, key=KEY, tink=None):
    lines = [f"expect: {expect}", f"key: {key.hex()}"]
    if tink is not None:
        lines.append(f"tink: {tink}")
    if plaintext is not None:
        lines.append(f"plaintext sha256: {hashlib.sha256(plaintext).hexdigest()}")
        lines.append(f"plaintext length: {len(plaintext)}")
    lines.append(f"comment: {comment}")
    # `tink: stops after segment N` marks inputs where Tink's C++ reader (used by Tink for Python)
    # accepts a full segment sealed as last and ignores what follows; Keyhold rejects them.
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(("\n".join(lines) + "\n\n").encode() + data)


def main():
    os.makedirs(OUT, exist_ok=True)
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))

    # --- valid files -------------------------------------------------------------------------
    ok = {
        "empty": b"",
        "one_byte": b"\x42",
        "first_segment_minus_one": seeded("pt-a", FIRST - 1),
        "first_segment_exact": seeded("pt-b", FIRST),
        "first_segment_plus_one": seeded("pt-c", FIRST + 1),
        "two_segments_exact": seeded("pt-d", FIRST + FULL),
        "four_segments": seeded("pt-e", FIRST + 2 * FULL + 500),
    }
    for name, pt in ok.items():
        write(f"ok_{name}", join(*encrypt(pt, label=name)), "success", f"valid file, {len(pt)} plaintext bytes", pt)

    pt = seeded("pt-trailing", FIRST + FULL)
    h, t, segs = encrypt(pt, label="trailing", parts=[pt[:FIRST], pt[FIRST:], b""])
    write("ok_trailing_empty_segment", join(h, t, segs), "success",
          "non-canonical but authentic: full segments then an empty last one (Tink's reader accepts it)", pt)

    pt = seeded("pt-big-seg", 5000)
    h = keyhold_header(seg=4096)
    write("ok_segment_size_4096", join(*encrypt(pt, header=h, seg=4096, label="seg4096")), "success",
          "valid file with a 4096-byte segment size", pt)

    # --- the reference file every damage case starts from: 4 segments (0, 1, 2 full; 3 holds 500 bytes)
    base_pt = ok["four_segments"]
    header, tink, segs = encrypt(base_pt, label="four_segments")
    base = join(header, tink, segs)
    H, T = len(header), len(tink)
    seg_start = [H + T + sum(len(s) for s in segs[:i]) for i in range(len(segs))]
    assert len(segs) == 4 and len(segs[3]) == 516

    def err(code, segment=None):
        return f"error {code}" + (f" segment {segment}" if segment is not None else "")

    write("header_bad_magic", flip(base, 0), err("not_keyhold_file"), "first magic byte changed")
    write("header_magic_line_endings", base[:4] + b"\r\r\n" + base[7:], err("not_keyhold_file"), "CR LF converted")
    write("header_version_2", keyhold_header(version=2) + base[H:], err("unsupported_version"), "version byte is 2")
    write("header_version_0", keyhold_header(version=0) + base[H:], err("unsupported_version"), "version byte is 0")
    write("header_flip_key_id", flip(base, 9 + 15), err("authentication_failed", 0), "a bit of the key id changed")
    write("header_flip_origin_server", flip(base, 25), err("authentication_failed", 0), "a bit of the origin server id changed")
    write("header_segment_size_too_small", keyhold_header(seg=512) + base[H:], err("invalid_header"), "segment size 512 < 1024")
    write("header_segment_size_too_large", keyhold_header(seg=(8 << 20) + 1) + base[H:], err("invalid_header"), "segment size > 8 MiB")
    write("header_segment_size_changed", keyhold_header(seg=2048) + base[H:], err("authentication_failed", 0),
          "segment size changed within range: the header no longer matches the derived key")
    write("tink_header_length_byte", base[:H] + b"\x29" + base[H + 1:], err("invalid_header"), "Tink header length 41")
    write("tink_flip_salt", flip(base, H + 5), err("authentication_failed", 0), "a bit of the salt changed")
    write("tink_flip_nonce_prefix", flip(base, H + 35), err("authentication_failed", 0), "a bit of the nonce prefix changed")

    write("flip_first_segment", flip(base, seg_start[0] + 3), err("authentication_failed", 0), "bit flipped in segment 0")
    write("flip_middle_segment", flip(base, seg_start[1] + 500, 7), err("authentication_failed", 1), "bit flipped in segment 1")
    write("flip_last_segment", flip(base, seg_start[3] + 10), err("authentication_failed", 3), "bit flipped in the last segment")
    write("flip_first_tag", flip(base, seg_start[1] - 1), err("authentication_failed", 0), "bit flipped in segment 0's tag")
    write("flip_last_tag", flip(base, len(base) - 1), err("authentication_failed", 3), "bit flipped in the last tag")

    write("truncate_empty", b"", err("truncated"), "empty file")
    write("truncate_in_magic", base[:5], err("truncated"), "5 bytes: a prefix of the magic")
    write("truncate_in_header", base[:30], err("truncated"), "ends inside the Keyhold header")
    write("truncate_in_tink_header", base[:H + 20], err("truncated"), "ends inside the Tink header")
    write("truncate_after_headers", base[:H + T], err("truncated"), "headers only, no segment")
    write("truncate_at_boundary_1", base[:seg_start[1]], err("authentication_failed", 0),
          "only segment 0: it fails as the last segment")
    write("truncate_at_boundary_3", base[:seg_start[3]], err("authentication_failed", 2),
          "last segment dropped: segment 2 fails as the last segment")
    write("truncate_inside_segment_1", base[:seg_start[1] + 400], err("authentication_failed", 1), "cut inside segment 1")
    write("truncate_inside_last_segment", base[:len(base) - 100], err("authentication_failed", 3), "cut inside the last segment")
    write("truncate_short_tail", base[:seg_start[3] + 10], err("truncated"), "the last segment is 10 bytes: shorter than a tag")

    write("append_one_byte", base + b"\x00", err("authentication_failed", 3), "one byte appended")
    write("append_segment", base + segs[1], err("authentication_failed", 3), "a copy of segment 1 appended")
    h2, t2, segs2 = encrypt(ok["two_segments_exact"], label="two_segments_exact")
    write("append_empty_tag", join(h2, t2, segs2) + b"\x00" * 16, err("authentication_failed", 1),
          "16 bytes appended after a full last segment: the real last segment fails as non-last",
          tink="stops after segment 1")
    swapped = segs[:1] + [segs[2], segs[1]] + segs[3:]
    write("swap_segments_1_2", join(header, tink, swapped), err("authentication_failed", 1), "segments 1 and 2 swapped")
    write("duplicate_segment_1", join(header, tink, segs[:2] + [segs[1]] + segs[3:]), err("authentication_failed", 2),
          "segment 1 repeated in place of segment 2")
    h3, t3, segs3 = encrypt(base_pt, label="no-last-flag", last_flags=[False] * 4)
    write("last_flag_missing", join(h3, t3, segs3), err("authentication_failed", 3), "the last segment was sealed as non-last")
    h4, t4, segs4 = encrypt(base_pt, label="early-last", last_flags=[True, False, False, True])
    write("last_flag_early", join(h4, t4, segs4), err("authentication_failed", 0), "segment 0 was sealed as last",
          tink="stops after segment 0")
    write("wrong_key", join(*encrypt(base_pt, key=OTHER_KEY, label="wrong-key")), err("authentication_failed", 0),
          "encrypted with another key than the vector's")
    write("not_keyhold_text", b"hello, this is plain text and not a Keyhold file\n", err("not_keyhold_file"), "a text file")
    print(f"wrote {len(os.listdir(OUT))} vectors to {os.path.relpath(OUT)}")


if __name__ == "__main__":
    sys.exit(main())
