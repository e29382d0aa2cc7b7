"""The tus routes against real PostgreSQL and SeaweedFS S3, through HTTP as a client sees them."""

import asyncio
import base64
import hashlib
import os
from urllib.parse import urlsplit

import pytest

from rawdrive_platform.storage import ObjectMissing

from .conftest import OCTETS, TUS, MiB, held_body, raw_patch, tus_url

PART = 5 * MiB


async def create(http, url, length, **headers):
    response = await http.post(url, headers=TUS | {"Upload-Length": str(length)} | headers)
    assert response.status == 201, await response.text()
    return response


async def patch(http, url, offset, body, **headers):
    return await http.patch(url, data=body, headers=OCTETS | {"Upload-Offset": str(offset)} | headers)


async def created_upload(gateway, http, length: int, base: str | None = None):
    """A session of `length` bytes and its tus URL on `base` (a new instance when none), created."""
    session = gateway.session(length)
    url = tus_url(base or await gateway.instance(), session)
    await create(http, url, length)
    return session, url


async def offset_of(http, url) -> int:
    response = await http.head(url, headers=TUS)
    assert response.status == 200
    assert response.headers["Cache-Control"] == "no-store"
    return int(response.headers["Upload-Offset"])


async def object_bytes(storage, key) -> bytes:
    return b"".join([chunk async for chunk in storage.iter_chunks(key)])


async def multipart_id(gateway, session) -> str:
    import asyncpg

    conn = await asyncpg.connect(gateway.dsn, server_settings={"search_path": "gateway"})
    try:
        return await conn.fetchval(
            "SELECT multipart_id FROM tus_uploads WHERE upload_id = $1", session.target.upload_id
        )
    finally:
        await conn.close()


def digest(algorithm: str, body: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, body).digest()).decode()}"


async def test_options_announces_the_protocol_without_authorization(gateway, http):
    base = await gateway.instance()
    response = await http.options(f"{base}/v1/workspaces/ws-test/uploads/unknown/tus")
    assert response.status == 204
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Extension"] == (
        "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration,concatenation"
    )
    assert response.headers["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert response.headers["Tus-Max-Size"] == str(500 * MiB)


async def test_a_file_sent_in_one_patch_becomes_the_object_at_its_key(gateway, http, storage):
    data = os.urandom(12 * MiB + 123)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    created = await create(http, url, len(data))
    assert urlsplit(created.headers["Location"]).path == urlsplit(url).path
    assert created.headers["Upload-Offset"] == "0" and "GMT" in created.headers["Upload-Expires"]

    response = await patch(http, url, 0, data)
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.progress == [5 * MiB, 10 * MiB, len(data)] and session.completions == 1


async def lose_the_completion(gateway, http, session, url, data) -> str | None:
    """Complete the upload, then set its row back as a database failover can (the commit that
    recorded the completion was never acknowledged); the completed multipart upload's id (None
    for a one-part file, put in one request)."""
    import asyncpg

    await create(http, url, len(data))
    assert (await patch(http, url, 0, data)).status == 204
    completed = await multipart_id(gateway, session)
    conn = await asyncpg.connect(gateway.dsn, server_settings={"search_path": "gateway"})
    try:
        await conn.execute(
            """UPDATE tus_uploads SET upload_offset = 0, part_etags = '{}', completed_at = NULL
               WHERE upload_id = $1""", session.target.upload_id,
        )
    finally:
        await conn.close()
    return completed


async def test_a_completion_whose_row_update_was_lost_is_recorded_when_the_body_comes_again(gateway, http, storage):
    """A database failover can lose the row's update after S3 completed the object. The client,
    answered with an error, sends the body again from the offset the row still has; the multipart
    upload is gone, the object is whole: it is recorded as complete instead of failing on every
    retry or being sent again (found by tests/e2e/test_cluster.py)."""
    data = os.urandom(PART + 7)  # two parts: the last one and the completion are written together
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    completed = await lose_the_completion(gateway, http, session, url, data)

    response = await patch(http, url, 0, data)
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    assert await multipart_id(gateway, session) == completed  # recognised, not uploaded again
    assert await offset_of(http, url) == len(data)
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.progress[-1] == len(data)
    assert session.completions >= 2  # told again after the lost update


async def test_head_after_a_lost_completion_reports_the_whole_object(gateway, http, storage):
    """The same loss met by a resuming client's HEAD first: the gone multipart upload is not
    taken for lost bytes (offset 0, a fresh upload) but for the completed object it became."""
    data = os.urandom(PART + 7)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    completed = await lose_the_completion(gateway, http, session, url, data)

    assert await offset_of(http, url) == len(data)
    assert await multipart_id(gateway, session) == completed
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.progress[-1] == len(data) and session.completions >= 2


async def test_a_file_of_one_part_in_one_patch_is_one_put_and_no_multipart_upload(gateway, http, storage):
    data = os.urandom(2 * MiB + 3)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))
    assert await multipart_id(gateway, session) is None  # none created at the POST

    response = await patch(http, url, 0, data)
    assert response.status == 204, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    assert await object_bytes(storage, session.target.object_key) == data
    assert await multipart_id(gateway, session) is None
    assert [u async for u in storage.list_multipart_uploads(session.target.object_key)] == []
    assert session.progress == [len(data)] and session.completions == 1
    assert await offset_of(http, url) == len(data)


