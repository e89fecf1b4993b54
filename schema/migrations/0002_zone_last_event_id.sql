-- Zones point back into the log: the id of the last event applied to each zone.
-- Rows projected before this column existed hold NULL until `serval-replay rebuild
-- --projection zones` re-derives them from the log (the schema-change drill in tests/).
ALTER TABLE zones ADD COLUMN last_event_id text;
