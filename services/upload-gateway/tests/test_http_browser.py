"""Browser-ready by default, against a live gateway (real PostgreSQL and S3): CORS preflights on
every route and the tus headers a browser may read."""

from __future__ import annotations

import re

import pytest

from rawdrive_platform.config import load_settings
from rawdrive_platform.devstack.__main__ import DEV_CORS_ORIGINS
from rawdrive_platform.telemetry import setup_telemetry
from upload_gateway.cors import origin_allowed
from upload_gateway.settings import Settings

TUS = {"Tus-Resumable": "1.0.0"}
HEX32 = re.compile(r"[0-9a-f]{32}")
# What tus-js-client reads from responses (getHeader in its source), and the rest of tus's answers.
TUS_JS_CLIENT_READS = ("Location", "Upload-Offset", "Upload-Length", "X-Request-ID")


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    """The SDK provider the service installs at start, so requests have trace ids."""
    setup_telemetry("upload-gateway-test", record_spans=True)


def exposed(response) -> set[str]:
    return {name.strip().lower() for name in response.headers["Access-Control-Expose-Headers"].split(",")}


@pytest.mark.parametrize("origin", ["https://app.example", "http://localhost:5173", "http://localhost:3000"])
async def test_the_uploads_api_answers_a_preflight_from_an_allowed_origin(live_gateway, origin):
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}  # fmt: skip
    async with live_gateway.http.options(live_gateway.uploads(), headers=preflight) as response:
        assert response.status == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "upload-offset", "tus-resumable", "x-request-id"} <= allowed
        assert {"POST", "PATCH", "PUT", "DELETE"} <= set(response.headers["Access-Control-Allow-Methods"].split(", "))
    catalogue = f"{live_gateway.url}/v1/workspaces/{live_gateway.workspace}/assets/a1/restore"
    async with live_gateway.http.options(catalogue, headers=preflight) as response:
        assert (response.status, response.headers["Access-Control-Allow-Origin"]) == (204, origin)


async def test_a_preflight_from_another_origin_is_answered_without_permission(live_gateway):
    preflight = {"Origin": "http://evil.example:5173", "Access-Control-Request-Method": "POST"}
    async with live_gateway.http.options(live_gateway.uploads(), headers=preflight) as response:
        assert response.status == 204  # the browser, not a 405, says the origin is not allowed
        assert "Access-Control-Allow-Origin" not in response.headers
    for origin in ("http://localhost.evil.example:3000", "http://localhost:3000.evil.example", "https://localhost:3000"):
        assert not origin_allowed(origin, ("https://app.example", "http://localhost:*")), origin


def test_the_dev_stack_allows_every_local_port_and_production_only_what_it_lists():
    base = {"RAWDRIVE_DATABASE_URL": "postgresql://x@h/x", "RAWDRIVE_S3_BUCKET": "b",
            "RAWDRIVE_S3_ACCESS_KEY_ID": "a", "RAWDRIVE_S3_SECRET_ACCESS_KEY": "s"}  # fmt: skip
    dev = load_settings(Settings, base | {"RAWDRIVE_CORS_ORIGINS": DEV_CORS_ORIGINS}).cors_origins
    for origin in ("http://localhost:5173", "http://127.0.0.1:8000", "http://localhost"):
        assert origin_allowed(origin, dev), origin
    assert not origin_allowed("https://app.example.com", dev)
    assert load_settings(Settings, base).cors_origins == ()


async def test_a_browser_can_read_every_tus_header_tus_js_client_reads(live_gateway):
    session = await live_gateway.open_session(10)
    origin = {"Origin": "http://localhost:5173"}
    auth = {"Authorization": session["headers"]["Authorization"]} | TUS | origin
    url = session["upload_url"]
    async with live_gateway.http.post(url, headers=auth | {"Upload-Length": "10"}) as created:
        assert created.status == 201
    async with live_gateway.http.patch(
        url, data=b"0123456789", headers=auth | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    ) as patched:
        assert patched.status == 204
    async with live_gateway.http.head(url, headers=auth) as head:
        assert head.status == 200
    for response in (created, patched, head):
        assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
        names = exposed(response)
        for header in (*TUS_JS_CLIENT_READS, "Upload-Expires", "Upload-Metadata", "Tus-Resumable", "Retry-After"):
            assert header.lower() in names, header
        assert {h.lower() for h in response.headers if h.lower() not in ("date", "server", "content-length",
                "content-type", "cache-control", "vary") and not h.lower().startswith("access-control")} <= names  # fmt: skip
