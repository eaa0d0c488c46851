#!/usr/bin/env bash
# File encryption benchmark: keyhold against openssl enc, age and gpg, side by side in one run.
#   Benchmarks/file-bench.sh PATH/TO/keyhold [SIZE_MIB]      (make bench; default 1024 MiB)
# Works on tmpfs (/dev/shm) so the disk does not dominate. Each tool encrypts and decrypts the same
# random file REPS times; the table shows the median wall time, the largest peak RSS, and how
# keyhold compares. Every decryption is checked against the input, so a fast wrong answer fails.
set -euo pipefail
KEYHOLD=${1:?usage: $0 PATH/TO/keyhold [SIZE_MIB]}
KEYHOLD=$(readlink -f "$KEYHOLD")
SIZE_MIB=${2:-1024}
REPS=${REPS:-3}
BASE=${BENCH_DIR:-/dev/shm}
need=$(( SIZE_MIB * 3 + 64 ))
avail=$(( $(df --output=avail -k "$BASE" | tail -1) / 1024 ))
if [ "$avail" -lt "$need" ]; then
  echo "keyhold: error: $BASE has ${avail} MiB free; the benchmark needs ${need} MiB" >&2
  echo "hint: free space there, set BENCH_DIR to a tmpfs with room, or pass a smaller SIZE_MIB" >&2
  exit 1
fi
W=$(mktemp -d "$BASE/keyhold-bench-XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"

echo "== setup: ${SIZE_MIB} MiB of random input on $(df --output=fstype "$BASE" | tail -1) ($BASE), $REPS runs each"
head -c $(( SIZE_MIB * 1024 * 1024 )) /dev/urandom > in
"$KEYHOLD" key new -o key.json >/dev/null
KEYHEX=$(openssl rand -hex 32); IVHEX=$(openssl rand -hex 16)
age-keygen -o age.key 2>/dev/null; AGE_RECIPIENT=$(age-keygen -y age.key)
export GNUPGHOME="$W/gnupg"; mkdir -m 700 "$GNUPGHOME"; openssl rand -hex 16 > gpg.pass
GPG=(gpg --batch --quiet --pinentry-mode loopback --passphrase-file gpg.pass)

# measure NAME OP command… : appends "NAME OP seconds peak_kib" to results
measure() {
  local name=$1 op=$2; shift 2
  rm -f out.tmp
  /usr/bin/time -f "%e %M" -o t.txt "$@" >/dev/null 2>err.txt || { echo "FAILED: $name $op"; cat err.txt; exit 1; }
  echo "$name $op $(cat t.txt)" >> results
}
check() { cmp -s in dec || { echo "FAILED: $1 decrypted output differs from the input"; exit 1; }; rm -f dec; }

: > results
for rep in $(seq "$REPS"); do
  # The floor: copying the bytes with no cryptography at all (read + write on the same file system).
  measure cat encrypt sh -c 'cat in > enc'
  measure cat decrypt sh -c 'cat enc > dec'
  check cat; rm -f enc
  measure keyhold encrypt "$KEYHOLD" file encrypt in -o enc --key-file key.json --quiet --force
  measure keyhold decrypt "$KEYHOLD" file decrypt enc -o dec --key-file key.json --quiet
  check keyhold; rm -f enc
  measure openssl encrypt openssl enc -aes-256-ctr -K "$KEYHEX" -iv "$IVHEX" -in in -out enc
  measure openssl decrypt openssl enc -d -aes-256-ctr -K "$KEYHEX" -iv "$IVHEX" -in enc -out dec
  check openssl; rm -f enc
  measure age encrypt age -r "$AGE_RECIPIENT" -o enc in
  measure age decrypt age -d -i age.key -o dec enc
  check age; rm -f enc
  measure gpg encrypt "${GPG[@]}" --symmetric --cipher-algo AES256 --compress-algo none -o enc in
  measure gpg decrypt "${GPG[@]}" --decrypt -o dec enc
  check gpg; rm -f enc
done

python3 - "$SIZE_MIB" results <<'PY'
import statistics, sys
size_mib, path = int(sys.argv[1]), sys.argv[2]
runs = {}
for line in open(path):
    name, op, secs, kib = line.split()
    runs.setdefault((name, op), []).append((float(secs), int(kib)))
med = {k: statistics.median(s for s, _ in v) for k, v in runs.items()}
peak = {k: max(m for _, m in v) / 1024 for k, v in runs.items()}
tools = ["cat", "keyhold", "openssl", "age", "gpg"]
print(f"\n{'tool':<9}{'op':<9}{'wall s':>8}{'MiB/s':>9}{'peak MiB':>10}{'tool/keyhold':>14}")
for op in ("encrypt", "decrypt"):
    for t in tools:
        k = (t, op)
        ratio = med[k] / med[("keyhold", op)]
        print(f"{t:<9}{op:<9}{med[k]:>8.2f}{size_mib / max(med[k], 1e-9):>9.0f}{peak[k]:>10.1f}{ratio:>13.2f}x")
print("\n'cat' is the floor: the same bytes copied with no cryptography.")
print("targets (keyhold, medians):")
for op in ("encrypt", "decrypt"):
    vs_openssl = med[("keyhold", op)] / med[("openssl", op)]
    vs_age = med[("age", op)] / med[("keyhold", op)]
    print(f"  {op}: {vs_openssl:.2f}x openssl's time (target <= 1.25: {'met' if vs_openssl <= 1.25 else 'MISSED'}); "
          f"{vs_age:.2f}x faster than age (target >= 2: {'met' if vs_age >= 2 else 'MISSED'}); "
          f"peak {peak[('keyhold', op)]:.1f} MiB (target < 64: {'met' if peak[('keyhold', op)] < 64 else 'MISSED'})")
PY
