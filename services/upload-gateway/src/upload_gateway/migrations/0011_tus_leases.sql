-- Who may change a tus upload, until when (uploads/tus/lease.py). It replaces the session-level
-- advisory lock that pinned a pooled connection for as long as a request body streamed: a
-- request claims the row in a short statement, renews it while its body arrives, and each write
-- of the upload's row checks, in its own short transaction, that the lease is still its own.
-- A table of its own, not columns of tus_uploads: creation must be claimed before its row exists.
-- A row outlives its request only when the gateway died; the next claim after expires_at takes it.
CREATE TABLE tus_leases (
    upload_id  text PRIMARY KEY,
    holder     uuid NOT NULL,
    expires_at timestamptz NOT NULL
);
