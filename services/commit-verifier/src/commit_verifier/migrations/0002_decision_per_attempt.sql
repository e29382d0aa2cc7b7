-- A checksum mismatch the client may still correct (CommitRequested.attempts_left > 0) is refused,
-- not rejected, and the client commits again: each attempt is decided once, so a decision is
-- keyed by upload and attempt. Rows decided before this migration were attempt 1.
ALTER TABLE decisions ADD COLUMN attempt int NOT NULL DEFAULT 1;
ALTER TABLE decisions DROP CONSTRAINT decisions_pkey;
ALTER TABLE decisions ADD PRIMARY KEY (upload_id, attempt);
ALTER TABLE decisions DROP CONSTRAINT decisions_outcome_check;
ALTER TABLE decisions ADD CONSTRAINT decisions_outcome_check
    CHECK (outcome IN ('verified', 'rejected', 'refused'));
