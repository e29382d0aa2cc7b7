"""The session side of tus concatenation: partial uploads and the final uploads that join them.

A partial upload (`POST /v1/workspaces/{ws}/tus` with `Upload-Concat: partial`) has no upload
session: it is no file yet (tus-js-client sends partials without a name or type). Its row in
tus_partials gives it what a session gives any other upload: an owner (the user token's
subject: only they may write, read or join it), its workspace's storage profile, an expiry
(the session TTL) and a place in the workspace's quotas (unexpired partials count as open
uploads with their bytes: the view open_uploads, migration 0013). Its bytes go to
`keys.tus_piece_key(..., "partial")` through the tus store as any upload's do, at
`/v1/workspaces/{ws}/tus/{upload_id}`.

A final upload (`Upload-Concat: final;<url> ...`) is an upload session opened as the creation
endpoint opens any (tus_session.open_tus_upload, handed in: its metadata names the file; every rule of
the session API applies to the joined length), whose object storage joins from the partials;
it is committed when complete, as any creation-endpoint upload. The partials are terminated
once it exists. A partial never joined expires: it stops counting against the quotas then, the
next partial created in its workspace removes its bytes and row, and the janitor's sweeps
(stale multipart uploads, orphaned objects) remove whatever is left under its key.
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime, timedelta

import asyncpg
import msgspec
from aiohttp import web

from rawdrive_platform import keys
from rawdrive_platform.storage import Storage, StorageError
from upload_gateway.errors import InvalidRequest, NotFound
from upload_gateway.gateway import GATEWAY, Gateway, storage_for, utcnow
from upload_gateway.http.requests import path_ids, user
from upload_gateway.storage_profiles import store as profile_store
from upload_gateway.uploads import repository
from upload_gateway.uploads.core import new_id
from upload_gateway.uploads.parts import MIN_PART_SIZE, plan_parts
from upload_gateway.uploads.quotas import QuotaLimits, Usage, refused
from upload_gateway.uploads.tus import OpenedUpload, TusStore, TusTarget
from upload_gateway.uploads.tus.concat import Concat, url_path
from upload_gateway.uploads.tus.creation import OpenedFinal, OpenUpload
from upload_gateway.uploads.tus.protocol import (
    BadRequest,
    Creation,
    TusError,
    parse_metadata,
)
from upload_gateway.uploads.tus.store import JoinSource

# Expired partials of a workspace removed when another partial is created there.
EXPIRED_PER_CREATION = 10
_PARTIAL_URL = re.compile(r"/v1/workspaces/(?P<workspace_id>[^/]+)/tus/(?P<upload_id>[^/]+)/?$")

Target = TusTarget[asyncpg.Connection, Storage]


class Partial(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    workspace_id: str
    created_by: str
    storage_profile_ref: str
    object_key: str
    size_bytes: int
    expires_at: datetime


class PartialUploads:
    """tus concatenation for the creation endpoint (creation.Concatenation) and the `authorize`
    of the partial uploads' own URLs (`target`)."""

    def __init__(self, store: TusStore, open_upload: OpenUpload) -> None:
        """`open_upload`: how the creation endpoint opens an upload session (the final's)."""
        self._store = store
        self._open_upload = open_upload
        self._quota_turns = repository.QuotaTurns()

    async def open_partial(self, request: web.Request, creation: Creation) -> OpenedUpload:
        """A partial upload for a member with the upload role, admitted under the workspace's
        quotas in the transaction that records it (one such transaction of the workspace at a time
        in this process: the others wait for their turn without a connection)."""
        gw = request.config_dict[GATEWAY]
        principal, workspace_id = await user(request, gw.tokens, "upload")
        await self._forget_expired(gw, workspace_id)
        profile_ref = await profile_store.active_ref(gw.pool, workspace_id)
        storage = await storage_for(gw, profile_ref)
        upload_id = new_id()
        assert creation.length is not None  # a partial upload cannot defer its length
        partial = Partial(
            upload_id=upload_id, workspace_id=workspace_id, created_by=principal.sub,
            storage_profile_ref=profile_ref,
            object_key=keys.tus_piece_key(workspace_id, upload_id, "partial", storage.profile.key_prefix),
            size_bytes=creation.length, expires_at=utcnow() + timedelta(seconds=gw.settings.session_ttl_s),
        )  # fmt: skip
        limits = QuotaLimits.from_settings(gw.settings)
        async with self._quota_turns.turn(workspace_id), gw.pool.acquire() as conn, conn.transaction():
            usage = (await repository.lock_usage(conn, [workspace_id])).get(workspace_id, Usage())
            refusal = refused(limits, usage, partial.size_bytes)
            if refusal is not None:
                raise refusal
            await conn.execute(
                """INSERT INTO tus_partials (upload_id, workspace_id, created_by, storage_profile_ref, object_key,
                       size_bytes, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)""",
                *msgspec.structs.astuple(partial),
            )
        location = f"{gw.settings.public_url.rstrip('/')}/v1/workspaces/{workspace_id}/tus/{upload_id}"
        return OpenedUpload(target=_target(gw, partial, storage), location=location)

    async def target(self, request: web.Request) -> Target:
        """The partial upload named by the URL, for its owner (404 for anyone else)."""
        gw = request.config_dict[GATEWAY]
        workspace_id, upload_id = path_ids(request)
        principal, _ = await user(request, gw.tokens, "upload")
        partials = await _partials(gw.pool, workspace_id, [upload_id or ""], principal.sub)
        if not partials:
            raise NotFound(f"no partial upload {upload_id!r}")
        partial = partials[0]
        return _target(gw, partial, await storage_for(gw, partial.storage_profile_ref))

    async def open_final(self, request: web.Request, concat: Concat, metadata: str | None) -> OpenedFinal:
        """The final upload joining the caller's finished, unexpired partials, in order: a
        session for their summed length, under every rule of the creation endpoint."""
        gw = request.config_dict[GATEWAY]
        principal, workspace_id = await user(request, gw.tokens, "upload")
        assert concat.partial_urls is not None
        wanted = [_partial_id(url, workspace_id) for url in concat.partial_urls]
        found = {p.upload_id: p for p in await _partials(gw.pool, workspace_id, wanted, principal.sub)}
        now = utcnow()
        for upload_id in wanted:
            partial = found.get(upload_id)
            if partial is None:
                raise BadRequest(f"no partial upload {upload_id!r} of yours in this workspace")
            if partial.expires_at <= now:
                raise BadRequest(f"partial upload {upload_id!r} expired")
            state = await self._store.state(upload_id)
            if state is None or not state.completed:
                held = 0 if state is None else state.offset
                raise BadRequest(f"partial upload {upload_id!r} is not finished ({held} of {partial.size_bytes} bytes)")
        partials = [found[upload_id] for upload_id in wanted]
        creation = Creation(
            length=sum(p.size_bytes for p in partials), metadata=parse_metadata(metadata), raw_metadata=metadata,
            concat=concat.raw,
        )
        storages = {ref: await storage_for(gw, ref) for ref in {p.storage_profile_ref for p in partials}}
        opened = await self._open_upload(request, creation)
        # Storage copies within one bucket, with one key: a profile change in between ends it.
        if any(_place(storage) != _place(opened.target.storage) for storage in storages.values()):
            await opened.target.on_terminate()
            raise InvalidRequest("the workspace's storage profile changed after these partial uploads began; "
                                 "upload the file again")  # fmt: skip
        return OpenedFinal(
            target=opened.target, location=opened.location, creation=creation,
            sources=tuple(JoinSource(p.upload_id, p.object_key, p.size_bytes) for p in partials),
            partials=tuple(_target(gw, p, storages[p.storage_profile_ref]) for p in {p.upload_id: p for p in partials}.values()),
        )  # fmt: skip

    async def _forget_expired(self, gw: Gateway, workspace_id: str) -> None:
        """Remove a few expired partials of the workspace, bytes first; any that cannot be
        removed now (storage down, a request still on it) stays for the next creation."""
        rows = await gw.pool.fetch(
            "SELECT * FROM tus_partials WHERE workspace_id = $1 AND expires_at < now() ORDER BY expires_at LIMIT $2",
            workspace_id, EXPIRED_PER_CREATION,
        )
        for row in rows:
            partial = msgspec.convert(dict(row), Partial)
            with contextlib.suppress(TusError, StorageError, NotFound):
                target = _target(gw, partial, await storage_for(gw, partial.storage_profile_ref))
                if await self._store.state(partial.upload_id) is not None:
                    await self._store.terminate(target)
                await target.on_terminate()


