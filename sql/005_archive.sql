-- Archive tables for `pme-exporter retention archive` (README "Operating"):
-- the same columns in the same order as the live table, so rows move with
-- INSERT INTO <table>_archive SELECT * FROM <deleted rows>. No unique keys: a
-- key archived, written again by a later event and archived again has two rows.
-- A later migration that changes a retained table changes its archive too.
-- The live tables get no index for retention: every index costs each write of
-- the exporter; the retention scan walks the primary key from its oldest end.

CREATE TABLE order_acks_archive (LIKE order_acks);
CREATE INDEX order_acks_archive_order_nid_idx ON order_acks_archive (order_nid);
CREATE INDEX order_acks_archive_src_idx ON order_acks_archive (src_partition, src_offset);

CREATE TABLE order_naks_archive (LIKE order_naks);
CREATE INDEX order_naks_archive_order_nid_idx ON order_naks_archive (order_nid);
CREATE INDEX order_naks_archive_src_idx ON order_naks_archive (src_partition, src_offset);

CREATE TABLE contracts_archive (LIKE contracts);
CREATE INDEX contracts_archive_nid_idx ON contracts_archive (nid);
CREATE INDEX contracts_archive_trade_nid_idx ON contracts_archive (trade_nid);
CREATE INDEX contracts_archive_order_nid_idx ON contracts_archive (order_nid);

CREATE TABLE orders_archive (LIKE orders);
CREATE INDEX orders_archive_nid_idx ON orders_archive (nid);
CREATE INDEX orders_archive_updated_at_idx ON orders_archive (updated_at);

CREATE TABLE trades_archive (LIKE trades);
CREATE INDEX trades_archive_nid_idx ON trades_archive (nid);
CREATE INDEX trades_archive_updated_at_idx ON trades_archive (updated_at);
