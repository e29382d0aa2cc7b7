"""Storage against a real SeaweedFS S3 server (the ``s3_server`` fixture), plus its pure parts."""

import asyncio
import os
import socket
import tracemalloc
import uuid
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp
import pytest

from rawdrive_devkit.devstack.servers import loopback_endpoint_policy
from rawdrive_platform.config import CommonSettings, Secret
from rawdrive_platform.keys import original_key
from rawdrive_platform.storage import (
    EndpointPolicy,
    ObjectMissing,
    Storage,
    StorageDenied,
    StorageError,
    StorageProfile,
    StorageRegistry,
    StorageUnavailable,
    client_config,
    content_disposition,
    error_from_response,
    managed_storage_profile,
    pin_connections,
)

MiB = 1024 * 1024


def profile_for(server, **changes) -> StorageProfile:
    fields = {
        "profile_id": "managed",
        "provider": "r2",
        "endpoint": server.endpoint,
        "region": server.region,
        "bucket": server.bucket,
        "access_key_id": server.access_key_id,
        "secret_access_key": Secret(server.secret_access_key),
    }
    return StorageProfile(**(fields | changes))


@pytest.fixture
async def storage(s3_server):
    opened = await Storage.open(profile_for(s3_server))
    yield opened
    await opened.close()


@pytest.fixture
def key():
    return original_key(f"ws-{uuid.uuid4().hex}", f"a-{uuid.uuid4().hex}", "photo.jpg")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- pure -----------------------------------------------------------------------------------


def test_content_disposition_gives_an_ascii_fallback_and_a_utf8_filename_star():
    assert content_disposition("plain.jpg") == 'attachment; filename="plain.jpg"'
    assert content_disposition("Grüße 東京.jpg") == (
        "attachment; filename=\"Gr__e __.jpg\"; filename*=UTF-8''Gr%C3%BC%C3%9Fe%20%E6%9D%B1%E4%BA%AC.jpg"
    )
    assert content_disposition('a"b\\c.jpg').startswith('attachment; filename="a_b_c.jpg"; ')


def test_a_kms_key_without_sse_kms_is_refused():
    base = {"profile_id": "p", "provider": "byos", "bucket": "b", "access_key_id": "k",
            "secret_access_key": Secret("s")}
    with pytest.raises(ValueError):
        StorageProfile(**base, kms_key_id="k1")


def test_the_botocore_internals_pin_connections_uses_still_exist():
    """pin_connections writes botocore's private pool table (it has no public hook): when a
    botocore upgrade renames or drops it, this fails instead of the pinning quietly stopping."""
    import botocore.session
    from botocore.httpsession import URLLib3Session

    client = botocore.session.get_session().create_client(
        "s3", region_name="auto", endpoint_url="https://s3.example.com", aws_access_key_id="k", aws_secret_access_key="s"
    )
    http = client._endpoint.http_session
    assert isinstance(http, URLLib3Session)
    assert set(http._pool_classes_by_scheme) == {"http", "https"}
    assert http._manager.pool_classes_by_scheme is http._pool_classes_by_scheme
    pin_connections(client, EndpointPolicy())
    pool = http._manager.connection_from_url("https://s3.example.com/")
    assert pool.ConnectionCls.__name__ == "PinnedAWSHTTPSConnection"


def test_client_config_is_r2_safe_and_uses_path_addressing_for_custom_endpoints():
    config = client_config(StorageProfile(
        profile_id="p", provider="r2", endpoint="https://acct.r2.cloudflarestorage.com",
        bucket="b", access_key_id="k", secret_access_key=Secret("s"),
    ))
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.signature_version == "s3v4"
    assert config.s3 == {"addressing_style": "path"}


def test_the_managed_profile_comes_from_common_settings():
    settings = CommonSettings(
        database_url="postgresql://x", s3_bucket="rawdrive", s3_access_key_id="id",
        s3_secret_access_key=Secret("s"), s3_endpoint="http://127.0.0.1:8333",
    )
    profile = managed_storage_profile(settings)
    assert (profile.profile_id, profile.provider, profile.bucket, profile.endpoint) == (
        "managed", "r2", "rawdrive", "http://127.0.0.1:8333",
    )
    assert profile.secret_access_key == Secret("s")
    assert "'***'" in repr(profile)