def _target(gw: Gateway, partial: Partial, storage: Storage) -> Target:
    async def on_terminate() -> None:
        await gw.pool.execute("DELETE FROM tus_partials WHERE upload_id = $1", partial.upload_id)

    return TusTarget(
        upload_id=partial.upload_id,
        workspace_id=partial.workspace_id,
        object_key=partial.object_key,
        content_type="application/octet-stream",
        size_bytes=partial.size_bytes,
        expires_at=partial.expires_at,
        # 5 MiB parts, as the creation endpoint's uploads (tus_session.tus_part_size) have.
        part_size=plan_parts(max(partial.size_bytes, 1), preferred=MIN_PART_SIZE).part_size,
        storage=storage,
        on_terminate=on_terminate,
    )


async def _partials(pool: asyncpg.Pool, workspace_id: str, upload_ids: list[str], owner: str) -> list[Partial]:
    rows = await pool.fetch(
        "SELECT * FROM tus_partials WHERE workspace_id = $1 AND upload_id = ANY($2::text[]) AND created_by = $3",
        workspace_id, upload_ids, owner,
    )
    return [msgspec.convert(dict(row), Partial) for row in rows]


def _partial_id(url: str, workspace_id: str) -> str:
    """The upload id in a partial upload's URL, which must be one of this workspace's."""
    match = _PARTIAL_URL.search(url_path(url))
    if match is None or match["workspace_id"] != workspace_id:
        raise BadRequest(f"{url!r} is not a partial upload of this workspace")
    return match["upload_id"]


def _place(storage: Storage) -> tuple[object, ...]:
    return (*storage.profile.location().values(), storage.profile.access_key_id)
