"""The session side of tus creation-defer-length: uploads created before their length is known.

`POST /v1/workspaces/{ws}/tus` with `Upload-Defer-Length: 1` (a client sending a stream whose end
it does not know yet) creates an upload that is no upload session until a PATCH brings
`Upload-Length`: `upload.session_created` carries the file's size, and its readers need it.
Until then its row in tus_deferred gives it what a session gives other uploads: an owner (the
token's subject: anyone else gets 404), its workspace's storage profile, an expiry (the session
TTL) and a place in the workspace's quotas at the most it may hold, its kind's size limit (the
type is checked at creation, from the metadata; migration 0013). The row is also the file the
upload will be: the asset id and object key its session takes. Its bytes therefore stream (tus
store, in parts of `parts.part_size_up_to` that most) into the multipart upload that becomes the
session's object, and nothing is copied.

The PATCH that brings Upload-Length opens the session under every rule of the session API (the
kind's size limit, the quotas, in which this upload's own place gives way to its session) in one
transaction with `upload.session_created`; the store then records the length and writes the
PATCH as any session's. A refused length leaves the upload as it was: the client may send the
right one. From then on the URL serves the session's upload, committed when its last byte
arrives as every creation-endpoint upload is.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import asyncpg
import msgspec
from aiohttp import web

from rawdrive_contracts import new_event
from rawdrive_platform.keys import original_key
from rawdrive_platform.outbox import outbox_row
from rawdrive_platform.storage import Storage, StorageError
from rawdrive_platform.telemetry import stored_context
from upload_gateway.errors import InvalidRequest, UploadError
from upload_gateway.gateway import GATEWAY, SOURCE, Gateway, storage_for, utcnow
from upload_gateway.http.requests import path_ids, user
from upload_gateway.metrics import UPLOADS_STARTED
from upload_gateway.storage_profiles import store as profile_store
from upload_gateway.uploads import api, repository
from upload_gateway.uploads.core import NewFile, check_new_file, new_id, new_session
from upload_gateway.uploads.limits import SIZE_LIMITS
from upload_gateway.uploads.parts import MIN_PART_SIZE, part_size_up_to
from upload_gateway.uploads.quotas import QuotaLimits, Usage, refused
from upload_gateway.uploads.sessions import UploadSession
from upload_gateway.uploads.tus import OpenedUpload, TusStore, TusTarget
from upload_gateway.uploads.tus.protocol import (
    Creation,
    TusError,
    check_not_expired,
    effective_method,
    parse_metadata,
    parse_non_negative,
    settle_length,
)

# Expired deferred uploads of a workspace removed when another is created there.
EXPIRED_PER_CREATION = 10

Target = TusTarget[asyncpg.Connection, Storage]
# tus_session.session_request: the session API request a creation's length and metadata stand for.
SessionRequest = Callable[[int, dict[str, str | None]], api.CreateUpload]
# tus_session's target of a session for this request (its method, its whole-file checksum).
SessionTarget = Callable[[web.Request, str, UploadSession], Awaitable[Target]]


class Deferred(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    workspace_id: str
    asset_id: str
    created_by: str
    storage_profile_ref: str
    object_key: str
    metadata: str
    size_bytes: int  # the most it may hold, counted in the quota until its session exists
    expires_at: datetime


class DeferredUploads:
    """creation-defer-length for the creation endpoint (`open`, its OpenUpload for a creation
    without a length) and the `authorize` of those uploads' URLs (`target`)."""

    def __init__(self, store: TusStore, session_request: SessionRequest, session_target: SessionTarget,
                 asset_id_header: str) -> None:  # fmt: skip
        self._store = store
        self._session_request = session_request
        self._session_target = session_target
        self._asset_id_header = asset_id_header
        self._quota_turns = repository.QuotaTurns()

    def _file(self, metadata: dict[str, str | None], length: int) -> tuple[api.CreateUpload, NewFile]:
        """The session request and the file it describes, or the session API's refusal."""
        wanted = self._session_request(length, metadata)
        return wanted, check_new_file(wanted)

    def _file_of(self, deferred: Deferred, length: int) -> tuple[api.CreateUpload, NewFile]:
        """What the metadata the deferred upload was created with describes, at `length` bytes."""
        return self._file(parse_metadata(deferred.metadata or None), length)

    async def open(self, request: web.Request, creation: Creation) -> OpenedUpload:
        """A deferred upload for a member with the upload role: its type checked now (its size
        when it arrives), admitted under the workspace's quotas at its kind's limit."""
        gw = request.config_dict[GATEWAY]
        principal, workspace_id = await user(request, gw.tokens, "upload")
        _, file = self._file(creation.metadata, 1)
        await self._forget_expired(gw, workspace_id)
        limits = QuotaLimits.from_settings(gw.settings)
        profile_ref = await profile_store.active_ref(gw.pool, workspace_id)
        storage = await storage_for(gw, profile_ref)
        upload_id, asset_id = new_id(), new_id()
        deferred = Deferred(
            upload_id=upload_id, workspace_id=workspace_id, asset_id=asset_id, created_by=principal.sub,
            storage_profile_ref=profile_ref,
            object_key=original_key(workspace_id, asset_id, file.file_name, key_prefix=storage.profile.key_prefix),
            metadata=creation.raw_metadata or "",
            # No file larger than the workspace may have in flight can become a session.
            size_bytes=min(SIZE_LIMITS[file.kind], limits.max_bytes_in_flight),
            expires_at=utcnow() + timedelta(seconds=gw.settings.session_ttl_s),
        )  # fmt: skip
        async with self._quota_turns.turn(workspace_id), gw.pool.acquire() as conn, conn.transaction():
            usage = (await repository.lock_usage(conn, [workspace_id])).get(workspace_id, Usage())
            refusal = refused(limits, usage, deferred.size_bytes)
            if refusal is not None:
                raise refusal
            await conn.execute(
                """INSERT INTO tus_deferred (upload_id, workspace_id, asset_id, created_by, storage_profile_ref,
                       object_key, metadata, size_bytes, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                *msgspec.structs.astuple(deferred),
            )
        location = f"{gw.settings.public_url.rstrip('/')}/v1/workspaces/{workspace_id}/tus/{upload_id}"
        return OpenedUpload(target=self._target(gw, deferred, file, storage), location=location)

    async def target(self, request: web.Request) -> Target | None:
        """The upload named by the URL if it was created deferred, for its owner: the session's
        once it has one (opened now by a PATCH carrying Upload-Length), else the deferred
        upload's. None when there is no such upload of the caller's (a partial upload's URL)."""
        gw = request.config_dict[GATEWAY]
        workspace_id, upload_id = path_ids(request)
        principal, _ = await user(request, gw.tokens, "upload")
        row = await gw.pool.fetchrow(
            "SELECT * FROM tus_deferred WHERE workspace_id = $1 AND upload_id = $2 AND created_by = $3",
            workspace_id, upload_id, principal.sub,
        )  # fmt: skip
        if row is None:
            return None
        deferred = msgspec.convert(dict(row), Deferred)
        session = await repository.get(gw.pool, workspace_id, deferred.upload_id)
        method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
        if session is None and method == "PATCH" and "Upload-Length" in request.headers:
            length = parse_non_negative("Upload-Length", request.headers["Upload-Length"])
            check_not_expired(deferred.expires_at, utcnow())
            # A length short of the bytes held is refused before it makes a session of that size.
            state = await self._store.state(deferred.upload_id)
            settle_length(None, length, None, 0 if state is None else state.offset)
            session = await self._open_session(gw, deferred, length)
        if session is not None:
            return await self._session_target(request, principal.sub, session)
        _, file = self._file_of(deferred, 1)
        return self._target(gw, deferred, file, await storage_for(gw, deferred.storage_profile_ref))

    async def _open_session(self, gw: Gateway, deferred: Deferred, length: int) -> UploadSession:
        """The deferred upload's session, for `length` bytes, under every rule of the session API;
        published with upload.session_created in the transaction that admits it."""
        wanted, file = self._file_of(deferred, length)
        workspace_id = deferred.workspace_id
        storage = await storage_for(gw, deferred.storage_profile_ref)
        now, trace_context = utcnow(), stored_context()
        session, event = new_session(
            deferred.created_by, workspace_id, wanted, file, storage=storage,
            profile_ref=deferred.storage_profile_ref, asset_id=deferred.asset_id, object_key=deferred.object_key,
            multipart_upload_id=None, now=now, ttl_s=gw.settings.session_ttl_s, trace_context=trace_context,
            commit_on_complete=True, upload_id=deferred.upload_id,
        )  # fmt: skip
        created = outbox_row(new_event(event, source=SOURCE, time=now), trace_context)
        limits = QuotaLimits.from_settings(gw.settings)
        try:
            async with self._quota_turns.turn(workspace_id), gw.pool.acquire() as conn, conn.transaction():
                usage = (await repository.lock_usage(conn, [workspace_id])).get(workspace_id, Usage())
                # This upload counts until its session exists: its place gives way to the session.
                usage = Usage(max(0, usage.open_uploads - 1), max(0, usage.bytes_in_flight - deferred.size_bytes))
                refusal = refused(limits, usage, length)
                if refusal is not None:
                    raise refusal
                if not await repository.insert_many(conn, [(session, created)]):
                    raise InvalidRequest("the workspace's storage profile changed after this upload began; "
                                         "upload the file again")  # fmt: skip
                # Its URL lives as long as its session.
                await conn.execute("UPDATE tus_deferred SET expires_at = $2 WHERE upload_id = $1",
                                   deferred.upload_id, session.expires_at)  # fmt: skip
        except asyncpg.UniqueViolationError:
            # Another request opened it first; the store holds both to the one length.
            opened = await repository.get(gw.pool, workspace_id, deferred.upload_id)
            if opened is None:
                raise
            return opened
        UPLOADS_STARTED.labels(protocol="tus").inc()
        return session

    async def _forget_expired(self, gw: Gateway, workspace_id: str) -> None:
        """Remove a few expired deferred uploads of the workspace: the bytes of one that never
        became a session first (one that did is its session's: only the row goes). Any that
        cannot be removed now (storage down, a request still on it) stays for the next creation."""
        rows = await gw.pool.fetch(
            """SELECT d.*, EXISTS (SELECT 1 FROM upload_sessions s WHERE s.upload_id = d.upload_id) AS opened
                 FROM tus_deferred d WHERE d.workspace_id = $1 AND d.expires_at < now()
                ORDER BY d.expires_at LIMIT $2""",
            workspace_id, EXPIRED_PER_CREATION,
        )  # fmt: skip
        for row in rows:
            fields = dict(row)
            opened = fields.pop("opened")
            deferred = msgspec.convert(fields, Deferred)
            with contextlib.suppress(TusError, StorageError, UploadError):
                if not opened and await self._store.state(deferred.upload_id) is not None:
                    storage = await storage_for(gw, deferred.storage_profile_ref)
                    _, file = self._file_of(deferred, 1)
                    await self._store.terminate(self._target(gw, deferred, file, storage))
                await gw.pool.execute("DELETE FROM tus_deferred WHERE upload_id = $1", deferred.upload_id)

    def _target(self, gw: Gateway, deferred: Deferred, file: NewFile, storage: Storage) -> Target:
        async def on_terminate() -> None:
            await gw.pool.execute("DELETE FROM tus_deferred WHERE upload_id = $1", deferred.upload_id)

        return TusTarget(
            upload_id=deferred.upload_id,
            workspace_id=deferred.workspace_id,
            object_key=deferred.object_key,
            content_type=file.mime_type,
            size_bytes=deferred.size_bytes,
            expires_at=deferred.expires_at,
            # 5 MiB parts where the most it may hold allows, as the creation endpoint's uploads.
            part_size=part_size_up_to(deferred.size_bytes, MIN_PART_SIZE),
            storage=storage,
            on_terminate=on_terminate,
            response_headers={self._asset_id_header: deferred.asset_id},
            length_deferred=True,
        )
