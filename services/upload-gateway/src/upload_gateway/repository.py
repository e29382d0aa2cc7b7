"""upload_sessions in PostgreSQL: insert, read, and apply a state machine event atomically."""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from rawdrive_contracts import CloudEvent, RejectionReason
from rawdrive_platform.outbox import change_with_events
from upload_gateway.sessions import TRANSITIONS, SessionEvent, UploadSession

_COLUMNS = tuple(field.name for field in msgspec.structs.fields(UploadSession))


def _session(row: asyncpg.Record | None) -> UploadSession | None:
    return None if row is None else msgspec.convert(dict(row), UploadSession)


_INSERT = f"INSERT INTO upload_sessions ({', '.join(_COLUMNS)}) VALUES ({', '.join(f'${i}' for i in range(1, len(_COLUMNS) + 1))})"


async def insert(pool: asyncpg.Pool, session: UploadSession, created: CloudEvent[Any]) -> None:
    """The new session and the event announcing it, in one statement (one round trip)."""
    values = msgspec.structs.asdict(session)
    await change_with_events(pool, _INSERT, [values[column] for column in _COLUMNS], [created])


async def get(
    conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str, upload_id: str
) -> UploadSession | None:
    row = await conn.fetchrow(
        "SELECT * FROM upload_sessions WHERE workspace_id = $1 AND upload_id = $2",
        workspace_id,
        upload_id,
    )
    return _session(row)


async def trace_context(conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str, upload_id: str) -> str | None:
    """The session's stored trace context; None for an unknown upload or one stored without."""
    return await conn.fetchval(
        "SELECT trace_context FROM upload_sessions WHERE workspace_id = $1 AND upload_id = $2",
        workspace_id,
        upload_id,
    )


async def apply(
    conn: asyncpg.Connection | asyncpg.Pool,
    upload_id: str,
    event: SessionEvent,
    *,
    sha256: str | None = None,
    rejection: tuple[RejectionReason, str] | None = None,
    bytes_received: int | None = None,
) -> UploadSession | None:
    """Move the session by `event` if its state allows; None when it did not move (another
    request moved it first, or it is in a state the event does not start from).

    `sha256` fills in the declared checksum if none was declared before; `rejection` records
    why the verifier refused; `bytes_received` only ever grows.
    """
    rule = TRANSITIONS[event]
    reason, detail = rejection if rejection is not None else (None, None)
    row = await conn.fetchrow(
        """UPDATE upload_sessions
              SET state = $3,
                  updated_at = now(),
                  sha256 = COALESCE(sha256, $4),
                  rejection_reason = COALESCE($5, rejection_reason),
                  rejection_detail = COALESCE($6, rejection_detail),
                  bytes_received = GREATEST(bytes_received, COALESCE($7, 0))
            WHERE upload_id = $1 AND state = ANY($2::text[])
        RETURNING *""",
        upload_id,
        sorted(rule.sources),
        rule.target,
        sha256,
        reason,
        detail,
        bytes_received,
    )
    return _session(row)


async def record_progress(
    conn: asyncpg.Connection | asyncpg.Pool, upload_id: str, bytes_received: int
) -> UploadSession | None:
    """Bytes arrived (tus): the session is `uploading` with at least this many bytes; None if
    it no longer accepts data."""
    return await apply(conn, upload_id, "receive", bytes_received=bytes_received)
