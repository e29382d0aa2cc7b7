"""Uploads end to end: the gateway, the verifier and the janitor as separate processes, real servers.

A client opens a session, uploads by tus (tuspy) or by presigned S3 part URLs over plain HTTP,
commits, and gets the verifier's verdict through the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os

import aiohttp
import pytest

from upload_gateway.auth import mint_dev_token

WORKSPACE = "e2e"


@pytest.fixture
async def api(start_service, service_env):
    start_service("commit_verifier")
    start_service("janitor")
    gateway = start_service("upload_gateway")
    base = f"http://127.0.0.1:{gateway.port}"
    token = mint_dev_token(service_env["RAWDRIVE_JWT_SECRET"], sub="e2e-user", workspaces={WORKSPACE: "member"}, ttl_s=600)
    async with aiohttp.ClientSession(base, headers={"Authorization": f"Bearer {token}"}) as session:
        yield session


def photo(size: int) -> bytes:
    # A JPEG signature followed by noise: the verifier checks bytes, not pixels.
    return b"\xff\xd8\xff\xe0" + os.urandom(size - 4)


async def create_session(api: aiohttp.ClientSession, body: bytes, protocol: str, *, sha256: str | None = None) -> dict:
    request = {
        "file_name": "Été à Paris.jpg",
        "mime_type": "image/jpeg",
        "size_bytes": len(body),
        "library_id": "lib1",
        "resumable_protocol": protocol,
    }
    if sha256:
        request["sha256"] = sha256
    async with api.post(f"/v1/workspaces/{WORKSPACE}/uploads", json=request) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def commit(api: aiohttp.ClientSession, upload_id: str, **body) -> tuple[int, dict]:
    async with api.post(f"/v1/workspaces/{WORKSPACE}/uploads/{upload_id}/commit", json=body) as response:
        return response.status, await response.json()


async def test_a_photo_uploaded_by_tus_is_verified_through_the_whole_pipeline(api):
    from tusclient.client import TusClient

    body = photo(7 * 1024 * 1024 + 123)
    session = await create_session(api, body, "tus", sha256=hashlib.sha256(body).hexdigest())
    uploader = TusClient(session["upload_url"], headers=session["headers"]).uploader(
        file_stream=io.BytesIO(body), chunk_size=5 * 1024 * 1024
    )
    await asyncio.to_thread(uploader.upload)
    status, outcome = await commit(api, session["upload_id"])
    assert (status, outcome) == (200, {"asset_id": session["asset_id"], "status": "processing"})
    async with api.get(f"/v1/workspaces/{WORKSPACE}/uploads/{session['upload_id']}") as response:
        state = await response.json()
    assert state["state"] == "committed"
    assert state["bytes_received"] == len(body)


async def test_a_wrong_checksum_at_a_multipart_commit_keeps_the_upload_and_the_right_one_then_verifies_it(api):
    body = photo(9 * 1024 * 1024)
    session = await create_session(api, body, "s3_multipart")
    part_size, part_count = session["part_size"], session["part_count"]
    async with api.post(
        f"/v1/workspaces/{WORKSPACE}/uploads/{session['upload_id']}/parts",
        json={"part_numbers": list(range(1, part_count + 1))},
    ) as response:
        assert response.status == 200, await response.text()
        presigned = (await response.json())["parts"]
    parts = []
    async with aiohttp.ClientSession() as s3:  # plain HTTP straight to storage, no credentials
        for part in presigned:
            n = part["part_number"]
            chunk = body[(n - 1) * part_size : n * part_size]
            async with s3.put(part["url"], data=chunk, headers=part["headers"]) as put:
                assert put.status == 200, await put.text()
                parts.append({"part_number": n, "etag": put.headers["ETag"]})
    typo = hashlib.sha256(b"not the bytes").hexdigest()
    status, problem = await commit(api, session["upload_id"], sha256=typo, parts=parts)
    assert (status, problem["code"], problem["attempts_left"], problem["given_sha256"]) == (
        422, "checksum_mismatch", 2, typo)
    status, outcome = await commit(api, session["upload_id"], sha256=hashlib.sha256(body).hexdigest(), parts=parts)
    assert (status, outcome) == (200, {"asset_id": session["asset_id"], "status": "processing"})


async def test_a_commit_before_every_byte_arrived_is_409_and_the_upload_continues(api):
    from tusclient.client import TusClient

    body = photo(2133)
    session = await create_session(api, body, "tus")
    uploader = TusClient(session["upload_url"], headers=session["headers"]).uploader(
        file_stream=io.BytesIO(body), chunk_size=1000
    )
    await asyncio.to_thread(uploader.upload_chunk)
    status, problem = await commit(api, session["upload_id"])
    assert (status, problem["code"], problem["bytes_received"], problem["size_bytes"]) == (
        409, "upload_incomplete", 1000, 2133)
    await asyncio.to_thread(uploader.upload)  # the same client simply goes on
    status, outcome = await commit(api, session["upload_id"])
    assert (status, outcome["status"]) == (200, "processing")
