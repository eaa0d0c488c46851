#!/usr/bin/env bash
# Key-release benchmark: keyhold-server over mutual TLS vs. the storage limit, SQLite and PostgreSQL.
#   Benchmarks/release-bench.sh BIN_DIR      (run inside scripts/test-postgres.sh; make bench does)
# Knobs: KEYS (100000), CLIENTS (64 concurrent keep-alive clients), DURATION (10 seconds per measurement;
# not SECONDS, which bash keeps as its own clock).
# The storage limit is the same work done directly on the database, without HTTP: a point read of
# the key plus a durable audit insert, in one transaction — pgbench -M prepared with 16 clients on
# PostgreSQL, and the server's own release transaction through the driver on SQLite (which shares
# commits among concurrent releases, as the server does).
# The HTTP ceiling is the same clients asking the health endpoint: mutual TLS, HTTP and routing
# with no database, so the table shows what the database part costs on top.
# The metrics cost is measured by Benchmarks/metrics-bench.sh.
set -euo pipefail
KEYS=${KEYS:-100000}; CLIENTS=${CLIENTS:-64}; SECONDS_RUN=${DURATION:-10}
source "$(dirname "$0")/common.sh"

declare -A HTTP LIMIT P50 P99 CEIL
for backend in sqlite postgres; do
  dir="$W/$backend"
  db=sqlite
  if [ $backend = postgres ]; then
    "$PGBIN/createdb" -h "$PGHOST" -U keyhold keyhold_bench
    db="postgres:///keyhold_bench?host=$PGHOST&user=keyhold"
  fi
  start "$backend" "$db"
  echo "== $backend: $KEYS keys, $CLIENTS concurrent mutual-TLS keep-alive clients, ${SECONDS_RUN}s"
  both=$("$BIN/keyhold-bench" load --data-dir "$dir" --keys "$KEYS" --clients "$CLIENTS" --seconds "$SECONDS_RUN" --ceiling)
  ceiling=$(sed -n 1p <<<"$both"); out=$(sed -n 2p <<<"$both")
  CEIL[$backend]=$(field "$ceiling" perSecond)
  HTTP[$backend]=$(field "$out" perSecond); P50[$backend]=$(field "$out" p50ms); P99[$backend]=$(field "$out" p99ms)
  echo "   http ceiling (health endpoint): $ceiling"
  echo "   http release: $out"
  stop "$backend"
  if [ $backend = sqlite ]; then
    lim=$("$BIN/keyhold-bench" sqlite-limit --database "$dir/keyhold.sqlite" --seconds "$SECONDS_RUN")
    LIMIT[$backend]=$(field "$lim" perSecond)
    echo "   storage limit (driver, read + durable audit insert): $lim"
  else
    psql -q -h "$PGHOST" -U keyhold keyhold_bench -c \
      "CREATE TABLE bench_ids AS SELECT row_number() OVER () AS n, id FROM keys; CREATE UNIQUE INDEX ON bench_ids (n); ANALYZE;"
    n=$(psql -At -h "$PGHOST" -U keyhold keyhold_bench -c "SELECT count(*) FROM bench_ids")
    cat > "$W/release.sql" <<SQL
\set n random(1, $n)
BEGIN;
SELECT k.wrapped_secret FROM keys k JOIN bench_ids b ON b.id = k.id WHERE b.n = :n;
INSERT INTO audit (time, actor, action, key_id, route, result, detail) VALUES (now(), 'bench', 'release', (SELECT id FROM bench_ids WHERE n = :n), 'bench', 'ok', '');
END;
SQL
    tps=$("$PGBIN/pgbench" -n -M prepared -c 16 -j 2 -T "$SECONDS_RUN" -f "$W/release.sql" -h "$PGHOST" -U keyhold keyhold_bench 2>&1 \
          | awk '/^tps/ {print $3; exit}')
    LIMIT[$backend]=$tps
    echo "   storage limit (pgbench -M prepared, 16 clients, read + durable audit insert): $tps tps"
  fi
done

python3 - "${HTTP[sqlite]}" "${LIMIT[sqlite]}" "${P50[sqlite]}" "${P99[sqlite]}" "${CEIL[sqlite]}" \
          "${HTTP[postgres]}" "${LIMIT[postgres]}" "${P50[postgres]}" "${P99[postgres]}" "${CEIL[postgres]}" "$CLIENTS" <<'PY'
import sys
v = list(map(float, sys.argv[1:11]))
print(f"\n{sys.argv[11]} clients")
print(f"{'backend':<10}{'keys/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'storage limit/s':>17}{'ratio':>8}{'http ceiling/s':>16}")
for name, (h, l, p50, p99, c) in (("sqlite", v[0:5]), ("postgres", v[5:10])):
    print(f"{name:<10}{h:>10.0f}{p50:>9.2f}{p99:>9.2f}{l:>17.0f}{h / l:>7.2f}x{c:>16.0f}")
h, l = v[5], v[6]
print(f"\ntargets (PostgreSQL): >= 10000 keys/s: {'met' if h >= 10000 else 'MISSED'} ({h:.0f}); "
      f">= 0.8x the storage limit: {'met' if h >= 0.8 * l else 'MISSED'} ({h / l:.2f}x)")
PY

