-- The active bring-your-own-bucket profile of each workspace; no row means the managed bucket.
-- Only non-secret fields live here: the credentials are sealed in the JetStream KV record named
-- by `ref` (rawdrive_platform.profiles). A change writes a new ref; old records stay in KV, so
-- sessions started under an earlier profile still resolve it.
CREATE TABLE storage_profiles (
    workspace_id   text PRIMARY KEY,
    ref            text NOT NULL UNIQUE,
    mode           text NOT NULL CHECK (mode = 'byos_s3'),
    bucket         text NOT NULL,
    endpoint       text,
    region         text NOT NULL,
    key_prefix     text NOT NULL,
    encryption     text NOT NULL CHECK (encryption IN ('none', 'sse_s3', 'sse_kms')),
    kms_key_id     text,
    masked_key_id  text NOT NULL,
    created_by     text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
