"""Slow and stalled clients (issue 21): a body streaming holds no pooled connection, a body that
stalls is cut with its bytes kept, and a request that lost its lease writes nothing. Real
PostgreSQL and SeaweedFS, through HTTP."""

import asyncio
import os
from urllib.parse import urlsplit

import asyncpg
import pytest

from upload_gateway.uploads.tus import PostgresS3Store
from upload_gateway.uploads.tus.protocol import Patch
from upload_gateway.uploads.tus.store import BodyInterrupted

from .conftest import MiB, held_body, raw_patch, tus_url
from .test_routes import create, created_upload, object_bytes, offset_of, patch

PART = 5 * MiB


async def in_use(pool) -> int:
    return pool.get_size() - pool.get_idle_size()


async def sql(gateway, query: str, *args):
    conn = await asyncpg.connect(gateway.dsn, server_settings={"search_path": "gateway"})
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def test_more_streaming_bodies_than_pool_connections_hold_none_and_others_are_served(gateway, http, storage):
    base = await gateway.instance()
    pool = gateway.pools[-1]  # 20 connections
    sessions = [gateway.session(2 * MiB) for _ in range(pool.get_max_size() + 5)]
    for session in sessions:
        await create(http, tus_url(base, session), 2 * MiB)
    data = os.urandom(2 * MiB)
    arrived = [asyncio.Event() for _ in sessions]
    release = asyncio.Event()
    patches = [
        asyncio.create_task(
            patch(http, tus_url(base, s), 0, held_body(data, arrived[i], release), **{"Content-Length": str(2 * MiB)})
        )
        for i, s in enumerate(sessions)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in arrived)), 30)
    # Every request claims its upload and reads its row, then waits for bytes holding no
    # connection: the pool empties (on a loaded machine the claims take a moment). A lock held
    # on a pooled connection would keep all 20 lent out, and 5 requests waiting, for good.
    for _ in range(400):
        claimed = await sql(gateway, "SELECT count(*) FROM tus_leases")
        if claimed == len(sessions) and await in_use(pool) == 0:
            break
        await asyncio.sleep(0.05)
    assert (claimed, await in_use(pool)) == (len(sessions), 0)
    # Another upload is served meanwhile, at once.
    other = gateway.session(100)
    await create(http, tus_url(base, other), 100)
    assert (await asyncio.wait_for(patch(http, tus_url(base, other), 0, os.urandom(100)), 10)).status == 204
    release.set()
    assert [response.status for response in await asyncio.gather(*patches)] == [204] * len(sessions)
    for session in sessions:
        assert await object_bytes(storage, session.target.object_key) == data
    assert await sql(gateway, "SELECT count(*) FROM tus_leases") == 0


async def test_a_body_that_stalls_is_cut_after_the_idle_timeout_with_503_and_its_bytes_are_kept(gateway, http, storage):
    base = await gateway.instance(idle_timeout_s=1.0)
    data = os.urandom(PART + 2 * MiB)
    sent = PART + MiB + 3  # one part to S3, a tail to PostgreSQL
    session, url = await created_upload(gateway, http, len(data), base)

    reader, writer = await raw_patch(url, data, sent)
    # The client stays connected and sends nothing more.
    status_line = await asyncio.wait_for(reader.readline(), 15)
    assert status_line.split()[1] == b"503", status_line  # what stock tus clients retry (routes.py)
    answer = await asyncio.wait_for(reader.read(), 15)  # the rest of the answer, then the server closes
    assert b"retry-after: 1\r\n" in answer.lower() and b"connection: close\r\n" in answer.lower(), answer
    writer.close()

    assert await offset_of(http, url) == sent
    assert session.progress == [PART, sent]
    assert (await patch(http, url, sent, data[sent:])).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_a_request_whose_lease_was_taken_over_records_nothing_and_answers_423(gateway, http, storage):
    base = await gateway.instance()
    data = os.urandom(PART + MiB)
    session, url = await created_upload(gateway, http, len(data), base)
    started, release = asyncio.Event(), asyncio.Event()
    body = held_body(data, started, release)
    slow = asyncio.create_task(patch(http, url, 0, body, **{"Content-Length": str(len(data))}))
    await started.wait()
    # As if the lease had run out and another gateway's request had claimed the upload (once the
    # server has claimed it).
    for _ in range(400):
        taken = await sql(gateway, "UPDATE tus_leases SET holder = gen_random_uuid() WHERE upload_id = $1 RETURNING true",
                          session.target.upload_id)  # fmt: skip
        if taken:
            break
        await asyncio.sleep(0.05)
    assert taken
    release.set()
    assert (await slow).status == 423
    assert session.progress == []
    assert await sql(gateway, "SELECT upload_offset FROM tus_uploads WHERE upload_id = $1", session.target.upload_id) == 0


