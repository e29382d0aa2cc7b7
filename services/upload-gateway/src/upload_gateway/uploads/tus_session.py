"""The session side of tus: who may send bytes to which upload, what the session records, and
the session a workspace's tus creation endpoint opens.

The tus package (protocol, store, routes) knows nothing of sessions or tokens; it calls
`tus_target(request)` on every authenticated request to an upload's URL and gets back the upload
it may touch, and `open_tus_upload(request, creation)` on a POST to the creation endpoint.
"""

from __future__ import annotations

import contextlib

import asyncpg
import msgspec
from aiohttp import web

from rawdrive_platform.storage import Storage
from upload_gateway.errors import InvalidRequest, UploadError
from upload_gateway.gateway import GATEWAY, Gateway, storage_for, utcnow
from upload_gateway.http.openapi import document
from upload_gateway.http.problems import from_validation_error
from upload_gateway.http.requests import user
from upload_gateway.uploads import api, repository
from upload_gateway.uploads.handlers import abort, request_commit
from upload_gateway.uploads.limits import SIZE_LIMITS
from upload_gateway.uploads.parts import plan_parts
from upload_gateway.uploads.patch_limits import limit_patches
from upload_gateway.uploads.routes import OPENER, authorize_upload
from upload_gateway.uploads.sessions import UploadSession, gone, require_open
from upload_gateway.uploads.tus import OpenedUpload, PostgresS3Store, TusTarget, creation_routes, tus_routes
from upload_gateway.uploads.tus.concat import is_final
from upload_gateway.uploads.tus.creation import PARTIAL_PATH, answering_problems
from upload_gateway.uploads.tus.openapi import CREATION_OPERATIONS, PARTIAL_OPERATIONS, TUS_OPERATIONS
from upload_gateway.uploads.tus.protocol import Creation, Forbidden, TusError, effective_method, parse_checksum
from upload_gateway.uploads.tus_deferred import DeferredUploads
from upload_gateway.uploads.tus_partials import PartialUploads

# Requests that only read the upload's progress; every other one changes stored bytes.
_READ_ONLY = frozenset({"HEAD", "OPTIONS"})
# The asset the upload becomes, on every tus answer about it (exposed to browsers, http/cors.py).
ASSET_ID_HEADER = "Upload-Asset-Id"
# The seed front end's tus-js-client chunkSize (and S3's smallest part but the last).
TUS_CHUNK_SIZE = 5 * 1024 * 1024
# What the creation endpoint's sessions default to.
DEFAULT_LIBRARY = "default"
# What a client that names no type means (browsers for files they know no type of).
UNKNOWN_TYPE = "application/octet-stream"
# Upload-Metadata key (or header) for each field of a session request, to name it in a refusal.
METADATA_KEYS = {
    "file_name": "filename", "mime_type": "filetype", "library_id": "library_id", "folder_id": "folder_id",
    "sha256": "sha256", "size_bytes": "Upload-Length",
}  # fmt: skip

Target = TusTarget[asyncpg.Connection, Storage]


async def tus_target(request: web.Request) -> Target:
    """The upload named by the URL, for a bearer allowed to send its bytes (see
    routes.authorize_upload: the session's upload token, or the user token of a member of the
    workspace, which is all a stock tus client configured with one header sends)."""
    sub, session = await authorize_upload(request)
    return await request_target(request, sub, session)


async def request_target(request: web.Request, sub: str, session: UploadSession) -> Target:
    """The tus upload of `session` for this request (its method, its whole-file checksum)."""
    method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    return await session_target(
        request.config_dict[GATEWAY], sub, session, method=method, file_sha256=whole_file_sha256(request, method)
    )


async def session_target(
    gw: Gateway, sub: str, session: UploadSession, *, method: str, file_sha256: str | None = None
) -> Target:
    """The tus upload of `session` for a request of `method`. Aborted, rejected and expired
    uploads are gone (410, saying which); one that is already verifying or committed can still
    be asked for its offset but takes no more bytes (409). A session opened by the creation
    endpoint (`commit_on_complete`) is committed when its last byte arrives, with `file_sha256`
    when this request's checksum covered the whole file."""
    now = utcnow()
    closed = gone(session, now)
    if closed is not None:
        raise closed
    if method not in _READ_ONLY:
        try:
            require_open(session, now)
        except UploadError:
            # A final upload of a concatenation is complete at its creation: tus says 403.
            state = await PostgresS3Store(gw.pool).state(session.upload_id)
            if method == "PATCH" and state is not None and is_final(state.concat):
                raise Forbidden("a final upload takes no PATCH: its bytes are its partial uploads'") from None
            raise

    async def on_progress(conn: asyncpg.Connection, offset: int) -> None:
        await repository.record_progress(conn, session.upload_id, offset)

    async def on_complete(conn: asyncpg.Connection) -> None:
        # Idempotent: once the session is verifying or beyond, nothing moves; an automatic
        # commit happens once (a refused one leaves the next to the client, as with the API).
        # An open session with every byte and no commit yet moves to verifying in one statement
        # (the bytes recorded with it); otherwise the bytes alone are recorded, if it is open.
        # The store calls this inside its own transaction (no savepoint needed); a HEAD's
        # confirm_complete outside of one.
        async with contextlib.nullcontext() if conn.is_in_transaction() else conn.transaction():
            if session.commit_on_complete and await request_commit(
                conn, sub, session, None if session.sha256 else file_sha256,
                bytes_received=session.size_bytes, attempt=0,
            ):  # fmt: skip
                return
            await repository.record_progress(conn, session.upload_id, session.size_bytes)

    async def on_terminate() -> None:
        # tus termination is the client abandoning the upload: the session ends as a DELETE would.
        await abort(gw, sub, session)

    return TusTarget(
        upload_id=session.upload_id,
        workspace_id=session.workspace_id,
        object_key=session.object_key,
        content_type=session.mime_type,
        size_bytes=session.size_bytes,
        expires_at=session.expires_at,
        part_size=tus_part_size(session.size_bytes),
        storage=await storage_for(gw, session.storage_profile_ref),
        on_progress=on_progress,
        on_complete=on_complete,
        on_terminate=on_terminate,
        response_headers={ASSET_ID_HEADER: session.asset_id},
    )


