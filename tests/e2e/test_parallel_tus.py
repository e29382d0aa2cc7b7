"""tus-js-client's parallel uploads (tus concatenation), and its streams of unknown length (tus
creation-defer-length), through the whole pipeline.

A real video (made by ffmpeg from noise, so it does not compress: at most RAWDRIVE_PARALLEL_TUS_MIB
MiB, 64 by default; issue 19's figure, 500, is run by hand or by bench/parallel_tus_bench.py)
goes to the workspace's creation endpoint with `parallelUploads: 4` and only a user token: four
partial uploads at once, then the final upload, which storage joins (UploadPartCopy) and the
gateway commits. The test waits for `asset.created` carrying the file's SHA-256, and checks
that the partials left nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path

import pytest

from rawdrive_devkit.testing import node_for, noise_video

CREATED = "com.rawdrive.asset.created.v1"
TUS_JS = Path(__file__).parents[2] / "services" / "upload-gateway" / "tests" / "tus" / "js"
MIB = 1024 * 1024
SIZE_MIB = int(os.environ.get("RAWDRIVE_PARALLEL_TUS_MIB", "64"))


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener):
    async for pipeline, client in pipeline_opener(module_service_env, tmp_path_factory.mktemp("parallel")):
        yield pipeline, client, tmp_path_factory.mktemp("video")


async def test_tus_js_client_parallel_uploads_of_a_large_video_become_one_asset_with_its_sha256(world):
    pipeline, client, tmp = world
    video = tmp / "clip.mp4"
    await asyncio.to_thread(noise_video, video, SIZE_MIB * MIB)
    data = video.read_bytes()
    assert len(data) > 40 * MIB  # four partials of over 5 MiB each: joined by storage, not the gateway
    endpoint = f"{pipeline.base_url}/v1/workspaces/{pipeline.workspace}/tus"
    headers = {"Authorization": f"Bearer {pipeline.token}"}
    metadata = {"filename": "clip.mp4", "filetype": "video/mp4"}
    process = await asyncio.create_subprocess_exec(
        node_for(TUS_JS), str(TUS_JS / "parallel.mjs"), endpoint, str(video), json.dumps(headers),
        json.dumps(metadata), "4", str(5 * MIB),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=600)
    assert process.returncode == 0, stderr.decode()
    final_url = json.loads(stdout)["url"]
    upload_id = final_url.rstrip("/").split("/")[-2]
    async with client.http.get(f"/v1/workspaces/{pipeline.workspace}/uploads/{upload_id}") as response:
        assert response.status == 200, await response.text()
        asset_id = (await response.json())["asset_id"]

    await pipeline.events.wait(lambda: pipeline.events.of(CREATED, asset_id), timeout_s=300)
    [created] = pipeline.events.of(CREATED, asset_id)
    assert created["data"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert created["data"]["size_bytes"] == len(data)
    assert pipeline.events.invalid == []

    # The partials are gone once joined: no object and no multipart upload of theirs is left.
    workspace_prefix = f"workspaces/{pipeline.workspace}/"
    keys = await asyncio.to_thread(pipeline.keys_under, workspace_prefix)
    assert not [key for key in keys if "/tus/" in key], keys
    assert await asyncio.to_thread(pipeline.multipart_uploads_under, workspace_prefix) == []


@pytest.mark.parametrize("parallel", [1, 2], ids=["one-patch", "two-partials"])
async def test_a_phone_photo_of_one_part_is_put_whole_and_becomes_one_asset_with_its_sha256(world, media_dir, parallel):
    """A photo under one part (5 MiB) is stored by one PutObject, no multipart upload: sent in one
    PATCH, or as two partial uploads of one PutObject each that the gateway joins (partials
    under 5 MiB: read and uploaded again), through the whole pipeline to `asset.created`."""
    import asyncpg

    pipeline, client, tmp = world
    photo = media_dir / "mei_Samsung_SM-J327T1.jpg"
    data = photo.read_bytes()
    assert len(data) < 5 * MIB
    endpoint = f"{pipeline.base_url}/v1/workspaces/{pipeline.workspace}/tus"
    headers = {"Authorization": f"Bearer {pipeline.token}"}
    metadata = {"filename": f"phone-{parallel}.jpg", "filetype": "image/jpeg"}
    process = await asyncio.create_subprocess_exec(
        node_for(TUS_JS), str(TUS_JS / "parallel.mjs"), endpoint, str(photo), json.dumps(headers),
        json.dumps(metadata), str(parallel), str(5 * MIB),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, stderr.decode()
    upload_id = json.loads(stdout)["url"].rstrip("/").split("/")[-2]
    async with client.http.get(f"/v1/workspaces/{pipeline.workspace}/uploads/{upload_id}") as response:
        assert response.status == 200, await response.text()
        asset_id = (await response.json())["asset_id"]

    await pipeline.events.wait(lambda: pipeline.events.of(CREATED, asset_id), timeout_s=120)
    [created] = pipeline.events.of(CREATED, asset_id)
    assert (created["data"]["sha256"], created["data"]["size_bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert pipeline.events.invalid == []
    conn = await asyncpg.connect(pipeline.env["RAWDRIVE_DATABASE_URL"], server_settings={"search_path": "gateway"})
    try:
        row = await conn.fetchrow(
            "SELECT multipart_id, completed_at IS NOT NULL AS completed FROM tus_uploads WHERE upload_id = $1", upload_id
        )
    finally:
        await conn.close()
    assert (row["multipart_id"], row["completed"]) == (None, True)  # a final upload's join is storage's
    workspace_prefix = f"workspaces/{pipeline.workspace}/"
    assert await asyncio.to_thread(pipeline.multipart_uploads_under, workspace_prefix) == []
    keys = await asyncio.to_thread(pipeline.keys_under, workspace_prefix)
    assert not [key for key in keys if "/tus/" in key], keys


async def test_tus_js_client_streaming_a_video_of_unknown_length_becomes_one_asset_with_its_sha256(world):
    """`uploadLengthDeferred: true` over a stream (defer.mjs): the upload is no session until the
    PATCH that reaches the stream's end brings Upload-Length; its bytes went straight into the
    session object's multipart upload, which the last part completes; the gateway commits."""
    pipeline, client, tmp = world
    video = tmp / "stream.mp4"
    await asyncio.to_thread(noise_video, video, 12 * MIB)
    data = video.read_bytes()
    endpoint = f"{pipeline.base_url}/v1/workspaces/{pipeline.workspace}/tus"
    headers = {"Authorization": f"Bearer {pipeline.token}"}
    process = await asyncio.create_subprocess_exec(
        node_for(TUS_JS), str(TUS_JS / "defer.mjs"), endpoint, str(video), json.dumps(headers),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=300)
    assert process.returncode == 0, stderr.decode()
    # defer.mjs reports every request as a JSON line (reported.mjs), then its result.
    *requests, done = [json.loads(line) for line in stdout.splitlines()]
    assert done["done"] and requests[-1]["status"] == 204, requests
    url = done["url"]
    assert url.startswith(f"{endpoint}/")  # the deferred upload's own URL, not a session's
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    async with client.http.get(f"/v1/workspaces/{pipeline.workspace}/uploads/{upload_id}") as response:
        assert response.status == 200, await response.text()
        asset_id = (await response.json())["asset_id"]

    await pipeline.events.wait(lambda: pipeline.events.of(CREATED, asset_id), timeout_s=300)
    [created] = pipeline.events.of(CREATED, asset_id)
    assert (created["data"]["sha256"], created["data"]["size_bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert pipeline.events.invalid == []
    workspace_prefix = f"workspaces/{pipeline.workspace}/"
    assert await asyncio.to_thread(pipeline.multipart_uploads_under, workspace_prefix) == []
