"""Export files are standard age v1 files (docs/spec/export.md), checked with the real `age` tool.

Both directions, through a pseudo-terminal as a person would type the passphrase (pexpect):
`age --passphrase` encrypts a JSON document this test wrote and `keyhold-server key import` reads
it; `keyhold-server key export` (asking its password twice on the terminal) writes a file that
`age --decrypt` opens, and the JSON inside holds exactly the keys that were imported.
"""
import base64
import json
import os
import shutil
import subprocess
import time
import uuid

import pexpect
import pytest

PASSWORD = "interop passphrase 7"


@pytest.fixture
def server(tmp_path, keyhold_bin):
    """A real keyhold-server on loopback ports, stopped afterwards."""
    binary = os.path.join(os.path.dirname(keyhold_bin), "keyhold-server")
    data = tmp_path / "server"
    subprocess.run(
        [binary, "init", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", "interop"],
        check=True, capture_output=True,
    )
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([binary, "run", "--data-dir", str(data)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 30
    while not (data / "runtime.json").exists():
        if time.time() > deadline or proc.poll() is not None:
            proc.kill()
            pytest.fail("keyhold-server did not start: " + (tmp_path / "server.log").read_text())
        time.sleep(0.1)
    yield binary, data
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


def admin(server, *args, password_file=None):
    binary, data = server
    extra = ["--password-file", str(password_file)] if password_file else []
    return subprocess.run([binary, *args, "--data-dir", str(data), *extra], capture_output=True, text=True)


def sample_document(n):
    keys = []
    for i in range(n):
        keys.append({
            "id": str(uuid.uuid4()), "kind": "file" if i % 2 else "drive",
            "origin_server_id": str(uuid.uuid4()), "origin_device_id": str(uuid.uuid4()),
            "created": "2026-11-01T10:00:%02dZ" % i, "label": "interop key %d \u00e9" % i, "state": "active",
            "blocked": i == 2, "secret": base64.b64encode(os.urandom(32)).decode(),
        })
    return {"format": "keyhold-key-export", "version": 1, "exported": "2026-11-01T10:01:00Z",
            "server": str(uuid.uuid4()), "keys": keys}


def age_encrypt(plain_path, out_path):
    child = pexpect.spawn("age", ["--passphrase", "-o", str(out_path), str(plain_path)], timeout=60, encoding="utf-8")
    child.expect("passphrase")
    child.sendline(PASSWORD)
    child.expect("passphrase")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before


def age_decrypt(path, out_path, password=PASSWORD):
    child = pexpect.spawn("age", ["--decrypt", "-o", str(out_path), str(path)], timeout=60, encoding="utf-8")
    child.expect("passphrase")
    child.sendline(password)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


@pytest.mark.skipif(shutil.which("age") is None, reason="never: make test installs age")
@pytest.mark.parametrize("indent", [None, 2])
def test_age_file_imports_and_export_opens_with_age(server, tmp_path, indent):
    doc = sample_document(5)
    plain = tmp_path / "doc.json"
    plain.write_text(json.dumps(doc, indent=indent))
    encrypted = tmp_path / "doc.age"
    age_encrypt(plain, encrypted)

    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    r = admin(server, "key", "import", str(encrypted), password_file=pw)
    assert r.returncode == 0, r.stderr
    assert "5 new, 0 already present" in r.stdout

    # Export through the terminal prompt (asked twice, no echo).
    binary, data = server
    out = tmp_path / "export.age"
    child = pexpect.spawn(binary, ["key", "export", "-o", str(out), "--all", "--data-dir", str(data)], timeout=120, encoding="utf-8")
    child.expect("Password for the export file: ")
    child.sendline(PASSWORD)
    child.expect("Repeat the password: ")
    child.sendline(PASSWORD)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert PASSWORD not in child.before, "the password was echoed"
    assert "Exported 5 keys" in child.before

    header = out.read_bytes()[:200].split(b"\n")
    assert header[0] == b"age-encryption.org/v1"
    stanza = header[1].split(b" ")
    assert stanza[:2] == [b"->", b"scrypt"] and int(stanza[3]) >= 18

    status, output = age_decrypt(out, tmp_path / "export.json")
    assert status == 0, output
    back = json.loads((tmp_path / "export.json").read_text())
    assert back["format"] == "keyhold-key-export" and back["version"] == 1
    assert back["count"] == 5
    fields = ("id", "kind", "origin_server_id", "origin_device_id", "created", "label", "state", "blocked", "secret")
    mine = sorted((tuple(k[f] for f in fields) for k in doc["keys"]))
    theirs = sorted((tuple(k[f] for f in fields) for k in back["keys"]))
    assert mine == theirs

    # age agrees that a wrong password does not open it.
    status, _ = age_decrypt(out, tmp_path / "wrong.json", password="not the password")
    assert status != 0


def test_export_password_mismatch_on_the_terminal_is_refused(server, tmp_path):
    binary, data = server
    out = tmp_path / "never.age"
    child = pexpect.spawn(binary, ["key", "export", "-o", str(out), "--all", "--data-dir", str(data)], timeout=60, encoding="utf-8")
    child.expect("Password for the export file: ")
    child.sendline(PASSWORD)
    child.expect("Repeat the password: ")
    child.sendline(PASSWORD + "x")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0
    assert "keyhold-server: error: the two passwords differ" in child.before
    assert "hint:" in child.before
    assert not out.exists()


def test_other_document_version_is_refused(server, tmp_path):
    doc = sample_document(1)
    doc["version"] = 2
    plain = tmp_path / "v2.json"
    plain.write_text(json.dumps(doc))
    encrypted = tmp_path / "v2.age"
    age_encrypt(plain, encrypted)
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD)
    r = admin(server, "key", "import", str(encrypted), password_file=pw)
    assert r.returncode != 0
    assert r.stderr.startswith("keyhold-server: error: the export document has version 2")
    assert "\nhint: " in r.stderr
    assert "0 keys" not in r.stdout
    status = admin(server, "status", "--json")
    assert json.loads(status.stdout)["key_count"] == 0
