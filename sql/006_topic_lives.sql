-- A topic deleted and created again under the same name is a new life: Kafka
-- gives it a new topic ID, and its offsets start again at 0. Each life the
-- workers have seen is recorded here; exporter_offsets always belong to the
-- newest. Append rows, dead letters and parked children carry their life in
-- their identity, so a message of the second life is never taken for a replay
-- of the first one's message at the same partition and offset.
--
-- Rows written before this migration belong to life 1: the topic ID that a
-- worker first sees is recorded as that life.

CREATE TABLE exporter_topic_lives (
    topic       TEXT NOT NULL,
    life        INT NOT NULL,
    topic_id    TEXT NOT NULL,
    seen_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, life),
    UNIQUE (topic, topic_id)
);

ALTER TABLE order_acks ADD COLUMN src_life INT NOT NULL DEFAULT 1;
ALTER TABLE order_naks ADD COLUMN src_life INT NOT NULL DEFAULT 1;
ALTER TABLE parameters ADD COLUMN src_life INT NOT NULL DEFAULT 1;
ALTER TABLE session_times ADD COLUMN src_life INT NOT NULL DEFAULT 1;
-- Archives keep the columns of their tables, in the same order (retention copies rows with SELECT *).
ALTER TABLE order_acks_archive ADD COLUMN src_life INT NOT NULL DEFAULT 1;
ALTER TABLE order_naks_archive ADD COLUMN src_life INT NOT NULL DEFAULT 1;

ALTER TABLE order_acks DROP CONSTRAINT order_acks_src_key,
    ADD CONSTRAINT order_acks_src_key UNIQUE (src_topic, src_life, src_partition, src_offset);
ALTER TABLE order_naks DROP CONSTRAINT order_naks_src_key,
    ADD CONSTRAINT order_naks_src_key UNIQUE (src_topic, src_life, src_partition, src_offset);
ALTER TABLE parameters DROP CONSTRAINT parameters_src_key,
    ADD CONSTRAINT parameters_src_key UNIQUE (src_topic, src_life, src_partition, src_offset);
ALTER TABLE session_times DROP CONSTRAINT session_times_src_key,
    ADD CONSTRAINT session_times_src_key UNIQUE (src_topic, src_life, src_partition, src_offset);

ALTER TABLE exporter_dead_letters ADD COLUMN life INT NOT NULL DEFAULT 1;
ALTER TABLE exporter_dead_letters DROP CONSTRAINT exporter_dead_letters_topic_partition_offset_key,
    ADD CONSTRAINT exporter_dead_letters_source_key UNIQUE (topic, life, partition, "offset");

ALTER TABLE exporter_parked_children ADD COLUMN life INT NOT NULL DEFAULT 1;
ALTER TABLE exporter_parked_children DROP CONSTRAINT exporter_parked_children_pkey,
    ADD PRIMARY KEY (topic, life, partition, "offset");
