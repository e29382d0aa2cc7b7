-- The janitor's own view of upload sessions, built from upload events: which sessions are
-- still open and when they expire, and where their bytes live, so it can clean up after them.
CREATE TABLE tracked_uploads (
    upload_id            text PRIMARY KEY,
    workspace_id         text NOT NULL,
    asset_id             text NOT NULL,
    storage_profile_ref  text NOT NULL,
    object_key           text NOT NULL,
    resumable_protocol   text NOT NULL,
    expires_at           timestamptz NOT NULL,
    -- NULL while the session is open; set by the first closing event (verified, rejected, ...).
    closed_by            text,
    closed_at            timestamptz,
    created_event_id     text NOT NULL
);
CREATE INDEX tracked_uploads_open_by_expiry ON tracked_uploads (expires_at) WHERE closed_by IS NULL;
