-- Materialized copies of the reports that aggregate over whole tables, so that on a
-- year of ledger they answer from a few thousand rows instead of scanning tens of
-- millions (README "Reports"; docs/performance.md gives both times).
--
-- Each is the plain view's rows with days counted in UTC, kept by refresh_report():
-- `pme-exporter report --refresh`, or the worker every PME_REPORT_REFRESH_S. A
-- refresh does not block readers (CONCURRENTLY, through the unique index each has),
-- and records when it ran in report_refreshes, which `report` prints beside the rows.
-- The listing reports (account_orders, trades_by_date, active_contracts) stay plain:
-- their filters are served by the tables' indexes.

CREATE TABLE report_refreshes (
    report        TEXT PRIMARY KEY,
    refreshed_at  TIMESTAMPTZ NOT NULL,
    duration_ms   DOUBLE PRECISION NOT NULL,
    row_count     BIGINT NOT NULL
);

CREATE MATERIALIZED VIEW report_trading_volume_mat AS SELECT * FROM report_trading_volume WITH NO DATA;
CREATE UNIQUE INDEX ON report_trading_volume_mat (trade_date, instrument_code);

CREATE MATERIALIZED VIEW report_account_activity_mat AS SELECT * FROM report_account_activity WITH NO DATA;
CREATE UNIQUE INDEX ON report_account_activity_mat (account_code, activity_date);

CREATE MATERIALIZED VIEW report_rejected_orders_mat AS SELECT * FROM report_rejected_orders WITH NO DATA;
CREATE UNIQUE INDEX ON report_rejected_orders_mat (date);

CREATE MATERIALIZED VIEW report_daily_trading_mat AS SELECT * FROM report_daily_trading WITH NO DATA;
CREATE UNIQUE INDEX ON report_daily_trading_mat (trading_date, instrument_code);

CREATE MATERIALIZED VIEW report_account_performance_mat AS SELECT * FROM report_account_performance WITH NO DATA;
CREATE UNIQUE INDEX ON report_account_performance_mat (code, month);

CREATE MATERIALIZED VIEW report_open_borrowing_mat AS SELECT * FROM report_open_borrowing WITH NO DATA;
CREATE UNIQUE INDEX ON report_open_borrowing_mat (instrument_code);

CREATE MATERIALIZED VIEW report_order_book_mat AS SELECT * FROM report_order_book WITH NO DATA;
CREATE UNIQUE INDEX ON report_order_book_mat (state, side);

-- Refreshing needs the view's owner: this function runs as its owner (the migrating
-- role) for whoever may execute it (grants.sql: pme_writer). It takes only the names of
-- existing materialized reports, and days are counted in UTC whatever the caller's zone.
CREATE FUNCTION refresh_report(report_name TEXT) RETURNS BIGINT
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp SET timezone = 'UTC' AS $fn$
DECLARE
    view_name TEXT := 'report_' || report_name || '_mat';
    populated BOOLEAN;
    started TIMESTAMPTZ := clock_timestamp();
    stored BIGINT;
BEGIN
    SELECT ispopulated INTO populated FROM pg_matviews
     WHERE schemaname = 'public' AND matviewname = view_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no materialized report named %', report_name USING ERRCODE = '42P01';
    END IF;
    IF populated THEN
        EXECUTE format('REFRESH MATERIALIZED VIEW CONCURRENTLY %I', view_name);
    ELSE  -- the first fill cannot be concurrent
        EXECUTE format('REFRESH MATERIALIZED VIEW %I', view_name);
    END IF;
    EXECUTE format('SELECT count(*) FROM %I', view_name) INTO stored;
    INSERT INTO report_refreshes AS r (report, refreshed_at, duration_ms, row_count)
    VALUES (report_name, now(), extract(epoch FROM clock_timestamp() - started) * 1000, stored)
    ON CONFLICT (report) DO UPDATE
       SET refreshed_at = EXCLUDED.refreshed_at, duration_ms = EXCLUDED.duration_ms,
           row_count = EXCLUDED.row_count;
    RETURN stored;
END
$fn$;
REVOKE EXECUTE ON FUNCTION refresh_report(TEXT) FROM PUBLIC;

SELECT refresh_report(r) FROM unnest(ARRAY['trading_volume', 'account_activity', 'rejected_orders',
    'daily_trading', 'account_performance', 'open_borrowing', 'order_book']) AS r;
