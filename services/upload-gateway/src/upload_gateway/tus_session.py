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
from upload_gateway.routes import GATEWAY, authorize_upload
from upload_gateway.sessions import gone, plan_parts, require_open
from upload_gateway.tus import TusStore, TusTarget, tus_routes
from upload_gateway.tus.protocol import effective_method
from upload_gateway.uploads import abort, storage_for, utcnow

# Requests that only read the upload's progress; every other one changes stored bytes.
_READ_ONLY = frozenset({"HEAD", "OPTIONS"})
# The seed front end's tus-js-client chunkSize (and S3's smallest part but the last).
TUS_CHUNK_SIZE = 5 * 1024 * 1024


async def tus_target(request: web.Request) -> TusTarget:
    """The upload named by the URL, for a bearer allowed to send its bytes (see
    routes.authorize_upload). Aborted, rejected and expired uploads are gone (410, saying which);
    one that is already verifying or committed can still be asked for its offset but takes no
    more bytes (409)."""
    gw = request.config_dict[GATEWAY]
    sub, session = await authorize_upload(request)
    now = utcnow()
    closed = gone(session, now)
    if closed is not None:
        raise closed
    method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    if method not in _READ_ONLY:
        require_open(session, now)

    async def on_progress(conn: asyncpg.Connection, offset: int) -> None:
        await repository.record_progress(conn, session.upload_id, offset)

    async def on_complete(conn: asyncpg.Connection) -> None:
        # Idempotent: once the session is verifying or beyond, nothing moves.
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
    )


def tus_part_size(size_bytes: int) -> int:
    """5 MiB parts where the file allows: the chunkSize our front end gives tus-js-client, so
    each PATCH fills exactly one part and streams straight on to S3; a PATCH that ends inside
    a part leaves its bytes as a tail in PostgreSQL, written and read back once more."""
    return plan_parts(size_bytes, preferred=TUS_CHUNK_SIZE).part_size


def mount_tus(app: web.Application) -> None:
    """Add the tus endpoint at the session's upload_url (after create_app set GATEWAY)."""
    store = TusStore(app[GATEWAY].pool)
    app.add_routes(tus_routes(lambda _: store, tus_target, max_size=max(SIZE_LIMITS.values())))
    document(app, TUS_OPERATIONS)
