"""PostgreSQL via asyncpg: one schema per service, versioned migrations applied safely at start.

Each service owns its data in its own schema (`gateway`, `verifier`...); its pool's search_path
points there, so SQL stays unqualified. Migrations are plain `NNNN_name.sql` files applied in
order, each in its own transaction, under an advisory lock: several replicas starting at once
apply each file exactly once. An applied file that was edited afterwards stops the start-up.

A pool made by `create_pool` may bound how long anything waits for one of its connections
(`acquire_timeout_s`): past it, PoolExhausted, which is in DATABASE_DOWN (retry later) and which
the gateway answers with 503 and Retry-After, instead of requests queueing without end.

Pooled connections carry no session state, so a released one is not reset with a query
(`_release_as_is`): code that needs session state takes a connection of its own (the migration
lock here, the janitor's advisory lock) or undoes it before releasing (the outbox relay's LISTEN).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Generator
from importlib.resources import files
from importlib.resources.abc import Traversable
from types import TracebackType
from typing import Any

import asyncpg
import asyncpg.pool
import msgspec

from rawdrive_platform.metrics import DB_POOL_ACQUIRE_TIMEOUTS


class PoolExhausted(Exception):
    """No pooled connection came free within the pool's acquire timeout: retry later."""

# What asyncpg raises while PostgreSQL restarts or a connection breaks: retry later. It includes
# InternalClientError, seen when a pool connection broke mid-reset during a server restart.
DATABASE_DOWN: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    PoolExhausted,
)
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
# The platform's own tables (the outbox) come first in every service schema.
PLATFORM_MIGRATIONS = files("rawdrive_platform") / "migrations"


class Migration(msgspec.Struct, frozen=True):
    track: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    pass


def load_migrations(track: str, directory: Traversable) -> list[Migration]:
    migrations = []
    for entry in directory.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            migrations.append(Migration(track, int(match[1]), entry.name, entry.read_text()))
        elif entry.name.endswith(".sql"):
            raise MigrationError(f"{entry.name}: migration files are named NNNN_snake_case.sql")
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"{track}: two migrations share a version")
    return migrations


def _check_schema(schema: str) -> str:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"not a schema name: {schema!r}")
    return schema


async def migrate(dsn: str, schema: str, service_migrations: Traversable) -> list[str]:
    """Apply the platform's then the service's pending migrations; returns the names applied."""
    _check_schema(schema)
    plan = load_migrations("platform", PLATFORM_MIGRATIONS) + load_migrations(schema, service_migrations)
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        # Session-level lock keyed on the schema: concurrent replicas queue here.
        await conn.execute("SELECT pg_advisory_lock(hashtext($1))", f"rawdrive.migrate.{schema}")
        try:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            await conn.execute(f'SET search_path TO "{schema}"')
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       track text NOT NULL, version int NOT NULL, name text NOT NULL,
                       checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (track, version))"""
            )
            done = {
                (r["track"], r["version"]): r
                for r in await conn.fetch("SELECT track, version, name, checksum FROM schema_migrations")
            }
            for m in plan:
                previous = done.get((m.track, m.version))
                if previous is not None:
                    if previous["checksum"] != m.checksum:
                        raise MigrationError(f"{m.track}/{m.name} changed after it was applied; add a new migration instead")
                    continue
                async with conn.transaction():
                    await conn.execute(m.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (track, version, name, checksum) VALUES ($1, $2, $3, $4)",
                        m.track, m.version, m.name, m.checksum,
                    )
                applied.append(f"{m.track}/{m.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", f"rawdrive.migrate.{schema}")
    finally:
        await conn.close()
    return applied


class BoundedPool(asyncpg.Pool):
    """An asyncpg pool whose every acquire (also inside `pool.fetch...`) waits at most
    `acquire_timeout_s` (None: for ever), then raises PoolExhausted."""

    def __init__(self, *args: Any, schema: str, acquire_timeout_s: float | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schema = schema
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> _Acquiring:  # type: ignore[override]
        timeout = self.acquire_timeout_s if timeout is None else timeout
        return _Acquiring(super().acquire(timeout=timeout), self.schema, timeout)


class _Acquiring:
    """asyncpg's acquire context (`async with` or `await`), with its timeout as PoolExhausted."""

    __slots__ = ("_inner", "_schema", "_timeout_s")

    def __init__(self, inner: asyncpg.pool.PoolAcquireContext, schema: str, timeout_s: float | None) -> None:
        self._inner = inner
        self._schema = schema
        self._timeout_s = timeout_s

    async def __aenter__(self) -> asyncpg.Connection:
        try:
            return await self._inner.__aenter__()
        except TimeoutError:
            DB_POOL_ACQUIRE_TIMEOUTS.labels(self._schema).inc()
            raise PoolExhausted(f"no database connection came free within {self._timeout_s:g} s") from None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)

    def __await__(self) -> Generator[Any, None, asyncpg.Connection]:
        return self.__aenter__().__await__()


async def _release_as_is(conn: asyncpg.Connection) -> None:
    """Nothing to send on release beyond asyncpg's own clean-up, which still rolls back a
    transaction left open and drops listener callbacks. asyncpg's default reset sends
    `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;` on every release: a round
    trip and four statements, to undo session state no pooled connection here takes, after every
    `pool.fetch...` (a third of the statements of a small tus upload, bench/small_files_bench.py)."""


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, acquire_timeout_s: float | None = None
) -> asyncpg.Pool:
    pool = BoundedPool(
        dsn,
        schema=_check_schema(schema),
        acquire_timeout_s=acquire_timeout_s,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        max_inactive_connection_lifetime=300.0,
        reset=_release_as_is,
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        server_settings={"search_path": schema, "application_name": f"rawdrive-{schema}"},
    )
    return await pool
