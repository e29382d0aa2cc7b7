"""Smoke: an event published through one service's outbox reaches a consumer in another service
process exactly once, even when that consumer is killed mid-work and the message redelivered."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from rawdrive_contracts import UPLOADS_STREAM, UploadSessionCreated, new_event
from rawdrive_platform import bus, db, keys, outbox


def session_created(workspace: str) -> UploadSessionCreated:
    asset = uuid.uuid4().hex
    return UploadSessionCreated(
        workspace_id=workspace,
        upload_id=uuid.uuid4().hex,
        asset_id=asset,
        library_id="lib1",
        file_name="IMG_0001.JPG",
        mime_type="image/jpeg",
        size_bytes=1234,
        resumable_protocol="tus",
        storage_profile_ref="managed",
        object_key=keys.original_key(workspace, asset, "IMG_0001.JPG"),
        expires_at=datetime.now(UTC) + timedelta(hours=1),
        created_by="user-1",
    )


async def wait_for(predicate, timeout_s: float = 20.0):
    async with asyncio.timeout(timeout_s):
        while not (result := await predicate()):
            await asyncio.sleep(0.1)
    return result


async def test_outbox_event_reaches_the_janitor_once_after_a_kill_and_redelivery(
    start_service, service_env, nats_url, tmp_path
):
    dsn = service_env["RAWDRIVE_DATABASE_URL"]
    janitor = start_service("janitor")
    # The producing side: a service schema with an outbox, and its relay.
    (tmp_path / "migrations").mkdir()
    await db.migrate(dsn, "producer", tmp_path / "migrations")
    pool = await db.create_pool(dsn, "producer")
    nc = await bus.connect(nats_url, name="e2e-smoke")
    js = nc.jetstream()
    stop = asyncio.Event()
    relay = asyncio.create_task(outbox.Relay(pool, js).run(stop))
    janitor_db = await asyncpg.connect(dsn)
    try:
        event = new_event(session_created(f"ws{uuid.uuid4().hex[:10]}"), source="e2e")
        # Hold the janitor's table so its handler blocks mid-work, after delivery, before ack.
        blocker = janitor_db.transaction()
        await blocker.start()
        await janitor_db.execute("LOCK TABLE janitor.tracked_uploads IN EXCLUSIVE MODE")
        async with pool.acquire() as conn, conn.transaction():
            await outbox.enqueue(conn, event)

        async def delivered_once():
            info = await js.consumer_info(UPLOADS_STREAM.name, "janitor-uploads")
            return info if info.num_ack_pending == 1 else None

        first_delivery = await wait_for(delivered_once)
        janitor.kill()
        await blocker.rollback()
        janitor.start()

        async def tracked():
            return await janitor_db.fetch(
                "SELECT upload_id, created_event_id FROM janitor.tracked_uploads WHERE upload_id = $1",
                event.data.upload_id,
            )

        rows = await wait_for(tracked)
        info = await wait_for(lambda: _settled(js))
        assert [(r["upload_id"], r["created_event_id"]) for r in rows] == [(event.data.upload_id, event.id)]
        # Delivered to the killed janitor, then again to the restarted one, which acked it.
        assert info.delivered.consumer_seq > first_delivery.delivered.consumer_seq
        # The relay deletes its row when the publish is acknowledged, in a transaction that may
        # commit after the janitor already has the message: wait for it rather than race it.
        async def outbox_empty():
            return await pool.fetchval("SELECT count(*) FROM outbox") == 0

        assert await wait_for(outbox_empty)
    finally:
        stop.set()
        await relay
        await janitor_db.close()
        await nc.close()
        await pool.close()


async def _settled(js):
    info = await js.consumer_info(UPLOADS_STREAM.name, "janitor-uploads")
    return info if info.num_ack_pending == 0 and info.num_pending == 0 else None
