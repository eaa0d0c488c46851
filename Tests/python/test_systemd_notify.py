"""Both daemons speak systemd's notify protocol (sd_notify(3)) through libsystemd.

The test plays systemd's side of it: it binds the datagram socket systemd would pass in
NOTIFY_SOCKET, asks for a watchdog with WATCHDOG_USEC and WATCHDOG_PID as a Type=notify unit with
WatchdogSec= does, and reads what arrives: READY=1 only once the daemon serves (the server's
runtime.json exists, the agent's socket answers), WATCHDOG=1 pings at least every half interval,
RELOADING=1 and READY=1 around a SIGHUP, STOPPING=1 on SIGTERM. (The VM test runs the same units
under a real systemd: keyhold-agent.service there is Type=notify with WatchdogSec=.)
"""
import os
import signal
import socket
import subprocess
import time

import pytest

WATCHDOG_USEC = 400_000


class Systemd:
    """The receiving end of NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages = []

    def env(self):
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = self.path
        env["WATCHDOG_USEC"] = str(WATCHDOG_USEC)
        return env

    def wait_for(self, field, timeout=60.0):
        """Reads datagrams until one holds the line `field`; returns the arrival time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096).decode()
            except socket.timeout:
                break
            now = time.monotonic()
            self.messages.append((now, data))
            if field in data.split("\n"):
                return now
        pytest.fail(f"no {field} within {timeout} s; got {[m for _, m in self.messages]}")


def start(argv, systemd, log_path):
    """Starts a daemon with WATCHDOG_PID naming it, as systemd sets it for the main process."""
    log = open(log_path, "wb")
    env = systemd.env()
    # WATCHDOG_PID must be the daemon's own pid: set in the child between fork and exec.
    return subprocess.Popen(
        ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"] + argv, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def check_protocol(proc, systemd, ready_check):
    systemd.wait_for("READY=1")
    assert ready_check(), "READY=1 came before the daemon served"
    assert any(line.startswith("STATUS=") for _, m in systemd.messages for line in m.split("\n"))
    # Pings: at least three, never further apart than half the interval plus scheduling slack.
    pings = []
    while len(pings) < 4:
        pings.append(systemd.wait_for("WATCHDOG=1", timeout=5))
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert max(gaps) < WATCHDOG_USEC / 1e6, f"watchdog pings {gaps} s apart, interval {WATCHDOG_USEC / 1e6} s"
    proc.send_signal(signal.SIGHUP)
    systemd.wait_for("RELOADING=1", timeout=10)
    systemd.wait_for("READY=1", timeout=10)
    proc.send_signal(signal.SIGTERM)
    systemd.wait_for("STOPPING=1", timeout=20)
    assert proc.wait(timeout=30) == 0


def test_server_notifies_ready_pings_the_watchdog_and_says_stopping(tmp_path, keyhold_bin):
    binary = os.path.join(os.path.dirname(keyhold_bin), "keyhold-server")
    data = tmp_path / "server"
    subprocess.run(
        [binary, "init", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--enroll-listen", "127.0.0.1:0", "--name", "notify"],
        check=True, capture_output=True,
    )
    systemd = Systemd(tmp_path / "notify.sock")
    proc = start([binary, "run", "--data-dir", str(data)], systemd, tmp_path / "server.log")
    try:
        check_protocol(proc, systemd, lambda: (data / "runtime.json").exists())
    finally:
        if proc.poll() is None:
            proc.kill()
        print((tmp_path / "server.log").read_text())


def test_agent_notifies_ready_once_its_socket_answers(tmp_path, keyhold_bin):
    agent = os.path.join(os.path.dirname(keyhold_bin), "keyhold-agent")
    state = tmp_path / "state"
    sock = tmp_path / "agent.sock"
    systemd = Systemd(tmp_path / "notify.sock")
    proc = start([agent, "run", "--state-dir", str(state), "--socket", str(sock)], systemd, tmp_path / "agent.log")

    def answers():
        r = subprocess.run([keyhold_bin, "status", "--socket", str(sock)], capture_output=True, text=True)
        return r.returncode == 0 and "enrolled:        no" in r.stdout

    try:
        check_protocol(proc, systemd, answers)
    finally:
        if proc.poll() is None:
            proc.kill()
        print((tmp_path / "agent.log").read_text())
