-- Append tables were unique on (src_partition, src_offset) alone, so the rows of
-- a second (or recreated) topic on the same database were taken for replays and
-- dropped. The topic is now part of each append row's identity.
--
-- Existing rows keep their identity: they get the topic recorded in
-- exporter_offsets when there is exactly one (the usual case), else '' (unknown),
-- which no real topic name can equal.

DO $$
DECLARE
    only_topic text;
BEGIN
    SELECT CASE WHEN count(DISTINCT topic) = 1 THEN min(topic) ELSE '' END
      INTO only_topic FROM exporter_offsets;
    RAISE NOTICE 'append rows written before 004 are attributed to topic %', quote_literal(only_topic);
    EXECUTE format('ALTER TABLE order_acks ADD COLUMN src_topic TEXT NOT NULL DEFAULT %L', only_topic);
    EXECUTE format('ALTER TABLE order_naks ADD COLUMN src_topic TEXT NOT NULL DEFAULT %L', only_topic);
    EXECUTE format('ALTER TABLE parameters ADD COLUMN src_topic TEXT NOT NULL DEFAULT %L', only_topic);
    EXECUTE format('ALTER TABLE session_times ADD COLUMN src_topic TEXT NOT NULL DEFAULT %L', only_topic);
END $$;

ALTER TABLE order_acks ALTER COLUMN src_topic DROP DEFAULT;
ALTER TABLE order_naks ALTER COLUMN src_topic DROP DEFAULT;
ALTER TABLE parameters ALTER COLUMN src_topic DROP DEFAULT;
ALTER TABLE session_times ALTER COLUMN src_topic DROP DEFAULT;

ALTER TABLE order_acks DROP CONSTRAINT order_acks_src_partition_src_offset_key,
    ADD CONSTRAINT order_acks_src_key UNIQUE (src_topic, src_partition, src_offset);
ALTER TABLE order_naks DROP CONSTRAINT order_naks_src_partition_src_offset_key,
    ADD CONSTRAINT order_naks_src_key UNIQUE (src_topic, src_partition, src_offset);
ALTER TABLE parameters DROP CONSTRAINT parameters_src_partition_src_offset_key,
    ADD CONSTRAINT parameters_src_key UNIQUE (src_topic, src_partition, src_offset);
ALTER TABLE session_times DROP CONSTRAINT session_times_src_partition_src_offset_key,
    ADD CONSTRAINT session_times_src_key UNIQUE (src_topic, src_partition, src_offset);
