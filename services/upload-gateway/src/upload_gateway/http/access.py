"""Every response's request id, one JSON access-log line per request, and the request metrics.

The request id (X-Request-Id on every answer) is the request's trace id where tracing gave it one
(tracing.py: every /v1/ request), so a client's report leads to the trace and the logs; other
requests get a random one. The log line and the histogram name the route by its pattern, never
the raw path, and carry no header: tokens never reach the log.
"""

from __future__ import annotations

import logging
import time
import uuid

from aiohttp import web

from rawdrive_platform.keys import ID_PATTERN
from upload_gateway.http.problems import Handler
from upload_gateway.metrics import HTTP_REQUEST_SECONDS

# The logger keeps its name from before the http package: dashboards and docs filter on it.
log = logging.getLogger("upload_gateway.access")

REQUEST_ID_HEADER = "X-Request-Id"
# Set by the tracing middleware when the request has a trace; the request id then is its id.
TRACE_ID = web.RequestKey("trace_id", str)
UNMATCHED_ROUTE = "unmatched"


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED_ROUTE


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    status, bytes_out = 500, 0
    response: web.StreamResponse | web.HTTPException | None = None
    try:
        response = await handler(request)
        return response
    except web.HTTPException as error:  # raised answers still get the id, the line and the count
        response = error
        raise
    finally:
        duration_s = time.perf_counter() - started
        request_id = request.get(TRACE_ID) or uuid.uuid4().hex
        if response is not None:
            status = response.status
            if not response.prepared:  # every handler here answers with a whole Response
                response.headers[REQUEST_ID_HEADER] = request_id
            length = response.content_length if isinstance(response, web.StreamResponse) else None
            bytes_out = length or 0
        route = route_of(request)
        HTTP_REQUEST_SECONDS.labels(route=route, method=request.method, status=str(status)).observe(duration_s)
        workspace_id = request.match_info.get("workspace_id")
        log.info(
            "request",
            extra={
                "method": request.method,
                "route": route,
                "status": status,
                "duration_ms": round(duration_s * 1000, 3),
                "bytes_in": request.content.total_bytes,
                "bytes_out": bytes_out,
                "request_id": request_id,
                "workspace_id": workspace_id if workspace_id and ID_PATTERN.fullmatch(workspace_id) else None,
            },
        )
