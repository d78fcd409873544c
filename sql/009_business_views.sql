-- The ledger as the business reads it, for the business dashboard
-- (deploy/grafana/dashboards/pme-ledger.json), which reads only report views as
-- pme_reader. `pme-exporter report NAME` prints each one too.

-- Every answer to an order: accepted (an ack) or rejected (a nak, with its reason).
CREATE VIEW report_order_outcomes AS
SELECT 'accepted'::text AS outcome, a.acknowledged_at AS answered_at, a.order_nid,
       o.account_code, o.instrument_code, NULL::text AS message
FROM order_acks a LEFT JOIN orders o ON o.nid = a.order_nid
UNION ALL
SELECT 'rejected', n.rejected_at, n.order_nid, o.account_code, o.instrument_code, n.message
FROM order_naks n LEFT JOIN orders o ON o.nid = n.order_nid;

-- Per settlement day: the orders that settle on it, and whether it is a holiday.
CREATE VIEW report_settlement_calendar AS
SELECT coalesce(s.settlement_date, h.date) AS date,
       coalesce(s.orders, 0) AS orders_settling,
       coalesce(s.quantity, 0) AS quantity_settling,
       h.description AS holiday
FROM (SELECT settlement_date, count(*) AS orders, sum(quantity) AS quantity
      FROM orders WHERE settlement_date IS NOT NULL GROUP BY settlement_date) s
FULL JOIN holidays h ON h.date = s.settlement_date;