# --- against SeaweedFS ----------------------------------------------------------------------


async def test_put_object_reads_back_exactly_by_head_range_and_chunks(storage, key):
    body = os.urandom(MiB + 123)
    await storage.put(key, body, "image/jpeg")

    info = await storage.head(key)
    assert (info.size, info.content_type) == (len(body), "image/jpeg")
    assert await storage.get_range(key, 10, 20) == body[10:20]
    assert await storage.get_range(key, len(body) - 5, len(body)) == body[-5:]

    chunks = [chunk async for chunk in storage.iter_chunks(key, chunk_size=256 * 1024)]
    assert b"".join(chunks) == body
    assert chunks and all(0 < len(c) <= 256 * 1024 for c in chunks)


async def test_iter_chunks_streams_a_large_object_in_bounded_memory(storage, key):
    size = 24 * MiB
    await storage.put(key, os.urandom(size), "application/octet-stream")
    tracemalloc.start()
    try:
        total = 0
        async for chunk in storage.iter_chunks(key, chunk_size=MiB):
            total += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == size
    assert peak < 6 * MiB


async def test_a_missing_object_is_none_on_head_and_object_missing_on_read(storage, key):
    assert await storage.head(key) is None
    with pytest.raises(ObjectMissing):
        await storage.get_range(key, 0, 1)
    with pytest.raises(ObjectMissing):
        [chunk async for chunk in storage.iter_chunks(key)]


async def test_delete_removes_a_batch_and_is_idempotent(storage, key):
    prefix = key.rsplit("/", 1)[0] + "/"
    keys = [f"{prefix}{n}.bin" for n in range(3)]
    for each in keys:
        await storage.put(each, b"x", "application/octet-stream")
    assert sorted([k async for k in storage.list_keys(prefix)]) == keys

    await storage.delete([*keys, f"{prefix}never-existed.bin"])
    assert [k async for k in storage.list_keys(prefix)] == []
    await storage.delete(keys)


async def test_multipart_upload_lists_its_parts_and_completes_into_one_object(storage, key):
    parts_bodies = [os.urandom(5 * MiB), os.urandom(1000)]
    upload_id = await storage.create_multipart(key, "image/jpeg")
    uploaded = [
        await storage.upload_part(key, upload_id, number, body)
        for number, body in enumerate(parts_bodies, start=1)
    ]

    listed = await storage.list_parts(key, upload_id)
    assert [(p.part_number, p.etag, p.size) for p in listed] == [
        (1, uploaded[0].etag, 5 * MiB), (2, uploaded[1].etag, 1000),
    ]
    in_progress = [u async for u in storage.list_multipart_uploads(key)]
    assert [(u.key, u.upload_id) for u in in_progress] == [(key, upload_id)]

    await storage.complete_multipart(key, upload_id, list(reversed(listed)))
    assert (await storage.head(key)).size == 5 * MiB + 1000
    assert await storage.get_range(key, 5 * MiB - 2, 5 * MiB + 2) == (
        parts_bodies[0][-2:] + parts_bodies[1][:2]
    )
    assert [u async for u in storage.list_multipart_uploads(key)] == []


async def test_copied_parts_join_byte_ranges_of_other_objects_into_one_object(storage, key):
    first, second = os.urandom(5 * MiB + 3), os.urandom(2 * MiB)
    await storage.put(f"{key}.a", first, "application/octet-stream")
    await storage.put(f"{key}.b", second, "application/octet-stream")
    upload_id = await storage.create_multipart(key, "video/mp4")
    parts = [
        await storage.copy_part(key, upload_id, 1, f"{key}.a", 3, 5 * MiB + 3),
        await storage.copy_part(key, upload_id, 2, f"{key}.b", 10, 2 * MiB),
    ]
    await storage.complete_multipart(key, upload_id, parts)
    assert (await storage.head(key)).size == 5 * MiB + 2 * MiB - 10
    assert b"".join([chunk async for chunk in storage.iter_chunks(key)]) == first[3:] + second[10:]
    await storage.delete([key, f"{key}.a", f"{key}.b"])


