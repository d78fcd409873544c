-- Least privilege (README "Security"). Applied by `pme-exporter migrate` after the
-- numbered migrations, every time it runs as the owner of the tables, so a role
-- created later, or a table added by a later migration, gets its grants.
-- Nothing happens for roles that do not exist: create them first (README).
--   pme_writer: what the worker writes, and nothing else (no DROP, ALTER, TRUNCATE);
--   pme_reader: the report views (plain and materialized) and their refresh times.
DO $grants$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_writer') THEN
        GRANT SELECT, INSERT, UPDATE ON
            participants, accounts, instruments, orders, trades, contracts,
            order_acks, order_naks, parameters, holidays, session_times,
            exporter_offsets, exporter_dead_letters
            TO pme_writer;
        -- Parked children are adopted by deleting them in the flush that applies them.
        GRANT SELECT, INSERT, DELETE ON exporter_parked_children TO pme_writer;
        -- A worker that finds the topic recreated records its new life and drops the
        -- offsets of the old one, in one transaction.
        GRANT SELECT, INSERT ON exporter_topic_lives TO pme_writer;
        GRANT DELETE ON exporter_offsets TO pme_writer;
        -- The worker checks at start-up that every migration is applied.
        GRANT SELECT ON schema_migrations TO pme_writer;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO pme_writer;
        -- The worker refreshes the materialized reports (PME_REPORT_REFRESH_S) through
        -- refresh_report, which runs as the views' owner.
        GRANT EXECUTE ON FUNCTION refresh_report(TEXT) TO pme_writer;
        GRANT SELECT ON report_refreshes TO pme_writer;
        -- Staging tables and the row-by-row function are temporary, per connection.
        EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO pme_writer', current_database());
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_reader') THEN
        GRANT SELECT ON
            report_account_orders, report_trades_by_date, report_active_contracts, report_trading_volume, report_account_activity,
            report_rejected_orders, report_daily_trading, report_account_performance,
            report_open_borrowing, report_order_book,
            report_trading_volume_mat, report_account_activity_mat, report_rejected_orders_mat,
            report_daily_trading_mat, report_account_performance_mat, report_open_borrowing_mat,
            report_order_book_mat, report_refreshes,
            report_order_outcomes, report_settlement_calendar
            TO pme_reader;
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO pme_reader', current_database());
    END IF;
END
$grants$;
