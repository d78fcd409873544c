# shellcheck shell=bash
# Shared by deploy/local/up and deploy/local/down: where the local stack lives,
# how to find its pieces, and how to tell whether they run. Sourced, not run.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
HOME="${HOME:-$(cd ~ && pwd)}"

# Root may not own a PostgreSQL cluster, and the postgres user cannot enter
# /root, so root's default stack lives where both can reach it.
if [ "$(id -u)" = 0 ]; then
  default_stack_dir=/var/tmp/pme-exporter/stack
else
  default_stack_dir="${XDG_STATE_HOME:-$HOME/.local/state}/pme-exporter/stack"
fi
STACK_DIR="${PME_STACK_DIR:-$default_stack_dir}"
CACHE_DIR="${PME_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pme-exporter}"
KAFKA_PORT="${PME_KAFKA_PORT:-19092}"
KAFKA_CONTROLLER_PORT="${PME_KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
PG_PORT="${PME_PG_PORT:-15432}"
DB_USER="${PME_DB_USER:-pme}"
DB_PASSWORD="${PME_DB_PASSWORD:-pme}"
DB_NAME="${PME_DB_NAME:-pme}"
KAFKA_HEAP="${PME_KAFKA_HEAP:-512m}"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$HERE/kafka/pom.xml")"
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION/libs"

KAFKA_DIR="$STACK_DIR/kafka"
KAFKA_LOG="$STACK_DIR/kafka.log"
KAFKA_PID="$STACK_DIR/kafka.pid"
PG_DIR="$STACK_DIR/postgres"
PG_DATA="$PG_DIR/data"
PG_SOCKET="$PG_DIR/socket"
PG_LOG="$STACK_DIR/postgres.log"
# deploy/local/up --replica: a streaming replica of PostgreSQL beside it.
PG_REPLICA_PORT="${PME_PG_REPLICA_PORT:-$((PG_PORT + 1))}"
PG_REPLICA_DATA="$STACK_DIR/replica/data"
PG_REPLICA_LOG="$STACK_DIR/replica.log"

log() { printf '[pme-stack] %s\n' "$*" >&2; }

die() {
  log "ERROR: $1"
  if [ -n "${2:-}" ] && [ -f "$2" ]; then
    log "last lines of $2:"
    tail -n 40 "$2" >&2
  fi
  exit 1
}

# Runs a PostgreSQL command as the cluster owner (postgres when we are root).
as_pg_owner() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_bin_dir() {
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$dir" ] && [ -x "$dir/pg_ctl" ] && printf '%s\n' "$dir"
}

kafka_running() {
  [ -f "$KAFKA_PID" ] && kill -0 "$(cat "$KAFKA_PID")" 2>/dev/null
}

pg_running() {
  local bin
  bin="$(pg_bin_dir)" || return 1
  [ -f "$PG_DATA/postmaster.pid" ] && as_pg_owner "$bin/pg_ctl" status -D "$PG_DATA" >/dev/null 2>&1
}

replica_running() {
  local bin
  bin="$(pg_bin_dir)" || return 1
  [ -f "$PG_REPLICA_DATA/postmaster.pid" ] && as_pg_owner "$bin/pg_ctl" status -D "$PG_REPLICA_DATA" >/dev/null 2>&1
}

# The replica's slot on the primary, if any (deploy/local/up --replica).
drop_replica_slot() {
  pg_running || return 0
  as_pg_owner "$(pg_bin_dir)/psql" -h "$PG_SOCKET" -p "$PG_PORT" -U postgres -d postgres -qAtX -c \
    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'pme_replica'" >/dev/null 2>&1 || true
}

port_in_use() {
  python3 - "$1" <<'PY'
import socket, sys
s = socket.socket()
# As the servers do: a port left in TIME_WAIT by a stopped server is free; a listener is not.
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(0)
sys.exit(1)
PY
}
