-- The original design's column types and indexes (README "Tables").
--
-- 001 had wider and narrower types than the design: instruments.status was
-- text, codes and references were shorter, amounts and rates wider. This brings
-- an existing database to the design's types without losing a row:
-- * instruments.status becomes BOOLEAN; text that clearly means true or false
--   is mapped, any other text becomes NULL and its old value is kept in
--   exporter_migration_002_status (code, old_status). Counts go to the log.
-- * narrowing a length or a precision refuses (and changes nothing) when a
--   stored value would not fit, naming the column and how many rows: fix those
--   rows by hand, then start again.

DO $$
DECLARE
    n_true bigint;
    n_false bigint;
    n_null bigint;
    n_unmapped bigint;
BEGIN
    SELECT count(*) FILTER (WHERE lower(btrim(status)) IN ('true', 't', 'yes', 'y', '1', 'on')),
           count(*) FILTER (WHERE lower(btrim(status)) IN ('false', 'f', 'no', 'n', '0', 'off')),
           count(*) FILTER (WHERE status IS NULL),
           count(*) FILTER (WHERE status IS NOT NULL AND lower(btrim(status)) NOT IN
               ('true', 't', 'yes', 'y', '1', 'on', 'false', 'f', 'no', 'n', '0', 'off'))
      INTO n_true, n_false, n_null, n_unmapped
      FROM instruments;
    RAISE NOTICE 'instruments.status to BOOLEAN: % true, % false, % already NULL, % unmapped text to NULL (old values kept in exporter_migration_002_status)',
        n_true, n_false, n_null, n_unmapped;
END $$;

CREATE TABLE exporter_migration_002_status (
    code        VARCHAR(20) PRIMARY KEY,
    old_status  TEXT NOT NULL,
    migrated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO exporter_migration_002_status (code, old_status)
SELECT code, status FROM instruments
WHERE status IS NOT NULL AND lower(btrim(status)) NOT IN
    ('true', 't', 'yes', 'y', '1', 'on', 'false', 'f', 'no', 'n', '0', 'off');

ALTER TABLE instruments ALTER COLUMN status TYPE BOOLEAN USING
    CASE
        WHEN lower(btrim(status)) IN ('true', 't', 'yes', 'y', '1', 'on') THEN true
        WHEN lower(btrim(status)) IN ('false', 'f', 'no', 'n', '0', 'off') THEN false
    END;

-- Refuse, before any narrowing, if a stored value would not fit.
DO $$
DECLARE
    check_ record;
    n bigint;
    problems text := '';
BEGIN
    FOR check_ IN SELECT * FROM (VALUES
        ('participants', 'name', 'length(name) > 200'),
        ('instruments', 'name', 'length(name) > 200'),
        ('holidays', 'description', 'length(description) > 200'),
        ('orders', 'quantity', 'abs(quantity) >= 1e13'),
        ('orders', 'quantity_left', 'abs(quantity_left) >= 1e13'),
        ('trades', 'quantity', 'abs(quantity) >= 1e13'),
        ('contracts', 'quantity', 'abs(quantity) >= 1e13'),
        ('contracts', 'fee_flat_val', 'abs(fee_flat_val) >= 1e13'),
        ('contracts', 'fee_val_daily', 'abs(fee_val_daily) >= 1e13'),
        ('trades', 'fee_flat_rate', 'abs(fee_flat_rate) >= 1e4'),
        ('trades', 'fee_borr_rate', 'abs(fee_borr_rate) >= 1e4'),
        ('trades', 'fee_lend_rate', 'abs(fee_lend_rate) >= 1e4'),
        ('parameters', 'fee_flat_rate', 'abs(fee_flat_rate) >= 1e4'),
        ('parameters', 'fee_borr_rate', 'abs(fee_borr_rate) >= 1e4'),
        ('parameters', 'fee_lend_rate', 'abs(fee_lend_rate) >= 1e4')
    ) AS c(tbl, col, too_big)
    LOOP
        EXECUTE format('SELECT count(*) FROM %I WHERE %s', check_.tbl, check_.too_big) INTO n;
        IF n > 0 THEN
            problems := problems || format(' %s.%s: %s row(s);', check_.tbl, check_.col, n);
        END IF;
    END LOOP;
    IF problems <> '' THEN
        RAISE EXCEPTION 'stored values do not fit the design''s types, nothing was changed:%', problems
            USING ERRCODE = '22003',
                  HINT = 'correct or delete those rows, then run pme-exporter migrate again';
    END IF;
END $$;

ALTER TABLE participants
    ALTER COLUMN code TYPE VARCHAR(50),
    ALTER COLUMN name TYPE VARCHAR(200);
ALTER TABLE accounts
    ALTER COLUMN code TYPE VARCHAR(50),
    ALTER COLUMN participant_code TYPE VARCHAR(50);
ALTER TABLE instruments
    ALTER COLUMN name TYPE VARCHAR(200);
ALTER TABLE orders
    ALTER COLUMN account_code TYPE VARCHAR(50),
    ALTER COLUMN quantity TYPE DECIMAL(15,2),
    ALTER COLUMN quantity_left TYPE DECIMAL(15,2),
    ALTER COLUMN reff_request_id TYPE VARCHAR(100);
ALTER TABLE trades
    ALTER COLUMN kpei_reff TYPE VARCHAR(100),
    ALTER COLUMN quantity TYPE DECIMAL(15,2),
    ALTER COLUMN fee_flat_rate TYPE DECIMAL(10,6),
    ALTER COLUMN fee_borr_rate TYPE DECIMAL(10,6),
    ALTER COLUMN fee_lend_rate TYPE DECIMAL(10,6);
ALTER TABLE contracts
    ALTER COLUMN kpei_reff TYPE VARCHAR(100),
    ALTER COLUMN account_code TYPE VARCHAR(50),
    ALTER COLUMN quantity TYPE DECIMAL(15,2),
    ALTER COLUMN fee_flat_val TYPE DECIMAL(15,2),
    ALTER COLUMN fee_val_daily TYPE DECIMAL(15,2);
ALTER TABLE parameters
    ALTER COLUMN fee_flat_rate TYPE DECIMAL(10,6),
    ALTER COLUMN fee_borr_rate TYPE DECIMAL(10,6),
    ALTER COLUMN fee_lend_rate TYPE DECIMAL(10,6);
ALTER TABLE holidays
    ALTER COLUMN description TYPE VARCHAR(200);

-- The design's indexes ("Indexing"), by its names. trades.kpei_reff is already
-- indexed by its UNIQUE constraint (idx_trades_kpei would be a second copy).
-- 001's composite indexes served only the demo's reports and are dropped: every
-- index costs each upsert a write.
ALTER INDEX orders_account_code_idx RENAME TO idx_orders_account;
CREATE INDEX idx_orders_state ON orders (state);
CREATE INDEX idx_orders_created ON orders (created_at);
CREATE INDEX idx_trades_matched ON trades (matched_at);
ALTER INDEX contracts_trade_nid_idx RENAME TO idx_contracts_trade;
CREATE INDEX idx_contracts_account ON contracts (account_code);
DROP INDEX orders_instrument_state_idx;
DROP INDEX trades_instrument_state_idx;
DROP INDEX contracts_account_state_idx;
