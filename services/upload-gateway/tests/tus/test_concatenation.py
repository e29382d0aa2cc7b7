"""tus concatenation on a whole gateway over real PostgreSQL and S3: partial uploads, the final
upload that storage joins from them, and the rules partials live by (owner, quotas, expiry)."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from rawdrive_contracts import CommitRequested, decode
from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.tus.concat import CopyPlan, ThroughGateway, plan_join

from ..conftest import LIVE_SECRET
from .conftest import OCTETS, TUS, MiB
from .test_creation import JPEG_META, creation_url, metadata


async def partial(live, data: bytes, *, headers: dict | None = None, send: bool = True) -> str:
    headers = headers or live.user()
    async with live.http.post(creation_url(live), headers=TUS | headers | {
        "Upload-Length": str(len(data)), "Upload-Concat": "partial",
    }) as response:  # fmt: skip
        assert response.status == 201, await response.text()
        assert response.headers["Upload-Concat"] == "partial"
        url = response.headers["Location"]
    assert url.startswith(f"{live.url}/v1/workspaces/{live.workspace}/tus/")
    if send and data:
        async with live.http.patch(url, data=data, headers=OCTETS | headers | {"Upload-Offset": "0"}) as response:
            assert response.status == 204, await response.text()
    return url


async def final(live, urls: list[str], *, headers: dict | None = None, meta: dict | None = None, **extra: str):
    return await live.http.post(creation_url(live), headers=TUS | (headers or live.user()) | {
        "Upload-Concat": "final;" + " ".join(urls), "Upload-Metadata": metadata(**(meta or JPEG_META)), **extra,
    })  # fmt: skip


async def stored(live, url: str) -> bytes:
    upload_id = url.rstrip("/").split("/")[-2]
    key = await live.gw.pool.fetchval("SELECT object_key FROM upload_sessions WHERE upload_id = $1", upload_id)
    return b"".join([chunk async for chunk in live.gw.storage.iter_chunks(key)])


async def tus_keys(live) -> list[str]:
    return [key async for key in live.gw.storage.list_keys(f"workspaces/{live.workspace}/") if "/tus/" in key]


async def joins(live, lengths: list[int]) -> None:
    data = os.urandom(sum(lengths))
    pieces, at = [], 0
    for length in lengths:
        pieces.append(data[at : at + length])
        at += length
    urls = [await partial(live, piece) for piece in pieces]
    async with await final(live, urls) as response:
        assert response.status == 201, await response.text()
        assert response.headers["Upload-Concat"] == "final;" + " ".join(urls)
        assert (response.headers["Upload-Offset"], response.headers["Upload-Length"]) == (str(len(data)),) * 2
        location, asset_id = response.headers["Location"], response.headers["Upload-Asset-Id"]
    assert await stored(live, location) == data
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.status == 200
        assert response.headers["Upload-Offset"] == str(len(data))
        assert response.headers["Upload-Concat"] == "final;" + " ".join(urls)
    # Committed like any creation-endpoint upload; the partials and any seam are gone.
    rows = await live.gw.pool.fetch("SELECT payload FROM outbox ORDER BY seq")
    commits = [e.data for e in map(decode, (r["payload"] for r in rows)) if isinstance(e.data, CommitRequested)]
    assert [c.asset_id for c in commits] == [asset_id]
    assert await tus_keys(live) == []
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_partials") == 0
    for url in urls:
        async with live.http.head(url, headers=TUS | live.user()) as response:
            assert response.status == 404


async def test_partials_of_tus_js_client_sizes_join_by_range_copies(live_gateway):
    quarter = 5 * MiB + 3
    lengths = [quarter, quarter, quarter, quarter + 2]
    plan = plan_join(lengths)
    assert isinstance(plan, CopyPlan) and plan.seams == ()  # the layout this test runs
    await joins(live_gateway, lengths)


async def test_partials_of_unequal_sizes_join_through_seams_into_the_exact_file(live_gateway):
    lengths = [12 * MiB + 1, 7 * MiB, 9 * MiB + 5]
    plan = plan_join(lengths)
    assert isinstance(plan, CopyPlan) and len(plan.seams) == 2
    await joins(live_gateway, lengths)


async def test_partials_under_the_s3_part_minimum_of_a_small_file_are_joined_by_the_gateway(live_gateway):
    lengths = [1 * MiB, 0, 2 * MiB + 7, 3]
    assert isinstance(plan_join(lengths), ThroughGateway)
    await joins(live_gateway, lengths)


async def test_a_partial_is_its_owners_alone(live_gateway):
    live = live_gateway
    url = await partial(live, b"secret bytes")
    bob = {"Authorization": f"Bearer {mint_dev_token(LIVE_SECRET, sub='bob', workspaces={live.workspace: 'member'}, ttl_s=600)}"}
    async with live.http.head(url, headers=TUS | bob) as response:
        assert response.status == 404
    async with await final(live, [url], headers=bob) as response:
        assert response.status == 400
        assert "no partial upload" in await response.text()
    async with live.http.head(url, headers=TUS | live.user()) as response:
        assert (response.status, response.headers["Upload-Offset"]) == (200, "12")


async def test_a_final_of_an_unfinished_partial_is_refused_and_the_partial_kept(live_gateway):
    live = live_gateway
    url = await partial(live, b"0123456789", send=False)
    async with live.http.patch(url, data=b"01234", headers=OCTETS | live.user() | {"Upload-Offset": "0"}) as response:
        assert response.status == 204
    async with await final(live, [url]) as response:
        assert response.status == 400
        assert "is not finished (5 of 10 bytes)" in await response.text()
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0
    async with live.http.head(url, headers=TUS | live.user()) as response:
        assert response.headers["Upload-Offset"] == "5"


async def test_a_final_takes_no_length_no_body_and_no_patch(live_gateway):
    live = live_gateway
    url = await partial(live, b"abc")
    async with await final(live, [url], **{"Upload-Length": "3"}) as response:
        assert response.status == 400
    async with await final(live, [url]) as response:
        assert response.status == 201
        location = response.headers["Location"]
    async with live.http.patch(location, data=b"x", headers=OCTETS | live.user() | {"Upload-Offset": "3"}) as response:
        assert response.status == 403


async def test_a_final_must_name_an_accepted_file_and_a_refusal_keeps_the_partials(live_gateway):
    live = live_gateway
    url = await partial(live, b"abc")
    async with await final(live, [url], meta={"filename": "notes.txt", "filetype": "text/plain"}) as response:
        assert response.status == 400
        assert "unsupported_type" in await response.text()
    async with await final(live, [f"{live.url}/v1/workspaces/elsewhere/tus/{url.rsplit('/', 1)[1]}"]) as response:
        assert response.status == 400
    async with await final(live, [url]) as response:
        assert response.status == 201


async def test_partials_count_against_the_workspace_quota_until_joined(start_gateway):
    live = await start_gateway(max_open_uploads_per_workspace=2)
    first, second = await partial(live, b"a"), await partial(live, b"b")
    async with live.http.post(creation_url(live), headers=TUS | live.user() | {
        "Upload-Length": "1", "Upload-Concat": "partial",
    }) as response:  # fmt: skip
        assert response.status == 429
        assert "quota_exceeded" in await response.text()
    # The final is a session of its own: it needs room beside its partials until they are joined.
    async with await final(live, [first, second]) as response:
        assert response.status == 429
    async with live.http.delete(second, headers=TUS | live.user()) as response:
        assert response.status == 204
    async with await final(live, [first]) as response:
        assert response.status == 201
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_partials") == 0


async def test_an_expired_partial_is_refused_and_removed_when_the_next_one_is_created(live_gateway):
    live = live_gateway
    url = await partial(live, b"old bytes")
    assert len(await tus_keys(live)) == 1
    await live.gw.pool.execute("UPDATE tus_partials SET expires_at = now() - interval '1 minute'")
    async with await final(live, [url]) as response:
        assert response.status == 400
        assert "expired" in await response.text()
    await partial(live, b"new", send=False)
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_partials") == 1
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_uploads") == 1
    assert await tus_keys(live) == []  # the old partial's object is gone; the new one has no bytes yet


async def test_a_join_that_storage_fails_aborts_the_final_session_and_keeps_the_other_partials(live_gateway):
    live = live_gateway
    kept, lost = await partial(live, b"kept bytes"), await partial(live, b"lost bytes")
    [lost_key] = [key for key in await tus_keys(live) if lost.rsplit("/", 1)[1] in key]
    await live.gw.storage.delete([lost_key])  # storage lost the partial's object behind our back
    async with await final(live, [kept, lost]) as response:
        assert response.status == 502, await response.text()
    assert await live.gw.pool.fetch("SELECT state FROM upload_sessions") == [("aborted",)]
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_uploads WHERE concat LIKE 'final;%'") == 0
    async with live.http.head(kept, headers=TUS | live.user()) as response:
        assert (response.status, response.headers["Upload-Offset"]) == (200, "10")


async def test_partials_queued_behind_a_workspaces_quota_lock_hold_one_pooled_connection(
    start_gateway, fresh_database_url
):
    """Issue 21: 30 partials created at once (parallel uploads of several files) while the
    workspace's quota lock is held elsewhere wait for it on one of the gateway's 3 connections,
    not one each: nobody is answered 503 for want of a connection, and all are admitted after."""
    live = await start_gateway(db_pool_max_size=3, db_pool_acquire_timeout_s=1.0)
    other_replica = await asyncpg.connect(fresh_database_url)
    try:
        transaction = other_replica.transaction()
        await transaction.start()
        await other_replica.execute("SELECT pg_advisory_xact_lock(hashtext('rawdrive.upload_quota'), hashtext($1))",
                                    live.workspace)  # fmt: skip

        async def create_partial() -> int:
            async with live.http.post(creation_url(live), headers=TUS | live.user() | {
                "Upload-Length": "1000", "Upload-Concat": "partial"}) as response:  # fmt: skip
                await response.read()
                return response.status

        created = [asyncio.create_task(create_partial()) for _ in range(30)]
        await asyncio.sleep(2)  # past the acquire timeout
        waiting = await other_replica.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                               "'rawdrive-gateway' AND wait_event_type = 'Lock'")  # fmt: skip
        assert waiting == 1
        assert not any(task.done() for task in created), [task.result() for task in created if task.done()]
        await transaction.commit()
    finally:
        await other_replica.close()
    assert await asyncio.gather(*created) == [201] * 30
