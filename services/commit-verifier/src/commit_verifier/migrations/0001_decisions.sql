-- One decision per upload, final. The announcing event is kept verbatim so a redelivered commit
-- request republishes exactly the same event (same id, same time) without reading storage again.
CREATE TABLE decisions (
    upload_id     text PRIMARY KEY,
    workspace_id  text NOT NULL,
    asset_id      text NOT NULL,
    outcome       text NOT NULL CHECK (outcome IN ('verified', 'rejected')),
    reason        text,
    sha256        text,
    event_id      text NOT NULL,
    event         jsonb NOT NULL,
    decided_at    timestamptz NOT NULL DEFAULT now()
);

-- Duplicate detection: the earliest verified asset with the same content in the workspace.
CREATE INDEX decisions_verified_content ON decisions (workspace_id, sha256, decided_at)
    WHERE outcome = 'verified';
