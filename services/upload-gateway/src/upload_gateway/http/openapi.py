"""The route table and the OpenAPI 3.1 document built from it.

A route module declares `ROUTES`: each an `Operation` (method, path, the msgspec types of its
query, body and replies, the problems it answers) with its handler, most through a `RouteTable`
whose decorator declares the operation on the handler itself. `mount` registers the handler
and records the operation on the app in the same call, so a route cannot be served undocumented;
routes built elsewhere (tus, health) are recorded with `document`. `/openapi.json` renders every
recorded operation, with schemas from `msgspec.json.schema_components` over the very Structs the
handlers decode and encode.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any, Literal, TypeVar

import msgspec
from aiohttp import web

from rawdrive_platform.health import ReadinessReport
from rawdrive_platform.keys import ID_PATTERN
from upload_gateway.http.problems import PROBLEM_CONTENT_TYPE, Problem

Auth = Literal["user", "upload", "none"]


class Reply(msgspec.Struct, frozen=True):
    status: int
    description: str
    body: Any = None  # a msgspec-encodable type, or None for no body
    media_type: str = "application/json"
    headers: tuple[str, ...] = ()


class Header(msgspec.Struct, frozen=True):
    name: str
    description: str
    required: bool = False
    type: Literal["string", "integer"] = "string"


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    operation_id: str
    summary: str
    tag: str
    replies: tuple[Reply, ...]
    problems: tuple[int, ...] = ()  # statuses answered as application/problem+json
    auth: Auth = "user"  # upload: the upload token or a member's user token
    query: Any = None  # a Struct: one query parameter per field
    body: Any = None
    body_media_type: str = "application/json"
    headers: tuple[Header, ...] = ()
    description: str = ""


class Route(msgspec.Struct, frozen=True):
    operation: Operation
    handler: Any  # (web.Request) -> Awaitable[web.StreamResponse]


Handler = TypeVar("Handler", bound=Callable[[web.Request], Awaitable[web.StreamResponse]])


class RouteTable:
    """A route module's routes, under one tag and one path prefix, each declared on its handler
    (`@ROUTES.route(...)`), in the order declared: the order aiohttp tries them in and
    /openapi.json lists them."""

    def __init__(self, *, tag: str, prefix: str) -> None:
        self.tag = tag
        self.prefix = prefix
        self.routes: list[Route] = []

    def route(self, method: str, path: str, **operation: Any) -> Callable[[Handler], Handler]:
        """`path` is below the prefix; `operation` gives the rest of the handler's `Operation`."""

        def declare(handler: Handler) -> Handler:
            declared = Operation(method=method, path=self.prefix + path, tag=self.tag, **operation)
            self.routes.append(Route(declared, handler))
            return handler

        return declare

    def __iter__(self) -> Iterator[Route]:
        return iter(self.routes)


OPERATIONS = web.AppKey("operations", list)
# The document's info.description (what may be uploaded), given by mount_openapi's caller.
DESCRIPTION = web.AppKey("openapi_description", str)


def document(app: web.Application, operations: Iterable[Operation]) -> None:
    app.setdefault(OPERATIONS, []).extend(operations)


def mount(app: web.Application, routes: Iterable[Route]) -> None:
    for route in routes:
        app.router.add_route(route.operation.method, route.operation.path, route.handler)
        document(app, [route.operation])


# -- routes served outside the route tables ---------------------------------------------------------


class Liveness(msgspec.Struct, frozen=True):
    status: Literal["alive"]


HEALTH_OPERATIONS = (
    Operation(
        method="GET", path="/livez", operation_id="livez", tag="health", auth="none",
        summary="The process answers", replies=(Reply(200, "Alive", Liveness),),
    ),
    Operation(
        method="GET", path="/readyz", operation_id="readyz", tag="health", auth="none",
        summary="Every dependency (PostgreSQL, NATS, S3) answers",
        replies=(Reply(200, "Ready", ReadinessReport), Reply(503, "Not ready; `failing` names why", ReadinessReport)),
    ),
)

