-- tus creation-defer-length (uploads/tus_deferred.py). An upload created without its length is
-- no upload session until a PATCH brings Upload-Length (upload.session_created needs the size):
-- tus_deferred holds its owner, storage profile, expiry and the file it will be (its metadata,
-- the asset id and object key the session takes, so the bytes sent before land where the
-- session's object will be), tus_uploads its bytes with upload_length NULL until it is known.
ALTER TABLE tus_uploads ALTER COLUMN upload_length DROP NOT NULL;

CREATE TABLE tus_deferred (
    upload_id           text PRIMARY KEY,  -- the session's upload_id once the length arrives
    workspace_id        text NOT NULL,
    asset_id            text NOT NULL,
    created_by          text NOT NULL,
    storage_profile_ref text NOT NULL,
    object_key          text NOT NULL,
    metadata            text NOT NULL,     -- Upload-Metadata of the creation, as sent
    size_bytes          bigint NOT NULL CHECK (size_bytes > 0),  -- counted in the quota: its kind's limit
    created_at          timestamptz NOT NULL DEFAULT now(),
    expires_at          timestamptz NOT NULL
);
CREATE INDEX tus_deferred_by_workspace ON tus_deferred (workspace_id, expires_at) INCLUDE (size_bytes);

-- Quotas (0008, 0012): what counts as an open upload of a workspace, and with how many bytes, is
-- said once, by this view; the quota lock counts it. The next kind of open upload changes only
-- the view. An upload counts until it expires: a session while created or uploading, a partial
-- until it is joined (its row then goes), a deferred upload whose session does not exist yet
-- with the most it may hold (once its session exists, the session counts instead).
CREATE VIEW open_uploads AS
    SELECT s.workspace_id, s.size_bytes
      FROM upload_sessions s
     WHERE s.state IN ('created', 'uploading') AND s.expires_at > clock_timestamp()
    UNION ALL
    SELECT p.workspace_id, p.size_bytes
      FROM tus_partials p
     WHERE p.expires_at > clock_timestamp()
    UNION ALL
    SELECT d.workspace_id, d.size_bytes
      FROM tus_deferred d
     WHERE d.expires_at > clock_timestamp()
       AND NOT EXISTS (SELECT 1 FROM upload_sessions s WHERE s.upload_id = d.upload_id);

-- With the counting in the view, the lock function is two statements: the workspaces' locks,
-- taken in the order given (0008), then the count. A VOLATILE function's every statement takes
-- its own snapshot as it starts, so the count sees all that the locks' previous holders committed.
CREATE OR REPLACE FUNCTION lock_open_upload_usage(workspace_ids text[])
    RETURNS TABLE (workspace_id text, open_uploads bigint, bytes_in_flight bigint)
    LANGUAGE sql VOLATILE AS $$
    SELECT pg_advisory_xact_lock(hashtext('rawdrive.upload_quota'), hashtext(given.ws))
      FROM unnest(workspace_ids) WITH ORDINALITY AS given (ws, nth)
     ORDER BY given.nth;
    SELECT o.workspace_id, count(*), COALESCE(sum(o.size_bytes), 0)::bigint
      FROM open_uploads o
     WHERE o.workspace_id = ANY(workspace_ids)
     GROUP BY o.workspace_id;
$$;
