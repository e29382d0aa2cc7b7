"""Upload quotas (issue 20) against real PostgreSQL and SeaweedFS, through gateways on real ports:
open uploads and bytes in flight per workspace, also with two replicas creating at once, and the
per-user limit on concurrent tus PATCHes."""

from __future__ import annotations

import asyncio
import os
import time

import aiohttp

from upload_gateway.auth import mint_dev_token
from upload_gateway.patch_limits import PATCH_LIMIT

from .conftest import LIVE_SECRET

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    return await response.json()


# -- per-workspace limits ----------------------------------------------------------------------


async def create(live, workspace: str, size_bytes: int, **fields: object) -> aiohttp.ClientResponse:
    token = mint_dev_token(LIVE_SECRET, sub="alice", workspaces={workspace: "member"}, ttl_s=600)
    body = {"file_name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size_bytes": size_bytes,
            "library_id": "lib1", "resumable_protocol": "tus"} | fields  # fmt: skip
    async with live.http.post(f"{live.url}/v1/workspaces/{workspace}/uploads", json=body,
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
