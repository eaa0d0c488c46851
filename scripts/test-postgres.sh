#!/usr/bin/env bash
# Runs a command with a throwaway PostgreSQL cluster, unless KEYHOLD_TEST_POSTGRES_URL is already set.
#   scripts/test-postgres.sh COMMAND...
# The cluster lives in a temporary folder and listens only on a Unix socket there; it is stopped
# and removed when the command ends. As root, the cluster runs as the unprivileged 'postgres' user
# (PostgreSQL refuses to run as root). Exports KEYHOLD_TEST_POSTGRES_URL to the command.
set -euo pipefail
if [ -n "${KEYHOLD_TEST_POSTGRES_URL:-}" ]; then exec "$@"; fi
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$PGBIN" ] || [ ! -x "$PGBIN/initdb" ]; then
  echo "keyhold: error: PostgreSQL server binaries (initdb, pg_ctl) were not found" >&2
  echo "hint: run 'scripts/install-deps.sh test' (installs Debian's postgresql), or set KEYHOLD_TEST_POSTGRES_URL" >&2
  exit 1
fi
DIR=$(mktemp -d /tmp/keyhold-pg-XXXXXX)
chmod 755 "$DIR"
RUNAS=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$DIR"
  RUNAS=(runuser -u postgres --)
fi
cleanup() {
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$DIR"
}
trap cleanup EXIT
"${RUNAS[@]}" "$PGBIN/initdb" -D "$DIR/data" -U keyhold --auth=trust -E UTF8 >"$DIR/initdb.log" 2>&1 \
  || { cat "$DIR/initdb.log" >&2; exit 1; }
"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 \
  -o "-c listen_addresses='' -c unix_socket_directories='$DIR' -c max_connections=200 -c fsync=on" start >/dev/null \
  || { cat "$DIR/server.log" >&2; exit 1; }
"${RUNAS[@]}" "$PGBIN/createdb" -h "$DIR" -U keyhold keyhold_test
export KEYHOLD_TEST_POSTGRES_URL="postgres:///keyhold_test?host=$DIR&user=keyhold"
echo "==> throwaway PostgreSQL at $DIR (KEYHOLD_TEST_POSTGRES_URL=$KEYHOLD_TEST_POSTGRES_URL)"
set +e
"$@"
status=$?
exit $status
