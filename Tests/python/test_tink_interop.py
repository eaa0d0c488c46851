"""The Keyhold file body is byte-for-byte Tink's AES-256-GCM-HKDF streaming AEAD.

These tests use Tink for Python (an independent implementation) in both directions:
Tink decrypts what `keyhold file encrypt` wrote, and `keyhold file decrypt` decrypts bodies that
Tink wrote, each with the Keyhold header as associated data (docs/spec/file-format.md).
"""
import hashlib
import io
import json
import os
import pathlib
import struct
import subprocess
import uuid

import pytest
import tink
from tink import cleartext_keyset_handle, streaming_aead
from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

streaming_aead.register()

HEADER_LEN = 45
MAGIC = bytes([0x89, 0x4B, 0x48, 0x46, 0x0D, 0x0A, 0x1A, 0x0A])
VECTORS = pathlib.Path(__file__).resolve().parents[1] / "Vectors" / "file-format"


def tink_primitive(key: bytes, segment_size: int):
    params = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
        ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
    )
    key_proto = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(version=0, params=params, key_value=key)
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                    value=key_proto.SerializeToString(),
                    key_material_type=tink_pb2.KeyData.SYMMETRIC,
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    return cleartext_keyset_handle.from_keyset(keyset).primitive(streaming_aead.StreamingAead)


class _KeepOpen(io.BytesIO):
    """Tink closes its destination; keep the bytes readable afterwards."""

    def close(self):
        pass


def tink_encrypt(key: bytes, segment_size: int, plaintext: bytes, associated_data: bytes) -> bytes:
    out = _KeepOpen()
    with tink_primitive(key, segment_size).new_encrypting_stream(out, associated_data) as stream:
        stream.write(plaintext)
    return out.getvalue()


def tink_decrypt(key: bytes, segment_size: int, body: bytes, associated_data: bytes) -> bytes:
    with tink_primitive(key, segment_size).new_decrypting_stream(io.BytesIO(body), associated_data) as stream:
        return stream.read()


def keyhold_header(key_id: uuid.UUID, server_id: uuid.UUID, segment_size: int) -> bytes:
    return MAGIC + b"\x01" + key_id.bytes + server_id.bytes + struct.pack(">I", segment_size)


def sizes(segment_size: int):
    first, full = segment_size - 56, segment_size - 16
    return [0, 1, first - 1, first, first + 1, first + full - 1, first + full, first + full + 1, 3 * full + 12345]


CASES = [(s, n) for s in (1024, 4096, 1 << 20) for n in sizes(s)] + [(1 << 20, 5 * (1 << 20) + 7)]


@pytest.mark.parametrize("segment_size,size", CASES)
def test_tink_decrypts_keyhold_output(tmp_path, keyhold_bin, segment_size, size):
    key = os.urandom(32)
    key_id, server_id = uuid.uuid4(), uuid.uuid4()
    (tmp_path / "k").write_bytes(key)
    plaintext = os.urandom(size)
    (tmp_path / "p").write_bytes(plaintext)
    subprocess.run(
        [keyhold_bin, "file", "encrypt", "p", "-o", "c", "--key-file", "k", "--key-id", str(key_id),
         "--origin-server", str(server_id), "--segment-size", str(segment_size), "--quiet"],
        cwd=tmp_path, check=True,
    )
    data = (tmp_path / "c").read_bytes()
    header = data[:HEADER_LEN]
    assert header == keyhold_header(key_id, server_id, segment_size)
    assert tink_decrypt(key, segment_size, data[HEADER_LEN:], header) == plaintext

    info = json.loads(subprocess.run([keyhold_bin, "file", "info", "c", "--json"], cwd=tmp_path, check=True,
                                     capture_output=True).stdout)
    assert info["key_id"] == str(key_id)
    assert info["origin_server_id"] == str(server_id)
    assert info["segment_size"] == segment_size
    assert info["plaintext_length"] == size
    assert info["file_size"] == len(data)


@pytest.mark.parametrize("segment_size,size", CASES)
def test_keyhold_decrypts_tink_output(tmp_path, keyhold_bin, segment_size, size):
    key = os.urandom(32)
    header = keyhold_header(uuid.uuid4(), uuid.uuid4(), segment_size)
    plaintext = os.urandom(size)
    (tmp_path / "k").write_bytes(key)
    (tmp_path / "c").write_bytes(header + tink_encrypt(key, segment_size, plaintext, header))
    subprocess.run([keyhold_bin, "file", "decrypt", "c", "-o", "p", "--key-file", "k", "--quiet"], cwd=tmp_path, check=True)
    assert (tmp_path / "p").read_bytes() == plaintext


def test_tink_rejects_keyhold_output_with_another_header(tmp_path, keyhold_bin):
    """The header really is the associated data: Tink refuses the body under a changed header."""
    key = os.urandom(32)
    (tmp_path / "k").write_bytes(key)
    (tmp_path / "p").write_bytes(b"x" * 5000)
    subprocess.run([keyhold_bin, "file", "encrypt", "p", "-o", "c", "--key-file", "k", "--segment-size", "1024", "-q"],
                   cwd=tmp_path, check=True)
    data = (tmp_path / "c").read_bytes()
    changed = bytearray(data[:HEADER_LEN])
    changed[9] ^= 1
    with pytest.raises(tink.TinkError):
        tink_decrypt(key, 1024, data[HEADER_LEN:], bytes(changed))


def _vectors(expect):
    out = []
    for path in sorted(VECTORS.iterdir()):
        raw = path.read_bytes()
        preamble, body = raw.split(b"\n\n", 1)
        fields = dict(line.split(": ", 1) for line in preamble.decode().splitlines())
        if fields["expect"].startswith(expect):
            out.append(pytest.param(fields, body, id=path.name))
    return out


@pytest.mark.parametrize("fields,body", _vectors("success"))
def test_success_vectors_decrypt_with_tink(fields, body):
    """Cross-checks the vector generator: its valid files are valid for Tink too."""
    segment_size = struct.unpack(">I", body[41:45])[0]
    plaintext = tink_decrypt(bytes.fromhex(fields["key"]), segment_size, body[HEADER_LEN:], body[:HEADER_LEN])
    assert hashlib.sha256(plaintext).hexdigest() == fields["plaintext sha256"]


@pytest.mark.parametrize("fields,body", [p for p in _vectors("error authentication_failed")])
def test_authentication_vectors_against_tink(fields, body):
    """Every vector that keyhold rejects for authentication, Tink rejects too — except the ones marked
    `tink: stops after segment N`: Tink's C++ reader accepts a full segment sealed as last and ignores
    the bytes after it (docs/spec/file-format.md §5). For those, check that Tink indeed returns only
    the segments up to N, so the vector documents a real difference and not a broken file."""
    segment_size = struct.unpack(">I", body[41:45])[0]
    key = bytes.fromhex(fields["key"])
    if "tink" in fields:
        last = int(fields["tink"].rsplit(" ", 1)[1])
        released = tink_decrypt(key, segment_size, body[HEADER_LEN:], body[:HEADER_LEN])
        assert len(released) == (segment_size - 56) + last * (segment_size - 16)
        return
    with pytest.raises(tink.TinkError):
        tink_decrypt(key, segment_size, body[HEADER_LEN:], body[:HEADER_LEN])
