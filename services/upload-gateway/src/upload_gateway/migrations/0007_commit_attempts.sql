-- A commit the client got wrong leaves the upload committable (sessions.py): count the commits,
-- which are bounded, and keep the SHA-256 given with the latest one apart from the one declared
-- at creation, so a corrected commit is compared with the declaration and not with the typo.
ALTER TABLE upload_sessions ADD COLUMN commit_attempts int NOT NULL DEFAULT 0;
ALTER TABLE upload_sessions ADD COLUMN commit_sha256 text CHECK (commit_sha256 ~ '^[0-9a-f]{64}$');