async def test_a_file_of_exactly_one_part_is_one_put_too(gateway, http, storage):
    data = os.urandom(PART)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))
    assert (await patch(http, url, 0, data)).status == 204
    assert await multipart_id(gateway, session) is None
    assert await object_bytes(storage, session.target.object_key) == data


async def test_a_one_part_file_in_several_patches_is_kept_as_the_tail_then_put_whole(gateway, http, storage):
    data = os.urandom(3 * MiB + 5)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))
    offset = 0
    for size in (1, MiB, MiB, MiB + 4):
        response = await patch(http, url, offset, data[offset : offset + size])
        assert response.status == 204, await response.text()
        offset += size
        assert await offset_of(http, url) == offset
        if offset < len(data):  # the bytes so far are the tail in PostgreSQL; nothing in S3
            assert await storage.head(session.target.object_key) is None
    assert await object_bytes(storage, session.target.object_key) == data
    assert await multipart_id(gateway, session) is None
    assert session.progress == [1, MiB + 1, 2 * MiB + 1, len(data)]


async def test_a_one_part_file_in_a_chunked_body_is_put_whole_and_one_running_past_its_length_is_not(
    gateway, http, storage
):
    data = os.urandom(2 * MiB)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))

    async def chunked(extra: bytes = b""):  # no Content-Length: the end is known only at the end
        yield data[:MiB]
        yield data[MiB:] + extra

    assert (await patch(http, url, 0, chunked(b"!"))).status == 413
    # The whole length arrived, then one byte too many: storage got nothing of it.
    assert await storage.head(session.target.object_key) is None
    assert await offset_of(http, url) == 0 and session.completions == 0
    response = await patch(http, url, 0, chunked())
    assert response.status == 204, await response.text()
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions == 1


@pytest.mark.parametrize("cancelled", [False, True], ids=["read-fails", "handler-cancelled"])
@pytest.mark.parametrize(
    ("size", "sent", "progress"),
    [
        (3 * MiB, 2 * MiB + 3, [2 * MiB + 3]),
        (11 * MiB, 7 * MiB + 3, [PART, 7 * MiB + 3]),  # one whole part and a tail
    ],
    ids=["one-part", "multipart"],
)
async def test_a_patch_cut_mid_body_keeps_every_byte_and_another_instance_completes_it(
    gateway, http, storage, size, sent, progress, cancelled
):
    """A cut body ends the storage write unfinished: a one-part file's PutObject (it streams
    while the body arrives) stores nothing, a larger file keeps its whole parts. The bytes that
    arrived past them are kept as the tail, and HEAD says where to resume, on any instance."""
    data = os.urandom(size)
    session = gateway.session(len(data))
    first = await gateway.instance(handler_cancellation=cancelled)
    second = await gateway.instance()
    url = tus_url(first, session)
    await create(http, url, len(data))

    _, writer = await raw_patch(url, data, sent)
    writer.close()  # the client goes away with the body unfinished
    await writer.wait_closed()

    other = tus_url(second, session)
    for _ in range(100):  # the first instance notices the cut on its own schedule
        if session.progress[-1:] == [sent] and await offset_of(http, other) == sent:
            break
        await asyncio.sleep(0.05)
    assert await offset_of(http, other) == sent
    assert session.progress == progress and session.completions == 0
    assert await storage.head(session.target.object_key) is None
    # Only a file of more than one part has a multipart upload.
    assert (await multipart_id(gateway, session) is None) == (size <= PART)

    for _ in range(100):  # the first instance may still hold the lease for a moment
        response = await patch(http, other, sent, data[sent:])
        if response.status != 423:
            break
        await asyncio.sleep(0.05)
    assert response.status == 204, await response.text()
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.progress[-1] == len(data) and session.completions == 1


