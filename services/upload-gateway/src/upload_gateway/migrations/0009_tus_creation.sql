-- Sessions opened by the tus creation endpoint (POST /v1/workspaces/{ws}/tus) are committed by
-- the gateway when their last byte arrives: a stock tus client knows no commit call.
ALTER TABLE upload_sessions ADD COLUMN commit_on_complete boolean NOT NULL DEFAULT false;
