"""The tus creation endpoint of a workspace: `POST /v1/workspaces/{ws}/tus`, what tusd and
@tus/server call the upload collection.

A stock tus client (Uppy, tus-js-client, tuspy, TUSKit, the compliance suite) configured with
this URL and `Authorization: Bearer <user token>` needs nothing else: one POST with
`Upload-Length` and `Upload-Metadata` opens the upload session (every rule of the session API:
types, size limits, roles, the workspace's storage profile) and creates its tus upload, with the
first bytes when the POST carries them (creation-with-upload). The answer is 201 with `Location`,
the session's own tus URL, which then takes HEAD, PATCH and DELETE with the same user token.
Such a session is committed by the gateway when its last byte arrives (`commit_on_complete`),
so no second API is needed; `Upload-Asset-Id` on every answer names the asset it becomes.

Metadata: `filename` (required), `filetype` (empty or missing: application/octet-stream, as
browsers send for camera RAW files), optional `library_id` (default `default`), `folder_id`
and `sha256` (hex; the verifier holds the file to it). Other keys (Uppy sends `name`, `type`,
`relativePath`) are kept for HEAD and otherwise ignored.

Protocol errors answer in tus's plain text (routes._answering_tus_errors); the session API's
refusals answer as everywhere else, problem+json with the status of the one table
(problems.PROBLEMS): 401, 403, 404 (a workspace not in the token), 413 (over the kind's
limit), and 400 where the session API answers 422 (a type or field refused: tus has no 422),
each with `Tus-Resumable`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
from aiohttp import web

from rawdrive_platform.keys import ID_PATTERN
from rawdrive_platform.metrics import UPLOADS_IN_FLIGHT
from upload_gateway import api, repository
from upload_gateway.auth import require
from upload_gateway.openapi import Header, Operation, Reply
from upload_gateway.problems import (
    InvalidRequest,
    NotFound,
    Problem,
    UploadError,
    from_validation_error,
    problem_for,
    problem_response,
)
from upload_gateway.routes import GATEWAY
from upload_gateway.tus import protocol
from upload_gateway.tus.routes import _answering_tus_errors
from upload_gateway.tus.store import TusStore
from upload_gateway.tus_session import session_target
from upload_gateway.uploads import create_session

CREATION_PATH = "/v1/workspaces/{workspace_id}/tus"
DEFAULT_LIBRARY = "default"
# What a client that names no type means (browsers for files they know no type of).
UNKNOWN_TYPE = "application/octet-stream"
# Upload-Metadata key for each field of a session request.
METADATA_KEYS = {
    "file_name": "filename", "mime_type": "filetype", "library_id": "library_id", "folder_id": "folder_id",
    "sha256": "sha256", "size_bytes": "Upload-Length",
}  # fmt: skip

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_NOTE = (
    "tus creation endpoint of the workspace for stock tus clients (Uppy, tus-js-client, tuspy): send "
    "`Authorization: Bearer <user token>` (member or admin) here and to the upload's URL in `Location`. "
    "The session is committed when its last byte arrives; `Upload-Asset-Id` names the asset."
)
CREATION_OPERATIONS = (
    Operation(
        method="OPTIONS", path=CREATION_PATH, operation_id="tusCreationOptions", tag="tus", auth="none",
        summary="tus capabilities of the creation endpoint", description=_NOTE,
        replies=(Reply(200, "Capabilities", headers=("Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size",
                                                    "Tus-Checksum-Algorithm")),),
    ),
    Operation(
        method="POST", path=CREATION_PATH, operation_id="tusCreateSession", tag="tus", description=_NOTE,
        summary="Open an upload session and its tus upload in one request (creation, creation-with-upload)",
        headers=(
            Header("Tus-Resumable", f"Always {protocol.TUS_VERSION}", required=True),
            Header("Upload-Length", "The file's size in bytes (at least 1)", required=True, type="integer"),
            Header("Upload-Metadata", "base64 `filename` (required), `filetype`, `library_id`, `folder_id`, "
                   "`sha256` (hex)", required=True),
            Header("Content-Type", f"{protocol.PATCH_CONTENT_TYPE} when the body carries the first bytes"),
            Header("Upload-Checksum", "`sha1 <base64>` or `sha256 <base64>` of the body"),
        ),
        body=bytes, body_media_type=protocol.PATCH_CONTENT_TYPE,
        replies=(
            Reply(201, "Created: send the rest to Location", headers=(
                "Location", "Upload-Asset-Id", "Tus-Resumable", "Upload-Offset", "Upload-Length", "Upload-Expires")),
            Reply(412, f"Tus-Resumable is not {protocol.TUS_VERSION}", str, "text/plain", headers=("Tus-Version",)),
            Reply(415, f"Content-Type is not {protocol.PATCH_CONTENT_TYPE}", str, "text/plain"),
            Reply(460, "Upload-Checksum does not match the body", str, "text/plain"),
        ),
        problems=(400, 401, 403, 404, 413, 502, 503),
    ),
)


def session_request(length: int, metadata: dict[str, str | None]) -> api.CreateUpload:
    """The session API request a tus creation stands for, or InvalidRequest naming the header
    or metadata key at fault (pure)."""
    if length == 0:
        raise InvalidRequest("empty files are not accepted: Upload-Length must be at least 1")
    if not metadata.get("filename"):
        raise InvalidRequest("Upload-Metadata must name the file: `filename` (base64 of its name)")
    fields = {
        "file_name": metadata["filename"],
        "mime_type": metadata.get("filetype") or UNKNOWN_TYPE,
        "size_bytes": length,
        "library_id": metadata.get("library_id") or DEFAULT_LIBRARY,
        "resumable_protocol": "tus",
        "folder_id": metadata.get("folder_id") or None,
        "sha256": metadata.get("sha256") or None,
    }
    try:
        return msgspec.convert(fields, api.CreateUpload)
    except msgspec.ValidationError as error:
        refused = from_validation_error(error, api.CreateUpload)
        field = (refused.errors or [])[0].path.removeprefix("$.") if refused.errors else ""
        key = METADATA_KEYS.get(field, field)
        raise InvalidRequest(f"`{key}`: {refused.detail}") from None


def creation_routes(store: TusStore, *, max_size: int) -> list[web.RouteDef]:
    handlers = _Creation(store, max_size)
    return [
        web.options(CREATION_PATH, handlers.options),
        web.post(CREATION_PATH, _answering_tus_errors(_answering_problems(handlers.create))),
    ]


def tus_problem(error: UploadError) -> Problem:
    """The session API's problem for a refused creation, in tus's status codes: its 422 (a type
    or field refused) is 400, what tus clients and the compliance suite take as "this creation
    is not acceptable" (tus has no 422); the code and detail say which rule refused it."""
    problem = problem_for(error)
    return msgspec.structs.replace(problem, status=400) if problem.status == 422 else problem


