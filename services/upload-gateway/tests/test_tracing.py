"""The request span of tracing_middleware: one SERVER span per API request, current while the
handler runs (so a session stores it as its trace), with the answer's status on it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from rawdrive_platform.telemetry import inject_headers, setup_telemetry, stored_context
from upload_gateway.http.tracing import tracing_middleware

PATH = "/v1/workspaces/{workspace_id}/uploads"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # setup_telemetry replaces them
    exporter = InMemorySpanExporter()
    setup_telemetry("tracing-test", environ={}, record_spans=True).add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    root.handlers[:], root.level = handlers, level


@pytest.fixture
async def client(exporter: InMemorySpanExporter) -> AsyncIterator[TestClient]:
    async def create(request: web.Request) -> web.Response:
        # What create_session keeps with the session: the context current in the handler.
        return web.json_response({"stored": stored_context()}, status=201)

    async def refuse(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    async def fail(request: web.Request) -> web.Response:
        raise RuntimeError("boom")

    app = web.Application(middlewares=[tracing_middleware(None)])  # type: ignore[arg-type] # no upload_id: no lookup
    app.router.add_post(PATH, create)
    app.router.add_get(PATH, refuse)
    app.router.add_delete(PATH, fail)
    exporter.clear()
    async with TestClient(TestServer(app)) as client:
        yield client


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    [span] = exporter.get_finished_spans()
    return span


async def test_a_request_is_one_ended_server_span_current_in_its_handler(client, exporter):
    response = await client.post("/v1/workspaces/ws1/uploads", json={})
    assert response.status == 201
    span = only_span(exporter)
    assert (span.name, span.kind, span.status.status_code) == (f"POST {PATH}", SpanKind.SERVER, StatusCode.UNSET)
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST", "url.path": "/v1/workspaces/ws1/uploads", "http.route": PATH,
        "http.response.status_code": 201,
    }  # fmt: skip
    stored = msgspec.json.decode((await response.json())["stored"])
    assert stored["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")
    assert inject_headers() == {}  # and it is current no more


async def test_a_callers_traceparent_is_continued(client, exporter):
    await client.post("/v1/workspaces/ws1/uploads", json={}, headers={"traceparent": CALLER})
    span = only_span(exporter)
    assert f"{span.context.trace_id:032x}" == CALLER.split("-")[1]
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CALLER.split("-")[2]


async def test_a_refusal_is_an_answer_and_a_crash_is_an_error_with_its_exception(client, exporter):
    assert (await client.get("/v1/workspaces/ws1/uploads")).status == 404
    refused = only_span(exporter)
    assert (refused.attributes or {})["http.response.status_code"] == 404
    assert refused.status.status_code == StatusCode.UNSET and not refused.events
    exporter.clear()
    assert (await client.delete("/v1/workspaces/ws1/uploads")).status == 500
    failed = only_span(exporter)
    assert failed.status.status_code == StatusCode.ERROR
    assert [event.name for event in failed.events] == ["exception"]


async def test_paths_outside_the_api_are_not_traced(client, exporter):
    assert (await client.get("/livez")).status == 404
    assert exporter.get_finished_spans() == ()
