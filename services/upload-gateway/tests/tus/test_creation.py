"""The workspace's tus creation endpoint (POST /v1/workspaces/{ws}/tus) on a whole gateway over
real PostgreSQL and S3, as a stock tus client configured with one Authorization header uses it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from pathlib import Path

import pytest
from tusclient.client import TusClient

from rawdrive_contracts import CommitRequested, decode
from rawdrive_devkit.testing import node_for
from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.tus_session import session_request

from ..conftest import LIVE_SECRET
from .conftest import OCTETS, TUS, MiB, run

JPEG_META = {"filename": "IMG_0001.jpg", "filetype": "image/jpeg"}
JS = Path(__file__).parent / "js"


def metadata(**pairs: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in pairs.items())


def creation_url(live) -> str:
    return f"{live.url}/v1/workspaces/{live.workspace}/tus"


async def commit_requests(live) -> list[CommitRequested]:
    rows = await live.gw.pool.fetch("SELECT payload FROM outbox ORDER BY seq")
    return [e.data for e in map(decode, (r["payload"] for r in rows)) if isinstance(e.data, CommitRequested)]


async def session_state(live, upload_url: str) -> dict:
    upload_id = upload_url.rstrip("/").split("/")[-2]
    async with live.http.get(live.uploads(f"/{upload_id}"), headers=live.user("viewer")) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def create(live, length: int, *, role: str = "member", meta: dict | None = None, data: bytes | None = None,
                 **headers: str):
    headers = TUS | live.user(role) | {"Upload-Length": str(length), "Upload-Metadata": metadata(**(meta or JPEG_META))} | headers
    return await live.http.post(creation_url(live), headers=headers, data=data)


async def test_options_answers_200_with_the_protocol_and_no_token(live_gateway):
    async with live_gateway.http.options(creation_url(live_gateway)) as response:
        assert response.status == 200
        assert response.headers["Tus-Version"] == "1.0.0"
        assert "creation" in response.headers["Tus-Extension"].split(",")
        assert int(response.headers["Tus-Max-Size"]) == 500 * MiB


async def test_a_stock_client_creates_sends_and_the_last_byte_commits_with_the_declared_sha256(live_gateway):
    live = live_gateway
    data = os.urandom(6 * MiB + 3)
    sha = hashlib.sha256(data).hexdigest()
    async with await create(live, len(data), meta=JPEG_META | {"sha256": sha, "library_id": "trips"}) as response:
        assert response.status == 201, await response.text()
        location = response.headers["Location"]
        asset_id = response.headers["Upload-Asset-Id"]
    assert location.startswith(f"{live.url}/v1/workspaces/{live.workspace}/uploads/") and location.endswith("/tus")
    status = await session_state(live, location)
    assert (status["state"], status["asset_id"], status["file_name"]) == ("created", asset_id, "IMG_0001.jpg")

    # Every later request carries the same user token, as a stock client sends it.
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.status == 200
        assert response.headers["Upload-Offset"] == "0"
        assert response.headers["Upload-Metadata"] == metadata(**JPEG_META, sha256=sha, library_id="trips")
    offset = 0
    for chunk in (data[: 5 * MiB], data[5 * MiB :]):
        headers = OCTETS | live.user() | {"Upload-Offset": str(offset)}
        async with live.http.patch(location, data=chunk, headers=headers) as response:
            assert response.status == 204, await response.text()
            assert response.headers["Upload-Asset-Id"] == asset_id
            offset = int(response.headers["Upload-Offset"])
    assert offset == len(data)

    assert (await session_state(live, location))["state"] == "verifying"
    [request] = await commit_requests(live)
    assert (request.asset_id, request.library_id, request.expected_sha256) == (asset_id, "trips", sha)
    # HEAD after completion (a client that lost the answer) commits nothing twice.
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.headers["Upload-Offset"] == str(len(data))
    assert len(await commit_requests(live)) == 1


async def test_creation_with_upload_and_a_whole_file_sha256_checksum_commits_with_that_hash(live_gateway):
    live = live_gateway
    data = os.urandom(300_000)
    digest = base64.b64encode(hashlib.sha256(data).digest()).decode()
    headers = {"Content-Type": "application/offset+octet-stream", "Upload-Checksum": f"sha256 {digest}"}
    async with await create(live, len(data), data=data, **headers) as response:
        assert response.status == 201, await response.text()
        assert response.headers["Upload-Offset"] == str(len(data))
        location = response.headers["Location"]
    assert (await session_state(live, location))["state"] == "verifying"
    [request] = await commit_requests(live)
    assert request.expected_sha256 == hashlib.sha256(data).hexdigest()


async def test_a_chunk_checksum_is_checked_but_not_taken_for_the_file(live_gateway):
    live = live_gateway
    data = os.urandom(5 * MiB + 10)
    async with await create(live, len(data)) as response:
        location = response.headers["Location"]
    async with live.http.patch(location, data=data[: 5 * MiB], headers=OCTETS | live.user() | {"Upload-Offset": "0"}) as response:
        assert response.status == 204
    tail = data[5 * MiB :]
    digest = base64.b64encode(hashlib.sha256(tail).digest()).decode()
    headers = OCTETS | live.user() | {"Upload-Offset": str(5 * MiB), "Upload-Checksum": f"sha256 {digest}"}
    async with live.http.patch(location, data=tail, headers=headers) as response:
        assert response.status == 204
    [request] = await commit_requests(live)
    assert request.expected_sha256 is None  # the verifier checks the size only


async def test_a_digest_of_the_wrong_length_is_a_checksum_mismatch_and_keeps_the_offset(live_gateway):
    live = live_gateway
    async with await create(live, 100) as response:
        location = response.headers["Location"]
    short = base64.b64encode(b"\0" * 10).decode()
    headers = OCTETS | live.user() | {"Upload-Offset": "0", "Upload-Checksum": f"sha1 {short}"}
    async with live.http.patch(location, data=b"x" * 100, headers=headers) as response:
        assert response.status == 460
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.headers["Upload-Offset"] == "0"


@pytest.mark.parametrize(
    ("length", "meta", "role", "status", "code", "says"),
    [
        (100, {"filename": "notes.txt", "filetype": "text/plain"}, "member", 400, "unsupported_type", ".txt files"),
        (100, {"filename": "IMG.jpg", "filetype": "image/png"}, "member", 400, "unsupported_type", "image/jpeg"),
        (101 * MiB, JPEG_META, "member", 413, "file_too_large", "100 MiB"),
        (0, JPEG_META, "member", 400, "invalid_request", "empty files"),
        (100, {"filetype": "image/jpeg"}, "member", 400, "invalid_request", "filename"),
        (100, JPEG_META | {"sha256": "abc"}, "member", 400, "invalid_request", "`sha256`"),
        (100, JPEG_META | {"library_id": "no spaces"}, "member", 400, "invalid_request", "`library_id`"),
        (100, JPEG_META, "viewer", 403, "forbidden", "member"),
    ],
    ids=["type", "mime-mismatch", "too-large", "empty", "no-filename", "bad-sha256", "bad-library", "viewer"],
)
async def test_the_session_rules_refuse_with_a_readable_problem_and_create_nothing(
    live_gateway, length, meta, role, status, code, says
):
    live = live_gateway
    async with await create(live, length, role=role, meta=meta) as response:
        assert response.status == status
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert "Location" not in response.headers
        problem = await response.json(content_type="application/problem+json")
    assert (problem["status"], problem["code"]) == (status, code) and says in problem["detail"], problem
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0


async def test_another_workspace_is_not_found_and_a_missing_token_unauthorized(live_gateway):
    live = live_gateway
    other = f"{live.url}/v1/workspaces/elsewhere/tus"
    headers = TUS | live.user() | {"Upload-Length": "100", "Upload-Metadata": metadata(**JPEG_META)}
    async with live.http.post(other, headers=headers) as response:
        assert response.status == 404
    del headers["Authorization"]
    async with live.http.post(creation_url(live), headers=headers) as response:
        assert response.status == 401
        assert "Bearer" in (await response.json(content_type=None))["detail"]


async def test_an_upload_url_takes_no_user_token_of_another_workspace(live_gateway):
    live = live_gateway
    async with await create(live, 100) as response:
        location = response.headers["Location"]
    stranger = mint_dev_token(LIVE_SECRET, sub="mallory", workspaces={"elsewhere": "admin"}, ttl_s=600)
    headers = OCTETS | {"Authorization": f"Bearer {stranger}", "Upload-Offset": "0"}
    async with live.http.patch(location, data=b"x" * 100, headers=headers) as response:
        assert response.status == 404
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.headers["Upload-Offset"] == "0"


async def test_termination_with_the_user_token_aborts_the_session(live_gateway):
    live = live_gateway
    async with await create(live, 100) as response:
        location = response.headers["Location"]
    async with live.http.delete(location, headers=TUS | live.user()) as response:
        assert response.status == 204
    assert (await session_state(live, location))["state"] == "aborted"
    async with live.http.head(location, headers=TUS | live.user()) as response:
        assert response.status == 410


async def test_a_session_from_the_session_api_still_waits_for_its_commit(live_gateway):
    live = live_gateway
    session = await live.open_session(100)
    url, token = session["upload_url"], session["headers"]
    async with live.http.post(url, headers=TUS | token | {"Upload-Length": "100"}) as response:
        assert response.status == 201
    async with live.http.patch(url, data=b"y" * 100, headers=OCTETS | token | {"Upload-Offset": "0"}) as response:
        assert response.status == 204
    assert (await session_state(live, url))["state"] == "uploading"
    assert await commit_requests(live) == []


def test_metadata_maps_onto_the_session_request_with_defaults():
    request = session_request(10, {"filename": "a.cr2", "filetype": "", "name": "a.cr2"})
    assert (request.file_name, request.mime_type, request.library_id) == ("a.cr2", "application/octet-stream", "default")
    assert request.resumable_protocol == "tus" and request.sha256 is None and request.folder_id is None


async def test_tus_js_client_with_only_the_endpoint_and_a_user_token_uploads_and_commits(live_gateway, tmp_path):
    live = live_gateway
    data = os.urandom(12 * MiB + 11)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    # upload.mjs: tus-js-client with `endpoint`, `headers` and metadata {filename: photo.jpg, filetype: image/jpeg}.
    [printed] = await run(node_for(JS), str(JS / "upload.mjs"), creation_url(live), str(path), json.dumps(live.user()))
    url = printed["url"]
    status = await session_state(live, url)
    assert (status["state"], status["bytes_received"], status["file_name"]) == ("verifying", len(data), "photo.jpg")
    [request] = await commit_requests(live)
    assert request.size_bytes == len(data)
    stored = b"".join([c async for c in live.gw.storage.iter_chunks(request.object_key)])
    assert stored == data


async def test_tuspy_with_only_the_endpoint_and_a_user_token_uploads_and_commits(live_gateway):
    live = live_gateway
    data = os.urandom(7 * MiB + 5)

    def upload() -> str:
        uploader = TusClient(creation_url(live), headers=live.user()).uploader(
            file_stream=io.BytesIO(data), chunk_size=5 * MiB, metadata=JPEG_META,
        )
        uploader.upload()
        return uploader.url

    url = await asyncio.to_thread(upload)
    assert (await session_state(live, url))["state"] == "verifying"
    [request] = await commit_requests(live)
    assert b"".join([c async for c in live.gw.storage.iter_chunks(request.object_key)]) == data
