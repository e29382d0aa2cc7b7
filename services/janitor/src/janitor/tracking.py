"""The janitor's own records, built from events: open upload sessions and known assets.

Every writer is idempotent: a redelivered event changes nothing the first delivery did, and
events arriving out of order end in the same state (see `policy.on_deleted` / `on_restored`).
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from janitor import policy
from janitor.policy import AssetLifecycle, TrackedSession
from rawdrive_contracts import (
    AssetCreated,
    AssetDeleted,
    AssetRestored,
    CloudEvent,
    CommitRefused,
    CommitRequested,
    UploadExpired,
    UploadSessionCreated,
    UploadVerified,
)

_SESSION_COLUMNS = """upload_id, workspace_id, asset_id, storage_profile_ref, object_key, expires_at,
                      commit_requested_at, closed_by"""
_ASSET_COLUMNS = """asset_id, workspace_id, storage_profile_ref, deleted_at, purge_after, restored_at,
                    purged_at"""


class TrackedAsset(msgspec.Struct, frozen=True, kw_only=True):
    asset_id: str
    workspace_id: str
    storage_profile_ref: str | None
    lifecycle: AssetLifecycle


# -- upload sessions ----------------------------------------------------------------------------


async def track_session(conn: asyncpg.Connection, event: CloudEvent[UploadSessionCreated]) -> None:
    data = event.data
    # A closing event that overtook this one (a redelivery) closes the session from the start.
    await conn.execute(
        """INSERT INTO tracked_uploads (upload_id, workspace_id, asset_id, storage_profile_ref,
               object_key, resumable_protocol, expires_at, created_event_id, closed_by, closed_at)
           SELECT $1, $2, $3, $4, $5, $6, $7, $8, c.closed_by, c.closed_at
           FROM (SELECT 1) AS one LEFT JOIN early_closures c ON c.upload_id = $1
           ON CONFLICT (upload_id) DO NOTHING""",
        data.upload_id, data.workspace_id, data.asset_id, data.storage_profile_ref,
        data.object_key, data.resumable_protocol, data.expires_at, event.id,
    )


async def close_session(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
    # Only the first closing event counts; an expiry that raced a commit does not reopen it.
    await conn.execute(
        """WITH closed AS (
               UPDATE tracked_uploads SET closed_by = $2, closed_at = $3
               WHERE upload_id = $1 AND closed_by IS NULL RETURNING 1)
           INSERT INTO early_closures (upload_id, closed_by, closed_at)
           SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM tracked_uploads WHERE upload_id = $1)
           ON CONFLICT (upload_id) DO NOTHING""",
        event.data.upload_id, type(event.data).spec.action, event.time,
    )


async def commit_requested(conn: asyncpg.Connection, event: CloudEvent[CommitRequested]) -> None:
    await conn.execute(
        """UPDATE tracked_uploads SET commit_requested_at = $2
           WHERE upload_id = $1 AND commit_requested_at IS NULL""",
        event.data.upload_id, event.time,
    )


async def commit_refused(conn: asyncpg.Connection, event: CloudEvent[CommitRefused]) -> None:
    # Only a commit requested before the refusal is undone: a late redelivery of an older
    # attempt's refusal leaves the next attempt's request standing.
    await conn.execute(
        """UPDATE tracked_uploads SET commit_requested_at = NULL
           WHERE upload_id = $1 AND commit_requested_at <= $2""",
        event.data.upload_id, event.time,
    )


async def sessions_past_expiry(pool: asyncpg.Pool, now: datetime) -> list[TrackedSession]:
    rows = await pool.fetch(
        f"""SELECT {_SESSION_COLUMNS} FROM tracked_uploads
            WHERE closed_by IS NULL AND expires_at <= $1 ORDER BY expires_at""",
        now,
    )
    return [TrackedSession(**dict(row)) for row in rows]


async def lock_session(conn: asyncpg.Connection, upload_id: str) -> TrackedSession | None:
    """The session's current row, locked until the transaction ends: a closing event that
    arrives meanwhile waits, and is then a no-op."""
    row = await conn.fetchrow(
        f"SELECT {_SESSION_COLUMNS} FROM tracked_uploads WHERE upload_id = $1 FOR UPDATE", upload_id
    )
    return None if row is None else TrackedSession(**dict(row))


async def mark_expired(conn: asyncpg.Connection, upload_id: str, at: datetime) -> None:
    await conn.execute(
        "UPDATE tracked_uploads SET closed_by = $2, closed_at = $3 WHERE upload_id = $1 AND closed_by IS NULL",
        upload_id, UploadExpired.spec.action, at,
    )


# -- assets -------------------------------------------------------------------------------------


async def track_asset(conn: asyncpg.Connection, event: CloudEvent[UploadVerified | AssetCreated]) -> None:
    data = event.data
    await conn.execute(
        """INSERT INTO tracked_assets (asset_id, workspace_id, storage_profile_ref) VALUES ($1, $2, $3)
           ON CONFLICT (asset_id) DO UPDATE SET storage_profile_ref = EXCLUDED.storage_profile_ref""",
        data.asset_id, data.workspace_id, data.storage_profile_ref,
    )


async def asset_deleted(conn: asyncpg.Connection, event: CloudEvent[AssetDeleted]) -> None:
    data = event.data
    await _update_lifecycle(
        conn, data.workspace_id, data.asset_id,
        lambda state: policy.on_deleted(state, data.deleted_at, data.purge_after),
        storage_profile_ref=data.storage_profile_ref,
    )


async def asset_restored(conn: asyncpg.Connection, event: CloudEvent[AssetRestored]) -> None:
    data = event.data
    await _update_lifecycle(
        conn, data.workspace_id, data.asset_id, lambda state: policy.on_restored(state, data.restored_at)
    )


async def _update_lifecycle(
    conn: asyncpg.Connection, workspace_id: str, asset_id: str, change, *, storage_profile_ref: str | None = None
) -> None:
    """Inside the caller's transaction (the handler's unit of work), which the row lock needs."""
    # A deletion names the bucket too: it fills the profile in when the deletion came first,
    # and never overrides what upload.verified or asset.created said.
    await conn.execute(
        """INSERT INTO tracked_assets (asset_id, workspace_id, storage_profile_ref) VALUES ($1, $2, $3)
           ON CONFLICT (asset_id) DO UPDATE
           SET storage_profile_ref = COALESCE(tracked_assets.storage_profile_ref, EXCLUDED.storage_profile_ref)""",
        asset_id, workspace_id, storage_profile_ref,
    )
    asset = await lock_asset(conn, asset_id)
    assert asset is not None  # inserted above, in this transaction
    updated = change(asset.lifecycle)
    if updated != asset.lifecycle:
        await conn.execute(
            """UPDATE tracked_assets SET deleted_at = $2, purge_after = $3, restored_at = $4
               WHERE asset_id = $1""",
            asset_id, updated.deleted_at, updated.purge_after, updated.restored_at,
        )


async def assets_awaiting_purge(pool: asyncpg.Pool) -> list[TrackedAsset]:
    rows = await pool.fetch(
        f"""SELECT {_ASSET_COLUMNS} FROM tracked_assets
            WHERE deleted_at IS NOT NULL AND purged_at IS NULL ORDER BY deleted_at"""
    )
    return [_asset(row) for row in rows]


async def lock_asset(conn: asyncpg.Connection, asset_id: str) -> TrackedAsset | None:
    """Locked until the transaction ends: a restore arriving mid-purge waits for its outcome."""
    row = await conn.fetchrow(f"SELECT {_ASSET_COLUMNS} FROM tracked_assets WHERE asset_id = $1 FOR UPDATE", asset_id)
    return None if row is None else _asset(row)


async def mark_purged(conn: asyncpg.Connection, asset_id: str, at: datetime, event_id: str) -> None:
    await conn.execute(
        "UPDATE tracked_assets SET purged_at = $2, purge_event_id = $3 WHERE asset_id = $1 AND purged_at IS NULL",
        asset_id, at, event_id,
    )


def _asset(row: asyncpg.Record) -> TrackedAsset:
    return TrackedAsset(
        asset_id=row["asset_id"],
        workspace_id=row["workspace_id"],
        storage_profile_ref=row["storage_profile_ref"],
        lifecycle=AssetLifecycle(
            deleted_at=row["deleted_at"], purge_after=row["purge_after"],
            restored_at=row["restored_at"], purged_at=row["purged_at"],
        ),
    )


# -- what the sweeps must leave alone -----------------------------------------------------------


async def known_asset_ids(pool: asyncpg.Pool, candidates: Collection[str]) -> set[str]:
    """Those of `candidates` that belong to a live asset or to a session still open."""
    rows = await pool.fetch(
        """SELECT asset_id FROM tracked_assets WHERE asset_id = ANY($1) AND purged_at IS NULL
           UNION
           SELECT asset_id FROM tracked_uploads WHERE asset_id = ANY($1) AND closed_by IS NULL""",
        list(candidates),
    )
    return {row["asset_id"] for row in rows}


async def open_session_asset_ids(pool: asyncpg.Pool, candidates: Collection[str]) -> set[str]:
    rows = await pool.fetch(
        "SELECT asset_id FROM tracked_uploads WHERE asset_id = ANY($1) AND closed_by IS NULL",
        list(candidates),
    )
    return {row["asset_id"] for row in rows}


async def referenced_profile_refs(conn: asyncpg.Connection | asyncpg.Pool) -> set[str]:
    """Storage profile refs some object may still live under: an open session's, or an asset's
    that is not purged. Only these customer buckets are worth sweeping."""
    rows = await conn.fetch(
        """SELECT storage_profile_ref FROM tracked_uploads WHERE closed_by IS NULL
           UNION SELECT storage_profile_ref FROM tracked_assets
                 WHERE storage_profile_ref IS NOT NULL AND purged_at IS NULL"""
    )
    return {row["storage_profile_ref"] for row in rows}
