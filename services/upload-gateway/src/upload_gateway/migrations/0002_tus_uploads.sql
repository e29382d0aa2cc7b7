-- tus uploads: the S3 multipart upload behind each tus upload, and the bytes that do not yet
-- fill a part. A row changes only after the S3 write it describes succeeded, so any gateway
-- instance can resume from it. Part n (1-based) has ETag part_etags[n] and is part_size bytes,
-- except the last part of a completed upload.
CREATE TABLE tus_uploads (
    upload_id     text PRIMARY KEY,
    workspace_id  text NOT NULL,
    object_key    text NOT NULL,
    multipart_id  text,  -- NULL for an empty file, written in one PUT at creation
    upload_length bigint NOT NULL CHECK (upload_length >= 0),
    part_size     bigint NOT NULL CHECK (part_size > 0),
    part_etags    text[] NOT NULL DEFAULT '{}',
    -- Received bytes that do not fill a part yet (always shorter than part_size): kept here, in
    -- the same row as the offset, so the offset never claims bytes that are not stored.
    tail          bytea NOT NULL DEFAULT '',
    upload_offset bigint NOT NULL DEFAULT 0,
    metadata      text,
    expires_at    timestamptz NOT NULL,
    completed_at  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (octet_length(tail) < part_size),
    CHECK (upload_offset <= upload_length),
    CHECK (completed_at IS NOT NULL
           OR upload_offset = cardinality(part_etags) * part_size + octet_length(tail))
);

-- Media bytes do not compress: store the tail out of line without trying.
ALTER TABLE tus_uploads ALTER COLUMN tail SET STORAGE EXTERNAL;

-- For the janitor: unfinished uploads past their expiry hold an open multipart upload.
CREATE INDEX tus_uploads_unfinished_expiry ON tus_uploads (expires_at) WHERE completed_at IS NULL;
