-- pme-exporter schema: the ledger's tables (seed design, with TIMESTAMPTZ and
-- lineage columns) and the exporter's own bookkeeping tables.
-- Keep in step with src/pme_exporter/schema.py (tests/unit/test_schema_sql.py checks).

CREATE TABLE participants (
    code            VARCHAR(20) PRIMARY KEY,
    name            VARCHAR(255),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE accounts (
    code             VARCHAR(20) PRIMARY KEY,
    participant_code VARCHAR(20),
    sid              VARCHAR(50),
    trade_limit      NUMERIC(20,2),
    pool_limit       NUMERIC(20,2),
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    src_partition    INT NOT NULL,
    src_offset       BIGINT NOT NULL,
    exported_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX accounts_participant_code_idx ON accounts (participant_code);

CREATE TABLE instruments (
    code            VARCHAR(20) PRIMARY KEY,
    name            VARCHAR(255),
    status          VARCHAR(20),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    nid             BIGINT PRIMARY KEY,
    account_code    VARCHAR(20),
    instrument_code VARCHAR(20),
    side            VARCHAR(4),
    quantity        NUMERIC(20,2),
    quantity_left   NUMERIC(20,2),
    periode         INT,
    state           VARCHAR(1),
    settlement_date DATE,
    aro_status      BOOLEAN,
    reff_request_id VARCHAR(50),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX orders_account_code_idx ON orders (account_code);
CREATE INDEX orders_instrument_state_idx ON orders (instrument_code, state);

CREATE TABLE trades (
    nid             BIGINT PRIMARY KEY,
    kpei_reff       VARCHAR(50) UNIQUE,
    instrument_code VARCHAR(20),
    quantity        NUMERIC(20,2),
    periode         INT,
    state           VARCHAR(1),
    matched_at      TIMESTAMPTZ,
    reimburse_at    TIMESTAMPTZ,
    fee_flat_rate   NUMERIC(12,6),
    fee_borr_rate   NUMERIC(12,6),
    fee_lend_rate   NUMERIC(12,6),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX trades_instrument_state_idx ON trades (instrument_code, state);

CREATE TABLE contracts (
    nid             BIGINT PRIMARY KEY,
    trade_nid       BIGINT REFERENCES trades (nid),
    order_nid       BIGINT REFERENCES orders (nid),
    kpei_reff       VARCHAR(50),
    account_code    VARCHAR(20),
    instrument_code VARCHAR(20),
    side            VARCHAR(4),
    quantity        NUMERIC(20,2),
    state           VARCHAR(1),
    matched_at      TIMESTAMPTZ,
    reimburse_at    TIMESTAMPTZ,
    fee_flat_val    NUMERIC(20,2),
    fee_val_daily   NUMERIC(20,2),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX contracts_trade_nid_idx ON contracts (trade_nid);
CREATE INDEX contracts_order_nid_idx ON contracts (order_nid);
CREATE INDEX contracts_account_state_idx ON contracts (account_code, state);

CREATE TABLE order_acks (
    id              BIGSERIAL PRIMARY KEY,
    order_nid       BIGINT NOT NULL REFERENCES orders (nid),
    acknowledged_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (src_partition, src_offset)
);
CREATE INDEX order_acks_order_nid_idx ON order_acks (order_nid);

CREATE TABLE order_naks (
    id              BIGSERIAL PRIMARY KEY,
    order_nid       BIGINT NOT NULL REFERENCES orders (nid),
    message         TEXT,
    rejected_at     TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (src_partition, src_offset)
);
CREATE INDEX order_naks_order_nid_idx ON order_naks (order_nid);

CREATE TABLE parameters (
    id              BIGSERIAL PRIMARY KEY,
    fee_flat_rate   NUMERIC(12,6),
    fee_borr_rate   NUMERIC(12,6),
    fee_lend_rate   NUMERIC(12,6),
    auto_match_flag BOOLEAN,
    effective_from  TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (src_partition, src_offset)
);

CREATE TABLE holidays (
    nid             BIGINT PRIMARY KEY,
    date            DATE,
    description     VARCHAR(255),
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    src_partition   INT NOT NULL,
    src_offset      BIGINT NOT NULL,
    exported_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE session_times (
    id               BIGSERIAL PRIMARY KEY,
    pre_opening_time TIME,
    opening_time     TIME,
    closing_time     TIME,
    effective_from   TIMESTAMPTZ,
    created_at       TIMESTAMPTZ NOT NULL,
    src_partition    INT NOT NULL,
    src_offset       BIGINT NOT NULL,
    exported_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (src_partition, src_offset)
);

-- Per topic and partition, the next offset to read. Written in the same
-- transaction as the rows it covers; on assignment the consumer seeks here.
CREATE TABLE exporter_offsets (
    topic           TEXT NOT NULL,
    partition       INT NOT NULL,
    next_offset     BIGINT NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

CREATE TABLE exporter_dead_letters (
    id              BIGSERIAL PRIMARY KEY,
    topic           TEXT NOT NULL,
    partition       INT NOT NULL,
    "offset"        BIGINT NOT NULL,
    msg_key         BYTEA,
    msg_value       BYTEA,
    stage           TEXT NOT NULL,      -- 'decode' or 'database'
    reason          TEXT NOT NULL,      -- short class, e.g. 'unknown_type', 'sqlstate_22001'
    sqlstate        TEXT,
    error           TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

-- Children (acks, naks, contracts) whose parent row is not there yet. They wait
-- here, raw, and each flush moves those whose parents have arrived into their table.
CREATE TABLE exporter_parked_children (
    topic           TEXT NOT NULL,
    partition       INT NOT NULL,
    "offset"        BIGINT NOT NULL,
    table_name      TEXT NOT NULL,
    trade_nid       BIGINT,
    order_nid       BIGINT,
    msg_key         BYTEA,
    msg_value       BYTEA NOT NULL,
    parked_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);
