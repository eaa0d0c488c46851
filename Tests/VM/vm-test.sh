#!/usr/bin/env bash
# The drive hot-plug test in a QEMU guest with a real kernel, udev and systemd (make vm-test).
#   Tests/VM/vm-test.sh [BIN_DIR]     (default .build/debug; make test builds it first)
#
# On the host: servers T, S1, S2 with the hierarchy on (S1 and S2 under T); device D1 on S1 makes
# a USB stick image with `keyhold drive encrypt`; S1 pushes its keys to T. Device D2 is enrolled
# with S2 here, then its state moves into the guest. The guest boots Debian's kernel, installs
# Keyhold with `make install-files`, runs D2's agent under systemd and waits; the host plugs the
# stick (QMP). Expected: udev's rule starts keyhold-unlock@<dev>.service, the unit unlocks the
# stick through D2's agent (S2 -> T), /dev/mapper/keyhold-<uuid> appears; a file system and data
# go through it; unplug removes the mapping; between the plugs an administrator reveals the
# drive's key at S2 (`key reveal`); the second plug unlocks it again — re-keying it first, as a
# revealed key is marked for rotation — and the data reads back; the raw image holds no
# plaintext, the revealed key opens nothing, and S2's audit shows reveal, escrow and retire. Knobs: MEM (MiB, 1024), TIMEOUT (s, 600),
# KEYHOLD_VM_CACHE (where the kernel package is kept, .build/vm-cache).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
BIN=$(readlink -f "${1:-$ROOT/.build/debug}")
CACHE=${KEYHOLD_VM_CACHE:-$ROOT/.build/vm-cache}
MEM=${MEM:-1024}; TIMEOUT=${TIMEOUT:-600}
VC=$(mktemp -d /tmp/keyhold-vm-XXXXXX)
PIDS=()
say() { printf '==> %s\n' "$*"; }
cleanup() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ $rc -ne 0 ]; then
    echo "--- vm-test failed; guest console and diagnostics ---"
    sed 's/\x1b\[[0-9;]*m//g' "$VC/run/console.log" 2>/dev/null | tail -80 || true
    cat "$VC/out/diagnose.txt" 2>/dev/null | tail -80 || true
    for f in "$VC"/*.log; do [ -e "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done
  fi
  rm -rf "$VC"
  exit $rc
}
trap cleanup EXIT
for tool in qemu-system-x86_64 busybox depmod cryptsetup; do
  command -v "$tool" >/dev/null || { echo "keyhold: error: $tool is missing"; echo "hint: run scripts/install-deps.sh test"; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "keyhold: error: the VM test runs as root (it formats images and runs agents as root)"; echo "hint: run it with sudo"; exit 1; }

# ---------- 1. Debian's kernel, downloaded once into the cache ----------
mkdir -p "$CACHE" "$VC"/{run,out,build}
PKG=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
[ -n "$PKG" ] || { apt-get update -qq; PKG=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}'); }
DEB=$(compgen -G "$CACHE/${PKG}_*.deb" | head -1 || true)
if [ -z "$DEB" ]; then
  say "downloading $PKG (Debian's kernel for the guest)"
  (cd "$CACHE" && { apt-get download "$PKG" >/dev/null 2>&1 || { apt-get update -qq && apt-get download "$PKG" >/dev/null; }; })
  DEB=$(compgen -G "$CACHE/${PKG}_*.deb" | head -1)
fi
KVER=$(basename "$DEB" | sed -E 's/^linux-image-([^_]+)_.*/\1/')
KROOT=$CACHE/kern-$KVER
if [ ! -e "$KROOT/lib/modules/$KVER/modules.dep.bin" ]; then
  rm -rf "$KROOT"; dpkg-deb -x "$DEB" "$KROOT"; depmod -b "$KROOT" "$KVER"
fi
if [ ! -e "$KROOT/vmlinux" ]; then  # uncompressed ELF: QEMU boots it through PVH, seconds faster under TCG
  python3 - "$KROOT/boot/vmlinuz-$KVER" "$KROOT/vmlinux" <<'PY'
