"""The session side of tus: who may send bytes to which upload, and what the session records.

The tus package (protocol, store, routes) knows nothing of sessions or tokens; it calls
`tus_target(request)` on every authenticated request and gets back the upload it may touch.
"""

from __future__ import annotations

import asyncpg
from aiohttp import web

from upload_gateway import repository
from upload_gateway.limits import SIZE_LIMITS
from upload_gateway.openapi import TUS_OPERATIONS, document
from upload_gateway.patch_limits import limit_patches
from upload_gateway.routes import GATEWAY, authorize_upload
from upload_gateway.sessions import UploadSession, gone, plan_parts, require_open
from upload_gateway.tus import TusStore, TusTarget, tus_routes
from upload_gateway.tus.protocol import TusError, effective_method, parse_checksum
from upload_gateway.uploads import Gateway, abort, request_commit, storage_for, utcnow

# Requests that only read the upload's progress; every other one changes stored bytes.
_READ_ONLY = frozenset({"HEAD", "OPTIONS"})
# The asset the upload becomes, on every tus answer about it (exposed to browsers, cors.py).
ASSET_ID_HEADER = "Upload-Asset-Id"
# The seed front end's tus-js-client chunkSize (and S3's smallest part but the last).
TUS_CHUNK_SIZE = 5 * 1024 * 1024


async def tus_target(request: web.Request) -> TusTarget:
    """The upload named by the URL, for a bearer allowed to send its bytes (see
    routes.authorize_upload: the session's upload token, or the user token of a member of the
    workspace, which is all a stock tus client configured with one header sends)."""
    sub, session = await authorize_upload(request)
    method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    return await session_target(
        request.config_dict[GATEWAY], sub, session, method=method, file_sha256=whole_file_sha256(request, method)
    )


async def session_target(
    gw: Gateway, sub: str, session: UploadSession, *, method: str, file_sha256: str | None = None
) -> TusTarget:
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
        require_open(session, now)

    async def on_progress(conn: asyncpg.Connection, offset: int) -> None:
        await repository.record_progress(conn, session.upload_id, offset)

    async def on_complete(conn: asyncpg.Connection) -> None:
        # Idempotent: once the session is verifying or beyond, nothing moves; an automatic
        # commit happens once (a refused one leaves the next to the client, as with the API).
        async with conn.transaction():
            current = await repository.record_progress(conn, session.upload_id, session.size_bytes)
            if current is not None and current.commit_on_complete and current.commit_attempts == 0:
                await request_commit(conn, sub, current, None if current.sha256 else file_sha256)

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


def tus_part_size(size_bytes: int) -> int:
    """5 MiB parts where the file allows: the chunkSize our front end gives tus-js-client, so
    each PATCH fills exactly one part and streams straight on to S3; a PATCH that ends inside
    a part leaves its bytes as a tail in PostgreSQL, written and read back once more."""
    return plan_parts(size_bytes, preferred=TUS_CHUNK_SIZE).part_size


def mount_tus(app: web.Application) -> None:
    """Add the tus endpoint at the session's upload_url and the workspace's creation endpoint
    (tus.creation), after create_app set GATEWAY."""
    from upload_gateway.tus.creation import CREATION_OPERATIONS, creation_routes  # it builds on this module

    store = TusStore(app[GATEWAY].pool)
    max_size = max(SIZE_LIMITS.values())
    routes = [*tus_routes(lambda _: store, tus_target, max_size=max_size), *creation_routes(store, max_size=max_size)]
    app.add_routes(limit_patches(app, routes))  # creation-with-upload sends bytes too
    document(app, (*TUS_OPERATIONS, *CREATION_OPERATIONS))
