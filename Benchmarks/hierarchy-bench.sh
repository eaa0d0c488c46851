#!/usr/bin/env bash
# Hierarchy benchmark: push KEYS keys from a secondary to its primary, the cost of an idle push,
# and depth-3 lookups (T <- S1 <- S3, a device on S3 asking for keys only T holds).
#   Benchmarks/hierarchy-bench.sh BIN_DIR      (run inside scripts/test-postgres.sh; make bench does)
# Knobs: KEYS (1000000), LOOKUPS (2000). Targets: push < 60 s, no keys sent when idle, p99 < 20 ms.
set -euo pipefail
KEYS=${KEYS:-1000000}; LOOKUPS=${LOOKUPS:-2000}
source "$(dirname "$0")/common.sh"

join() { # SECONDARY PRIMARY
  local token; token=$("$BIN/keyhold-server" token create --role server --data-dir "$W/$2")
  "$BIN/keyhold-server" primary join "$token" --data-dir "$W/$1" > /dev/null
}

declare -A OUT
for backend in sqlite postgres; do
  for s in T S1 S3; do
    db=sqlite
    if [ $backend = postgres ]; then
      "$PGBIN/createdb" -h "$PGHOST" -U keyhold "hb_$s"
      db="postgres:///hb_$s?host=$PGHOST&user=keyhold"
    fi
    start "$backend-$s" "$db" --use-hierarchy
  done
  join "$backend-S1" "$backend-T"
  join "$backend-S3" "$backend-S1"
  echo "== $backend: $KEYS keys S1 -> T, $LOOKUPS depth-3 lookups"
  OUT[$backend]=$("$BIN/keyhold-bench" hierarchy --top "$W/$backend-T" --middle "$W/$backend-S1" --bottom "$W/$backend-S3" --keys "$KEYS" --lookups "$LOOKUPS")
  echo "   ${OUT[$backend]}"
done

python3 - "${OUT[sqlite]}" "${OUT[postgres]}" <<'PY'
import json, sys
rows = {"sqlite": json.loads(sys.argv[1]), "postgres": json.loads(sys.argv[2])}
print(f"\n{'backend':<10}{'keys':>9}{'push s':>9}{'keys/s':>9}{'idle ms':>9}{'idle sent':>10}{'p50 ms':>8}{'p99 ms':>8}")
for name, r in rows.items():
    print(f"{name:<10}{r['keys']:>9.0f}{r['push_seconds']:>9.1f}{r['push_per_second']:>9.0f}{r['idle_sync_ms']:>9.1f}{r['idle_keys_sent']:>10.0f}{r['lookup_p50_ms']:>8.2f}{r['lookup_p99_ms']:>8.2f}")
for name, r in rows.items():
    million = 1e6 / r['push_per_second']
    print(f"targets ({name}): 1,000,000 keys pushed in {million:.0f} s at this rate (target < 60: {'met' if million < 60 else 'MISSED'}); "
          f"idle sends no keys: {'met' if r['idle_keys_sent'] == 0 else 'MISSED'}; "
          f"depth-3 p99 < 20 ms: {'met' if r['lookup_p99_ms'] < 20 else 'MISSED'}")
PY
