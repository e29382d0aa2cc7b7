"""Upload quotas (issue 20) against real PostgreSQL and SeaweedFS, through gateways on real ports:
open uploads and bytes in flight per workspace, also with two replicas creating at once, and the
per-user limit on concurrent tus PATCHes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter

import aiohttp
import asyncpg
from prometheus_client import REGISTRY

from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.patch_limits import PATCH_LIMIT

from .conftest import LIVE_SECRET

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    return await response.json()


# -- per-workspace limits ----------------------------------------------------------------------


async def create(
    live, workspace: str, size_bytes: int, http: aiohttp.ClientSession | None = None, **fields: object
) -> aiohttp.ClientResponse:
    token = mint_dev_token(LIVE_SECRET, sub="alice", workspaces={workspace: "member"}, ttl_s=600)
    body = {"file_name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size_bytes": size_bytes,
            "library_id": "lib1", "resumable_protocol": "tus"} | fields  # fmt: skip
    async with (http or live.http).post(f"{live.url}/v1/workspaces/{workspace}/uploads", json=body,
                              headers={"Authorization": f"Bearer {token}"}) as response:
        await response.read()
        return response


async def test_open_uploads_beyond_the_workspace_limit_are_429_until_one_ends(start_gateway):
    live = await start_gateway(max_open_uploads_per_workspace=3)
    opened = [await live.open_session(1000) for _ in range(3)]
    refused = await create(live, live.workspace, 1000)
    assert refused.status == 429 and refused.headers["Retry-After"] == "30"
    assert "3 open uploads" in (await refused.json())["detail"]
    assert (await refused.json())["code"] == "quota_exceeded"
    assert (await create(live, "another-ws", 1000)).status == 201  # other workspaces are not affected
    async with live.http.delete(live.uploads(f"/{opened[0]['upload_id']}"), headers=live.user()) as response:
        assert response.status == 204
    assert (await create(live, live.workspace, 1000)).status == 201
    # A session past its expiry holds nothing, whether or not the janitor has announced it.
    await live.gw.pool.execute("UPDATE upload_sessions SET expires_at = now() - interval '1 second' "
                               "WHERE upload_id = $1", opened[1]["upload_id"])
    assert (await create(live, live.workspace, 1000)).status == 201
    assert (await create(live, live.workspace, 1000)).status == 429


async def test_bytes_in_flight_beyond_the_workspace_limit_are_429_and_a_file_over_it_alone_413(start_gateway):
    live = await start_gateway(max_bytes_in_flight_per_workspace=10 * MIB)
    await live.open_session(6 * MIB, resumable_protocol="s3_multipart")
    refused = await create(live, live.workspace, 5 * MIB, resumable_protocol="s3_multipart")
    assert refused.status == 429 and (await refused.json())["code"] == "quota_exceeded"
    assert refused.headers["Retry-After"] == "30"
    # The refused multipart session's multipart upload is not left behind in storage.
    prefix = f"workspaces/{live.workspace}/"
    assert len([u async for u in live.gw.storage.list_multipart_uploads(prefix)]) == 1
    assert (await create(live, live.workspace, 4 * MIB)).status == 201
    too_large = await create(live, "another-ws", 10 * MIB + 1)
    assert too_large.status == 413 and (await too_large.json())["code"] == "file_too_large"


async def test_two_replicas_creating_at_once_never_pass_the_limit_together(start_gateway):
    limit = 5
    replicas = [await start_gateway(max_open_uploads_per_workspace=limit) for _ in range(2)]
    workspace = replicas[0].workspace
    answers = await asyncio.gather(*(create(replicas[i % 2], workspace, 1000) for i in range(24)))
    assert sorted(a.status for a in answers) == [201] * limit + [429] * (24 - limit)
    opened = await replicas[0].gw.pool.fetchval(
        "SELECT count(*) FROM upload_sessions WHERE workspace_id = $1", workspace)
    assert opened == limit


async def test_creations_queued_behind_a_workspaces_quota_lock_hold_one_pooled_connection_not_one_each(
    start_gateway, fresh_database_url
):
    """Issue 21: while a workspace's quota lock is held (another replica inserting), 100
    creations in it, arriving in waves, wait on one of this gateway's 3 connections; the others
    keep serving other workspaces, nobody is answered 503, and all 100 are admitted once the lock
    is free."""
    live = await start_gateway(db_pool_max_size=3, db_pool_acquire_timeout_s=1.0)
    timeouts_before = _acquire_timeouts()
    async with contextlib.AsyncExitStack() as stack:
        other_replica = await asyncpg.connect(fresh_database_url)
        stack.push_async_callback(other_replica.close)
        transaction = other_replica.transaction()
        await transaction.start()
        await other_replica.execute("SELECT pg_advisory_xact_lock(hashtext('rawdrive.upload_quota'), hashtext($1))",
                                    live.workspace)  # fmt: skip
        queued = []
        for _ in range(10):  # in waves, as a phone's gallery upload sends them: each finds the lock held
            queued += [asyncio.create_task(create(live, live.workspace, 1000)) for _ in range(10)]
            await asyncio.sleep(0.1)
        # Other workspaces' creations, on a client of their own (the 100 hold live.http's 100
        # connections), are admitted meanwhile: no batch waits on the locked workspace with them.
        other_clients = await stack.enter_async_context(aiohttp.ClientSession())
        others = await asyncio.wait_for(
            asyncio.gather(*(create(live, f"other{i}", 1000, other_clients) for i in range(6))), 10
        )
        assert [answer.status for answer in others] == [201] * 6
        # Longer than the acquire timeout: one connection waits on the lock, not one per wave.
        await asyncio.sleep(1.5)
        assert await _gateway_connections_waiting_for_a_lock(other_replica, at_least=1) == 1
        # A request reading through the pool is served (not 503 after the 1 s acquire timeout).
        token = mint_dev_token(LIVE_SECRET, sub="alice", workspaces={"other0": "member"}, ttl_s=600)
        upload_id = (await others[0].json())["upload_id"]
        async with other_clients.get(f"{live.url}/v1/workspaces/other0/uploads/{upload_id}",
                                     headers={"Authorization": f"Bearer {token}"}) as response:  # fmt: skip
            assert response.status == 200, await response.text()
        assert not any(task.done() for task in queued)
        await transaction.commit()
    answers = await asyncio.gather(*queued)
    assert Counter(answer.status for answer in answers) == {201: 100}
    assert _acquire_timeouts() == timeouts_before


def _acquire_timeouts() -> float:
    return REGISTRY.get_sample_value("rawdrive_db_pool_acquire_timeouts_total", {"schema": "gateway"}) or 0.0


async def _gateway_connections_waiting_for_a_lock(conn: asyncpg.Connection, at_least: int) -> int:
    deadline = time.monotonic() + 10
    while True:
        waiting = await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                      "'rawdrive-gateway' AND wait_event_type = 'Lock'")  # fmt: skip
        if waiting >= at_least or time.monotonic() > deadline:
            return waiting
        await asyncio.sleep(0.05)


# -- per-user concurrent PATCHes ---------------------------------------------------------------


async def test_a_users_concurrent_patches_beyond_the_limit_are_429_and_other_users_go_on(start_gateway):
    live = await start_gateway(max_concurrent_patches_per_user=1)
    size = 2 * MIB
    mine = [await live.open_session(size) for _ in range(2)]
    bobs_token = mint_dev_token(LIVE_SECRET, sub="bob", workspaces={live.workspace: "member"}, ttl_s=600)
    async with live.http.post(live.uploads(), headers={"Authorization": f"Bearer {bobs_token}"}, json={
        "file_name": "b.jpg", "mime_type": "image/jpeg", "size_bytes": size, "library_id": "lib1",
        "resumable_protocol": "tus"}) as response:  # fmt: skip
        bobs = await response.json()

    def patch(created: dict, body) -> object:
        headers = TUS | created["headers"] | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                                              "Content-Length": str(size)}
        return live.http.patch(created["upload_url"], data=body, headers=headers)

    release = asyncio.Event()
    data = os.urandom(size)

    async def slow_body():
        yield data[:MIB]
        await release.wait()  # the request stays in flight, holding its place
        yield data[MIB:]

    async def first_patch() -> int:
        async with patch(mine[0], slow_body()) as response:
            return response.status

    held = asyncio.create_task(first_patch())
    places = live.app[PATCH_LIMIT]
    deadline = time.monotonic() + 10
    while places.in_use("alice") == 0:
        assert time.monotonic() < deadline, "the first PATCH never reached the gateway"
        await asyncio.sleep(0.01)

    async with patch(mine[1], data) as response:
        assert response.status == 429 and response.headers["Retry-After"] == "1"
        assert (await problem(response))["code"] == "rate_limited"
    async with patch(bobs, data) as response:
        assert response.status == 204  # another user is not held back
    release.set()
    assert await held == 204
    assert places.in_use("alice") == 0
    async with patch(mine[1], data) as response:
        assert response.status == 204
