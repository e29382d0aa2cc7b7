-- (0011 is left to the tus leases migration of another branch: versions may have gaps.)
-- tus concatenation (uploads/tus/concat.py). A partial upload is a tus upload of its own with no
-- upload session: tus_partials holds its owner, its workspace's storage profile and its expiry
-- (a session's role for any other upload), tus_uploads its bytes as for any upload. A final
-- upload is an upload session whose object storage joined from partials.
ALTER TABLE tus_uploads ADD COLUMN concat text
    CHECK (concat IS NULL OR concat = 'partial' OR concat LIKE 'final;%');

CREATE TABLE tus_partials (
    upload_id           text PRIMARY KEY,
    workspace_id        text NOT NULL,
    created_by          text NOT NULL,
    storage_profile_ref text NOT NULL,
    object_key          text NOT NULL,
    size_bytes          bigint NOT NULL CHECK (size_bytes >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);
CREATE INDEX tus_partials_by_workspace ON tus_partials (workspace_id, expires_at) INCLUDE (size_bytes);

-- Quotas (0008): a partial upload not yet joined or expired counts as an open upload of its
-- workspace with its bytes, as a session does. Same locks, same counting; partials added.
CREATE OR REPLACE FUNCTION lock_open_upload_usage(workspace_ids text[])
    RETURNS TABLE (workspace_id text, open_uploads bigint, bytes_in_flight bigint)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ws text;
BEGIN
    FOREACH ws IN ARRAY workspace_ids LOOP
        PERFORM pg_advisory_xact_lock(hashtext('rawdrive.upload_quota'), hashtext(ws));
    END LOOP;
    RETURN QUERY
        SELECT open.workspace_id, count(*), COALESCE(sum(open.size_bytes), 0)::bigint
          FROM (SELECT s.workspace_id, s.size_bytes
                  FROM upload_sessions s
                 WHERE s.workspace_id = ANY(workspace_ids)
                   AND s.state IN ('created', 'uploading')
                   AND s.expires_at > clock_timestamp()
                UNION ALL
                SELECT p.workspace_id, p.size_bytes
                  FROM tus_partials p
                 WHERE p.workspace_id = ANY(workspace_ids)
                   AND p.expires_at > clock_timestamp()) AS open
         GROUP BY open.workspace_id;
END
$$;