async def test_a_one_part_put_whose_completion_was_lost_is_found_by_head_or_put_again(gateway, http, storage):
    """The PutObject landed and the row's update was lost: HEAD finds the whole object and
    records the completion; a client that sends the body again instead just puts it again."""
    data = os.urandom(2 * MiB + 7)
    for resume_with_head in (True, False):
        session = gateway.session(len(data))
        url = tus_url(await gateway.instance(), session)
        assert await lose_the_completion(gateway, http, session, url, data) is None
        if resume_with_head:
            assert await offset_of(http, url) == len(data)
        else:
            response = await patch(http, url, 0, data)
            assert response.status == 204, await response.text()
        assert await offset_of(http, url) == len(data)
        assert await object_bytes(storage, session.target.object_key) == data
        assert session.progress[-1] == len(data) and session.completions >= 2


async def test_a_one_part_upload_created_with_a_multipart_upload_before_this_change_completes_by_it(
    gateway, http, storage
):
    """Uploads created before one-part files became one PutObject have a multipart upload; one
    in flight across the deployment goes on with it."""
    import asyncpg

    data = os.urandom(2 * MiB)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))
    assert (await patch(http, url, 0, data[:MiB])).status == 204
    old = await storage.create_multipart(session.target.object_key, "image/jpeg")
    conn = await asyncpg.connect(gateway.dsn, server_settings={"search_path": "gateway"})
    try:
        await conn.execute("UPDATE tus_uploads SET multipart_id = $2 WHERE upload_id = $1", session.target.upload_id, old)
    finally:
        await conn.close()

    assert await offset_of(http, url) == MiB
    assert (await patch(http, url, MiB, data[MiB:])).status == 204
    assert await object_bytes(storage, session.target.object_key) == data
    with pytest.raises(ObjectMissing):  # completed: no longer an open multipart upload
        await storage.list_parts(session.target.object_key, old)


async def test_chunks_smaller_than_a_part_are_counted_exactly_after_each_patch(gateway, http, storage):
    data = os.urandom(6 * MiB + 5)
    session, url = await created_upload(gateway, http, len(data))
    offset = 0
    for size in (1, MiB - 1, 2 * MiB, 2 * MiB, MiB + 5):
        response = await patch(http, url, offset, data[offset : offset + size])
        assert response.status == 204, await response.text()
        offset += size
        assert await offset_of(http, url) == offset
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions >= 1  # again on each later HEAD: the session layer is idempotent


async def test_3_mib_chunks_on_5_mib_parts_give_equal_parts_except_the_last(gateway, http, storage):
    data = os.urandom(13 * MiB + 17)
    session, url = await created_upload(gateway, http, len(data))
    offset = 0
    while offset < len(data):
        if offset + 3 * MiB >= len(data):  # before the last chunk: the parts so far
            parts = await storage.list_parts(
                session.target.object_key, await multipart_id(gateway, session)
            )
            assert [part.size for part in parts] == [PART, PART]
        chunk = data[offset : offset + 3 * MiB]
        response = await patch(http, url, offset, chunk)
        assert response.status == 204, await response.text()
        offset += len(chunk)
        assert await offset_of(http, url) == offset
    assert await object_bytes(storage, session.target.object_key) == data


async def test_head_after_storage_lost_the_multipart_upload_reports_0_and_the_upload_resumes_from_there(
    gateway, http, storage
):
    data = os.urandom(12 * MiB + 5)
    sent = 7 * MiB + 3  # one whole part in S3 and a tail in PostgreSQL
    session, url = await created_upload(gateway, http, len(data))
    assert (await patch(http, url, 0, data[:sent])).status == 204
    assert await offset_of(http, url) == sent  # storage holds every recorded part: nothing changes
    lost = await multipart_id(gateway, session)
    await storage.abort_multipart(session.target.object_key, lost)  # behind the gateway's back

    assert await offset_of(http, url) == 0
    fresh = await multipart_id(gateway, session)
    assert fresh != lost and await storage.list_parts(session.target.object_key, fresh) == []
    assert session.progress[-1] == 0  # the session layer hears that the bytes are gone
    response = await patch(http, url, 0, data)
    assert response.status == 204, await response.text()
    assert await object_bytes(storage, session.target.object_key) == data


