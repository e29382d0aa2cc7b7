-- Duplicates: an asset's verified SHA-256 (upload.verified / asset.created, description.sha256),
-- kept in its own column so session creation with on_duplicate=skip finds an available asset
-- with the same bytes by index, and an asset's `duplicate_of` is looked up when it is read.
ALTER TABLE assets ADD COLUMN sha256 text;
UPDATE assets SET sha256 = lower(description->>'sha256') WHERE description IS NOT NULL;
CREATE INDEX assets_sha256 ON assets (workspace_id, sha256, created_at, asset_id)
    WHERE sha256 IS NOT NULL AND status = 'available';
