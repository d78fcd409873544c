-- The table a dead letter was meant for, as a column of its own: `dead-letters
-- --table` selects on it, where it used to parse the error text. NULL when the
-- message never got as far as a table (it could not be decoded).
ALTER TABLE exporter_dead_letters ADD COLUMN table_name TEXT;

-- Refusals written before this migration name their table at the start of the error.
UPDATE exporter_dead_letters
SET table_name = split_part(error, ':', 1)
WHERE stage = 'database'
  AND split_part(error, ':', 1) IN ('participants', 'accounts', 'instruments', 'orders', 'trades',
      'contracts', 'order_acks', 'order_naks', 'parameters', 'holidays', 'session_times');
