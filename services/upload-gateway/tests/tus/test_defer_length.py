"""tus creation-defer-length on a whole gateway over real PostgreSQL and S3: an upload created
without its length is no session until a PATCH brings Upload-Length; its bytes land in the
multipart upload of the session's object meanwhile."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from rawdrive_contracts import UploadSessionCreated, decode
from rawdrive_devkit.testing import node_for
from rawdrive_platform.storage import Storage, StorageUnavailable
from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.limits import SIZE_LIMITS

from ..conftest import LIVE_SECRET
from .conftest import OCTETS, TUS, MiB, run
from .test_creation import JPEG_META, commit_requests, creation_url, metadata, session_state

JS = Path(__file__).parent / "js"


async def deferred(live, *, headers: dict | None = None, meta: dict | None = None) -> str:
    async with live.http.post(creation_url(live), headers=TUS | (headers or live.user()) | {
        "Upload-Defer-Length": "1", "Upload-Metadata": metadata(**(meta or JPEG_META)),
    }) as response:  # fmt: skip
        assert response.status == 201, await response.text()
        assert response.headers["Upload-Defer-Length"] == "1"
        assert "Upload-Length" not in response.headers
        url = response.headers["Location"]
    assert url.startswith(f"{live.url}/v1/workspaces/{live.workspace}/tus/")
    return url


async def patch(live, url: str, offset: int, data: bytes, **headers: str):
    return await live.http.patch(url, data=data, headers=OCTETS | live.user() | {"Upload-Offset": str(offset)} | headers)


async def head(live, url: str, headers: dict | None = None) -> tuple[int, dict]:
    async with live.http.head(url, headers=TUS | (headers or live.user())) as response:
        return response.status, dict(response.headers)


async def sessions_created(live) -> list[UploadSessionCreated]:
    rows = await live.gw.pool.fetch("SELECT payload FROM outbox ORDER BY seq")
    return [e.data for e in map(decode, (r["payload"] for r in rows)) if isinstance(e.data, UploadSessionCreated)]


async def object_at(live, key: str) -> bytes:
    return b"".join([chunk async for chunk in live.gw.storage.iter_chunks(key)])


def upload_id(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


async def test_bytes_sent_before_the_length_become_the_sessions_object_without_a_copy(live_gateway):
    live = live_gateway
    data = os.urandom(12 * MiB + 7)
    url = await deferred(live)
    status, headers = await head(live, url)
    assert (status, headers["Upload-Offset"], headers["Upload-Defer-Length"]) == (200, "0", "1")
    assert "Upload-Length" not in headers
    # Two PATCHes of unknown length: two whole parts go on to S3, 6 bytes stay as the tail.
    for offset, end in ((0, 5 * MiB + 3), (5 * MiB + 3, 10 * MiB + 6)):
        async with await patch(live, url, offset, data[offset:end]) as response:
            assert response.status == 204, await response.text()
            assert response.headers["Upload-Offset"] == str(end)
            assert response.headers["Upload-Defer-Length"] == "1"
    assert await live.gw.pool.fetchval("SELECT cardinality(part_etags) FROM tus_uploads") == 2
    status, headers = await head(live, url)
    assert (headers["Upload-Offset"], headers["Upload-Defer-Length"]) == (str(10 * MiB + 6), "1")
    # No session, no event yet: upload.session_created needs the size.
    assert await sessions_created(live) == []
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0

    async with await patch(live, url, 10 * MiB + 6, data[10 * MiB + 6 :], **{"Upload-Length": str(len(data))}) as response:
        assert response.status == 204, await response.text()
        assert (response.headers["Upload-Offset"], response.headers["Upload-Length"]) == (str(len(data)),) * 2
        asset_id = response.headers["Upload-Asset-Id"]
    [created] = await sessions_created(live)
    assert (created.upload_id, created.size_bytes, created.asset_id) == (upload_id(url), len(data), asset_id)
    # Committed as every creation-endpoint upload; the object is where the bytes streamed to.
    [request] = await commit_requests(live)
    assert (request.upload_id, request.size_bytes) == (created.upload_id, len(data))
    assert request.object_key == created.object_key
    assert await object_at(live, request.object_key) == data
    keys = [key async for key in live.gw.storage.list_keys(f"workspaces/{live.workspace}/")]
    assert keys == [request.object_key]
    status, headers = await head(live, url)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, str(len(data)), str(len(data)))
    assert "Upload-Defer-Length" not in headers
    session = await session_state(live, f"{live.uploads()}/{created.upload_id}/tus")
    assert (session["state"], session["bytes_received"]) == ("verifying", len(data))


async def test_the_length_is_set_once_a_different_one_is_refused_and_the_upload_stays_intact(live_gateway):
    live = live_gateway
    url = await deferred(live)
    async with await patch(live, url, 0, b"0123456789", **{"Upload-Length": "100"}) as response:
        assert response.status == 204, await response.text()
    async with await patch(live, url, 10, b"more", **{"Upload-Length": "200"}) as response:
        assert response.status == 400
        assert "cannot change" in await response.text()
    status, headers = await head(live, url)
    assert (headers["Upload-Offset"], headers["Upload-Length"]) == ("10", "100")
    [created] = await sessions_created(live)
    assert created.size_bytes == 100
    # The same length again, or none, is fine; the upload completes at 100.
    async with await patch(live, url, 10, b"x" * 40, **{"Upload-Length": "100"}) as response:
        assert response.status == 204, await response.text()
    async with await patch(live, url, 50, b"y" * 50) as response:
        assert response.status == 204, await response.text()
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == b"0123456789" + b"x" * 40 + b"y" * 50


async def test_a_length_the_session_api_refuses_leaves_the_bytes_for_the_right_one(live_gateway):
    live = live_gateway
    url = await deferred(live)  # a JPEG: at most SIZE_LIMITS["photo"]
    async with await patch(live, url, 0, b"a" * 10) as response:
        assert response.status == 204
    too_large = SIZE_LIMITS["photo"] + 1
    async with await patch(live, url, 10, b"", **{"Upload-Length": str(too_large)}) as response:
        assert response.status == 413
        assert response.headers["Content-Type"] == "application/problem+json"
        assert (await response.json())["code"] == "file_too_large"
        assert response.headers["Tus-Resumable"] == "1.0.0"
    async with await patch(live, url, 10, b"", **{"Upload-Length": "5"}) as response:
        assert response.status == 400  # less than the bytes already sent
    status, headers = await head(live, url)
    assert (headers["Upload-Offset"], headers["Upload-Defer-Length"]) == ("10", "1")
    assert await sessions_created(live) == []
    # The length alone, at the offset held: the upload completes with what it holds.
    async with await patch(live, url, 10, b"", **{"Upload-Length": "10"}) as response:
        assert response.status == 204, await response.text()
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == b"a" * 10


async def test_a_creation_the_rules_refuse_is_refused_before_anything_exists(live_gateway):
    live = live_gateway
    post = creation_url(live)
    refusals = [
        ({"Upload-Defer-Length": "1", "Upload-Metadata": metadata(filename="notes.txt", filetype="text/plain")},
         "unsupported_type"),
        ({"Upload-Defer-Length": "1"}, "invalid_request"),  # no file named: its type cannot be checked
    ]  # fmt: skip
    for extra, code in refusals:
        async with live.http.post(post, headers=TUS | live.user() | extra) as response:
            assert response.status == 400
            assert (await response.json())["code"] == code
    for extra in ({"Upload-Defer-Length": "0"}, {"Upload-Defer-Length": "1", "Upload-Length": "10"}):
        async with live.http.post(post, headers=TUS | live.user() | extra | {"Upload-Metadata": metadata(**JPEG_META)}) as response:
            assert response.status == 400
            assert "Location" not in response.headers
    # A partial upload of a concatenation has a length.
    async with live.http.post(post, headers=TUS | live.user() | {"Upload-Defer-Length": "1", "Upload-Concat": "partial"}) as response:
        assert response.status == 400
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_deferred") == 0
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_uploads") == 0


async def test_only_its_creator_may_touch_a_deferred_upload(live_gateway):
    live = live_gateway
    url = await deferred(live)
    bob = {"Authorization": f"Bearer {mint_dev_token(LIVE_SECRET, sub='bob', workspaces={live.workspace: 'member'}, ttl_s=600)}"}
    assert (await head(live, url, bob))[0] == 404
    async with live.http.patch(url, data=b"x", headers=OCTETS | bob | {"Upload-Offset": "0", "Upload-Length": "1"}) as response:
        assert response.status == 404
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0


async def test_a_deferred_upload_counts_in_the_quota_at_its_kinds_limit_until_its_length_arrives(start_gateway):
    live = await start_gateway(max_bytes_in_flight_per_workspace=8 * MiB, max_open_uploads_per_workspace=2)
    url = await deferred(live)  # a photo may be 100 MiB; the workspace may hold 8 MiB in flight: 8 MiB held
    async with live.http.post(creation_url(live), headers=TUS | live.user() | {
        "Upload-Length": "1", "Upload-Metadata": metadata(**JPEG_META),
    }) as response:  # fmt: skip
        assert response.status == 429
        assert (await response.json())["code"] == "quota_exceeded"
    # Its body may not run past what it holds in the quota.
    async with await patch(live, url, 0, b"z" * (8 * MiB + 1)) as response:
        assert response.status == 413
    # Its own place gives way to its session: the whole 8 MiB is still open to it.
    async with await patch(live, url, 0, b"z" * 10, **{"Upload-Length": str(8 * MiB)}) as response:
        assert response.status == 204, await response.text()
    async with await patch(live, url, 10, b"z" * (8 * MiB - 20)) as response:
        assert response.status == 204, await response.text()
    [created] = await sessions_created(live)
    assert created.size_bytes == 8 * MiB
    # Now the session counts (8 MiB): still no room for a byte more.
    async with live.http.post(creation_url(live), headers=TUS | live.user() | {
        "Upload-Length": "1", "Upload-Metadata": metadata(**JPEG_META),
    }) as response:  # fmt: skip
        assert response.status == 429


async def test_open_uploads_quota_counts_a_deferred_upload_once(start_gateway):
    live = await start_gateway(max_open_uploads_per_workspace=2)
    first, _ = await deferred(live), await deferred(live)
    async with live.http.post(creation_url(live), headers=TUS | live.user() | {
        "Upload-Defer-Length": "1", "Upload-Metadata": metadata(**JPEG_META),
    }) as response:  # fmt: skip
        assert response.status == 429
    async with await patch(live, first, 0, b"abc", **{"Upload-Length": "3"}) as response:
        assert response.status == 204, await response.text()  # its session takes its place


async def test_delete_before_the_length_aborts_the_bytes_and_frees_the_quota(start_gateway):
    live = await start_gateway(max_open_uploads_per_workspace=1)
    url = await deferred(live)
    async with await patch(live, url, 0, os.urandom(6 * MiB)) as response:  # one part in S3, a tail
        assert response.status == 204
    async with live.http.delete(url, headers=TUS | live.user()) as response:
        assert response.status == 204
    assert (await head(live, url))[0] == 404
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_deferred") == 0
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_uploads") == 0
    await deferred(live)  # its place in the quota is free again


async def test_delete_after_the_length_aborts_the_session(live_gateway):
    live = live_gateway
    url = await deferred(live)
    async with await patch(live, url, 0, b"abc", **{"Upload-Length": "10"}) as response:
        assert response.status == 204
    async with live.http.delete(url, headers=TUS | live.user()) as response:
        assert response.status == 204
    assert await live.gw.pool.fetch("SELECT state FROM upload_sessions") == [("aborted",)]
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_uploads") == 0


async def test_an_expired_deferred_upload_is_refused_stops_counting_and_is_removed_by_the_next(start_gateway):
    live = await start_gateway(max_open_uploads_per_workspace=1)
    url = await deferred(live)
    async with await patch(live, url, 0, b"old bytes") as response:
        assert response.status == 204
    await live.gw.pool.execute("UPDATE tus_deferred SET expires_at = now() - interval '1 minute'")
    async with await patch(live, url, 9, b"!", **{"Upload-Length": "10"}) as response:
        assert response.status == 410
    async with await patch(live, url, 9, b"!") as response:
        assert response.status == 410
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0
    fresh = await deferred(live)  # the expired one no longer counts; this creation removes it
    assert await live.gw.pool.fetch("SELECT upload_id FROM tus_deferred") == [(upload_id(fresh),)]
    assert await live.gw.pool.fetch("SELECT upload_id FROM tus_uploads") == [(upload_id(fresh),)]


async def test_tus_js_client_sends_a_stream_of_unknown_length_to_a_committed_session(live_gateway, tmp_path):
    live = live_gateway
    data = os.urandom(11 * MiB + 5)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    # defer.mjs: tus-js-client with `uploadLengthDeferred: true` reading a stream of no known size.
    *responses, done = await run(node_for(JS), str(JS / "defer.mjs"), creation_url(live), str(path),
                                 json.dumps(live.user()))  # fmt: skip
    assert responses[0]["method"] == "POST" and responses[-1] == {"method": "PATCH", "status": 204, "offset": len(data)}
    url = done["url"]
    assert url.startswith(f"{live.url}/v1/workspaces/{live.workspace}/tus/")
    [created] = await sessions_created(live)
    assert (created.upload_id, created.size_bytes, created.file_name) == (upload_id(url), len(data), "clip.mp4")
    session = await session_state(live, f"{live.uploads()}/{created.upload_id}/tus")
    assert (session["state"], session["bytes_received"]) == ("verifying", len(data))
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == data


async def test_whole_parts_of_a_chunked_body_then_the_length_alone_complete_the_upload(live_gateway):
    """A body of undeclared length ending on a part boundary sends its last whole part (a tail is
    shorter than a part); a PATCH bringing only the length then completes the object."""
    live = live_gateway
    data = os.urandom(10 * MiB)

    async def chunked():
        for at in range(0, len(data), MiB):
            yield data[at : at + MiB]

    url = await deferred(live)
    async with await patch(live, url, 0, chunked()) as response:
        assert response.status == 204, await response.text()
        assert response.headers["Upload-Offset"] == str(len(data))
    row = await live.gw.pool.fetchrow("SELECT cardinality(part_etags) AS parts, octet_length(tail) AS tail FROM tus_uploads")
    assert (row["parts"], row["tail"]) == (2, 0)
    async with await patch(live, url, len(data), b"", **{"Upload-Length": str(len(data))}) as response:
        assert response.status == 204, await response.text()
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == data


async def test_a_deferred_creation_may_carry_the_first_bytes(live_gateway):
    live = live_gateway
    async with live.http.post(creation_url(live), data=b"first", headers=OCTETS | live.user() | {
        "Upload-Defer-Length": "1", "Upload-Metadata": metadata(**JPEG_META),
    }) as response:  # fmt: skip
        assert response.status == 201, await response.text()
        assert (response.headers["Upload-Offset"], response.headers["Upload-Defer-Length"]) == ("5", "1")
        url = response.headers["Location"]
    async with await patch(live, url, 5, b" last", **{"Upload-Length": "10"}) as response:
        assert response.status == 204, await response.text()
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == b"first last"


async def test_two_patches_bringing_the_length_at_once_open_one_session(live_gateway):
    live = live_gateway
    url = await deferred(live)

    async def send(body: bytes) -> int:
        async with await patch(live, url, 0, body, **{"Upload-Length": "10"}) as response:
            return response.status

    statuses = sorted(await asyncio.gather(send(b"aaaaa"), send(b"bbbbb")))
    assert statuses[0] == 204 and statuses[1] in (204, 409, 423), statuses  # one wins; the other is told to HEAD
    [created] = await sessions_created(live)
    assert created.size_bytes == 10
    status, headers = await head(live, url)
    assert (headers["Upload-Length"], headers["Upload-Offset"]) == ("10", "5" if statuses[1] != 204 else "10")


async def test_a_creation_whose_storage_fails_leaves_nothing_holding_the_quota(start_gateway, monkeypatch):
    """The client of a creation that failed got no Location: nothing can reach what was opened
    for it, so it must not keep the workspace's place (a deferred upload holds its kind's limit)."""
    live = await start_gateway(max_open_uploads_per_workspace=1)

    async def unavailable(*_args, **_kwargs):
        raise StorageUnavailable("storage is restarting")

    with monkeypatch.context() as failing:
        failing.setattr(Storage, "create_multipart", unavailable)
        async with live.http.post(creation_url(live), headers=TUS | live.user() | {
            "Upload-Defer-Length": "1", "Upload-Metadata": metadata(**JPEG_META),
        }) as response:  # fmt: skip
            assert response.status == 503, await response.text()
            assert "Location" not in response.headers
    assert await live.gw.pool.fetchval("SELECT count(*) FROM tus_deferred") == 0
    await deferred(live)  # the place in the quota is free


async def test_a_deferred_upload_the_store_never_created_is_of_deferred_length_then_created_by_a_patch(live_gateway):
    live = live_gateway
    url = await deferred(live)
    # As if its creation's store write had been lost: the upload exists, its bytes not yet.
    await live.gw.pool.execute("DELETE FROM tus_uploads")
    status, headers = await head(live, url)
    assert (status, headers["Upload-Offset"], headers.get("Upload-Defer-Length")) == (200, "0", "1")
    assert "Upload-Length" not in headers  # not its kind's limit: no length is known yet
    async with await patch(live, url, 0, b"abc") as response:
        assert response.status == 204, await response.text()
        assert (response.headers["Upload-Offset"], response.headers["Upload-Defer-Length"]) == ("3", "1")
    async with await patch(live, url, 3, b"de", **{"Upload-Length": "5"}) as response:
        assert response.status == 204, await response.text()
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == b"abcde"


async def test_a_length_arriving_at_the_offset_whose_completion_failed_is_completed_by_the_next_head(
    live_gateway, monkeypatch
):
    """Every byte was recorded before the length came, so the row says offset = length once it
    has the length; if storage then fails the completion, the client's HEAD (which answers that
    offset, and after which a tus client sends nothing more) must complete it."""
    live = live_gateway
    data = os.urandom(10 * MiB)
    url = await deferred(live)
    async with await patch(live, url, 0, data) as response:  # two whole parts, no tail
        assert response.status == 204, await response.text()

    async def unavailable(*_args, **_kwargs):
        raise StorageUnavailable("storage is restarting")

    with monkeypatch.context() as failing:
        failing.setattr(Storage, "complete_multipart", unavailable)
        async with await patch(live, url, len(data), b"", **{"Upload-Length": str(len(data))}) as response:
            assert response.status == 503, await response.text()
    assert await commit_requests(live) == []
    status, headers = await head(live, url)
    assert (status, headers["Upload-Offset"], headers["Upload-Length"]) == (200, str(len(data)), str(len(data)))
    [request] = await commit_requests(live)
    assert await object_at(live, request.object_key) == data
