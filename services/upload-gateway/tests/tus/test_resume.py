"""The session's upload_url in stock tus clients, as its creation `endpoint` and as the stored
upload URL they resume from (tus-js-client's `uploadUrl`, tuspy's `url`), including a client
process killed mid-upload and started again with the URL it kept. A whole gateway serves them
(conftest.live_gateway); the clients run as separate processes."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from .conftest import run
from .test_clients import JS, node  # noqa: F401  # node: the fixture installing tus-js-client

MiB = 1024 * 1024
TUSPY = Path(__file__).parent / "tuspy_upload.py"
SIZE = 12 * MiB + 11  # three PATCHes of 5 MiB chunks


async def stored_bytes(live_gateway, session: dict) -> bytes:
    key = await live_gateway.gw.pool.fetchval(
        "SELECT object_key FROM upload_sessions WHERE upload_id = $1", session["upload_id"]
    )
    return b"".join([chunk async for chunk in live_gateway.gw.storage.iter_chunks(key)])


async def bytes_received(live_gateway, session: dict) -> int:
    url = live_gateway.uploads(f"/{session['upload_id']}")
    async with live_gateway.http.get(url, headers=live_gateway.user()) as response:
        return (await response.json())["bytes_received"]


@pytest.mark.parametrize("first_option", ["endpoint", "uploadUrl"])
async def test_tus_js_client_killed_mid_upload_resumes_from_the_stored_upload_url(
    live_gateway, node, tmp_path, first_option  # noqa: F811
):
    data = os.urandom(SIZE)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    session = await live_gateway.open_session(len(data))
    url, headers = session["upload_url"], json.dumps(session["headers"])
    script = str(JS / "resume.mjs")

    # POST (endpoint) or HEAD (uploadUrl), then the first PATCH's answer: kill it there.
    first = await run(node, script, first_option, url, str(path), headers, kill_after_lines=2)
    assert first[0]["method"] == ("POST" if first_option == "endpoint" else "HEAD")
    assert first[0]["offset"] == 0 and first[0]["status"] in (200, 201)
    assert first[1] == {"method": "PATCH", "status": 204, "offset": 5 * MiB}

    second = await run(node, script, "uploadUrl", url, str(path), headers)
    assert second[0] == {"method": "HEAD", "status": 200, "offset": second[0]["offset"]}
    assert second[0]["offset"] >= 5 * MiB  # resumed, not restarted
    # PATCHes to the end; a HEAD between them only if the killed client's last PATCH was still
    # being stored (409/423, after which tus-js-client asks again): never a new upload.
    assert {line["method"] for line in second[1:-1]} <= {"PATCH", "HEAD"}
    assert second[-1] == {"done": True, "url": url}
    assert await stored_bytes(live_gateway, session) == data
    assert await bytes_received(live_gateway, session) == len(data)


@pytest.mark.parametrize("first_option", ["endpoint", "url"])
async def test_tuspy_killed_mid_upload_resumes_from_the_stored_url(live_gateway, tmp_path, first_option):
    data = os.urandom(SIZE)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    session = await live_gateway.open_session(len(data))
    url, headers = session["upload_url"], json.dumps(session["headers"])

    first = await run(sys.executable, str(TUSPY), first_option, url, str(path), headers, kill_after_lines=2)
    assert first == [{"start": 0}, {"offset": 5 * MiB}]

    second = await run(sys.executable, str(TUSPY), "url", url, str(path), headers)
    assert second[0]["start"] >= 5 * MiB  # tuspy asked HEAD and resumed there
    assert second[-1] == {"offset": len(data)}
    assert await stored_bytes(live_gateway, session) == data
    assert await bytes_received(live_gateway, session) == len(data)


async def test_a_head_before_any_byte_answers_the_session_length_at_offset_0(live_gateway):
    session = await live_gateway.open_session(1000)
    headers = session["headers"] | {"Tus-Resumable": "1.0.0"}
    async with live_gateway.http.head(session["upload_url"], headers=headers) as response:
        assert response.status == 200
        assert (response.headers["Upload-Offset"], response.headers["Upload-Length"]) == ("0", "1000")
        assert "Upload-Expires" in response.headers
    # Without the upload token it stays closed.
    async with live_gateway.http.head(session["upload_url"], headers={"Tus-Resumable": "1.0.0"}) as response:
        assert response.status == 401


async def test_stock_tus_js_client_resumes_by_itself_after_its_frozen_body_is_cut(
    start_gateway, node, tmp_path  # noqa: F811
):
    """Issue 21: the idle cut is answered 503 (routes.py), which tus-js-client retries with its
    default rules, from HEAD at the bytes kept; a 408 would have ended its upload with an error."""
    live = await start_gateway(tus_idle_timeout_s=1)
    data = os.urandom(SIZE)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    session = await live.open_session(len(data))
    lines = await run(node, str(JS / "stall.mjs"), session["upload_url"], str(path), json.dumps(session["headers"]))
    half = 5 * MiB // 2
    assert lines[:3] == [
        {"method": "HEAD", "status": 200, "offset": 0},
        {"method": "PATCH", "status": 503, "offset": None},
        {"method": "HEAD", "status": 200, "offset": half},  # what arrived before the link froze
    ], lines
    assert {line["method"] for line in lines[3:-1]} <= {"PATCH", "HEAD"}
    assert lines[-1] == {"done": True, "url": session["upload_url"]}
    assert await stored_bytes(live, session) == data
    assert await bytes_received(live, session) == len(data)