import lzma, sys
d = open(sys.argv[1], "rb").read(); i = d.find(b"\xfd7zXZ\x00")
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:]); assert out[:4] == b"\x7fELF"
open(sys.argv[2], "wb").write(out)
PY
fi

# ---------- 2. the hierarchy on the host, and the stick ----------
server() { # NAME
  local dir="$VC/$1"
  "$BIN/keyhold-server" init --data-dir "$dir" --listen 127.0.0.1:0 --enroll-listen 127.0.0.1:0 --use-hierarchy --name "$1" > /dev/null
  "$BIN/keyhold-server" run --data-dir "$dir" --hierarchy-heartbeat 3600 > "$VC/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 300); do [ -s "$dir/runtime.json" ] && return 0; sleep 0.1; done
  echo "server $1 did not start"; exit 1
}
admin() { local s=$1; shift; "$BIN/keyhold-server" "$@" --data-dir "$VC/$s"; }
agent() { # NAME -> starts an agent with state $VC/NAME-state and socket $VC/NAME.sock
  "$BIN/keyhold-agent" run --state-dir "$VC/$1-state" --socket "$VC/$1.sock" > "$VC/$1.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do [ -S "$VC/$1.sock" ] && return 0; sleep 0.1; done
  echo "agent $1 did not start"; exit 1
}
say "servers T, S1, S2 (hierarchy on), device D1 on S1, device D2 on S2"
for s in T S1 S2; do server $s; done
admin S1 primary join "$(admin T token create --role server)" > /dev/null
admin S2 primary join "$(admin T token create --role server)" > /dev/null
agent d1
KEYHOLD_SOCKET=$VC/d1.sock "$BIN/keyhold" enroll "$(admin S1 token create)" > /dev/null
agent d2
KEYHOLD_SOCKET=$VC/d2.sock "$BIN/keyhold" enroll "$(admin S2 token create)" > /dev/null
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true  # D2 runs in the guest from now on
truncate -s 64M "$VC/stick.img"
say "D1: keyhold drive encrypt stick.img"
KEYHOLD_SOCKET=$VC/d1.sock "$BIN/keyhold" drive encrypt "$VC/stick.img" | sed 's/^/    /'
# The mapping's name carries the UUID in lowercase, as cryptsetup writes UUIDs (whatever case the header has).
UUID=$("$BIN/keyhold" drive info "$VC/stick.img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mapping"].removeprefix("/dev/mapper/keyhold-"))')
case "$UUID" in *[A-Z]*) echo "FAIL: the mapping name keyhold-$UUID is not in lowercase"; exit 1 ;; esac
KEY=$("$BIN/keyhold" drive info "$VC/stick.img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["keyhold"]["key_id"])')
# The help desk's step between the two plugs (S2 holds the key once the first plug obtained it).
export KEYHOLD_VM_BEFORE_REPLUG="'$BIN/keyhold-server' key reveal $KEY --reason 'vm test: user locked out' --json --data-dir '$VC/S2' > '$VC/reveal.json'"
admin S1 hierarchy sync > /dev/null
PORT=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api"].rsplit(":",1)[1])' "$VC/S2/runtime.json")
D2_API=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_address"])' "$VC/d2-state/identity.json")
[ "$D2_API" = "127.0.0.1:$PORT" ] || { echo "D2 is enrolled with $D2_API, expected S2 at 127.0.0.1:$PORT"; exit 1; }

# ---------- 3. guest files and initramfs ----------
mkdir -p "$VC/guest"
for f in init stage2.sh drive-test.sh forward.py; do
  sed -e "s|@VC@|$VC|g" -e "s|@REPO@|$ROOT|g" -e "s|@BIN@|$BIN|g" -e "s|@PORT@|$PORT|g" -e "s|@UUID@|$UUID|g" \
    -e "s|@KEY@|$KEY|g" "$ROOT/Tests/VM/guest/$f" > "$VC/guest/$f"
done
chmod 755 "$VC"/guest/*
R=$VC/build/initramfs; mkdir -p "$R"/{bin,dev,proc,sys,mnt/lower,mnt/rw,newroot,mods}
cp "$(command -v busybox)" "$R/bin/busybox"; cp "$VC/guest/init" "$R/init"; : > "$R/mods/order"
for m in virtio_pci 9pnet_virtio 9p overlay; do modprobe -d "$KROOT" -S "$KVER" --show-depends "$m"; done \
  | awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' | while read -r p; do cp "$p" "$R/mods/"; basename "$p" >> "$R/mods/order"; done
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$VC/build/initramfs.gz"

# ---------- 4. boot, plug, unplug, plug ----------
say "booting Debian's kernel $KVER under QEMU (software emulation), systemd as PID 1"
python3 "$ROOT/Tests/VM/qemu-driver.py" "$VC" "$VC/stick.img" "$TIMEOUT" -- \
  qemu-system-x86_64 -accel tcg,tb-size=256 -M q35 -cpu max -smp 2 -m "$MEM" -nodefaults -display none -no-reboot \
  -serial "file:$VC/run/console.log" -qmp "unix:$VC/run/qmp.sock,server=on,wait=off" \
  -kernel "$KROOT/vmlinux" -initrd "$VC/build/initramfs.gz" \
  -append "console=ttyS0 quiet panic=-1 net.ifnames=0 cryptomgr.notests systemd.show_status=0" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$KROOT/lib/modules,mount_tag=modules,security_model=none,readonly=on" \
  -virtfs "local,path=$VC/out,mount_tag=outdir,security_model=none" \
  -device qemu-xhci,id=xhci \
  -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:$PORT-cmd:busybox nc 127.0.0.1 $PORT" \
  -device virtio-net-pci,netdev=n0 | tee "$VC/run/driver.log"
grep -a 'VMTEST' "$VC/run/console.log" | sed 's/\x1b\[[0-9;]*m//g; s/^/    guest: /'

# ---------- 5. verdict ----------
secret=$(cat "$VC/out/secret.txt" 2>/dev/null || true)
[ -n "$secret" ] || { echo "FAIL: the guest wrote no data"; exit 1; }
if grep -aqF "$secret" "$VC/stick.img"; then echo "FAIL: plaintext found in the raw image"; exit 1; fi
echo "PASS: plaintext absent from the raw image"
NEW=$("$BIN/keyhold" drive info "$VC/stick.img" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["keyhold"]["key_id"])')
[ "$NEW" != "$KEY" ] || { echo "FAIL: the second plug did not re-key the stick after the reveal"; exit 1; }
python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret_base64"])' "$VC/reveal.json" | base64 -d > "$VC/revealed.key"
if cryptsetup open --test-passphrase --key-file "$VC/revealed.key" "$VC/stick.img" 2>/dev/null; then
  echo "FAIL: the revealed key still opens the stick"; exit 1
fi
echo "PASS: the managed unlock re-keyed the stick: $KEY (revealed, opens nothing now) -> $NEW"
admin S2 audit --json | python3 -c '
import json, sys
key, new = sys.argv[1], sys.argv[2]
events = json.load(sys.stdin)
assert any(e["action"] == "obtain" and e.get("key_id") == key for e in events), "S2 did not obtain the key through the hierarchy"
assert any(e["action"] == "release" and e.get("key_id") == key and e["result"] == "ok" for e in events), "S2 did not release the key"
print("PASS: S2 obtained drive key", key, "through the hierarchy and released it to the guest agent (audit)")
for action, k in (("reveal", key), ("escrow", new), ("retire", key)):
    assert any(e["action"] == action and e.get("key_id") == k and e["result"] == "ok" for e in events), f"no {action} of {k} in S2 audit"
print("PASS: S2 audit shows reveal of", key, "escrow of", new, "and retire of", key)
' "$KEY" "$NEW"
grep -a -E 'plug to mapping' "$VC/run/driver.log"
echo "make vm-test: passed"