def whole_file_sha256(request: web.Request, method: str) -> str | None:
    """The SHA-256 (hex) of the whole file when this request's body starts at offset 0 and
    carries `Upload-Checksum: sha256 ...`: if it completes the upload, the store has checked
    that digest against every byte of the file. None otherwise."""
    headers = request.headers
    starts_at_zero = method == "POST" or headers.get("Upload-Offset") == "0"
    if method not in ("PATCH", "POST") or not starts_at_zero:
        return None
    try:
        checksum = parse_checksum(headers.get("Upload-Checksum"))
    except TusError:
        return None  # the store refuses the request itself
    return checksum.digest.hex() if checksum is not None and checksum.algorithm == "sha256" else None


def session_request(length: int, metadata: dict[str, str | None]) -> api.CreateUpload:
    """The session API request a tus creation stands for, or InvalidRequest naming the header
    or metadata key at fault (pure).

    Metadata: `filename` (required), `filetype` (empty or missing: application/octet-stream, as
    browsers send for camera RAW files), optional `library_id` (default `default`), `folder_id`
    and `sha256` (hex; the verifier holds the file to it). Other keys (Uppy sends `name`, `type`,
    `relativePath`) are kept for HEAD and otherwise ignored."""
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


async def open_tus_upload(request: web.Request, creation: Creation) -> OpenedUpload:
    """The session a POST to the workspace's creation endpoint opens, for a user token with the
    member role there, under every rule of the session API (types, size limits, quotas, the
    workspace's storage profile). The gateway commits it when its last byte arrives
    (`commit_on_complete`), so a stock tus client needs no second API."""
    gw = request.config_dict[GATEWAY]
    principal, workspace_id = await user(request, gw.tokens, "upload")
    assert creation.length is not None  # a deferred length opens no session (tus_deferred)
    wanted = session_request(creation.length, creation.metadata)
    opener = request.config_dict[OPENER]
    session, created = await opener.open_session(principal.sub, workspace_id, wanted, commit_on_complete=True)
    # A POST's body starts at offset 0: its sha256 checksum covers the whole file if it completes it.
    target = await session_target(gw, principal.sub, session, method="POST",
                                  file_sha256=whole_file_sha256(request, "POST"))  # fmt: skip
    return OpenedUpload(target=target, location=created.upload_url)


def tus_part_size(size_bytes: int) -> int:
    """5 MiB parts where the file allows: the chunkSize our front end gives tus-js-client, so
    each PATCH fills exactly one part and streams straight on to S3; a PATCH that ends inside
    a part leaves its bytes as a tail in PostgreSQL, written and read back once more."""
    return plan_parts(size_bytes, preferred=TUS_CHUNK_SIZE).part_size


def mount_tus(app: web.Application) -> None:
    """Add the tus endpoint at the session's upload_url and the workspace's creation endpoint,
    both through one PostgreSQL+S3 store, with each user's byte-sending requests limited
    (patch_limits); after create_app set GATEWAY."""
    gw = app[GATEWAY]
    store = PostgresS3Store(gw.pool)
    max_size = max(SIZE_LIMITS.values())
    idle_timeout_s = gw.settings.tus_idle_timeout_s
    partials = PartialUploads(store, open_tus_upload)
    deferred = DeferredUploads(store, session_request, request_target, ASSET_ID_HEADER)

    async def open_upload(request: web.Request, creation: Creation) -> OpenedUpload:
        return await (deferred.open if creation.length is None else open_tus_upload)(request, creation)

    async def sessionless_target(request: web.Request) -> Target:
        """The creation endpoint's uploads without a session of their own: deferred, partial."""
        return await deferred.target(request) or await partials.target(request)

    routes = [
        *tus_routes(lambda _: store, tus_target, max_size=max_size, idle_timeout_s=idle_timeout_s),
        # These exist once the creation endpoint made them: their own URL takes no POST. A PATCH
        # that opens a deferred upload's session is refused as the creation endpoint refuses.
        *(web.route(r.method, r.path, answering_problems(r.handler), **r.kwargs)
          for r in tus_routes(lambda _: store, sessionless_target, max_size=max_size, path=PARTIAL_PATH,
                              idle_timeout_s=idle_timeout_s)
          if r.method != "POST"),
        *creation_routes(store, open_upload, partials, max_size=max_size, idle_timeout_s=idle_timeout_s),
    ]
    app.add_routes(limit_patches(app, routes))  # creation-with-upload sends bytes too
    document(app, (*TUS_OPERATIONS, *CREATION_OPERATIONS, *PARTIAL_OPERATIONS))
