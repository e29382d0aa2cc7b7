"""The gateway's HTTP edges against a live gateway (real PostgreSQL and S3): strict request
bodies, token refusals that say what to send instead, and storage failures told the same way on
the uploads API and the tus endpoint."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from upload_gateway.auth import TokenVerifier, UploadGrant, derived_upload_secret

from .conftest import LIVE_SECRET

TUS = {"Tus-Resumable": "1.0.0"}
CREATE = {"file_name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size_bytes": 1000, "library_id": "lib1",
          "resumable_protocol": "tus"}  # fmt: skip


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    body = await response.json()
    assert body["status"] == response.status
    return body


async def test_a_misspelt_field_is_422_naming_it_and_nothing_is_created(live_gateway):
    async with live_gateway.http.post(
        live_gateway.uploads(), json=CREATE | {"sha_256": "ab" * 32}, headers=live_gateway.user()
    ) as response:
        body = await problem(response)
    assert response.status == 422, body
    assert "unknown field `sha_256`" in body["detail"] and "did you mean `sha256`" in body["detail"]
    assert body["errors"] == [{"path": "$.sha_256", "message": body["detail"]}]
    assert await live_gateway.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 0

    session = await live_gateway.open_session(1000)
    commit = live_gateway.uploads(f"/{session['upload_id']}/commit")
    async with live_gateway.http.post(commit, json={"sha_256": "ab" * 32}, headers=live_gateway.user()) as response:
        assert (response.status, (await problem(response))["errors"][0]["path"]) == (422, "$.sha_256")
    async with live_gateway.http.get(live_gateway.uploads(f"/{session['upload_id']}"), headers=live_gateway.user()) as response:
        assert (await response.json())["state"] == "created"  # the refused commit changed nothing


async def test_an_unknown_nested_field_of_a_storage_profile_is_422_with_its_path(live_gateway):
    path = f"{live_gateway.url}/v1/workspaces/{live_gateway.workspace}/storage-profile"
    body = {"mode": "byos_s3", "bucket": "acme-media", "credentials": {"access_key_id": "a", "secret": "s"}}
    async with live_gateway.http.put(path, json=body, headers=live_gateway.user("admin")) as response:
        found = await problem(response)
    assert response.status == 422, body
    assert found["errors"] == [{"path": "$.credentials.secret", "message": "unknown field `secret`"}]


@pytest.mark.parametrize(
    ("content_type", "data"),
    [("text/plain", json.dumps(CREATE)), ("application/x-www-form-urlencoded", "file_name=a.jpg&size_bytes=3")],
)
async def test_a_body_that_is_not_json_is_415(live_gateway, content_type, data):
    headers = live_gateway.user() | {"Content-Type": content_type}
    async with live_gateway.http.post(live_gateway.uploads(), data=data, headers=headers) as response:
        body = await problem(response)
    assert (response.status, body["code"]) == (415, "unsupported_media_type")
    assert "application/json" in body["detail"]


async def test_json_with_a_charset_parameter_is_json(live_gateway):
    headers = live_gateway.user() | {"Content-Type": "Application/JSON; charset=utf-8"}
    async with live_gateway.http.post(live_gateway.uploads(), data=json.dumps(CREATE), headers=headers) as response:
        assert response.status == 201, await response.text()


@pytest.mark.parametrize("field", ["file_name", "no_such_field"])
async def test_a_body_nested_1000_levels_deep_is_400_not_a_500(live_gateway, field):
    deep = '{"%s": %s%s}' % (field, "[" * 1000, "]" * 1000)
    headers = live_gateway.user() | {"Content-Type": "application/json"}
    async with live_gateway.http.post(live_gateway.uploads(), data=deep, headers=headers) as response:
        body = await problem(response)
    assert (response.status, body["code"]) == (400, "invalid_request")
    assert "the body nests deeper than" in body["detail"]
    # Brackets inside strings are text, not nesting.
    named = CREATE | {"file_name": "[" * 100 + "IMG.jpg"}
    async with live_gateway.http.post(live_gateway.uploads(), json=named, headers=live_gateway.user()) as response:
        assert "nests deeper" not in await response.text()


async def test_the_openapi_document_says_request_bodies_take_no_other_fields(live_gateway):
    async with live_gateway.http.get(f"{live_gateway.url}/openapi.json") as response:
        schemas = (await response.json())["components"]["schemas"]
    for name in ("CreateUpload", "CommitRequest", "PartsRequest", "PutStorageProfile", "StorageCredentials"):
        assert schemas[name]["additionalProperties"] is False, name


# -- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["not-a-jwt", "a.b.c", "_w.e30.x", "eyJhbGciOiJIUzI1NiJ9"])
async def test_a_token_that_is_not_a_jwt_is_told_what_to_send_on_user_and_upload_routes(live_gateway, token):
    session = await live_gateway.open_session(1000)
    bearer = {"Authorization": f"Bearer {token}"}
    for method, url, headers in (
        ("GET", f"{live_gateway.url}/v1/workspaces/{live_gateway.workspace}/assets", bearer),
        ("GET", live_gateway.uploads(f"/{session['upload_id']}"), bearer),
        ("HEAD", session["upload_url"], bearer | TUS),
    ):
        async with live_gateway.http.request(method, url, headers=headers) as response:
            assert response.status == 401
            if method == "HEAD":
                continue  # no body; the same check as the GET below answers it
            detail = (await problem(response))["detail"]
        assert detail.startswith("the bearer token is not a JWT: send a user token"), detail
        assert "codec" not in detail and "segments" not in detail and "padding" not in detail
    async with live_gateway.http.get(session["upload_url"].removesuffix("/tus") + "/parts", headers=bearer) as response:
        assert (await problem(response))["detail"].startswith("the bearer token is not a JWT")


async def test_an_upload_token_on_a_user_route_says_it_opens_only_its_upload(live_gateway):
    session = await live_gateway.open_session(1000)
    upload_auth = {"Authorization": session["headers"]["Authorization"]}
    assets = f"{live_gateway.url}/v1/workspaces/{live_gateway.workspace}/assets"
    upload = live_gateway.uploads(f"/{session['upload_id']}")
    for method, url in (("GET", upload), ("POST", upload + "/commit"), ("GET", assets)):
        async with live_gateway.http.request(method, url, headers=upload_auth) as response:
            body = await problem(response)
        assert response.status == 401
        assert body["detail"].startswith("this is an upload token: it opens only the tus and parts URLs"), body


async def test_an_expired_upload_token_is_told_to_open_a_new_session(live_gateway):
    session = await live_gateway.open_session(1000)
    grant = UploadGrant(sub="alice", workspace_id=live_gateway.workspace, upload_id=session["upload_id"])
    # The gateway signs upload tokens with a key derived from the JWT secret unless given its own.
    expired = TokenVerifier(upload_secret=derived_upload_secret(LIVE_SECRET), hs256_secret=LIVE_SECRET).mint_upload_token(
        grant, datetime.now(UTC) - timedelta(hours=1)
    )
    parts = session["upload_url"].removesuffix("/tus") + "/parts"
    async with live_gateway.http.get(parts, headers={"Authorization": f"Bearer {expired}"}) as response:
        body = await problem(response)
    assert (response.status, body["detail"]) == (401, "the upload token expired; open a new session for a new upload token")


# -- storage failures ----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_storage_down_is_the_same_retryable_503_on_the_uploads_api_and_tus_without_storage_text(
    start_gateway, s3_server
):
    port = closed_port()
    gateway = await start_gateway(s3_endpoint=f"http://127.0.0.1:{port}")

    # A tus session touches no storage until the POST, which for a file of more than one part
    # (5 MiB) opens its multipart upload; a file of one part waits for its bytes.
    size = 6 * 1024 * 1024
    session = await gateway.open_session(size)
    headers = {"Authorization": session["headers"]["Authorization"], "Upload-Length": str(size)} | TUS
    async with gateway.http.post(session["upload_url"], headers=headers) as response:
        tus_problem, tus_retry = await problem(response), response.headers.get("Retry-After")
    multipart = CREATE | {"resumable_protocol": "s3_multipart", "file_name": "IMG_0002.jpg"}
    async with gateway.http.post(gateway.uploads(), json=multipart, headers=gateway.user()) as response:
        api_problem, api_retry = await problem(response), response.headers.get("Retry-After")

    for found, retry_after in ((tus_problem, tus_retry), (api_problem, api_retry)):
        assert (found["status"], found["code"], found["title"]) == (503, "storage_error", "Storage unavailable")
        assert found["detail"].endswith("storage is unavailable, retry later")
        assert retry_after == "5"
        text = found["detail"] + found["title"]
        for secret in (str(port), s3_server.bucket, "127.0.0.1", "workspaces/", "connect", "Connect", "endpoint"):
            assert secret not in text, (secret, text)


# -- slow JSON bodies (issue 21) ---------------------------------------------------------------


async def _stalled_request(
    url: str, method: str, path: str, headers: dict[str, str], sent: bytes
) -> tuple[float, bytes]:
    """Headers promising 200 bytes of JSON, `sent` of them, then silence: how long the gateway's
    answer took to begin, and the answer (its head and its Content-Length of body)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{head}Content-Type: application/json\r\n"
                     f"Content-Length: 200\r\n\r\n".encode() + sent)  # fmt: skip
        await writer.drain()
        started = time.monotonic()
        async with asyncio.timeout(10):
            answer = await reader.readuntil(b"\r\n\r\n")
            waited = time.monotonic() - started
            length = re.search(rb"(?i)content-length: (\d+)", answer)
            assert length is not None, answer
            return waited, answer + await reader.readexactly(int(length[1]))
    finally:
        writer.close()


