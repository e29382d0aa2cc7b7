"""The uploads routes: authenticate, decode, call `uploads`, encode. Nothing else.

`authorize_upload` is also what the tus routes call: it accepts the upload token bound to the
upload in the URL, or a user token with the member role in the URL's workspace.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from rawdrive_platform.keys import ID_PATTERN
from upload_gateway import api, repository, uploads
from upload_gateway.auth import Action, Principal, require
from upload_gateway.openapi import Operation, Reply, Route, mount
from upload_gateway.problems import NotFound, decode_body
from upload_gateway.sessions import UploadSession
from upload_gateway.uploads import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
PREFIX = "/v1/workspaces/{workspace_id}/uploads"


def _json(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json")


def _path_ids(request: web.Request) -> tuple[str, str | None]:
    workspace_id = request.match_info["workspace_id"]
    upload_id = request.match_info.get("upload_id")
    # Ids that no key or subject could hold do not exist, whoever asks.
    for value in (workspace_id, upload_id):
        if value is not None and ID_PATTERN.fullmatch(value) is None:
            raise NotFound(f"no such resource {value!r}")
    return workspace_id, upload_id


async def _user(request: web.Request, action: Action) -> tuple[Principal, str]:
    gw = request.config_dict[GATEWAY]
    workspace_id, _ = _path_ids(request)
    principal = await gw.tokens.principal(request.headers.get("Authorization"))
    require(principal, workspace_id, action)
    return principal, workspace_id


async def _session(request: web.Request, workspace_id: str) -> UploadSession:
    _, upload_id = _path_ids(request)
    assert upload_id is not None
    session = await repository.get(request.config_dict[GATEWAY].pool, workspace_id, upload_id)
    if session is None:
        raise NotFound(f"no upload {upload_id!r} in this workspace")
    return session


async def authorize_upload(request: web.Request) -> tuple[str, UploadSession]:
    """The bearer's subject and the session named by the URL, if the bearer may send its data;
    raises an UploadError (401 bad token, 404 unknown upload or a token for another upload or
    workspace, 403 a viewer). Works from the main app or a sub-app (reads `request.config_dict`)."""
    gw = request.config_dict[GATEWAY]
    workspace_id, upload_id = _path_ids(request)
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


async def create(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "upload")
    body = await decode_body(request, api.CreateUpload)
    gw = request.config_dict[GATEWAY]
    if body.on_duplicate == "skip":
        duplicate = await uploads.find_duplicate(gw, workspace_id, body)
        if duplicate is not None:
            return _json(duplicate)
    created = await uploads.create_session(gw, principal.sub, workspace_id, body)
    return _json(created, status=201)


async def show(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "read")
    session = await _session(request, workspace_id)
    return _json(await uploads.status(request.config_dict[GATEWAY], session))


async def delete(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "delete")
    session = await _session(request, workspace_id)
    await uploads.abort(request.config_dict[GATEWAY], principal.sub, session)
    return web.Response(status=204)


async def presign_parts(request: web.Request) -> web.Response:
    _, session = await authorize_upload(request)
    body = await decode_body(request, api.PartsRequest)
    return _json(await uploads.presign_parts(request.config_dict[GATEWAY], session, body))


async def list_parts(request: web.Request) -> web.Response:
    _, session = await authorize_upload(request)
    return _json(await uploads.list_parts(request.config_dict[GATEWAY], session))


async def commit(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "upload")
    session = await _session(request, workspace_id)
    body = await decode_body(request, api.CommitRequest)
    result = await uploads.commit(request.config_dict[GATEWAY], principal.sub, session, body)
    return _json(result, status=200 if result.status == "processing" else 202)


_SESSION_PROBLEMS = (401, 403, 404, 409, 410, 502, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        Operation(
            method="POST", path=PREFIX, operation_id="createUpload", tag="uploads",
            summary="Open an upload session (tus or S3 multipart); returns where and how to send the bytes",
            body=api.CreateUpload,
            replies=(
                Reply(201, "Created: send the bytes to upload_url with these headers", api.UploadCreated),
                Reply(200, "on_duplicate=skip: an available asset has these bytes; nothing to send", api.DuplicateFound),
            ),
            problems=(400, 401, 403, 404, 413, 422, 429, 502, 503),
        ),
        create,
    ),
    Route(
        Operation(
            method="GET", path=PREFIX + "/{upload_id}", operation_id="getUpload", tag="uploads",
            summary="The session's state and the bytes received so far",
            replies=(Reply(200, "The session", api.UploadStatus),),
            problems=(401, 403, 404, 502, 503),
        ),
        show,
    ),
    Route(
        Operation(
            method="DELETE", path=PREFIX + "/{upload_id}", operation_id="abortUpload", tag="uploads",
            summary="Abort the upload (idempotent)",
            replies=(Reply(204, "Aborted"),),
            problems=(401, 403, 404, 409, 502, 503),
        ),
        delete,
    ),
    Route(
        Operation(
            method="POST", path=PREFIX + "/{upload_id}/parts", operation_id="presignParts", tag="uploads",
            auth="upload", summary="Presigned PUT URLs for S3 multipart parts",
            body=api.PartsRequest,
            replies=(Reply(200, "One URL per part; send the headers given", api.PresignedParts),),
            problems=(400, 422, *_SESSION_PROBLEMS),
        ),
        presign_parts,
    ),
    Route(
        Operation(
            method="GET", path=PREFIX + "/{upload_id}/parts", operation_id="listParts", tag="uploads",
            auth="upload", summary="The parts storage holds so far",
            replies=(Reply(200, "The stored parts", api.PartList),),
            problems=(422, *_SESSION_PROBLEMS),
        ),
        list_parts,
    ),
    Route(
        Operation(
            method="POST", path=PREFIX + "/{upload_id}/commit", operation_id="commitUpload", tag="uploads",
            summary="Everything is uploaded: verify it and make it an asset",
            body=api.CommitRequest,
            replies=(
                Reply(200, "Verified: the asset is processing", api.CommitResult),
                Reply(202, "Still verifying: ask again (commit is idempotent)", api.CommitResult),
            ),
            problems=(400, 413, 422, *_SESSION_PROBLEMS),
        ),
        commit,
    ),
)


def add_routes(app: web.Application) -> None:
    mount(app, ROUTES)
