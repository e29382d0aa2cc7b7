-- One row per upload session. `state` moves only through sessions.TRANSITIONS, applied as
-- `UPDATE ... WHERE state = ANY(sources)`, so concurrent requests cannot both move a session.
CREATE TABLE upload_sessions (
    upload_id            text PRIMARY KEY,
    workspace_id         text NOT NULL,
    asset_id             text NOT NULL UNIQUE,
    library_id           text NOT NULL,
    folder_id            text,
    file_name            text NOT NULL,
    mime_type            text NOT NULL,
    kind                 text NOT NULL CHECK (kind IN ('photo', 'video', 'document')),
    size_bytes           bigint NOT NULL CHECK (size_bytes > 0),
    sha256               text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    resumable_protocol   text NOT NULL CHECK (resumable_protocol IN ('tus', 's3_multipart')),
    provider             text NOT NULL CHECK (provider IN ('r2', 'byos')),
    storage_profile_ref  text NOT NULL,
    object_key           text NOT NULL,
    multipart_upload_id  text,
    part_size            bigint,
    part_count           int,
    state                text NOT NULL DEFAULT 'created' CHECK (state IN
                             ('created', 'uploading', 'verifying', 'committed', 'aborted', 'expired')),
    bytes_received       bigint NOT NULL DEFAULT 0 CHECK (bytes_received >= 0),
    rejection_reason     text,
    rejection_detail     text,
    created_by           text NOT NULL,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    expires_at           timestamptz NOT NULL,
    CHECK ((resumable_protocol = 's3_multipart') = (part_size IS NOT NULL AND part_count IS NOT NULL))
);

-- The janitor and listings look for open sessions by workspace and by expiry.
CREATE INDEX upload_sessions_workspace ON upload_sessions (workspace_id, created_at);
CREATE INDEX upload_sessions_open_expiry ON upload_sessions (expires_at)
    WHERE state IN ('created', 'uploading');
