-- The large values every mint and governed call writes (an `audit.ingested` envelope is
-- ~2.7 KB, a ledger row's metadata ~1.7 KB) pass Postgres' 2 KB TOAST threshold and were
-- compressed with pglz: 35-45 us of Postgres CPU per archived envelope against 11-15 us with
-- lz4, at the same stored size (ARCHITECTURE.md "Storage compression"). Only new values are
-- written with lz4; old ones stay readable as they are. A server built without lz4 keeps
-- pglz rather than refusing to start.
DO $$
BEGIN
    ALTER TABLE event_archive ALTER COLUMN envelope SET COMPRESSION lz4;
    ALTER TABLE audit_events ALTER COLUMN metadata_json SET COMPRESSION lz4,
        ALTER COLUMN diagnostics_json SET COMPRESSION lz4,
        ALTER COLUMN determining_policies_json SET COMPRESSION lz4;
    ALTER TABLE admin_audit ALTER COLUMN payload_json SET COMPRESSION lz4;
    ALTER TABLE catalog_objects ALTER COLUMN doc SET COMPRESSION lz4;
    ALTER TABLE delegation_edges ALTER COLUMN doc SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE 'lz4 is not available in this server: large values stay pglz-compressed';
END
$$;
