"""Browser-ready by default, against a live gateway (real PostgreSQL and S3): CORS preflights on
every route, the tus headers a browser may read, a request id on every answer, one access-log line
per request without tokens, and request metrics by route pattern."""

from __future__ import annotations

import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rawdrive_devkit.devstack.__main__ import DEV_CORS_ORIGINS
from rawdrive_platform.config import load_settings
from rawdrive_platform.telemetry import JsonLogFormatter, setup_telemetry
from upload_gateway.http.cors import origin_allowed
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


async def test_every_answer_carries_a_request_id_the_trace_id_where_there_is_one(live_gateway):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = live_gateway.user() | {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    body = {"file_name": "a.jpg", "mime_type": "image/jpeg", "size_bytes": 3, "library_id": "l1",
            "resumable_protocol": "tus"}  # fmt: skip
    async with live_gateway.http.post(live_gateway.uploads(), json=body, headers=traced) as response:
        assert response.status == 201
        assert response.headers["X-Request-Id"] == trace_id
        session = await response.json()
    # Later requests about the upload are spans of its trace: the same id leads to all of them.
    async with live_gateway.http.head(session["upload_url"], headers=session["headers"] | TUS) as response:
        assert response.headers["X-Request-Id"] == trace_id
    seen = set()
    for method, url, headers in (
        ("GET", live_gateway.uploads("/nope"), {}),  # 401 problem
        ("GET", f"{live_gateway.url}/no/such/path", {}),  # 404 outside /v1/
        ("GET", f"{live_gateway.url}/openapi.json", {}),
        ("DELETE", live_gateway.uploads(), live_gateway.user()),  # 405
    ):
        async with live_gateway.http.request(method, url, headers=headers) as response:
            request_id = response.headers["X-Request-Id"]
            assert HEX32.fullmatch(request_id), (url, request_id)
            seen.add(request_id)
    assert len(seen) == 4


async def test_one_access_log_line_per_request_without_tokens_and_metrics_by_route(live_gateway, caplog):
    caplog.set_level(logging.INFO, logger="upload_gateway.access")
    user_token = live_gateway.user_token()
    session = await live_gateway.open_session(5)
    upload_token = session["headers"]["Authorization"].removeprefix("Bearer ")
    tus = {"Authorization": f"Bearer {upload_token}"} | TUS
    async with live_gateway.http.patch(
        session["upload_url"], data=b"hello",
        headers=tus | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
    ) as response:  # fmt: skip
        assert response.status == 204
        patch_id = response.headers["X-Request-Id"]
    # A token in the query string (a client's mistake) stays out of the log too.
    async with live_gateway.http.get(
        live_gateway.uploads(f"/{session['upload_id']}?access_token={user_token}"), headers=live_gateway.user()
    ) as response:
        assert response.status == 200

    formatter = JsonLogFormatter("upload-gateway")
    lines = [formatter.format(r) for r in caplog.records if r.name == "upload_gateway.access"]
    assert len(lines) == 3  # create, PATCH, GET: one each
    for line in lines:
        assert user_token not in line and upload_token not in line and "Bearer" not in line
        assert "access_token" not in line
    patch_line = next(r for r in caplog.records if r.name == "upload_gateway.access" and r.method == "PATCH")
    assert patch_line.route == "/v1/workspaces/{workspace_id}/uploads/{upload_id}/tus"
    assert (patch_line.status, patch_line.bytes_in, patch_line.request_id) == (204, 5, patch_id)
    assert patch_line.workspace_id == live_gateway.workspace and patch_line.duration_ms > 0

    async with live_gateway.http.get(f"{live_gateway.url}/metrics") as response:
        scraped = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if family.name == "rawdrive_http_request_duration_seconds"
    }

    def count(route: str, method: str, status: str) -> float:
        labels = tuple(sorted({"route": route, "method": method, "status": status}.items()))
        return samples.get(("rawdrive_http_request_duration_seconds_count", labels), 0)

    assert count("/v1/workspaces/{workspace_id}/uploads/{upload_id}/tus", "PATCH", "204") >= 1
    assert count("/v1/workspaces/{workspace_id}/uploads", "POST", "201") >= 1
    assert count("/v1/workspaces/{workspace_id}/uploads/{upload_id}", "GET", "200") >= 1
    assert live_gateway.workspace not in scraped and session["upload_id"] not in scraped
