-- Least privilege (README "Security"). Applied by `pme-exporter migrate` after the
-- numbered migrations, every time it runs as the owner of the tables, so a role
-- created later, or a table added by a later migration, gets its grants.
-- Nothing happens for roles that do not exist: create them first (README).
--   pme_writer: what the worker writes, and nothing else (no DROP, ALTER, TRUNCATE);
--   pme_reader: the report views (plain and materialized) and their refresh times.
-- Only a privilege the role lacks is granted: a GRANT rewrites the object's catalog row
-- even when nothing changes, and would then collide ("tuple concurrently updated") with
-- a refresh of a materialized report running at the same moment.
DO $grants$
DECLARE
    wanted CONSTANT text[][] := ARRAY[
        -- role, privilege, relation
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'participants'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'accounts'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'instruments'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'orders'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'trades'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'contracts'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'order_acks'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'order_naks'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'parameters'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'holidays'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'session_times'],
        -- A worker that finds the topic recreated drops the offsets of the old life.
        ['pme_writer', 'SELECT,INSERT,UPDATE,DELETE', 'exporter_offsets'],
        ['pme_writer', 'SELECT,INSERT,UPDATE', 'exporter_dead_letters'],
        -- Parked children are adopted by deleting them in the flush that applies them.
        ['pme_writer', 'SELECT,INSERT,DELETE', 'exporter_parked_children'],
        -- ... and records the topic's new life.
        ['pme_writer', 'SELECT,INSERT', 'exporter_topic_lives'],
        -- The worker checks at start-up that every migration is applied.
        ['pme_writer', 'SELECT', 'schema_migrations'],
        -- The worker may refresh the materialized reports (PME_REPORT_REFRESH_S).
        ['pme_writer', 'SELECT', 'report_refreshes'],
        ['pme_reader', 'SELECT', 'report_account_orders'],
        ['pme_reader', 'SELECT', 'report_trades_by_date'],
        ['pme_reader', 'SELECT', 'report_active_contracts'],
        ['pme_reader', 'SELECT', 'report_trading_volume'],
        ['pme_reader', 'SELECT', 'report_account_activity'],
        ['pme_reader', 'SELECT', 'report_rejected_orders'],
        ['pme_reader', 'SELECT', 'report_daily_trading'],
        ['pme_reader', 'SELECT', 'report_account_performance'],
        ['pme_reader', 'SELECT', 'report_open_borrowing'],
        ['pme_reader', 'SELECT', 'report_order_book'],
        ['pme_reader', 'SELECT', 'report_order_outcomes'],
        ['pme_reader', 'SELECT', 'report_settlement_calendar'],
        ['pme_reader', 'SELECT', 'report_trading_volume_mat'],
        ['pme_reader', 'SELECT', 'report_account_activity_mat'],
        ['pme_reader', 'SELECT', 'report_rejected_orders_mat'],
        ['pme_reader', 'SELECT', 'report_daily_trading_mat'],
        ['pme_reader', 'SELECT', 'report_account_performance_mat'],
        ['pme_reader', 'SELECT', 'report_open_borrowing_mat'],
        ['pme_reader', 'SELECT', 'report_order_book_mat'],
        ['pme_reader', 'SELECT', 'report_refreshes']
    ];
    i int;
    privilege text;
    sequence_name text;
BEGIN
    FOR i IN 1 .. array_length(wanted, 1) LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = wanted[i][1]);
        FOREACH privilege IN ARRAY string_to_array(wanted[i][2], ',') LOOP
            IF NOT has_table_privilege(wanted[i][1], format('%I', wanted[i][3]), privilege) THEN
                EXECUTE format('GRANT %s ON %I TO %I', privilege, wanted[i][3], wanted[i][1]);
            END IF;
        END LOOP;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_writer') THEN
        FOR sequence_name IN SELECT quote_ident(sequencename) FROM pg_sequences WHERE schemaname = 'public' LOOP
            IF NOT has_sequence_privilege('pme_writer', sequence_name, 'USAGE') THEN
                EXECUTE format('GRANT USAGE ON SEQUENCE %s TO pme_writer', sequence_name);
            END IF;
        END LOOP;
        IF NOT has_function_privilege('pme_writer', 'refresh_report(text)', 'EXECUTE') THEN
            GRANT EXECUTE ON FUNCTION refresh_report(TEXT) TO pme_writer;
        END IF;
        -- Staging tables and the row-by-row function are temporary, per connection.
        FOREACH privilege IN ARRAY ARRAY['CONNECT', 'TEMPORARY'] LOOP
            IF NOT has_database_privilege('pme_writer', current_database(), privilege) THEN
                EXECUTE format('GRANT %s ON DATABASE %I TO pme_writer', privilege, current_database());
            END IF;
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pme_reader')
       AND NOT has_database_privilege('pme_reader', current_database(), 'CONNECT') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO pme_reader', current_database());
    END IF;
END
$grants$;
