-- The asset catalogue: a read model kept from upload.verified and the asset.* events. One column
-- per kind of fact (catalogue.AssetFacts); `status` is derived from them by catalogue.status_of
-- on every write and stored only so listings can filter and index on it.
CREATE TABLE assets (
    asset_id      text PRIMARY KEY,
    workspace_id  text NOT NULL,
    status        text CHECK (status IN ('processing', 'available', 'failed', 'deleted', 'purged')),
    -- When the catalogue first heard of the asset: the listing's sort key, never updated, so a
    -- keyset cursor stays valid whatever arrives later.
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    -- Copied from `description` for filtering.
    library_id    text,
    folder_id     text,
    description   jsonb,
    verified_at   timestamptz,
    processed     jsonb,
    failure       jsonb,
    deletion      jsonb,
    restored_at   timestamptz,
    purged_at     timestamptz
);

-- Listings: one workspace, newest first, keyset on (created_at, asset_id).
CREATE INDEX assets_listing ON assets (workspace_id, created_at DESC, asset_id DESC);
