-- The large values every mint and governed call writes (an `audit.ingested` envelope is
-- ~2.7 KB, a ledger row's metadata ~1.7 KB) pass Postgres' 2 KB TOAST threshold and were
-- compressed with pglz: 35-45 us of Postgres CPU per archived envelope against 11-15 us with
-- lz4, at about the same stored size (ARCHITECTURE.md "Storage compression"). Only new
-- values are written with lz4; old ones stay readable as they are, nothing is rewritten.
--
-- `SET COMPRESSION` changes the catalog only, but takes an ACCESS EXCLUSIVE lock on each
-- table: behind a long reader (an export, `pg_dump`) it would queue and hold up every query
-- on the tables it already locked. It gives up after a few seconds instead, which fails the
-- start; the next start tries again.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    -- A server built without lz4 keeps pglz rather than refusing to start.
    IF NOT EXISTS (
        SELECT 1 FROM pg_settings
         WHERE name = 'default_toast_compression' AND 'lz4' = ANY (enumvals)
    ) THEN
        RAISE NOTICE 'lz4 is not available in this server: large values stay pglz-compressed';
        RETURN;
    END IF;
    ALTER TABLE event_archive ALTER COLUMN envelope SET COMPRESSION lz4;
    ALTER TABLE audit_events ALTER COLUMN metadata_json SET COMPRESSION lz4,
        ALTER COLUMN diagnostics_json SET COMPRESSION lz4,
        ALTER COLUMN determining_policies_json SET COMPRESSION lz4;
    ALTER TABLE admin_audit ALTER COLUMN payload_json SET COMPRESSION lz4;
    ALTER TABLE catalog_objects ALTER COLUMN doc SET COMPRESSION lz4;
    ALTER TABLE delegation_edges ALTER COLUMN doc SET COMPRESSION lz4;
END
$$;