def _answering_problems(handler: Handler) -> Handler:
    """The session API's refusals as problem+json, with Tus-Resumable as every tus answer."""

    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except UploadError as error:
            headers = error.headers | {"Tus-Resumable": protocol.TUS_VERSION, "Cache-Control": "no-store"}
            return problem_response(tus_problem(error), headers)

    return answer


class _Creation:
    def __init__(self, store: TusStore, max_size: int):
        self._store = store
        self._max_size = max_size

    async def options(self, request: web.Request) -> web.Response:
        # 200, not 204: what the public compliance suite and tusd answer.
        return web.Response(status=200, headers=protocol.options_headers(self._max_size))

    async def create(self, request: web.Request) -> web.Response:
        method = protocol.effective_method("POST", request.headers.get("X-HTTP-Method-Override"))
        if method != "POST":
            raise protocol.BadRequest(f"{method} goes to the upload's URL (Location), not to the creation endpoint")
        creation = protocol.parse_creation(request.headers)
        if creation.length > self._max_size:
            raise protocol.PastLength(f"Upload-Length passes Tus-Max-Size {self._max_size}")
        # A body that cannot be taken is refused before anything exists.
        patch = protocol.parse_patch(request.headers, creation=True) if request.can_read_body else None
        if patch is not None:
            protocol.check_fits(0, patch.content_length, creation.length)
        gw = request.config_dict[GATEWAY]
        workspace_id = request.match_info["workspace_id"]
        if ID_PATTERN.fullmatch(workspace_id) is None:
            raise NotFound(f"no workspace {workspace_id!r}")
        principal = await gw.tokens.principal(request.headers.get("Authorization"))
        require(principal, workspace_id, "upload")
        wanted = session_request(creation.length, creation.metadata)
        created = await create_session(gw, principal.sub, workspace_id, wanted, commit_on_complete=True)
        session = await repository.get(gw.pool, workspace_id, created.upload_id)
        assert session is not None  # just committed
        file_sha256 = None
        if patch is not None and patch.checksum is not None and patch.checksum.algorithm == "sha256":
            file_sha256 = patch.checksum.digest.hex()  # covers the whole file if this POST completes it
        target = await session_target(gw, principal.sub, session, method="POST", file_sha256=file_sha256)
        state = await self._store.create(target, creation)
        if patch is not None:
            with UPLOADS_IN_FLIGHT.track_inprogress():
                state = await self._store.write(target, patch, request.content.read)
        headers = protocol.upload_headers(state.offset, state.length, state.expires_at)
        return web.Response(status=201, headers=headers | target.response_headers | {"Location": created.upload_url})
