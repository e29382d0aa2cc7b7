-- Apple Live Photos: the still and the video arrive as two assets sharing a content identifier
-- (asset.created metadata.content_identifier). Kept in its own column so either one finds the
-- other, whichever arrived first: `paired_with` is looked up when an asset is read, never stored.
ALTER TABLE assets ADD COLUMN content_identifier text;
CREATE INDEX assets_content_identifier ON assets (workspace_id, content_identifier)
    WHERE content_identifier IS NOT NULL;
