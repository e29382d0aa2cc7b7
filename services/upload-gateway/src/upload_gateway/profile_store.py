"""storage_profiles in PostgreSQL: each workspace's active bring-your-own-bucket profile.

No row means the managed bucket. Rows hold only non-secret fields; `ref` names the sealed
record in the profiles KV bucket (rawdrive_platform.profiles).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg
import msgspec

from rawdrive_platform.storage import MANAGED_PROFILE_ID, Encryption


class ActiveProfile(msgspec.Struct, frozen=True, kw_only=True):
    workspace_id: str
    ref: str
    mode: Literal["byos_s3"]  # managed is the absence of a row
    bucket: str
    endpoint: str | None
    region: str
    key_prefix: str
    encryption: Encryption
    kms_key_id: str | None
    masked_key_id: str
    created_by: str
    created_at: datetime


_COLUMNS = tuple(field.name for field in msgspec.structs.fields(ActiveProfile))


async def get(conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str) -> ActiveProfile | None:
    row = await conn.fetchrow("SELECT * FROM storage_profiles WHERE workspace_id = $1", workspace_id)
    return None if row is None else msgspec.convert(dict(row), ActiveProfile)


async def active_ref(conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str) -> str:
    """The storage_profile_ref a new session in this workspace gets."""
    ref = await conn.fetchval("SELECT ref FROM storage_profiles WHERE workspace_id = $1", workspace_id)
    return ref or MANAGED_PROFILE_ID


async def activate(pool: asyncpg.Pool, profile: ActiveProfile) -> str | None:
    """Make `profile` the workspace's active one; the ref it replaced, if any (to be retired).
    Activations of one workspace take turns (an advisory lock), so each replaced ref is
    returned to exactly one of them, even when the workspace had no row yet."""
    values = msgspec.structs.asdict(profile)
    placeholders = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
    updates = ", ".join(f"{column} = EXCLUDED.{column}" for column in _COLUMNS if column != "workspace_id")
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext('rawdrive.storage_profiles'), hashtext($1))", profile.workspace_id
        )
        replaced = await conn.fetchval(
            "SELECT ref FROM storage_profiles WHERE workspace_id = $1 FOR UPDATE", profile.workspace_id
        )
        await conn.execute(
            f"INSERT INTO storage_profiles ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
            f"ON CONFLICT (workspace_id) DO UPDATE SET {updates}",
            *(values[column] for column in _COLUMNS),
        )
    return replaced


async def deactivate(conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str) -> str | None:
    """Back to the managed bucket for new sessions; the ref it removed, if any (to be retired)."""
    return await conn.fetchval("DELETE FROM storage_profiles WHERE workspace_id = $1 RETURNING ref", workspace_id)
