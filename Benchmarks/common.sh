# Sourced by the benchmark scripts (after their own knobs), with the script's arguments:
#   BIN      the folder of the release binaries (first argument)
#   PGHOST   the socket folder of the PostgreSQL that scripts/test-postgres.sh started
#   PGBIN    the newest PostgreSQL client/server binaries (createdb, pgbench, psql)
#   W        a work folder, removed at exit together with every server started here
#   start NAME DB [INIT FLAGS…]   init and run a server in $W/NAME on loopback ports (keyhold-bench
#                                  launch: ready once it answers); its pid is in PIDS and in
#                                  PID_<NAME> (dashes become underscores); LAUNCH_FLAGS (e.g.
#                                  "--metrics-listen 127.0.0.1:0") go to the launcher
#   stop NAME                     stop it gracefully (SIGTERM) and wait for it
#   field JSON NAME               one field of a JSON object
set -euo pipefail
BIN=$(readlink -f "${1:?usage: $0 BIN_DIR}")
: "${KEYHOLD_TEST_POSTGRES_URL:?run this through scripts/test-postgres.sh}"
PGHOST=$(python3 -c 'import sys,urllib.parse as u; print(u.parse_qs(u.urlparse(sys.argv[1]).query)["host"][0])' "$KEYHOLD_TEST_POSTGRES_URL")
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
W=$(mktemp -d "/tmp/keyhold-$(basename "$0" .sh)-XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT

start() { # NAME DB [INIT FLAGS…]: through the launcher the tests and the demo use
  local name=$1 db=$2 pid api
  shift 2
  # shellcheck disable=SC2086 # LAUNCH_FLAGS is a list of words on purpose
  read -r pid api < <("$BIN/keyhold-bench" launch --data-dir "$W/$name" --log "$W/$name.log" --db "$db" ${LAUNCH_FLAGS:-} -- "$@") \
    || { echo "server $name did not start"; cat "$W/$name.log"; exit 1; }
  PIDS+=("$pid")
  eval "PID_${name//-/_}=$pid"
}

field() { # JSON NAME: one field of a JSON object
  python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"
}

stop() { # NAME
  local pid; pid=$(eval echo "\$PID_${1//-/_}")
  kill -TERM "$pid"
  # Not this shell's child (the launcher started it): wait until it is gone.
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}
