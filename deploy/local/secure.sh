# shellcheck shell=bash
# The secured local stack (deploy/local/up --secure), sourced by up after its own
# functions: it replaces start_kafka and wait_kafka, adds PostgreSQL's TLS
# configuration, and sets up users and roles once both servers run.
#
# - a private CA and certificates made with openssl, cached in $STACK_DIR/certs:
#   the servers' (subjectAltName IP:127.0.0.1 only: "localhost" is a wrong host),
#   a worker client certificate, and a second CA that signed nothing of ours;
# - Kafka: SASL_SSL (SCRAM-SHA-512) on $KAFKA_PORT, mTLS (SSL, client certificate
#   required) on $KAFKA_PORT+1, the inter-broker listener mTLS too; the KRaft
#   controller listener stays on loopback in the same process. The worker's SCRAM
#   user is created through the broker's admin API, over mTLS;
# - PostgreSQL: ssl=on, TCP connections only over TLS (hostssl) with scram-sha-256;
#   roles pme_owner (owns the schema, migrates), pme_worker (in pme_writer) and
#   pme_report (in pme_reader), whose privileges come from sql/grants.sql.

CERTS="$STACK_DIR/certs"
KAFKA_MTLS_PORT="$((KAFKA_PORT + 1))"
KAFKA_INTERNAL_PORT="$((KAFKA_PORT + 3))"

