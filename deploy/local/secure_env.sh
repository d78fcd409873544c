# shellcheck shell=bash
# Where the secured stack lives (deploy/local/up --secure): its own directory and
# ports, so it runs beside the plain stack. Sourced before stack.sh.
if [ "$(id -u)" = 0 ]; then
  export PME_STACK_DIR="${PME_SECURE_STACK_DIR:-/var/tmp/pme-exporter/stack-secure}"
else
  export PME_STACK_DIR="${PME_SECURE_STACK_DIR:-${XDG_STATE_HOME:-$HOME/.local/state}/pme-exporter/stack-secure}"
fi
# Kafka: SASL_SSL on this port, mTLS on the next, the controller and the
# inter-broker (mTLS) listener on the two after; PostgreSQL (hostssl only) on its own.
export PME_KAFKA_PORT="${PME_SECURE_KAFKA_PORT:-19192}"
export PME_KAFKA_CONTROLLER_PORT="$((PME_KAFKA_PORT + 2))"
export PME_PG_PORT="${PME_SECURE_PG_PORT:-15433}"
export PME_DB_USER="pme_owner"
export PME_DB_NAME="pme"
# Passwords are made once per secured stack and kept beside it (mode 600);
# `down --secure` only stops, and makes nothing.
SECRETS_DIR="$PME_STACK_DIR/secrets"
if [ -z "${PME_SECURE_STOPPING:-}" ]; then
  mkdir -p "$SECRETS_DIR"
  chmod 700 "$SECRETS_DIR"
  for name in owner worker reader kafka-worker; do
    if [ ! -s "$SECRETS_DIR/$name" ]; then
      (umask 077 && openssl rand -hex 16 >"$SECRETS_DIR/$name")
    fi
  done
  PME_DB_PASSWORD="$(cat "$SECRETS_DIR/owner")"
  export PME_DB_PASSWORD
fi