OPENAPI_ROUTE_OPERATION = Operation(
    method="GET", path="/openapi.json", operation_id="openapi", tag="meta", auth="none",
    summary="This document (OpenAPI 3.1)", replies=(Reply(200, "The OpenAPI document", dict[str, Any]),),
)


# -- the document ----------------------------------------------------------------------------------


_PATH_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{name}"
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "user": [{"userToken": []}],
    "upload": [{"uploadToken": []}, {"userToken": []}],
    "none": [],
}


def build(
    operations: Iterable[Operation], *, description: str = "", title: str = "RawDrive API", version: str = "1"
) -> dict[str, Any]:
    operations = list(operations)
    types = [Problem]
    for op in operations:
        types.extend(t for t in (op.query, op.body, *(r.body for r in op.replies)) if t is not None)
    unique = list(dict.fromkeys(types))
    schemas, components = msgspec.json.schema_components(unique, ref_template=_REF)
    schema_of = dict(zip(unique, schemas))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schema_of, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version, "description": description},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A user's token: `workspaces` maps workspace ids to viewer, member or admin"},
                "uploadToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                "description": "The upload token a session's `headers` carry; opens that upload only"},
            },
        },
    }


def _operation(op: Operation, schema_of: dict[Any, Any], components: dict[str, Any]) -> dict[str, Any]:
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "pattern": f"^{ID_PATTERN.pattern}$"}}
        for name in _PATH_PARAM.findall(op.path)
    ]
    if op.query is not None:
        query = components[schema_of[op.query]["$ref"].rsplit("/", 1)[1]]
        required = set(query.get("required", ()))
        parameters += [
            {"name": name, "in": "query", "required": name in required, "schema": _present(schema)}
            for name, schema in query["properties"].items()
        ]
    parameters += [
        {"name": h.name, "in": "header", "required": h.required, "description": h.description,
         "schema": {"type": h.type}}
        for h in op.headers
    ]
    rendered: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": parameters,
        "security": _SECURITY[op.auth],
        "responses": _responses(op, schema_of),
    }
    if op.description:
        rendered["description"] = op.description
    if op.body is not None:
        rendered["requestBody"] = {
            "required": op.body_media_type == "application/json",
            "content": {op.body_media_type: {"schema": schema_of[op.body]}},
        }
    return rendered


def _present(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema without its `None` branch: None is the parameter's absence."""
    options = [s for s in schema.get("anyOf", ()) if s != {"type": "null"}]
    if len(options) != 1:
        return schema
    return {**options[0], **({"default": schema["default"]} if schema.get("default") is not None else {})}


def _responses(op: Operation, schema_of: dict[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for reply in op.replies:
        response: dict[str, Any] = {"description": reply.description}
        if reply.body is not None:
            response["content"] = {reply.media_type: {"schema": schema_of[reply.body]}}
        if reply.headers:
            response["headers"] = {name: {"schema": {"type": "string"}} for name in reply.headers}
        responses[str(reply.status)] = response
    problem = {"content": {PROBLEM_CONTENT_TYPE: {"schema": schema_of[Problem]}}}
    # Every JSON body may arrive too slowly (problems.decode_body).
    slow_body = (408,) if op.body is not None and op.body_media_type == "application/json" else ()
    for status in (*op.problems, *slow_body):
        responses.setdefault(str(status), {"description": HTTPStatus(status).phrase, **problem})
    # Whatever else goes wrong (a malformed request, a method not allowed, a bug) is a problem too.
    responses["default"] = {"description": "An error (RFC 9457 problem details)", **problem}
    return responses


async def serve(request: web.Request) -> web.Response:
    document = build(request.app[OPERATIONS], description=request.app[DESCRIPTION])
    return web.Response(body=msgspec.json.encode(document), content_type="application/json")


def mount_openapi(app: web.Application, *, description: str) -> None:
    """`/openapi.json`, and the operations served outside any route table (health by the runtime)."""
    app[DESCRIPTION] = description
    mount(app, [Route(OPENAPI_ROUTE_OPERATION, serve)])
    document(app, HEALTH_OPERATIONS)