make_certs() {
  [ -f "$CERTS/.complete" ] && return 0
  command -v openssl >/dev/null || die "openssl not found: it makes the secured stack's certificates"
  log "making a private CA and certificates in $CERTS (first run only)"
  mkdir -p "$CERTS"
  local ssl_log="$CERTS/openssl.log"
  (
    set -e
    cd "$CERTS"
    umask 077
    for ca in ca other-ca; do
      openssl req -x509 -newkey rsa:2048 -nodes -keyout "$ca.key" -out "$ca.pem" -days 3650 \
        -subj "/CN=pme-exporter local $ca" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    done
    issue() { # name, subject CN, extensions
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2"
      printf '%s\n' "$3" >"$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -out "$1.crt" -days 825 \
        -extfile "$1.ext"
      cat "$1.key" "$1.crt" >"$1.pem"
    }
    issue server 127.0.0.1 "subjectAltName=IP:127.0.0.1
extendedKeyUsage=serverAuth,clientAuth"
    issue worker pme-worker "extendedKeyUsage=clientAuth"
    issue admin pme-admin "extendedKeyUsage=clientAuth"
    chmod 644 ca.pem other-ca.pem ./*.crt  # certificates are public; keys (and key+cert .pem) stay 600
  ) >"$ssl_log" 2>&1 || die "openssl could not make the certificates" "$ssl_log"
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL reads its key as the postgres user and wants it private.
    install -o postgres -m 600 "$CERTS/server.key" "$CERTS/pg-server.key"
  else
    install -m 600 "$CERTS/server.key" "$CERTS/pg-server.key"
  fi
  touch "$CERTS/.complete"
}

postgres_extra_config() {
  cat >>"$PG_DATA/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = '$CERTS/server.crt'
ssl_key_file = '$CERTS/pg-server.key'
password_encryption = 'scram-sha-256'
CONF
  # TCP only over TLS, with SCRAM; the local socket (the scripts' own) stays trusted.
  cat >"$PG_DATA/pg_hba.conf" <<HBA
local   all  all                 trust
hostssl all  all  127.0.0.1/32   scram-sha-256
hostssl all  all  ::1/128        scram-sha-256
HBA
}

start_kafka() {
  if kafka_running; then
    log "secured kafka already running (pid $(cat "$KAFKA_PID"))"
    return 0
  fi
  fetch_kafka
  make_certs
  local port
  for port in "$KAFKA_PORT" "$KAFKA_MTLS_PORT" "$KAFKA_CONTROLLER_PORT" "$KAFKA_INTERNAL_PORT"; do
    if port_in_use "$port"; then
      die "secured kafka cannot start: 127.0.0.1:$port is already in use"
    fi
  done
  mkdir -p "$KAFKA_DIR"
  local props="$KAFKA_DIR/server.properties"
  cat >"$props" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=SASL_SSL://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_MTLS_PORT,INTERNAL://127.0.0.1:$KAFKA_INTERNAL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,SSL:SSL,INTERNAL:SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.ssl.ssl.client.auth=required
listener.name.internal.ssl.client.auth=required
ssl.keystore.type=PEM
ssl.keystore.location=$CERTS/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$CERTS/ca.pem
log.dirs=$KAFKA_DIR/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
PROPS
  local java_opts=(-Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:TieredStopAtLevel=1
    "-Dlog4j2.configurationFile=$HERE/kafka/log4j2.properties" -cp "$KAFKA_LIBS/*")
  if [ ! -f "$KAFKA_DIR/data/meta.properties" ]; then
    local cluster_id
    cluster_id="$(python3 "$HERE/cluster_id.py")"
    java "${java_opts[@]}" kafka.tools.StorageTool format --cluster-id="$cluster_id" -c "$props" >>"$KAFKA_LOG" 2>&1 ||
      die "secured kafka storage format failed" "$KAFKA_LOG"
  fi
  log "starting secured kafka $KAFKA_VERSION: SASL_SSL 127.0.0.1:$KAFKA_PORT, mTLS 127.0.0.1:$KAFKA_MTLS_PORT (log: $KAFKA_LOG)"
  nohup java "${java_opts[@]}" kafka.Kafka "$props" >>"$KAFKA_LOG" 2>&1 </dev/null &
  echo $! >"$KAFKA_PID"
}

wait_kafka() {
  local i
  for i in $(seq 1 120); do
    kafka_running || die "secured kafka exited during start-up" "$KAFKA_LOG"
    if python3 "$HERE/kafka_ready.py" 127.0.0.1 "$KAFKA_MTLS_PORT" 0.5 \
      "$CERTS/ca.pem" "$CERTS/admin.crt" "$CERTS/admin.key" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  die "secured kafka did not answer a metadata request over mTLS within 60 s" "$KAFKA_LOG"
}

secure_setup() {
  local bin psql
  bin="$(pg_bin_dir)"
  psql=(as_pg_owner "$bin/psql" -h "$PG_SOCKET" -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 -qAt)
  local worker reader
  worker="$(cat "$SECRETS_DIR/worker")"
  reader="$(cat "$SECRETS_DIR/reader")"
  # Group roles carry the privileges (sql/grants.sql); login roles are members.
  "${psql[@]}" -d postgres >>"$PG_LOG" 2>&1 <<SQL || die "could not create the roles" "$PG_LOG"
DO \$\$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_writer') THEN CREATE ROLE pme_writer NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_reader') THEN CREATE ROLE pme_reader NOLOGIN; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_worker') THEN CREATE ROLE pme_worker LOGIN IN ROLE pme_writer; END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_report') THEN CREATE ROLE pme_report LOGIN IN ROLE pme_reader; END IF;
END
\$\$;
ALTER ROLE pme_worker PASSWORD '$worker';
ALTER ROLE pme_report PASSWORD '$reader';
REVOKE ALL ON DATABASE "$DB_NAME" FROM PUBLIC;
SQL
  # The worker's SCRAM user, through the broker's admin API (over mTLS, as pme-admin).
  "${PME_PYTHON:-python3}" "$HERE/kafka_scram.py" "127.0.0.1:$KAFKA_MTLS_PORT" "$CERTS" pme-worker "$SECRETS_DIR/kafka-worker" \
    >>"$KAFKA_LOG" 2>&1 || die "could not create the worker's SCRAM user" "$KAFKA_LOG"
  log "secured stack ready: kafka SASL_SSL 127.0.0.1:$KAFKA_PORT, mTLS 127.0.0.1:$KAFKA_MTLS_PORT, postgresql (TLS only) 127.0.0.1:$PG_PORT"
}

print_secure_env() {
  cat <<ENV
# The owner migrates:  DB_USER=pme_owner DB_PASSWORD=\$(cat $SECRETS_DIR/owner) pme-exporter migrate
export KAFKA_URL=127.0.0.1:$KAFKA_PORT
export KAFKA_SECURITY_PROTOCOL=SASL_SSL
export KAFKA_SASL_MECHANISM=SCRAM-SHA-512
export KAFKA_SASL_USERNAME=pme-worker
export KAFKA_SASL_PASSWORD_FILE=$SECRETS_DIR/kafka-worker
export KAFKA_SSL_CA_LOCATION=$CERTS/ca.pem
export DB_HOST=127.0.0.1
export DB_PORT=$PG_PORT
export DB_USER=pme_worker
export DB_PASSWORD_FILE=$SECRETS_DIR/worker
export DB_NAME=$DB_NAME
export DB_SSLMODE=verify-full
export DB_SSLROOTCERT=$CERTS/ca.pem
# mTLS instead of SASL: KAFKA_URL=127.0.0.1:$KAFKA_MTLS_PORT KAFKA_SECURITY_PROTOCOL=SSL
#   KAFKA_SSL_CERTIFICATE_LOCATION=$CERTS/worker.crt KAFKA_SSL_KEY_LOCATION=$CERTS/worker.key
ENV
}
