"""One trace per upload: every API request is a SERVER span, and a request about an upload is a
span of the trace its session began in.

The request that opens a session starts the trace (or continues the caller's own `traceparent`)
and the session stores that context (`UploadSession.trace_context`). A later request naming the
upload in its path (tus, parts, commit, status, abort) starts its span as a child of the stored
context, whatever it carries itself; the commit's outbox row then carries the commit span to the
verifier, the verifier's verdict to the processor, and so on. Probes and scrapes (outside
`/v1/`) are not traced: they would bury the uploads. The span's trace id is the request id the
client sees (access.py).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from rawdrive_platform.db import DATABASE_DOWN
from rawdrive_platform.telemetry import extract_context, restored_context
from upload_gateway.http.access import TRACE_ID
from upload_gateway.http.problems import Handler

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

TRACED_PREFIX = "/v1/"

# (request, workspace_id, upload_id) -> the trace context the upload's session stored, if any;
# it may keep what it read on the request, for the handler to go on with.
StoredTrace = Callable[[web.Request, str, str], Awaitable[str | None]]


async def _parent(stored_trace: StoredTrace, request: web.Request) -> Context:
    workspace_id = request.match_info.get("workspace_id")
    upload_id = request.match_info.get("upload_id")
    if workspace_id is not None and upload_id is not None:
        try:
            stored = await stored_trace(request, workspace_id, upload_id)
        except DATABASE_DOWN as exc:
            # The handler meets the same outage and answers for it; the span just starts alone.
            log.warning("trace context lookup failed", extra={"upload_id": upload_id, "error": repr(exc)})
            stored = None
        if stored is not None:
            return restored_context(stored)
    return extract_context(request.headers)


def _finish(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))


def tracing_middleware(stored_trace: StoredTrace) -> Middleware:
    @web.middleware
    async def trace_request(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(TRACED_PREFIX):
            return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        attributes = {"http.request.method": request.method, "url.path": request.path}
        if route is not None:
            attributes["http.route"] = route
        if "upload_id" in request.match_info:
            attributes["rawdrive.upload_id"] = request.match_info["upload_id"]
        span = tracer.start_span(
            f"{request.method} {route}" if route else request.method,
            context=await _parent(stored_trace, request),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        span_context = span.get_span_context()
        if span_context.is_valid:
            request[TRACE_ID] = trace.format_trace_id(span_context.trace_id)
        # What start_as_current_span does, without its two generator-based context managers
        # (a tenth of the middleware's cost); exceptions are recorded below, as there.
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            response = await handler(request)
            _finish(span, response.status)
            return response
        except web.HTTPException as exc:
            # A 4xx raised as an HTTPException is an answer, not a failure of the span.
            _finish(span, exc.status)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    return trace_request