@pytest.mark.parametrize("route", ["create", "parts", "commit", "storage-profile"])
async def test_a_json_body_that_stalls_is_408_as_a_problem_and_the_connection_closed(start_gateway, route):
    live = await start_gateway(json_body_timeout_s=1)
    session = await live.open_session(6 * 1024 * 1024, resumable_protocol="s3_multipart")
    path, role = {
        "create": (f"/v1/workspaces/{live.workspace}/uploads", "member"),
        "parts": (f"/v1/workspaces/{live.workspace}/uploads/{session['upload_id']}/parts", "member"),
        "commit": (f"/v1/workspaces/{live.workspace}/uploads/{session['upload_id']}/commit", "member"),
        "storage-profile": (f"/v1/workspaces/{live.workspace}/storage-profile", "admin"),
    }[route]
    method = "PUT" if route == "storage-profile" else "POST"
    waited, answer = await _stalled_request(live.url, method, path, live.user(role), b'{"file_name": "IMG_')
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert (problem["status"], problem["code"]) == (408, "body_timeout")
    assert "did not arrive within 1 s" in problem["detail"]
    assert 1 <= waited < 5
    assert b"connection: close" in head.lower()
    # Nothing changed: one session, still open.
    assert await live.gw.pool.fetchval("SELECT count(*) FROM upload_sessions") == 1
    async with live.http.get(live.uploads(f"/{session['upload_id']}"), headers=live.user()) as response:
        assert (await response.json())["state"] in ("created", "uploading")
