#!/usr/bin/env bash
# Export/import benchmark: KEYS keys exported from one server into an age file and imported into
# another, on SQLite and PostgreSQL: wall time and peak memory of the server and of the CLI. The
# reference in the same run is the real `age` decrypting the same file (through a pty: age reads
# passphrases only from a terminal), i.e. the cost of the file format alone.
#   Benchmarks/transfer-bench.sh BIN_DIR      (run inside scripts/test-postgres.sh; make bench does)
# Knobs: KEYS (1000000).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KEYS=${KEYS:-1000000}
source "$(dirname "$0")/common.sh"
echo "transfer bench password" > "$W/pw"
# Resets a process's peak RSS (VmHWM) so the next reading covers only what follows.
reset_peak() { echo 5 > "/proc/$1/clear_refs"; }
peak_mib() { awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$1/status"; }

ROWS=()
for backend in sqlite postgres; do
  for s in A B; do
    db=sqlite
    if [ $backend = postgres ]; then
      "$PGBIN/createdb" -h "$PGHOST" -U keyhold "tb_$s"
      db="postgres:///tb_$s?host=$PGHOST&user=keyhold"
    fi
    start "$backend-$s" "$db" --use-hierarchy
  done
  a=$(eval echo "\$PID_${backend}_A"); b=$(eval echo "\$PID_${backend}_B")
  echo "== $backend: seeding $KEYS keys into A"
  "$BIN/keyhold-bench" seed --data-dir "$W/$backend-A" --keys "$KEYS"

  reset_peak "$a"
  /usr/bin/time -f "%e %M" -o "$W/t.txt" "$BIN/keyhold-server" key export -o "$W/$backend.age" --all \
    --password-file "$W/pw" --data-dir "$W/$backend-A" > "$W/export.out"
  read -r export_s export_cli_kb < "$W/t.txt"
  export_server=$(peak_mib "$a")
  echo "   $(head -1 "$W/export.out")"

  reset_peak "$b"
  /usr/bin/time -f "%e %M" -o "$W/t.txt" "$BIN/keyhold-server" key import "$W/$backend.age" \
    --password-file "$W/pw" --data-dir "$W/$backend-B" > "$W/import.out"
  read -r import_s import_cli_kb < "$W/t.txt"
  import_server=$(peak_mib "$b")
  echo "   $(cat "$W/import.out")"

  age_s=$("$ROOT/.venv/bin/python" - "$W/$backend.age" "$W/pw" <<'PY'
import sys, time, pexpect
start = time.monotonic()
child = pexpect.spawn("age", ["--decrypt", "-o", "/dev/null", sys.argv[1]], timeout=600)
child.expect(b"passphrase")
child.sendline(open(sys.argv[2]).read().strip())
child.expect(pexpect.EOF)
child.close()
assert child.exitstatus == 0, child.before
print(f"{time.monotonic() - start:.2f}")
PY
)
  size=$(stat -c %s "$W/$backend.age")
  ROWS+=("$backend $KEYS $size $export_s $export_server $export_cli_kb $import_s $import_server $import_cli_kb $age_s")
  rm -f "$W/$backend.age"
done

python3 - "${ROWS[@]}" <<'PY'
import sys
print(f"\n{'backend':<9}{'keys':>9}{'file MiB':>9}{'export s':>9}{'srv MiB':>8}{'cli MiB':>8}{'import s':>9}{'srv MiB':>8}{'cli MiB':>8}{'age -d s':>9}{'import/age':>11}")
for row in sys.argv[1:]:
    b, keys, size, es, esrv, ecli, is_, isrv, icli, age = row.split()
    print(f"{b:<9}{int(keys):>9}{int(size)/2**20:>9.0f}{float(es):>9.1f}{int(esrv):>8}{int(ecli)//1024:>8}{float(is_):>9.1f}{int(isrv):>8}{int(icli)//1024:>8}{float(age):>9.1f}{float(is_)/float(age):>10.1f}x")
print("srv MiB: the server's peak resident memory during that step (VmHWM, reset before it); "
      "cli MiB: the keyhold-server command's own peak. age -d: the real age decrypting the same file.")
PY
