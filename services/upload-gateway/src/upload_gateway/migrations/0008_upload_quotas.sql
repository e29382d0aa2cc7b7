-- Per-workspace upload quotas (quotas.py): the open sessions of a workspace and the bytes they
-- declared, counted when sessions are created. Gateway replicas create sessions concurrently, so
-- the count is taken under a transaction-level advisory lock per workspace, and the inserts
-- follow in the same transaction: no two replicas can both pass the limit.
CREATE INDEX upload_sessions_open_by_workspace ON upload_sessions (workspace_id, expires_at)
    INCLUDE (size_bytes) WHERE state IN ('created', 'uploading');

-- Locks the workspaces (in the order given: callers sort them, so two batches never deadlock),
-- then counts. VOLATILE and plpgsql: the count runs as a statement of its own, with a snapshot
-- taken after the locks were granted, so it sees every session committed by the lock's previous
-- holder. The two-key lock form keeps these locks apart from the single-key ones used elsewhere.
CREATE FUNCTION lock_open_upload_usage(workspace_ids text[])
    RETURNS TABLE (workspace_id text, open_uploads bigint, bytes_in_flight bigint)
    LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    ws text;
BEGIN
    FOREACH ws IN ARRAY workspace_ids LOOP
        PERFORM pg_advisory_xact_lock(hashtext('rawdrive.upload_quota'), hashtext(ws));
    END LOOP;
    RETURN QUERY
        SELECT s.workspace_id, count(*), COALESCE(sum(s.size_bytes), 0)::bigint
          FROM upload_sessions s
         WHERE s.workspace_id = ANY(workspace_ids)
           AND s.state IN ('created', 'uploading')
           AND s.expires_at > clock_timestamp()
         GROUP BY s.workspace_id;
END
$$;
