"""An upload's and an asset's life beyond the happy path, with every object accounted for in S3.

The janitor runs with short clocks (expiry checked every second, no grace, sessions living the
gateway's minimum of 60 s, a retention of about 4 s), so rejection, expiry and purge can be
watched end to end. The abandoned sessions are opened when the module starts, so their minute
runs while the other tests do.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import aiohttp
import pytest

SESSION_TTL_S = 60
RETENTION_DAYS = 0.00005  # 4.3 s
PURGED = "com.rawdrive.asset.purged.v1"
CREATED = "com.rawdrive.asset.created.v1"
MiB = 1024 * 1024

SHORT_CLOCKS = {
    "RAWDRIVE_SESSION_TTL_S": str(SESSION_TTL_S),
    "RAWDRIVE_JANITOR_EXPIRY_GRACE_S": "0",
    "RAWDRIVE_JANITOR_EXPIRY_CHECK_INTERVAL_S": "1",
    "RAWDRIVE_RETENTION_DAYS": str(RETENTION_DAYS),
}


async def eventually(check, timeout_s: float, interval_s: float = 0.5):
    """Poll `check` (sync, run in a thread) until it returns something truthy."""
    async with asyncio.timeout(timeout_s):
        while not (result := await asyncio.to_thread(check)):
            await asyncio.sleep(interval_s)
    return result


async def abandon_tus(client, body: bytes, sent: int) -> dict:
    """A tus upload that stops after `sent` bytes: one full part in S3 multipart, plus a tail."""
    session = await client.create_session(body, "abandoned.jpg", "image/jpeg", "tus")
    headers = {**session["headers"], "Tus-Resumable": "1.0.0"}
    async with aiohttp.ClientSession() as http:
        async with http.post(session["upload_url"], headers={**headers, "Upload-Length": str(len(body))}) as r:
            assert r.status == 201, await r.text()
        patch = {**headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        async with http.patch(session["upload_url"], data=body[:sent], headers=patch) as r:
            assert r.status == 204, await r.text()
    return session


async def abandon_multipart(client, body: bytes) -> dict:
    """An S3 multipart upload with its first part sent straight to storage, never committed."""
    session = await client.create_session(body, "abandoned.jpg", "image/jpeg", "s3_multipart")
    first = {**session, "part_count": 1}
    await client.send_multipart(first, body)
    return session


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener):
    env = {**module_service_env, **SHORT_CLOCKS}
    async for pipeline, client in pipeline_opener(env, tmp_path_factory.mktemp("lifecycle")):
        body = b"\xff\xd8\xff\xe0" + os.urandom(12 * MiB)
        abandoned = [await abandon_tus(client, body, 6 * MiB), await abandon_multipart(client, body)]
        yield pipeline, client, abandoned


async def test_a_checksum_mismatch_on_every_allowed_commit_is_rejected_and_its_bytes_are_removed(world, media_dir):
    pipeline, client, _ = world
    body = (media_dir / "exiftool_GPS.jpg").read_bytes()
    session = await client.create_session(body, "GPS.jpg", "image/jpeg", "tus")
    await client.send_tus(session, body)
    prefix = pipeline.asset_prefix(session["asset_id"])
    assert await asyncio.to_thread(pipeline.keys_under, prefix)  # the bytes arrived

    wrong = hashlib.sha256(b"other bytes").hexdigest()
    for left in (2, 1):  # a typo costs nothing while commits are left: the bytes stay
        status, problem = await client.commit(session["upload_id"], sha256=wrong)
        assert (status, problem["code"], problem["attempts_left"]) == (422, "checksum_mismatch", left)
        assert await asyncio.to_thread(pipeline.keys_under, prefix)
    status, problem = await client.commit(session["upload_id"], sha256=wrong)
    assert (status, problem["code"]) == (422, "checksum_mismatch")
    await eventually(lambda: not pipeline.keys_under(prefix) and not pipeline.multipart_uploads_under(prefix), 30)
    async with client.http.get(f"/v1/workspaces/{client.ws}/uploads/{session['upload_id']}") as response:
        state = await response.json()
    # A verifier rejection ends the session `aborted`, with the reason beside it.
    assert state["state"] == "aborted" and state["rejection"]["reason"] == "checksum_mismatch"


async def test_a_deleted_asset_can_be_restored_and_once_deleted_again_is_purged_with_every_object(
    world, media_dir
):
    pipeline, client, _ = world
    body = (media_dir / "png_rgba_alpha.png").read_bytes()
    session = await client.upload(body, "alpha.png", "image/png")
    asset_id = session["asset_id"]
    available = await client.asset_when(asset_id, {"available"})
    prefix = pipeline.asset_prefix(asset_id)
    stored = await asyncio.to_thread(pipeline.keys_under, prefix)
    assert len(stored) == 4  # the original and three variants

    async with client.http.delete(f"/v1/workspaces/{client.ws}/assets/{asset_id}") as response:
        assert response.status == 204, await response.text()
    deleted = await client.asset_when(asset_id, {"deleted"}, timeout_s=10)
    assert deleted["purge_after"]
    async with client.http.post(f"/v1/workspaces/{client.ws}/assets/{asset_id}/restore") as response:
        assert response.status == 200, await response.text()
    restored = await client.asset_when(asset_id, {"available"}, timeout_s=10)
    assert restored["variants"].keys() == available["variants"].keys()
    # Past the first deletion's retention, the restored asset is still whole.
    await asyncio.sleep(RETENTION_DAYS * 86400 + 2)
    assert sorted(await asyncio.to_thread(pipeline.keys_under, prefix)) == sorted(stored)

    async with client.http.delete(f"/v1/workspaces/{client.ws}/assets/{asset_id}") as response:
        assert response.status == 204, await response.text()
    events = pipeline.events
    await events.wait(lambda: events.of(PURGED, asset_id), timeout_s=30)
    [purged] = events.of(PURGED, asset_id)
    assert purged["data"]["deleted_object_count"] == 4
    assert not await asyncio.to_thread(pipeline.keys_under, prefix)
    status, _ = await client.asset(asset_id)
    assert status == 404
    assert not events.invalid


async def test_abandoned_sessions_expire_leaving_no_object_and_no_open_multipart_upload(world):
    pipeline, client, abandoned = world
    prefixes = [pipeline.asset_prefix(session["asset_id"]) for session in abandoned]
    for prefix in prefixes:  # what the abandoned uploads left before expiry
        assert pipeline.multipart_uploads_under(prefix) or pipeline.keys_under(prefix)

    def all_gone() -> bool:
        return not any(pipeline.keys_under(p) or pipeline.multipart_uploads_under(p) for p in prefixes)

    started = time.monotonic()
    await eventually(all_gone, timeout_s=SESSION_TTL_S + 30)
    for session in abandoned:
        async with client.http.get(f"/v1/workspaces/{client.ws}/uploads/{session['upload_id']}") as response:
            state = await response.json()
        assert state["state"] == "expired", state
        status, problem = await client.commit(session["upload_id"])
        assert status in (409, 410), problem
    print(f"abandoned sessions gone {time.monotonic() - started:.1f} s into this test")
