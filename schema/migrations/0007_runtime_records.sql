-- Authority records, sessions and approval holds live in catalog_objects (kinds
-- 'authority_record', 'session', 'approval'); these indexes serve their lookups.

-- Grant-revocation cascade: a subject's active authority records.
CREATE INDEX catalog_objects_record_subject
    ON catalog_objects (zone_id, (doc #>> '{data,authority_record,subject_id}'))
    WHERE kind = 'authority_record';
-- Reaper: the records still marked active.
CREATE INDEX catalog_objects_record_active
    ON catalog_objects (zone_id)
    WHERE kind = 'authority_record' AND doc #>> '{data,authority_record,status}' = 'active';
-- child_count of sessions.
CREATE INDEX catalog_objects_session_parent
    ON catalog_objects (zone_id, (doc #>> '{data,session,parent_session_id}'))
    WHERE kind = 'session';
-- prior_approved / prior_rejected of approval holds.
CREATE INDEX catalog_objects_approval_binding
    ON catalog_objects (zone_id, (doc #>> '{data,approval,binding}'))
    WHERE kind = 'approval';