async def test_a_lease_left_by_a_dead_gateway_is_refused_until_it_runs_out_then_claimed(gateway, http, storage):
    base = await gateway.instance()
    data = os.urandom(1000)
    session, url = await created_upload(gateway, http, len(data), base)
    upload_id = session.target.upload_id
    await sql(gateway, "INSERT INTO tus_leases VALUES ($1, gen_random_uuid(), now() + interval '1 minute')", upload_id)
    assert (await patch(http, url, 0, data)).status == 423
    await sql(gateway, "UPDATE tus_leases SET expires_at = now() - interval '1 second' WHERE upload_id = $1", upload_id)
    assert (await patch(http, url, 0, data)).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_bodies_slower_than_the_lease_ttl_keep_their_uploads_by_renewal(gateway, http, storage):
    base = await gateway.instance(lease_ttl_s=2.0)  # renewed every 0.5 s, given up after 1.5 s unrenewed
    data = os.urandom(PART + MiB)
    sessions = [gateway.session(len(data)) for _ in range(3)]
    for session in sessions:
        await create(http, tus_url(base, session), len(data))
    arrived = [asyncio.Event() for _ in sessions]
    release = asyncio.Event()
    patches = [
        asyncio.create_task(
            patch(http, tus_url(base, s), 0, held_body(data, arrived[i], release), **{"Content-Length": str(len(data))})
        )
        for i, s in enumerate(sessions)
    ]
    await asyncio.wait_for(asyncio.gather(*(event.wait() for event in arrived)), 30)
    await asyncio.sleep(4.0)  # twice the ttl: only renewals keep the leases
    assert await sql(gateway, "SELECT count(*) FROM tus_leases WHERE expires_at > now()") == len(sessions)
    release.set()
    assert [response.status for response in await asyncio.gather(*patches)] == [204] * len(sessions)
    for session in sessions:
        assert await object_bytes(storage, session.target.object_key) == data


async def resumes_to_completion(http, storage, session, url: str, data: bytes) -> None:
    """HEAD says the upload is short of its end and it is not completed; resuming from that
    offset completes it once, with every byte."""
    offset = await offset_of(http, url)
    assert offset < len(data) and session.completions == 0
    response = await patch(http, url, offset, data[offset:])
    assert response.status == 204, await response.text()
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions == 1


@pytest.mark.parametrize("size", [2 * MiB, PART + 2 * MiB], ids=["one-part", "multipart"])
async def test_a_chunked_body_cut_after_its_last_byte_leaves_an_upload_that_can_still_complete(
    gateway, http, storage, size
):
    """Every byte of the file arrived, chunked, then the body stalled before its end was seen:
    the last part was never sent, so the upload is not complete, and its offset must not say it
    is (a client whose HEAD answers offset = length stops there, and nothing commits it)."""
    base = await gateway.instance(idle_timeout_s=1.0)
    data = os.urandom(size)
    session, url = await created_upload(gateway, http, len(data), base)
    split = urlsplit(url)
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(
        f"PATCH {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Transfer-Encoding: chunked\r\n\r\n{len(data):x}\r\n".encode() + data + b"\r\n"
    )  # and no last chunk: the body never ends
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 15)
    assert status_line.split()[1] == b"503", status_line
    writer.close()

    await resumes_to_completion(http, storage, session, url, data)


async def test_a_body_that_breaks_after_its_last_part_landed_leaves_an_upload_that_can_still_complete(
    gateway, http, storage
):
    """The client went away after its last byte (its connection broke before the answer): the
    last part landed in S3, but the read that would have seen the body's end fails instead. The
    offset must not reach the length without the completion, or HEAD tells the client it is done."""
    data = os.urandom(PART + 2 * MiB)
    session, url = await created_upload(gateway, http, len(data))
    chunks = [data[at : at + MiB] for at in range(0, len(data), MiB)]

    async def read(size: int) -> bytes:
        if chunks:
            return chunks.pop(0)
        raise ConnectionResetError("the client went away")

    store = PostgresS3Store(gateway.pools[-1])
    with pytest.raises(BodyInterrupted):
        await store.write(session.target, Patch(offset=0, content_length=len(data), checksum=None), read)
    await resumes_to_completion(http, storage, session, url, data)