async def test_bytes_kept_as_the_tail_outlive_a_lost_multipart_upload_that_held_no_part_yet(gateway, http, storage):
    data = os.urandom(6 * MiB + 5)
    session, url = await created_upload(gateway, http, len(data))
    assert (await patch(http, url, 0, data[: 2 * MiB])).status == 204  # all of it a tail in PostgreSQL
    lost = await multipart_id(gateway, session)
    await storage.abort_multipart(session.target.object_key, lost)

    assert await offset_of(http, url) == 2 * MiB
    assert await multipart_id(gateway, session) != lost
    assert (await patch(http, url, 2 * MiB, data[2 * MiB :])).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_a_patch_that_meets_a_lost_multipart_upload_is_409_and_head_then_says_where_to_resume(
    gateway, http, storage
):
    data = os.urandom(12 * MiB + 5)
    sent = 7 * MiB + 3
    session, url = await created_upload(gateway, http, len(data))
    assert (await patch(http, url, 0, data[:sent])).status == 204
    await storage.abort_multipart(session.target.object_key, await multipart_id(gateway, session))

    refused = await patch(http, url, sent, data[sent:])
    assert refused.status == 409, await refused.text()
    assert "HEAD" in await refused.text()
    assert await offset_of(http, url) == 0
    assert (await patch(http, url, 0, data)).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_a_patch_at_the_wrong_offset_is_409_and_changes_nothing(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 6 * MiB)
    assert (await patch(http, url, 0, b"x" * 10)).status == 204
    response = await patch(http, url, 5, b"y" * 10)
    assert response.status == 409
    assert await offset_of(http, url) == 10


async def test_another_protocol_version_is_412_and_names_the_supported_one(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 6 * MiB)
    response = await patch(http, url, 0, b"x", **{"Tus-Resumable": "0.2.2"})
    assert response.status == 412 and response.headers["Tus-Version"] == "1.0.0"
    assert (await http.head(url)).status == 412


async def test_a_patch_with_another_content_type_is_415(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 6 * MiB)
    response = await patch(http, url, 0, b"x", **{"Content-Type": "application/octet-stream"})
    assert response.status == 415