async def test_a_streamed_part_is_sent_as_its_body_produces_it_and_a_short_one_leaves_nothing(storage, key):
    whole, short = os.urandom(5 * MiB), os.urandom(3 * MiB)
    upload_id = await storage.create_multipart(key, "image/jpeg")
    produced = asyncio.Event()

    async def body(data: bytes, then_stop: bool = False):
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]
            if start == MiB:
                produced.set()
                await asyncio.sleep(0)
        if then_stop:
            raise ConnectionResetError("the client went away")

    part = await storage.stream_part(key, upload_id, 1, len(whole), body(whole))
    assert produced.is_set()
    with pytest.raises((StorageError, ConnectionResetError, aiohttp.ClientError)):
        await storage.stream_part(key, upload_id, 2, 5 * MiB, body(short, then_stop=True))

    assert [(p.part_number, p.etag, p.size) for p in await storage.list_parts(key, upload_id)] == [
        (1, part.etag, 5 * MiB)
    ]
    await storage.complete_multipart(key, upload_id, [part])
    assert await storage.get_range(key, 0, 5 * MiB) == whole


async def test_a_streamed_put_stores_the_object_whole_and_a_short_body_stores_nothing(storage, key):
    whole, short = os.urandom(2 * MiB + 5), os.urandom(MiB)

    async def body(data: bytes, then_stop: bool = False):
        for start in range(0, len(data), MiB // 2):
            yield data[start : start + MiB // 2]
        if then_stop:
            raise ConnectionResetError("the client went away")

    with pytest.raises((StorageError, ConnectionResetError, aiohttp.ClientError)):
        await storage.stream_put(key, "image/jpeg", 2 * MiB, body(short, then_stop=True))
    assert await storage.head(key) is None

    etag = await storage.stream_put(key, "image/jpeg", len(whole), body(whole))
    info = await storage.head(key)
    assert info is not None and (info.size, info.etag, info.content_type) == (len(whole), etag, "image/jpeg")
    assert b"".join([chunk async for chunk in storage.iter_chunks(key)]) == whole
    await storage.delete([key])


def test_an_s3_error_answer_maps_to_the_same_exceptions_as_botocore_errors():
    def xml(code: str) -> str:
        return f"<?xml version='1.0'?><Error><Code>{code}</Code><Message>m</Message></Error>"

    assert isinstance(error_from_response(404, xml("NoSuchUpload"), "put"), ObjectMissing)
    assert isinstance(error_from_response(403, xml("SignatureDoesNotMatch"), "put"), StorageDenied)
    assert isinstance(error_from_response(503, xml("SlowDown"), "put"), StorageUnavailable)
    assert isinstance(error_from_response(502, "<html>bad gateway</html>", "put"), StorageUnavailable)
    refused = error_from_response(400, xml("EntityTooSmall"), "put part 1")
    assert type(refused) is StorageError and "EntityTooSmall" in str(refused)


async def test_an_aborted_multipart_upload_is_gone_and_aborting_again_is_harmless(storage, key):
    upload_id = await storage.create_multipart(key, "image/jpeg")
    await storage.upload_part(key, upload_id, 1, b"abc")
    await storage.abort_multipart(key, upload_id)

    assert [u async for u in storage.list_multipart_uploads(key)] == []
    with pytest.raises(ObjectMissing):
        await storage.list_parts(key, upload_id)
    await storage.abort_multipart(key, upload_id)
    assert await storage.head(key) is None


async def test_parts_put_through_presigned_urls_by_plain_http_complete_the_upload(storage, key):
    bodies = [os.urandom(5 * MiB), os.urandom(777)]
    upload_id = await storage.create_multipart(key, "image/jpeg")
    async with aiohttp.ClientSession() as http:
        for number, body in enumerate(bodies, start=1):
            presigned = await storage.presign_upload_part(key, upload_id, number, expires_s=300)
            assert "checksum" not in presigned.url.lower()
            async with http.put(presigned.url, data=body, headers=presigned.headers) as response:
                assert response.status == 200, await response.text()

    await storage.complete_multipart(key, upload_id, await storage.list_parts(key, upload_id))
    chunks = [c async for c in storage.iter_chunks(key, chunk_size=MiB)]
    assert b"".join(chunks) == b"".join(bodies)


async def test_a_presigned_get_with_a_non_ascii_name_returns_the_bytes_and_disposition(
    storage, key
):
    body = os.urandom(4096)
    await storage.put(key, body, "image/jpeg")
    name = "Grüße aus 東京.jpg"
    url = await storage.presign_get(key, expires_s=60, download_name=name)
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.read() == body
            assert response.headers["Content-Disposition"] == content_disposition(name)


async def test_an_expired_or_tampered_presigned_url_is_refused_with_403(storage, key):
    await storage.put(key, b"secret bytes", "text/plain")
    short_lived = await storage.presign_get(key, expires_s=1)
    valid = await storage.presign_get(key, expires_s=300)
    parts = urlsplit(valid)
    other_key_url = urlunsplit(parts._replace(path=parts.path.replace("photo.jpg", "other.jpg")))
    query = dict(parse_qsl(parts.query))
    query["X-Amz-Signature"] = query["X-Amz-Signature"][::-1]
    bad_signature_url = urlunsplit(
        parts._replace(query="&".join(f"{k}={v}" for k, v in query.items()))
    )
    await asyncio.sleep(2.1)
    async with aiohttp.ClientSession() as http:
        for url in (short_lived, other_key_url, bad_signature_url):
            async with http.get(url) as response:
                assert response.status == 403, url
        async with http.get(valid) as response:
            assert response.status == 200


async def test_a_wrong_secret_is_storage_denied(s3_server, key):
    wrong = await Storage.open(profile_for(s3_server, secret_access_key=Secret("wrong")))
    try:
        with pytest.raises(StorageDenied):
            await wrong.head(key)
        with pytest.raises(StorageDenied):
            await wrong.put(key, b"x", "text/plain")
        with pytest.raises(StorageDenied):
            await wrong.check_bucket()
    finally:
        await wrong.close()


async def test_an_unreachable_endpoint_is_storage_unavailable(s3_server, key):
    gone = await Storage.open(
        profile_for(s3_server, endpoint=f"http://127.0.0.1:{free_port()}")
    )
    try:
        with pytest.raises(StorageUnavailable):
            await gone.head(key)
    finally:
        await gone.close()


async def test_the_registry_keeps_one_storage_per_profile_and_reopens_on_rotation(s3_server):
    async with StorageRegistry() as registry:
        first = await registry.get(profile_for(s3_server))
        assert await registry.get(profile_for(s3_server)) is first
        other = await registry.get(profile_for(
            s3_server, profile_id="byos-1", provider="byos", endpoint_policy=loopback_endpoint_policy(s3_server.endpoint)
        ))
        assert other is not first
        rotated = await registry.get(profile_for(s3_server, access_key_id="rotated"))
        assert rotated is not first and rotated.profile.access_key_id == "rotated"
        await first.check_bucket()  # the replaced client still serves in-flight callers


async def test_each_further_profile_costs_a_client_not_another_copy_of_the_s3_model(s3_server, storage):
    # `storage` has loaded the model already; a copy of it is about 10 MiB of Python objects.
    tracemalloc.start()
    try:
        more = [await Storage.open(profile_for(s3_server, profile_id=f"byos-{n}")) for n in range(3)]
        grown, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for opened in more:
        await opened.close()
    assert grown < 3 * MiB, f"{grown / MiB:.1f} MiB for three more profiles"


async def test_a_part_url_signed_for_a_length_takes_exactly_that_many_bytes(storage, key):
    # Issue 20: a 12 MiB part went through a URL handed out for a 6 MiB upload. With the length
    # signed, SeaweedFS (like S3) checks the request's Content-Length against the signature.
    upload_id = await storage.create_multipart(key, "image/jpeg")
    presigned = await storage.presign_upload_part(key, upload_id, 1, expires_s=300, content_length=5 * MiB)
    assert dict(parse_qsl(urlsplit(presigned.url).query))["X-Amz-SignedHeaders"] == "content-length;host"
    body = os.urandom(5 * MiB + 1)
    async with aiohttp.ClientSession() as http:
        for wrong in (body, body[: 5 * MiB - 1]):
            async with http.put(presigned.url, data=wrong, headers=presigned.headers) as response:
                assert response.status == 403, await response.text()
        assert await storage.list_parts(key, upload_id) == []
        async with http.put(presigned.url, data=body[: 5 * MiB], headers=presigned.headers) as response:
            assert response.status == 200, await response.text()
    assert [(p.part_number, p.size) for p in await storage.list_parts(key, upload_id)] == [(1, 5 * MiB)]
    await storage.abort_multipart(key, upload_id)
