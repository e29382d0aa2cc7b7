"""The `assets` table: catalogue facts in PostgreSQL, merged under a row lock, listed by keyset."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from upload_gateway.catalogue.core import (
    AssetFacts,
    Deletion,
    Description,
    Entry,
    Failure,
    Position,
    Processed,
    Status,
    content_identifier,
    merge,
    status_of,
)

_FACT_TYPES = {"description": Description, "processed": Processed, "failure": Failure, "deletion": Deletion}
_COLUMNS = "asset_id, workspace_id, created_at, description, verified_at, processed, failure, deletion, restored_at, purged_at"
# The other asset of the workspace with the same content identifier and the other kind (a Live
# Photo's still for its video, and back), not in the trash; the first one if a pair was uploaded
# twice. Looked up on read, so the pair shows on both whichever arrived first.
_PAIRED_WITH = """(SELECT p.asset_id FROM assets p
                    WHERE p.workspace_id = a.workspace_id AND p.content_identifier = a.content_identifier
                      AND p.asset_id <> a.asset_id AND p.status NOT IN ('deleted', 'purged')
                      AND p.processed->>'kind' IS DISTINCT FROM a.processed->>'kind'
                    ORDER BY p.created_at, p.asset_id LIMIT 1) AS paired_with"""
# The earliest available asset of the workspace with the same bytes (verified SHA-256) that the
# catalogue heard of before this one; looked up on read, so it follows deletions and restores.
_DUPLICATE_OF = """(SELECT d.asset_id FROM assets d
                     WHERE d.workspace_id = a.workspace_id AND d.sha256 = a.sha256 AND d.status = 'available'
                       AND (d.created_at, d.asset_id) < (a.created_at, a.asset_id)
                     ORDER BY d.created_at, d.asset_id LIMIT 1) AS duplicate_of"""
_READ = f"{_COLUMNS}, {_PAIRED_WITH}, {_DUPLICATE_OF}"


def _json(value: msgspec.Struct | None) -> str | None:
    return None if value is None else msgspec.json.encode(value).decode()


def _entry(row: asyncpg.Record) -> Entry:
    facts = AssetFacts(
        asset_id=row["asset_id"],
        workspace_id=row["workspace_id"],
        verified_at=row["verified_at"],
        restored_at=row["restored_at"],
        purged_at=row["purged_at"],
        **{
            name: None if row[name] is None else msgspec.json.decode(row[name], type=type_)
            for name, type_ in _FACT_TYPES.items()
        },
    )
    return Entry(
        created_at=row["created_at"], facts=facts, paired_with=row.get("paired_with"), duplicate_of=row.get("duplicate_of")
    )


async def lock(conn: asyncpg.Connection, workspace_id: str, asset_id: str) -> Entry | None:
    """The row, locked until the transaction ends; None if this workspace has no such asset."""
    row = await conn.fetchrow(
        f"SELECT {_READ} FROM assets a WHERE asset_id = $1 AND workspace_id = $2 FOR UPDATE OF a", asset_id, workspace_id
    )
    return None if row is None else _entry(row)


async def save(conn: asyncpg.Connection, facts: AssetFacts) -> None:
    description = facts.description
    await conn.execute(
        """UPDATE assets
              SET status = $2, library_id = $3, folder_id = $4, description = $5::jsonb, verified_at = $6,
                  processed = $7::jsonb, failure = $8::jsonb, deletion = $9::jsonb, restored_at = $10,
                  purged_at = $11, content_identifier = $12, sha256 = $13, updated_at = now()
            WHERE asset_id = $1""",
        facts.asset_id,
        status_of(facts),
        description.library_id if description else None,
        description.folder_id if description else None,
        _json(description),
        facts.verified_at,
        _json(facts.processed),
        _json(facts.failure),
        _json(facts.deletion),
        facts.restored_at,
        facts.purged_at,
        content_identifier(facts),
        description.sha256.lower() if description else None,
    )


async def record(conn: asyncpg.Connection, facts: AssetFacts) -> AssetFacts:
    """Merge an event's facts into the asset's row (created if missing), inside the caller's
    transaction (the row stays locked until it ends); returns the result.
    Raises catalogue.MergeConflict if the asset id is recorded under another workspace."""
    await conn.execute(
        "INSERT INTO assets (asset_id, workspace_id) VALUES ($1, $2) ON CONFLICT (asset_id) DO NOTHING",
        facts.asset_id,
        facts.workspace_id,
    )
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM assets WHERE asset_id = $1 FOR UPDATE", facts.asset_id)
    current = _entry(row).facts
    merged = merge(current, facts)
    if merged != current:
        await save(conn, merged)
    return merged


async def get(pool: asyncpg.Pool, workspace_id: str, asset_id: str) -> Entry | None:
    """A visible asset: described and not purged."""
    row = await pool.fetchrow(
        f"""SELECT {_READ} FROM assets a
            WHERE asset_id = $1 AND workspace_id = $2 AND status IS NOT NULL AND status <> 'purged'""",
        asset_id,
        workspace_id,
    )
    return None if row is None else _entry(row)


async def available_with_sha256(pool: asyncpg.Pool, workspace_id: str, sha256: str) -> str | None:
    """The earliest available asset of the workspace whose verified bytes have this SHA-256."""
    return await pool.fetchval(
        """SELECT asset_id FROM assets
            WHERE workspace_id = $1 AND sha256 = $2 AND status = 'available'
            ORDER BY created_at, asset_id LIMIT 1""",
        workspace_id,
        sha256.lower(),
    )


async def page(
    pool: asyncpg.Pool,
    workspace_id: str,
    *,
    statuses: Sequence[Status],
    library_id: str | None,
    folder_id: str | None,
    after: Position | None,
    limit: int,
) -> list[Entry]:
    """Up to `limit` entries, newest first, strictly after `after` (a keyset: rows inserted
    meanwhile sort before the cursor and never shift the pages still to come)."""
    rows = await pool.fetch(
        f"""SELECT {_READ} FROM assets a
            WHERE workspace_id = $1 AND status = ANY($2::text[])
              AND ($3::text IS NULL OR library_id = $3)
              AND ($4::text IS NULL OR folder_id = $4)
              AND ($5::timestamptz IS NULL OR (created_at, asset_id) < ($5, $6))
            ORDER BY created_at DESC, asset_id DESC
            LIMIT $7""",
        workspace_id,
        list(statuses),
        library_id,
        folder_id,
        after.created_at if after else None,
        after.asset_id if after else None,
        limit,
    )
    return [_entry(row) for row in rows]
