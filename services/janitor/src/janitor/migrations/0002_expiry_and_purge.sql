-- A committed session is the verifier's: the janitor no longer expires it (as in the gateway,
-- where a `verifying` session does not expire).
ALTER TABLE tracked_uploads ADD COLUMN commit_requested_at timestamptz;

-- A closing event redelivered ahead of its session's creation event is remembered here, so the
-- late creation event does not open (and later expire) a session that is already closed.
CREATE TABLE early_closures (
    upload_id  text PRIMARY KEY,
    closed_by  text NOT NULL,
    closed_at  timestamptz NOT NULL
);

-- Assets the janitor knows of (from upload.verified / asset.created) and their soft-delete
-- lifecycle (from asset.deleted / asset.restored), for purging and for telling orphans apart.
CREATE TABLE tracked_assets (
    asset_id             text PRIMARY KEY,
    workspace_id         text NOT NULL,
    -- NULL while only a deletion or restore was seen: those events carry no profile.
    storage_profile_ref  text,
    deleted_at           timestamptz,
    purge_after          timestamptz,
    restored_at          timestamptz,
    purged_at            timestamptz,
    purge_event_id       text
);
CREATE INDEX tracked_assets_deleted ON tracked_assets (deleted_at)
    WHERE deleted_at IS NOT NULL AND purged_at IS NULL;
