-- The trace context (W3C headers as JSON, telemetry.stored_context) of the request that opened
-- the session: every later request about the upload is a span of that trace (tracing.py), so
-- one upload reads as one trace. NULL for sessions opened before this column existed.
ALTER TABLE upload_sessions ADD COLUMN trace_context text;