async def test_bytes_past_the_declared_length_are_413_with_or_without_content_length(
    gateway, http, storage
):
    data = os.urandom(6 * MiB)
    session, url = await created_upload(gateway, http, len(data))
    assert (await patch(http, url, 0, data + b"!")).status == 413
    assert await offset_of(http, url) == 0

    async def chunked():  # no Content-Length: the excess is found while streaming
        yield data[: 4 * MiB]
        yield data[4 * MiB :] + b"!"

    assert (await patch(http, url, 0, chunked())).status == 413
    # Whole parts that arrived before the excess stay; the upload goes on from there.
    offset = await offset_of(http, url)
    assert offset < len(data) and session.completions == 0
    assert (await patch(http, url, offset, data[offset:])).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_upload_length_must_equal_the_session_size(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    response = await http.post(url, headers=TUS | {"Upload-Length": str(6 * MiB + 1)})
    assert response.status == 400


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
async def test_checksummed_patches_apply_when_they_match_and_460_when_not(gateway, http, storage, algorithm):
    data = os.urandom(6 * MiB)
    session, url = await created_upload(gateway, http, len(data))
    first, rest = data[: 4 * MiB], data[4 * MiB :]
    ok = await patch(http, url, 0, first, **{"Upload-Checksum": digest(algorithm, first)})
    assert ok.status == 204
    bad = await patch(http, url, len(first), rest, **{"Upload-Checksum": digest(algorithm, b"other")})
    assert bad.status == 460
    assert await offset_of(http, url) == len(first)
    ok = await patch(http, url, len(first), rest, **{"Upload-Checksum": digest(algorithm, rest)})
    assert ok.status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_a_one_part_file_in_one_checksummed_patch_is_checked_then_put_whole(gateway, http, storage):
    data = os.urandom(3 * MiB)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    await create(http, url, len(data))
    bad = await patch(http, url, 0, data, **{"Upload-Checksum": digest("sha256", b"other")})
    assert bad.status == 460
    assert await storage.head(session.target.object_key) is None and await offset_of(http, url) == 0
    ok = await patch(http, url, 0, data, **{"Upload-Checksum": digest("sha256", data)})
    assert ok.status == 204, await ok.text()
    assert await multipart_id(gateway, session) is None
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions == 1


async def test_a_checksummed_patch_larger_than_a_part_is_refused_before_it_is_read(gateway, http):
    session = gateway.session(12 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 12 * MiB)
    body = b"z" * (PART + 1)
    response = await patch(http, url, 0, body, **{"Upload-Checksum": digest("sha1", body)})
    assert response.status == 413 and "Upload-Checksum" in await response.text()


async def test_an_unsupported_checksum_algorithm_is_400(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 6 * MiB)
    md5 = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    assert (await patch(http, url, 0, b"x", **{"Upload-Checksum": f"md5 {md5}"})).status == 400


async def test_termination_aborts_the_multipart_upload_and_forgets_the_upload(gateway, http, storage):
    session = gateway.session(12 * MiB)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, 12 * MiB)
    assert (await patch(http, url, 0, os.urandom(6 * MiB))).status == 204
    upload = await multipart_id(gateway, session)
    response = await http.delete(url, headers=TUS)
    assert response.status == 204
    head = await http.head(url, headers=TUS)  # nothing kept (the session layer answers 410 then)
    assert (head.status, head.headers["Upload-Offset"]) == (200, "0")
    with pytest.raises(ObjectMissing):
        await storage.list_parts(session.target.object_key, upload)
    assert await storage.head(session.target.object_key) is None
    assert session.terminations == 1


async def test_terminating_a_one_part_upload_deletes_its_tail_and_any_object(gateway, http, storage):
    data = os.urandom(2 * MiB)
    for landed in (False, True):
        session = gateway.session(len(data))
        url = tus_url(await gateway.instance(), session)
        await create(http, url, len(data))
        assert (await patch(http, url, 0, data[:MiB])).status == 204  # a tail, no multipart upload
        if landed:  # as a PutObject that landed before its row's update was lost leaves it
            await storage.put(session.target.object_key, data, "image/jpeg")
        response = await http.delete(url, headers=TUS)
        assert response.status == 204, await response.text()
        head = await http.head(url, headers=TUS)
        assert (head.status, head.headers["Upload-Offset"]) == (200, "0")
        assert await storage.head(session.target.object_key) is None
        assert session.terminations == 1


async def test_a_second_patch_while_one_is_writing_gets_423_locked(gateway, http, storage):
    data = os.urandom(6 * MiB)
    session = gateway.session(len(data))
    first, second = await gateway.instance(), await gateway.instance()
    await create(http, tus_url(first, session), len(data))
    started, release = asyncio.Event(), asyncio.Event()
    slow = asyncio.create_task(
        patch(http, tus_url(first, session), 0, held_body(data, started, release), **{"Content-Length": str(len(data))})
    )
    await started.wait()
    await asyncio.sleep(0.2)  # let the server take the lock
    assert (await patch(http, tus_url(second, session), 0, data)).status == 423
    release.set()
    assert (await slow).status == 204
    assert await object_bytes(storage, session.target.object_key) == data


