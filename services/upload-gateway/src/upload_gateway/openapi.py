"""The route table and the OpenAPI 3.1 document built from it.

A route module declares `ROUTES`: each an `Operation` (method, path, the msgspec types of its
query, body and replies, the problems it answers) with its handler. `mount` registers the handler
and records the operation on the app in the same call, so a route cannot be served undocumented;
routes built elsewhere (tus, health) are recorded with `document`. `/openapi.json` renders every
recorded operation, with schemas from `msgspec.json.schema_components` over the very Structs the
handlers decode and encode.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any, Literal

import msgspec
from aiohttp import web

from rawdrive_platform.health import ReadinessReport
from rawdrive_platform.keys import ID_PATTERN
from upload_gateway.limits import FILE_TYPES, MIB, SIZE_LIMITS
from upload_gateway.problems import PROBLEM_CONTENT_TYPE, Problem
from upload_gateway.tus import protocol as tus
from upload_gateway.tus.routes import TUS_PATH

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


OPERATIONS = web.AppKey("operations", list)


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

_TUS_RESUMABLE = Header("Tus-Resumable", f"Always {tus.TUS_VERSION}", required=True)
_TUS_ERRORS = (
    Reply(400, "Malformed tus headers", str, "text/plain"),
    Reply(409, "Upload-Offset differs from the stored offset (HEAD, then resume)", str, "text/plain"),
    Reply(410, "The upload expired or was aborted", str, "text/plain"),
    Reply(412, f"Tus-Resumable is not {tus.TUS_VERSION}", str, "text/plain", headers=("Tus-Version",)),
    Reply(413, "Past Upload-Length or Tus-Max-Size", str, "text/plain"),
    Reply(415, f"Content-Type is not {tus.PATCH_CONTENT_TYPE}", str, "text/plain"),
    Reply(423, "Another request is writing this upload", str, "text/plain"),
    Reply(460, "Upload-Checksum does not match the body", str, "text/plain"),
    # Storage failures are answered as everywhere else in the API (problems.from_storage_error).
    Reply(502, "Storage refused", Problem, PROBLEM_CONTENT_TYPE),
    Reply(503, "Storage unavailable; retry after Retry-After seconds", Problem, PROBLEM_CONTENT_TYPE,
          headers=("Retry-After",)),
)
_OFFSET_HEADERS = ("Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Expires")
_TUS_NOTE = (
    f"tus {tus.TUS_VERSION} (https://tus.io/protocols/resumable-upload), extensions "
    f"{', '.join(tus.TUS_EXTENSIONS)}; checksums {', '.join(tus.CHECKSUM_ALGORITHMS)}. Protocol errors are "
    "text/plain with the tus status; authentication and storage errors are problem+json. Send the headers "
    "the session's `headers` field gave (the upload token)."
)
TUS_OPERATIONS = (
    Operation(
        method="OPTIONS", path=TUS_PATH, operation_id="tusOptions", tag="tus", auth="none", description=_TUS_NOTE,
        summary="tus capabilities",
        replies=(Reply(204, "Capabilities", headers=("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size",
                                                    "Tus-Checksum-Algorithm")),),
    ),
    Operation(
        method="POST", path=TUS_PATH, operation_id="tusCreate", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Create the tus upload of this session (creation, creation-with-upload)",
        headers=(
            _TUS_RESUMABLE,
            Header("Upload-Length", "The file's size in bytes; must equal the session's", required=True, type="integer"),
            Header("Upload-Metadata", "tus metadata: comma-separated `key base64value` pairs"),
            Header("Content-Type", f"{tus.PATCH_CONTENT_TYPE} when the body carries the first bytes"),
            Header("X-HTTP-Method-Override", "HEAD, PATCH or DELETE for clients that can only POST"),
        ),
        body=bytes, body_media_type=tus.PATCH_CONTENT_TYPE,
        replies=(Reply(201, "Created", headers=("Location", *_OFFSET_HEADERS)), *_TUS_ERRORS),
        problems=(401, 403, 404, 429),
    ),
    Operation(
        method="HEAD", path=TUS_PATH, operation_id="tusOffset", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="How many bytes are stored (resume from Upload-Offset)",
        headers=(_TUS_RESUMABLE,),
        replies=(Reply(200, "The offset", headers=(*_OFFSET_HEADERS, "Upload-Metadata")), *_TUS_ERRORS),
        problems=(401, 403, 404),
    ),
    Operation(
        method="PATCH", path=TUS_PATH, operation_id="tusAppend", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Append bytes at Upload-Offset",
        headers=(
            _TUS_RESUMABLE,
            Header("Upload-Offset", "Where these bytes start; must equal the stored offset", required=True,
                   type="integer"),
            Header("Content-Type", tus.PATCH_CONTENT_TYPE, required=True),
            Header("Upload-Checksum", "`sha1 <base64>` or `sha256 <base64>` of this request's body"),
        ),
        body=bytes, body_media_type=tus.PATCH_CONTENT_TYPE,
        replies=(Reply(204, "Stored", headers=_OFFSET_HEADERS), *_TUS_ERRORS),
        problems=(401, 403, 404, 429),
    ),
    Operation(
        method="DELETE", path=TUS_PATH, operation_id="tusTerminate", tag="tus", auth="upload", description=_TUS_NOTE,
        summary="Terminate the upload (tus termination)",
        headers=(_TUS_RESUMABLE,),
        replies=(Reply(204, "Terminated", headers=("Tus-Resumable",)), *_TUS_ERRORS),
        problems=(401, 403, 404),
    ),
)

OPENAPI_ROUTE_OPERATION = Operation(
    method="GET", path="/openapi.json", operation_id="openapi", tag="meta", auth="none",
    summary="This document (OpenAPI 3.1)", replies=(Reply(200, "The OpenAPI document", dict[str, Any]),),
)


# -- the document ----------------------------------------------------------------------------------


def accepted_files() -> str:
    """What createUpload accepts, rendered from the limits table (the one place it is decided)."""
    lines = [
        "Accepted files: the extension of `file_name` picks the kind and the allowed `mime_type`s; "
        "another extension or type is 422 `unsupported_type`, a file over its kind's limit is 413 "
        "`file_too_large`.",
        "",
    ]
    for kind, limit in SIZE_LIMITS.items():
        types = "; ".join(
            f".{extension} ({', '.join(sorted(file_type.mime_types))})"
            for extension, file_type in FILE_TYPES.items()
            if file_type.kind == kind
        )
        lines.append(f"- {kind}, at most {limit // MIB} MiB ({limit} bytes): {types}")
    return "\n".join(lines)


_PATH_PARAM = re.compile(r"{(\w+)}")
_REF = "#/components/schemas/{name}"
_SECURITY: dict[Auth, list[dict[str, list[str]]]] = {
    "user": [{"userToken": []}],
    "upload": [{"uploadToken": []}, {"userToken": []}],
    "none": [],
}


def build(operations: Iterable[Operation], *, title: str = "RawDrive API", version: str = "1") -> dict[str, Any]:
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
        "info": {"title": title, "version": version, "description": accepted_files()},
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
    for status in op.problems:
        responses.setdefault(str(status), {"description": HTTPStatus(status).phrase, **problem})
    # Whatever else goes wrong (a malformed request, a method not allowed, a bug) is a problem too.
    responses["default"] = {"description": "An error (RFC 9457 problem details)", **problem}
    return responses


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=msgspec.json.encode(build(request.app[OPERATIONS])), content_type="application/json")


def mount_openapi(app: web.Application) -> None:
    """`/openapi.json`, and the operations served outside any route table (health by the runtime)."""
    mount(app, [Route(OPENAPI_ROUTE_OPERATION, serve)])
    document(app, HEALTH_OPERATIONS)
