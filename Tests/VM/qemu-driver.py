"""Boots the guest and plays the person with the USB stick, through QEMU's QMP socket.

usage: qemu-driver.py VC IMAGE TIMEOUT -- QEMU-COMMAND...
Waits for the guest's console markers (guest/drive-test.sh): READY -> plug the stick;
UNPLUG-REQUEST -> unplug; REPLUG-REQUEST -> run $KEYHOLD_VM_BEFORE_REPLUG (a shell command, if
set: the administrator's step between the plugs), then plug again. Prints the time from each plug
to the guest's MAPPED line (the console is polled every 50 ms), and exits 0 only when the guest
said DONE rc=0 (and the command, if any, succeeded).
"""
import json
import os
import socket
import subprocess
import sys
import time

vc, image, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
cmd = sys.argv[sys.argv.index("--") + 1:]
console_path, qmp_path = f"{vc}/run/console.log", f"{vc}/run/qmp.sock"
t0 = time.time()
qemu = subprocess.Popen(cmd)


def stamp():
    return f"[host {time.time() - t0:6.1f}s]"


def console():
    return open(console_path, errors="replace").read() if os.path.exists(console_path) else ""


for _ in range(400):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(qmp_path)
        break
    except OSError:
        time.sleep(0.05)
f = s.makefile("rw")


def qmp(command, **arguments):
    f.write(json.dumps({"execute": command, "arguments": arguments}) + "\n")
    f.flush()
    while True:
        reply = json.loads(f.readline())
        if "return" in reply or "error" in reply:
            return reply


json.loads(f.readline())
qmp("qmp_capabilities")


def wait_for(word, after=0):
    while qemu.poll() is None and time.time() - t0 < timeout:
        text = console()
        if word in text[after:]:
            return text.index(word, after) + len(word)
        if "DONE rc=" in text[after:] and word != "DONE rc=":
            return None
        time.sleep(0.05)
    return None


def plug():
    # usb-storage leaves at once on device_del; retry briefly if QEMU still holds the old id.
    for _ in range(50):
        r = qmp("device_add", driver="usb-storage", id="stick", drive="stick0", bus="xhci.0", removable=True)
        if "error" not in r:
            break
        time.sleep(0.2)
    print(stamp(), "plugged the stick:", r, flush=True)
    return time.time()


ok = True
timings = []
position = wait_for("READY")
if position is None:
    ok = False
    print(stamp(), "the guest never became READY", flush=True)
else:
    print(stamp(), "guest READY", flush=True)
    qmp("blockdev-add", **{"node-name": "stick0", "driver": "raw", "file": {"driver": "file", "filename": image}})
    for round_name, mapped_word, next_word in (("first plug", "MAPPED /dev", "UNPLUG-REQUEST"), ("second plug", "MAPPED AGAIN", None)):
        plugged = plug()
        position = wait_for(mapped_word, position)
        if position is None:
            ok = False
            print(stamp(), f"{round_name}: the guest never reported the mapping", flush=True)
            break
        timings.append((round_name, time.time() - plugged))
        print(stamp(), f"{round_name}: plug -> /dev/mapper/keyhold-… active in {timings[-1][1]:.1f} s", flush=True)
        if next_word is None:
            break
        position = wait_for(next_word, position)
        if position is None:
            ok = False
            break
        print(stamp(), "unplugging:", qmp("device_del", id="stick"), flush=True)
        position = wait_for("REPLUG-REQUEST", position)
        if position is None:
            ok = False
            break
        between = os.environ.get("KEYHOLD_VM_BEFORE_REPLUG")
        if between:
            done = subprocess.run(between, shell=True)
            print(stamp(), "before the second plug:", between.split()[0].rsplit("/", 1)[-1], "... exit", done.returncode, flush=True)
            if done.returncode != 0:
                ok = False
if ok and position is not None:
    # The last round: unplug once more after the guest restarted its agent.
    position = wait_for("UNPLUG-AFTER-RESTART-REQUEST", position)
    if position is None:
        ok = False
    else:
        print(stamp(), "unplugging after the agent restart:", qmp("device_del", id="stick"), flush=True)
try:
    qemu.wait(timeout=max(1, timeout - (time.time() - t0)))
except subprocess.TimeoutExpired:
    print(stamp(), "TIMEOUT: stopping QEMU", flush=True)
    qemu.kill()
    qemu.wait()
print(stamp(), "QEMU exited", qemu.returncode, flush=True)
for name, seconds in timings:
    print(f"plug to mapping ({name}): {seconds:.1f} s")
sys.exit(0 if ok and "DONE rc=0" in console() else 1)
