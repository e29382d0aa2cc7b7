"""The clients real users have, tuspy and tus-js-client (under Node.js), against the routes.

tus-js-client comes from `js/package-lock.json`; `npm ci` installs it on the first run (the npm
registry must be reachable then). tuspy must be installed in the venv.
"""

import asyncio
import io
import json
import os
import uuid
from pathlib import Path

import asyncpg
import pytest
from tusclient.client import TusClient

from rawdrive_platform.testing import node_for

from .conftest import MiB, tus_url

JS = Path(__file__).parent / "js"


async def object_bytes(storage, key) -> bytes:
    return b"".join([chunk async for chunk in storage.iter_chunks(key)])


@pytest.fixture(scope="session")
def node() -> str:
    return node_for(JS)


@pytest.mark.parametrize("checksum", [False, True], ids=["plain", "sha1-per-chunk"])
async def test_tuspy_uploads_a_file_in_chunks_through_the_session_url(gateway, storage, checksum):
    data = os.urandom(11 * MiB + 7)
    session = gateway.session(len(data))
    session.token = uuid.uuid4().hex
    url = tus_url(await gateway.instance(), session)

    def upload() -> str:
        client = TusClient(url, headers={"Authorization": f"Bearer {session.token}"})
        uploader = client.uploader(
            file_stream=io.BytesIO(data), chunk_size=3 * MiB, upload_checksum=checksum,
            metadata={"filename": "photo.jpg", "filetype": "image/jpeg"},
        )
        uploader.upload()
        return uploader.url

    uploaded_to = await asyncio.to_thread(upload)
    assert uploaded_to == url
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions >= 1


async def test_tuspy_resumes_an_upload_whose_multipart_upload_storage_lost_from_what_storage_holds(gateway, storage):
    data = os.urandom(11 * MiB + 7)
    session = gateway.session(len(data))
    session.token = uuid.uuid4().hex
    url = tus_url(await gateway.instance(), session)
    headers = {"Authorization": f"Bearer {session.token}"}

    def first_chunks() -> None:
        uploader = TusClient(url, headers=headers).uploader(file_stream=io.BytesIO(data), chunk_size=3 * MiB)
        uploader.upload_chunk()
        uploader.upload_chunk()  # 6 MiB: one part in S3, a tail in PostgreSQL

    await asyncio.to_thread(first_chunks)
    conn = await asyncpg.connect(gateway.dsn, server_settings={"search_path": "gateway"})
    try:
        lost = await conn.fetchval("SELECT multipart_id FROM tus_uploads WHERE upload_id = $1", session.target.upload_id)
    finally:
        await conn.close()
    await storage.abort_multipart(session.target.object_key, lost)  # an S3 restart lost it

    def resume() -> int:
        # A new client process with the stored URL: tuspy asks HEAD for the offset, then sends.
        uploader = TusClient(url, headers=headers).uploader(file_stream=io.BytesIO(data), url=url, chunk_size=3 * MiB)
        resumed_at = uploader.offset
        uploader.upload()
        return resumed_at

    assert await asyncio.to_thread(resume) == 0
    assert await object_bytes(storage, session.target.object_key) == data


async def test_tus_js_client_uploads_a_file_as_the_front_end_configures_it(
    gateway, storage, node, tmp_path
):
    data = os.urandom(12 * MiB + 11)
    session = gateway.session(len(data))
    session.token = uuid.uuid4().hex
    url = tus_url(await gateway.instance(), session)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)

    process = await asyncio.create_subprocess_exec(
        node, str(JS / "upload.mjs"), url, str(path),
        json.dumps({"Authorization": f"Bearer {session.token}"}),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert json.loads(stdout)["url"] == url
    assert await object_bytes(storage, session.target.object_key) == data
    assert session.completions >= 1
