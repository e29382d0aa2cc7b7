"""The tus routes against the store port alone (an in-memory TusStore and TusLock): the protocol
and its handlers, tested without PostgreSQL or S3. test_routes.py runs the same routes on the
PostgreSQL+S3 store the gateway uses."""

import base64
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from upload_gateway.uploads.parts import MIN_PART_SIZE
from upload_gateway.uploads.tus import tus_routes
from upload_gateway.uploads.tus.protocol import Creation

from .conftest import OCTETS, TUS, Gateway, Session, tus_url
from .memory_store import MemoryTarget, MemoryTusStore


@dataclass
class Harness:
    client: TestClient
    store: MemoryTusStore
    sessions: Gateway  # its sessions, with the in-memory "bucket" (a dict) as their storage
    bucket: dict[str, bytes]

    def upload(self, size: int, *, expires_in_s: int = 3600) -> Session:
        return self.sessions.session(size, expires_in_s=expires_in_s)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    store, bucket = MemoryTusStore(), {}
    sessions = Gateway(bucket, dsn="")  # type: ignore[arg-type]  # sessions only: no instance is started

    async def authorize(request: web.Request) -> MemoryTarget:
        record = sessions.sessions.get(request.match_info["upload_id"])
        if record is None:
            raise web.HTTPNotFound(text="no such upload")
        return record.target

    app = web.Application()
    app.add_routes(tus_routes(lambda _: store, authorize, max_size=100 * MIN_PART_SIZE))
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, store, sessions, bucket)


def url(upload: Session) -> str:
    return tus_url("", upload)


async def patch(harness: Harness, upload: Session, offset: int, body: bytes, **headers: str):
    return await harness.client.patch(url(upload), data=body, headers=OCTETS | {"Upload-Offset": str(offset)} | headers)


async def offset_of(harness: Harness, upload: Session) -> int:
    response = await harness.client.head(url(upload), headers=TUS)
    assert response.status == 200
    return int(response.headers["Upload-Offset"])


async def test_a_file_sent_in_patches_becomes_the_object_and_each_step_is_reported(harness):
    upload = harness.upload(10)
    assert (await harness.client.post(url(upload), headers=TUS | {"Upload-Length": "10"})).status == 201
    assert await offset_of(harness, upload) == 0
    first = await patch(harness, upload, 0, b"01234")
    assert (first.status, first.headers["Upload-Offset"]) == (204, "5")
    assert (await patch(harness, upload, 5, b"56789")).status == 204
    assert harness.bucket[upload.target.object_key] == b"0123456789"
    assert (upload.progress, upload.completions) == ([5, 10], 1)
    assert await offset_of(harness, upload) == 10 and upload.completions == 2  # HEAD confirms again


async def test_a_first_patch_without_a_post_starts_the_session_upload_at_0(harness):
    upload = harness.upload(3)
    assert await offset_of(harness, upload) == 0  # nothing created yet: the session's upload, at 0
    assert (await patch(harness, upload, 0, b"abc")).status == 204
    assert harness.bucket[upload.target.object_key] == b"abc"


async def test_a_patch_at_the_wrong_offset_is_409_and_changes_nothing(harness):
    upload = harness.upload(10)
    await patch(harness, upload, 0, b"abc")
    assert (await patch(harness, upload, 1, b"xyz")).status == 409
    assert await offset_of(harness, upload) == 3


async def test_a_body_past_upload_length_is_413_and_changes_nothing(harness):
    upload = harness.upload(4)
    await patch(harness, upload, 0, b"ab")
    assert (await patch(harness, upload, 2, b"cde")).status == 413
    assert await offset_of(harness, upload) == 2


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
async def test_a_checksummed_patch_applies_when_it_matches_and_is_460_when_not(harness, algorithm):
    upload = harness.upload(6)

    def checksum(body: bytes) -> str:
        return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, body).digest()).decode()}"

    assert (await patch(harness, upload, 0, b"abc", **{"Upload-Checksum": checksum(b"abc")})).status == 204
    assert (await patch(harness, upload, 3, b"def", **{"Upload-Checksum": checksum(b"xyz")})).status == 460
    assert await offset_of(harness, upload) == 3


async def test_a_request_while_another_holds_the_upload_is_423_locked(harness):
    upload = harness.upload(6)
    await patch(harness, upload, 0, b"abc")
    async with harness.store.lock.hold(upload.target.upload_id):
        assert (await patch(harness, upload, 3, b"def")).status == 423
    assert (await patch(harness, upload, 3, b"def")).status == 204


async def test_termination_removes_the_bytes_and_tells_the_session_layer(harness):
    upload = harness.upload(3)
    await patch(harness, upload, 0, b"abc")
    response = await harness.client.delete(url(upload), headers=TUS)
    assert response.status == 204 and upload.terminations == 1
    assert upload.target.object_key not in harness.bucket and await harness.store.state(upload.target.upload_id) is None


async def test_an_expired_upload_takes_no_bytes_and_another_version_is_412(harness):
    expired = harness.upload(3, expires_in_s=-1)
    assert (await patch(harness, expired, 0, b"abc")).status == 410
    upload = harness.upload(3)
    refused = await harness.client.patch(url(upload), data=b"abc", headers=OCTETS | {"Tus-Resumable": "0.2.2",
                                                                                 "Upload-Offset": "0"})
    assert (refused.status, refused.headers["Tus-Version"]) == (412, "1.0.0")


async def test_method_override_tunnels_patch_and_head_through_post(harness):
    upload = harness.upload(3)
    tunnelled = await harness.client.post(
        url(upload), data=b"abc", headers=OCTETS | {"Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"}
    )
    assert tunnelled.status == 204
    head = await harness.client.post(url(upload), headers=TUS | {"X-HTTP-Method-Override": "HEAD"})
    assert (head.status, head.headers["Upload-Offset"]) == (200, "3")


async def deferred(harness: Harness, most: int) -> Session:
    """An upload created with its length deferred (creation-defer-length): at most `most` bytes."""
    upload = harness.upload(most)
    upload.target = msgspec.structs.replace(upload.target, length_deferred=True)
    await harness.store.create(upload.target, Creation(length=None, metadata={}, raw_metadata=None))
    return upload


async def test_a_deferred_length_is_said_on_head_until_a_patch_brings_it_then_it_is_fixed(harness):
    upload = await deferred(harness, 100)
    head = await harness.client.head(url(upload), headers=TUS)
    assert (head.headers["Upload-Offset"], head.headers["Upload-Defer-Length"]) == ("0", "1")
    assert "Upload-Length" not in head.headers
    first = await patch(harness, upload, 0, b"abc")
    assert (first.status, first.headers["Upload-Defer-Length"]) == (204, "1")
    second = await patch(harness, upload, 3, b"de", **{"Upload-Length": "6"})
    assert (second.status, second.headers["Upload-Length"]) == (204, "6")
    assert (await patch(harness, upload, 5, b"f", **{"Upload-Length": "7"})).status == 400  # never changes
    assert (await patch(harness, upload, 5, b"f", **{"Upload-Length": "6"})).status == 204
    assert harness.bucket[upload.target.object_key] == b"abcdef" and upload.completions == 1


async def test_a_deferred_upload_takes_no_body_past_the_most_it_may_hold(harness):
    upload = await deferred(harness, 4)
    assert (await patch(harness, upload, 0, b"abcde")).status == 413
    assert (await patch(harness, upload, 0, b"abcd")).status == 204
    assert await offset_of(harness, upload) == 4 and upload.completions == 0  # no length: not complete
