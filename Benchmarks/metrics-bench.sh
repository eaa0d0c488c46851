#!/usr/bin/env bash
# The cost of the server's metrics: key releases on SQLite with the metrics listener on and off.
#   Benchmarks/metrics-bench.sh BIN_DIR      (run inside scripts/test-postgres.sh; make bench does)
# Knobs: ROUNDS (6), KEYS (5000), CLIENTS (64), DURATION (10 seconds per run).
# Runs alternate in ABBA order (on off off on, …) so that a drift of the machine over the runs
# (heat, page cache, other load) falls on both sides alike. While metrics are on, a scraper
# fetches /metrics every second over one kept-alive connection, as Prometheus does (15 times its
# usual 15 s rate). Compared by medians; the spread of the "off" runs is printed as the noise
# floor, and the server's own CPU time per release beside the rate (what the metrics cost the
# server, without the load generator that shares the machine's two cores).
set -euo pipefail
ROUNDS=${ROUNDS:-6}; KEYS=${KEYS:-5000}; CLIENTS=${CLIENTS:-64}; SECONDS_RUN=${DURATION:-10}
source "$(dirname "$0")/common.sh"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system clock ticks of PID

echo "== metrics cost: SQLite releases, $KEYS keys, $CLIENTS clients, ${SECONDS_RUN}s per run, $ROUNDS rounds (ABBA)"
ON=(); OFF=(); CPU_ON=(); CPU_OFF=()
run() { # MODE ROUND
  local mode=$1 name="metrics-$1-$2" out rate pid before after ops scraper=""
  if [ "$mode" = on ]; then LAUNCH_FLAGS="--metrics-listen 127.0.0.1:0" start "$name" sqlite; else start "$name" sqlite; fi
  pid=$(eval echo "\$PID_${name//-/_}")
  if [ "$mode" = on ]; then
    python3 - "$(field "$(cat "$W/$name/runtime.json")" metrics)" <<'PY' &
import http.client, sys, time
host, port = sys.argv[1].rsplit(":", 1)
connection = http.client.HTTPConnection(host, int(port), timeout=10)
while True:
    connection.request("GET", "/metrics")
    connection.getresponse().read()
    time.sleep(1)
PY
    scraper=$!
  fi
  before=$(cpu_ticks "$pid")
  out=$("$BIN/keyhold-bench" load --data-dir "$W/$name" --keys "$KEYS" --clients "$CLIENTS" --seconds "$SECONDS_RUN")
  after=$(cpu_ticks "$pid")
  [ -n "$scraper" ] && kill "$scraper" && wait "$scraper" 2>/dev/null || true
  rate=$(field "$out" perSecond)
  ops=$(field "$out" operations)
  # Server CPU microseconds per release (the escrows before the load count on both sides alike).
  cpu=$(python3 -c "import os,sys; print((int(sys.argv[2]) - int(sys.argv[1])) / os.sysconf('SC_CLK_TCK') * 1e6 / int(sys.argv[3]))" "$before" "$after" "$ops")
  if [ "$mode" = on ]; then ON+=("$rate"); CPU_ON+=("$cpu"); else OFF+=("$rate"); CPU_OFF+=("$cpu"); fi
  echo "   round $2, metrics $mode: $out, server CPU ${cpu%.*} µs per release"
  stop "$name"
  rm -rf "${W:?}/$name"
}
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then run on "$round"; run off "$round"; else run off "$round"; run on "$round"; fi
done
python3 - "${ON[*]}" "${OFF[*]}" "${CPU_ON[*]}" "${CPU_OFF[*]}" <<'PY'
import statistics, sys
on, off, cpu_on, cpu_off = (list(map(float, a.split())) for a in sys.argv[1:5])
m_on, m_off = statistics.median(on), statistics.median(off)
c_on, c_off = statistics.median(cpu_on), statistics.median(cpu_off)
cost = (m_off - m_on) / m_off
noise = (max(off) - min(off)) / m_off
print(f"releases/s, median of {len(on)}: metrics on {m_on:.0f}, off {m_off:.0f}: on/off = {m_on / m_off:.3f}x "
      f"(spread of the off runs: {noise * 100:.1f} % of their median)")
print(f"server CPU per release, median: metrics on {c_on:.0f} µs, off {c_off:.0f} µs: on/off = {c_on / c_off:.3f}x")
print(f"target: metrics cost at most 3 % of release throughput: {'met' if cost <= 0.03 else 'MISSED'} ({cost * 100:.1f} %)")
PY
