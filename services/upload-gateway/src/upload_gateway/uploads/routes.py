"""The uploads routes: authenticate, decode, call `handlers`, encode. Nothing else.

`authorize_upload` is also what the tus routes call: it accepts the upload token bound to the
upload in the URL, or a user token with the member role in the URL's workspace.
"""

from __future__ import annotations

from typing import NamedTuple

from aiohttp import web

from upload_gateway.auth import require
from upload_gateway.errors import NotFound
from upload_gateway.gateway import GATEWAY
from upload_gateway.http.openapi import Reply, RouteTable, mount
from upload_gateway.http.problems import decode_body
from upload_gateway.http.requests import json_response, path_ids, user
from upload_gateway.uploads import api, handlers, repository
from upload_gateway.uploads.sessions import UploadSession

ROUTES = RouteTable(tag="uploads", prefix="/v1/workspaces/{workspace_id}/uploads")
_SESSION_PROBLEMS = (401, 403, 404, 409, 410, 502, 503)
OPENER = web.AppKey("session_opener", handlers.SessionOpener)


class _SessionRead(NamedTuple):
    workspace_id: str
    upload_id: str
    session: UploadSession | None


# The session row upload_trace read for the request's span, which the handler goes on with.
_SESSION_READ = web.RequestKey("upload_session_read", _SessionRead)


async def upload_trace(request: web.Request, workspace_id: str, upload_id: str) -> str | None:
    """The trace context the session stored (http.tracing's StoredTrace), read with the rest of
    its row, which the request keeps: the handler's `_session` then reads it no second time."""
    session = await repository.get(request.config_dict[GATEWAY].pool, workspace_id, upload_id)
    request[_SESSION_READ] = _SessionRead(workspace_id, upload_id, session)
    return None if session is None else session.trace_context


async def _session(request: web.Request, workspace_id: str) -> UploadSession:
    _, upload_id = path_ids(request)
    assert upload_id is not None
    read = request.get(_SESSION_READ)
    if read is not None and (read.workspace_id, read.upload_id) == (workspace_id, upload_id):
        session = read.session
    else:
        session = await repository.get(request.config_dict[GATEWAY].pool, workspace_id, upload_id)
    if session is None:
        raise NotFound(f"no upload {upload_id!r} in this workspace")
    return session


async def authorize_upload(request: web.Request) -> tuple[str, UploadSession]:
    """The bearer's subject and the session named by the URL, if the bearer may send its data;
    raises an UploadError (401 bad token, 404 unknown upload or a token for another upload or
    workspace, 403 a viewer). Works from the main app or a sub-app (reads `request.config_dict`)."""
    gw = request.config_dict[GATEWAY]
    workspace_id, upload_id = path_ids(request)
    authorization = request.headers.get("Authorization")
    if gw.tokens.is_upload_token(authorization):
        grant = gw.tokens.upload_grant(authorization)
        if (grant.workspace_id, grant.upload_id) != (workspace_id, upload_id):
            raise NotFound(f"no upload {upload_id!r} for this token")
        sub = grant.sub
    else:
        principal = await gw.tokens.principal(authorization)
        require(principal, workspace_id, "upload")
        sub = principal.sub
    return sub, await _session(request, workspace_id)


@ROUTES.route(
    "POST", "", operation_id="createUpload",
    summary="Open an upload session (tus or S3 multipart); returns where and how to send the bytes",
    body=api.CreateUpload,
    replies=(
        Reply(201, "Created: send the bytes to upload_url with these headers", api.UploadCreated),
        Reply(200, "on_duplicate=skip: an available asset has these bytes; nothing to send", api.DuplicateFound),
    ),
    problems=(400, 401, 403, 404, 413, 422, 429, 502, 503),
)
async def create(request: web.Request) -> web.Response:
    principal, workspace_id = await user(request, request.config_dict[GATEWAY].tokens, "upload")
    body = await decode_body(request, api.CreateUpload)
    gw = request.config_dict[GATEWAY]
    if body.on_duplicate == "skip":
        duplicate = await handlers.find_duplicate(gw, workspace_id, body)
        if duplicate is not None:
            return json_response(duplicate)
    created = await request.config_dict[OPENER].open(principal.sub, workspace_id, body)
    return json_response(created, status=201)


@ROUTES.route(
    "GET", "/{upload_id}", operation_id="getUpload",
    summary="The session's state and the bytes received so far",
    replies=(Reply(200, "The session", api.UploadStatus),),
    problems=(401, 403, 404, 502, 503),
)
async def show(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "read")
    session = await _session(request, workspace_id)
    return json_response(await handlers.status(gw, session))


@ROUTES.route(
    "DELETE", "/{upload_id}", operation_id="abortUpload",
    summary="Abort the upload (idempotent)",
    replies=(Reply(204, "Aborted"),),
    problems=(401, 403, 404, 409, 502, 503),
)
async def delete(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    principal, workspace_id = await user(request, gw.tokens, "delete")
    session = await _session(request, workspace_id)
    await handlers.abort(gw, principal.sub, session)
    return web.Response(status=204)


@ROUTES.route(
    "POST", "/{upload_id}/parts", operation_id="presignParts", auth="upload",
    summary="Presigned PUT URLs for S3 multipart parts",
    body=api.PartsRequest,
    replies=(Reply(200, "One URL per part; send the headers given", api.PresignedParts),),
    problems=(400, 422, *_SESSION_PROBLEMS),
)
async def presign_parts(request: web.Request) -> web.Response:
    _, session = await authorize_upload(request)
    body = await decode_body(request, api.PartsRequest)
    return json_response(await handlers.presign_parts(request.config_dict[GATEWAY], session, body))


@ROUTES.route(
    "GET", "/{upload_id}/parts", operation_id="listParts", auth="upload",
    summary="The parts storage holds so far",
    replies=(Reply(200, "The stored parts", api.PartList),),
    problems=(422, *_SESSION_PROBLEMS),
)
async def list_parts(request: web.Request) -> web.Response:
    _, session = await authorize_upload(request)
    return json_response(await handlers.list_parts(request.config_dict[GATEWAY], session))


@ROUTES.route(
    "POST", "/{upload_id}/commit", operation_id="commitUpload",
    summary="Everything is uploaded: verify it and make it an asset",
    body=api.CommitRequest,
    replies=(
        Reply(200, "Verified: the asset is processing", api.CommitResult),
        Reply(202, "Still verifying: ask again (commit is idempotent)", api.CommitResult),
    ),
    problems=(400, 413, 422, *_SESSION_PROBLEMS),
)
async def commit(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    principal, workspace_id = await user(request, gw.tokens, "upload")
    session = await _session(request, workspace_id)
    body = await decode_body(request, api.CommitRequest)
    result = await handlers.commit(gw, principal.sub, session, body)
    return json_response(result, status=200 if result.status == "processing" else 202)


def mount_uploads(app: web.Application) -> None:
    """The uploads API (after create_app set GATEWAY); the tus endpoint is mount_tus."""
    app[OPENER] = handlers.SessionOpener(app[GATEWAY])
    mount(app, ROUTES)