async def test_method_override_tunnels_patch_head_and_delete_through_post(gateway, http, storage):
    data = os.urandom(MiB)
    session, url = await created_upload(gateway, http, len(data))
    response = await http.post(
        url, data=data,
        headers=OCTETS | {"Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
    )
    assert response.status == 204 and response.headers["Upload-Offset"] == str(len(data))
    head = await http.post(url, headers=TUS | {"X-HTTP-Method-Override": "HEAD"})
    assert head.headers["Upload-Offset"] == str(len(data))
    assert await object_bytes(storage, session.target.object_key) == data
    assert (await http.post(url, headers=TUS | {"X-HTTP-Method-Override": "GET"})).status == 400


async def test_creation_with_upload_stores_the_first_bytes_and_metadata_comes_back_on_head(
    gateway, http
):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    metadata = "filename cGhvdG8uanBn,filetype aW1hZ2UvanBlZw=="
    response = await http.post(
        url, data=b"a" * 1000,
        headers=OCTETS | {"Upload-Length": str(6 * MiB), "Upload-Metadata": metadata},
    )
    assert response.status == 201 and response.headers["Upload-Offset"] == "1000"
    head = await http.head(url, headers=TUS)
    assert head.headers["Upload-Offset"] == "1000"
    assert head.headers["Upload-Metadata"] == metadata
    assert head.headers["Upload-Length"] == str(6 * MiB)


async def test_creation_with_upload_of_a_whole_one_part_file_completes_it_in_one_put(gateway, http, storage):
    data = os.urandom(2 * MiB + 1)
    session = gateway.session(len(data))
    url = tus_url(await gateway.instance(), session)
    response = await http.post(url, data=data, headers=OCTETS | {"Upload-Length": str(len(data))})
    assert response.status == 201, await response.text()
    assert response.headers["Upload-Offset"] == str(len(data))
    assert await multipart_id(gateway, session) is None
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.progress == [len(data)] and session.completions == 1


@pytest.mark.parametrize("size", [6 * MiB, MiB], ids=["multipart", "one part"])
async def test_creating_an_existing_upload_again_keeps_its_bytes(gateway, http, size):
    session = gateway.session(size)
    url = tus_url(await gateway.instance(), session)
    await create(http, url, size)
    assert (await patch(http, url, 0, b"x" * 100)).status == 204
    again = await create(http, url, size)
    assert again.status == 201 and again.headers["Upload-Offset"] == "100"
    assert (await patch(http, url, 100, b"y" * (size - 100))).status == 204
    assert (session.progress[0], session.progress[-1], session.completions) == (100, size, 1)


async def test_malformed_metadata_is_400(gateway, http):
    session = gateway.session(6 * MiB)
    url = tus_url(await gateway.instance(), session)
    response = await http.post(
        url, headers=TUS | {"Upload-Length": str(6 * MiB), "Upload-Metadata": "a !!!"}
    )
    assert response.status == 400


async def test_an_expired_upload_is_410_and_one_never_created_is_the_session_upload_at_0(gateway, http, storage):
    session = gateway.session(6 * MiB, expires_in_s=-1)
    base = await gateway.instance()
    assert (await http.post(tus_url(base, session), headers=TUS | {"Upload-Length": str(6 * MiB)})).status == 410
    assert (await http.head(tus_url(base, session), headers=TUS)).status == 410
    # The URL is the upload before any POST: HEAD says 0 of the session's length, PATCH at 0 works.
    fresh = gateway.session(6)
    head = await http.head(tus_url(base, fresh), headers=TUS)
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (200, "0", "6")
    assert (await patch(http, tus_url(base, fresh), 3, b"xyz")).status == 409
    assert (await patch(http, tus_url(base, fresh), 0, b"abc")).status == 204
    assert (await patch(http, tus_url(base, fresh), 3, b"def")).status == 204
    assert await object_bytes(storage, fresh.target.object_key) == b"abcdef"
    assert fresh.completions == 1


async def test_an_empty_file_completes_at_creation(gateway, http, storage):
    session = gateway.session(0)
    url = tus_url(await gateway.instance(), session)
    created = await create(http, url, 0)
    assert created.headers["Upload-Offset"] == "0"
    info = await storage.head(session.target.object_key)
    assert info is not None and info.size == 0
    assert session.completions == 1


async def test_memory_is_bounded_by_parts_whatever_the_patch_size(gateway, http, storage):
    import tracemalloc

    data = os.urandom(26 * MiB)
    session, url = await created_upload(gateway, http, len(data))

    async def body():  # the client streams too, so only the server's buffers count
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    tracemalloc.start()
    try:
        response = await patch(http, url, 0, body(), **{"Content-Length": str(len(data))})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status == 204
    # Parts stream on to S3 as their bytes arrive: at most the part being gathered (kept until
    # whole, in case the body is cut) and the unsent rest of the one before, plus this
    # process's client; bounded by parts, not by the 26 MiB body.
    assert peak < 2 * PART, f"peak {peak / MiB:.1f} MiB for {PART // MiB} MiB parts"
    assert await object_bytes(storage, session.target.object_key) == data
