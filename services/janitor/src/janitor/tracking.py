"""Keep the janitor's record of open upload sessions in step with upload events.

Every handler is idempotent: a redelivered event changes nothing the first delivery did.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from rawdrive_contracts import (
    CloudEvent,
    UploadAborted,
    UploadExpired,
    UploadRejected,
    UploadSessionCreated,
    UploadVerified,
)

CLOSING_EVENTS = (UploadVerified, UploadRejected, UploadAborted, UploadExpired)


async def track_session(pool: asyncpg.Pool, event: CloudEvent[UploadSessionCreated]) -> None:
    data = event.data
    await pool.execute(
        """INSERT INTO tracked_uploads (upload_id, workspace_id, asset_id, storage_profile_ref,
               object_key, resumable_protocol, expires_at, created_event_id)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
           ON CONFLICT (upload_id) DO NOTHING""",
        data.upload_id, data.workspace_id, data.asset_id, data.storage_profile_ref,
        data.object_key, data.resumable_protocol, data.expires_at, event.id,
    )


async def close_session(pool: asyncpg.Pool, event: CloudEvent[Any]) -> None:
    # Only the first closing event counts; an expiry that raced a commit does not reopen it.
    await pool.execute(
        """UPDATE tracked_uploads SET closed_by = $2, closed_at = $3
           WHERE upload_id = $1 AND closed_by IS NULL""",
        event.data.upload_id, type(event.data).spec.action, event.time,
    )
