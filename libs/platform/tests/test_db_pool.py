"""The pool's acquire timeout (db.create_pool): a wait past it is PoolExhausted, counted; a
released connection comes back without a reset query but never inside a transaction."""

import asyncio

import asyncpg
import pytest
from prometheus_client import REGISTRY

from rawdrive_platform.db import DATABASE_DOWN, PoolExhausted, create_pool


def timeouts() -> float:
    return REGISTRY.get_sample_value("rawdrive_db_pool_acquire_timeouts_total", {"schema": "pooltest"}) or 0.0


async def test_a_wait_for_a_connection_past_the_acquire_timeout_is_pool_exhausted(database_url):
    pool = await create_pool(database_url, "pooltest", max_size=1, acquire_timeout_s=0.3)
    try:
        before = timeouts()
        async with pool.acquire() as held:
            assert await held.fetchval("SELECT 1") == 1
            started = asyncio.get_running_loop().time()
            with pytest.raises(PoolExhausted, match="0.3 s"):
                await pool.fetchval("SELECT 1")
            assert asyncio.get_running_loop().time() - started < 2
            with pytest.raises(PoolExhausted):
                await pool.acquire()  # the `await` form too
        assert timeouts() == before + 2
        assert isinstance(PoolExhausted("x"), DATABASE_DOWN)  # callers retry it as an outage
        # Free again: served at once, and a per-call timeout still wins over the pool's.
        assert await pool.fetchval("SELECT 2") == 2
        async with pool.acquire(timeout=5) as conn:
            assert await conn.fetchval("SELECT 3") == 3
    finally:
        await pool.close()


async def test_without_an_acquire_timeout_a_wait_lasts_until_a_connection_is_free(database_url):
    pool = await create_pool(database_url, "pooltest", max_size=1)
    try:
        conn = await pool.acquire()
        waiting = asyncio.create_task(pool.fetchval("SELECT 1"))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await pool.release(conn)
        assert await asyncio.wait_for(waiting, 5) == 1
    finally:
        await pool.close()


async def test_a_released_connection_is_not_reset_with_a_query_but_its_open_transaction_is_rolled_back(database_url):
    pool = await create_pool(database_url, "pooltest", max_size=1)
    watcher = await asyncpg.connect(database_url)
    try:
        async with pool.acquire() as conn:
            backend = conn.get_server_pid()
            assert await conn.fetchval("SELECT 41") == 41
        # The backend's last statement is ours: no `SELECT pg_advisory_unlock_all(); ... RESET ALL;`.
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", backend)
        assert last == "SELECT 41"
        conn = await pool.acquire()
        try:
            await conn.execute("BEGIN; CREATE TEMP TABLE left_open (x int)")
        finally:
            await pool.release(conn)  # released inside its transaction: asyncpg rolls it back
        async with pool.acquire() as conn:
            assert conn.get_server_pid() == backend
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await watcher.close()
        await pool.close()
