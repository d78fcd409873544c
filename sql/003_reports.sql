-- The original design's report queries ("Querying Data", "Analytics and
-- Reporting") and the demo's two, as views. `pme-exporter report NAME` prints
-- one, filtering by account and date range with bound parameters; the README
-- ("Reports") documents every column.
--
-- Where the design filters on CURRENT_DATE or the current month, the view keeps
-- the day (or month) as a column instead, so any period can be asked for.
-- Days and months are taken in the session's TimeZone (`report --tz`).

-- Common Queries: all orders for an account (filter: account_code; newest first).
CREATE VIEW report_account_orders AS
SELECT nid, account_code, instrument_code, side, quantity, quantity_left, periode, state,
       settlement_date, aro_status, reff_request_id, created_at, updated_at
FROM orders;

-- Common Queries: trades in a date range (filter: matched_at).
CREATE VIEW report_trades_by_date AS
SELECT nid, kpei_reff, instrument_code, quantity, periode, state, matched_at, reimburse_at,
       fee_flat_rate, fee_borr_rate, fee_lend_rate, created_at, updated_at
FROM trades;

-- Common Queries: active contracts with their trade's reference and their order's account.
CREATE VIEW report_active_contracts AS
SELECT c.nid, c.trade_nid, c.order_nid, c.kpei_reff, c.account_code, c.instrument_code, c.side,
       c.quantity, c.state, c.matched_at, c.reimburse_at, c.fee_flat_val, c.fee_val_daily,
       c.created_at, t.kpei_reff AS trade_kpei_reff, o.account_code AS order_account_code
FROM contracts c
JOIN trades t ON c.trade_nid = t.nid
JOIN orders o ON c.order_nid = o.nid
WHERE c.state = 'A';

-- Common Queries: trading volume by instrument, per day matched.
CREATE VIEW report_trading_volume AS
SELECT matched_at::date AS trade_date,
       instrument_code,
       count(*) AS trade_count,
       sum(quantity) AS total_quantity
FROM trades
WHERE matched_at IS NOT NULL
GROUP BY matched_at::date, instrument_code;

-- Common Queries: account activity summary, per day the orders were created.
CREATE VIEW report_account_activity AS
SELECT account_code,
       created_at::date AS activity_date,
       count(DISTINCT CASE WHEN side = 'BORR' THEN nid END) AS borr_orders,
       count(DISTINCT CASE WHEN side = 'LEND' THEN nid END) AS lend_orders,
       sum(CASE WHEN side = 'BORR' AND state = 'M' THEN quantity ELSE 0 END) AS borr_matched,
       sum(CASE WHEN side = 'LEND' AND state = 'M' THEN quantity ELSE 0 END) AS lend_matched
FROM orders
GROUP BY account_code, created_at::date;

-- Common Queries: rejected orders analysis, per day.
CREATE VIEW report_rejected_orders AS
SELECT rejected_at::date AS date,
       count(*) AS rejection_count,
       string_agg(DISTINCT message, '; ' ORDER BY message) AS rejection_reasons
FROM order_naks
GROUP BY rejected_at::date;

-- Business Intelligence: daily trading report (matched trades).
CREATE VIEW report_daily_trading AS
SELECT matched_at::date AS trading_date,
       instrument_code,
       count(*) AS trades_count,
       sum(quantity) AS total_quantity,
       avg(quantity) AS avg_quantity
FROM trades
WHERE state = 'M'
GROUP BY matched_at::date, instrument_code;

-- Business Intelligence: account performance, per month the orders were created.
CREATE VIEW report_account_performance AS
SELECT a.code,
       a.participant_code,
       date_trunc('month', o.created_at)::date AS month,
       count(DISTINCT o.nid) AS total_orders,
       count(DISTINCT CASE WHEN o.state = 'M' THEN o.nid END) AS matched_orders,
       sum(CASE WHEN o.state = 'M' THEN o.quantity ELSE 0 END) AS total_volume
FROM accounts a
JOIN orders o ON a.code = o.account_code
GROUP BY a.code, a.participant_code, date_trunc('month', o.created_at)::date;

-- Demo: open borrowing by instrument (active BORR contracts).
CREATE VIEW report_open_borrowing AS
SELECT instrument_code,
       count(*) AS contracts,
       sum(quantity) AS quantity,
       sum(fee_val_daily) AS fee_per_day
FROM contracts
WHERE state = 'A' AND side = 'BORR'
GROUP BY instrument_code;

-- Demo: order book by state and side.
CREATE VIEW report_order_book AS
SELECT state, side, count(*) AS orders, sum(quantity_left) AS quantity_left
FROM orders
GROUP BY state, side;
