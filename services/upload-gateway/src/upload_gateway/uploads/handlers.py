"""What each uploads route does: check with the pure core (core.py, sessions.py), then perform
the effects.

Every state change and the event it implies commit in one transaction through the outbox.
Storage calls happen outside transactions; where one fails after the row changed (an abort),
repeating the request repeats the storage call, and the janitor sweeps anything left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import timedelta
from typing import get_args

import asyncpg
import msgspec

from rawdrive_contracts import ResumableProtocol, new_event
from rawdrive_platform import storage as s3
from rawdrive_platform.keys import original_key
from rawdrive_platform.outbox import enqueue, outbox_row
from rawdrive_platform.storage import MANAGED_PROFILE_ID
from rawdrive_platform.telemetry import stored_context
from upload_gateway.auth import UploadGrant
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.errors import InvalidState, StorageUnavailable, UploadError
from upload_gateway.gateway import SOURCE, Gateway, storage_for, utcnow
from upload_gateway.http.problems import storage_errors
from upload_gateway.metrics import UPLOADS_STARTED
from upload_gateway.storage_profiles import store as profile_store
from upload_gateway.uploads import api, parts, repository
from upload_gateway.uploads.core import (
    check_new_file,
    check_part_numbers,
    commit_requested,
    new_id,
    new_session,
    remember_profile,
    require_multipart,
    status_view,
    upload_aborted,
    upload_url,
)
from upload_gateway.uploads.quotas import QuotaLimits
from upload_gateway.uploads.sessions import (
    TRANSITIONS,
    UploadSession,
    check_complete,
    check_given_sha256,
    commit_outcome,
    effective_state,
    require_open,
)

log = logging.getLogger(__name__)

# How often a waiting commit looks at its row; the row is the truth across replicas.
COMMIT_POLL_S = 0.1
# The counter's children, looked up once rather than by label on every creation.
_STARTED = {protocol: UPLOADS_STARTED.labels(protocol=protocol) for protocol in get_args(ResumableProtocol)}
# Tries to insert a session under the workspace's active profile while it keeps changing.
PROFILE_ATTEMPTS = 3


async def find_duplicate(gw: Gateway, workspace_id: str, request: api.CreateUpload) -> api.DuplicateFound | None:
    """The available asset of the workspace with the request's sha256, if there is one. The file
    is checked first: a request the gateway would refuse is refused whatever the workspace holds."""
    check_new_file(request)
    if request.sha256 is None:
        return None
    asset_id = await catalogue_store.available_with_sha256(gw.pool, workspace_id, request.sha256)
    return None if asset_id is None else api.DuplicateFound(duplicate_of=asset_id)


class SessionOpener:
    """Opens upload sessions. One per app: it batches the inserts of concurrent creations
    (repository.SessionWriter, which admits them under the workspaces' quotas) and remembers
    each workspace's last seen storage profile."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.writer = repository.SessionWriter(gw.pool, limits=QuotaLimits.from_settings(gw.settings))
        # workspace_id -> the storage_profile_ref last seen active: a guess, checked at insert.
        self.known_profiles: dict[str, str] = {}

    async def open(
        self, sub: str, workspace_id: str, request: api.CreateUpload, *, commit_on_complete: bool = False
    ) -> api.UploadCreated:
        """`commit_on_complete`: the gateway commits the session itself when its last byte arrives
        (the tus creation endpoint's sessions; see tus_session)."""
        _, created = await self.open_session(sub, workspace_id, request, commit_on_complete=commit_on_complete)
        return created

    async def open_session(
        self, sub: str, workspace_id: str, request: api.CreateUpload, *, commit_on_complete: bool = False
    ) -> tuple[UploadSession, api.UploadCreated]:
        """`open`, also returning the session exactly as its row was written (every column comes
        from it), for a caller that goes on with it: reading the row back would cost a round trip."""
        gw = self.gw
        file = check_new_file(request)  # refuse before any effect
        multipart = request.resumable_protocol == "s3_multipart"
        # The session keeps its workspace's active profile (bucket, key prefix), so a later profile
        # change does not move an upload in flight. A tus session guesses the profile this gateway
        # saw last and the insert checks the guess in the same statement (one round trip instead
        # of two); a wrong guess writes nothing and is retried with the profile read afresh. A
        # multipart session reads it first: it creates the multipart upload in that bucket before
        # its row exists.
        if multipart:
            profile_ref = await profile_store.active_ref(gw.pool, workspace_id)
        else:
            profile_ref = self.known_profiles.get(workspace_id, MANAGED_PROFILE_ID)
        # This request's span becomes the parent of every later request about the upload.
        trace_context = stored_context()
        for _ in range(PROFILE_ATTEMPTS):
            storage = await storage_for(gw, profile_ref)
            now = utcnow()
            asset_id = new_id()
            object_key = original_key(workspace_id, asset_id, file.file_name, key_prefix=storage.profile.key_prefix)
            multipart_upload_id = None
            if multipart:
                # Created before the row: a row whose multipart upload failed would be unusable. If the
                # insert fails instead, the janitor aborts the orphaned multipart upload.
                with storage_errors("create multipart upload"):
                    multipart_upload_id = await storage.create_multipart(object_key, file.mime_type)
            session, event = new_session(
                sub, workspace_id, request, file, storage=storage, profile_ref=profile_ref, asset_id=asset_id,
                object_key=object_key, multipart_upload_id=multipart_upload_id, now=now,
                ttl_s=gw.settings.session_ttl_s, trace_context=trace_context, commit_on_complete=commit_on_complete,
            )  # fmt: skip
            created = outbox_row(new_event(event, source=SOURCE, time=now), trace_context)
            try:
                written = await self.writer.insert(session, created)
            except UploadError:  # over the workspace's quota: the multipart upload has no use
                if multipart_upload_id:
                    with contextlib.suppress(s3.StorageError):
                        await storage.abort_multipart(object_key, multipart_upload_id)
                raise
            if written:
                break
            # The workspace's profile changed since this gateway last saw it.
            profile_ref = await profile_store.active_ref(gw.pool, workspace_id)
        else:
            raise StorageUnavailable(
                "the workspace's storage profile is changing; retry", headers={"Retry-After": "1"}
            )
        remember_profile(self.known_profiles, workspace_id, profile_ref)
        _STARTED[session.resumable_protocol].inc()
        token = gw.tokens.mint_upload_token(
            UploadGrant(sub=sub, workspace_id=workspace_id, upload_id=session.upload_id), session.expires_at
        )
        return session, api.UploadCreated(
            upload_id=session.upload_id,
            asset_id=session.asset_id,
            provider=session.provider,
            upload_url=upload_url(gw.settings, session),
            headers={"Authorization": f"Bearer {token}"},
            expires_at=session.expires_at,
            part_size=session.part_size,
            part_count=session.part_count,
        )


async def status(gw: Gateway, session: UploadSession) -> api.UploadStatus:
    state = effective_state(session, utcnow())
    received = session.bytes_received
    if session.multipart_upload_id and session.resumable_protocol == "s3_multipart" and state in TRANSITIONS["receive"].sources:
        # Direct-to-storage parts never pass through the gateway: storage knows what arrived.
        held = await stored_parts(gw, session)
        received = (
            min(held.joined_size, session.size_bytes) if held.joined_size is not None
            else parts.bytes_held(session, held.parts)
        )
    return status_view(session, state, received)


async def abort(gw: Gateway, sub: str, session: UploadSession) -> None:
    """Idempotent: aborting an aborted or expired upload succeeds again (and retries storage)."""
    async with gw.pool.acquire() as conn, conn.transaction():
        moved = await repository.apply(conn, session.upload_id, "abort")
        if moved is not None:
            event = upload_aborted(session, sub)
            await enqueue(conn, new_event(event, source=SOURCE))
        else:
            current = await repository.get(conn, session.workspace_id, session.upload_id)
            if current is not None and current.state in ("verifying", "committed"):
                raise InvalidState(f"upload {session.upload_id} is {current.state}; it can no longer be aborted")
    if session.multipart_upload_id:
        storage = await storage_for(gw, session.storage_profile_ref)
        with storage_errors("abort multipart upload"):
            await storage.abort_multipart(session.object_key, session.multipart_upload_id)


async def presign_parts(gw: Gateway, session: UploadSession, request: api.PartsRequest) -> api.PresignedParts:
    multipart_upload_id, part_count = require_multipart(session)
    now = utcnow()
    require_open(session, now)
    check_part_numbers(request.part_numbers, part_count, "part_numbers")
    if await repository.apply(gw.pool, session.upload_id, "receive") is None:
        current = await repository.get(gw.pool, session.workspace_id, session.upload_id)
        require_open(current or session, now)
    ttl_s = parts.url_ttl_s(gw.settings.part_url_ttl_s, now, session.expires_at)
    sizes = [parts.planned_size(session, number) for number in request.part_numbers]
    storage = await storage_for(gw, session.storage_profile_ref)
    with storage_errors("presign parts"):
        presigned = [
            await storage.presign_upload_part(
                session.object_key, multipart_upload_id, number, ttl_s, content_length=size
            )
            for number, size in zip(request.part_numbers, sizes)
        ]
    return api.PresignedParts(
        parts=[
            api.PresignedPart(part_number=number, method="PUT", url=p.url, headers=p.headers, size=size)
            for number, p, size in zip(request.part_numbers, presigned, sizes)
        ],
        expires_at=now + timedelta(seconds=ttl_s),
    )


class StoredParts(msgspec.Struct, frozen=True):
    """What storage holds for a multipart session: the parts of its multipart upload, or, once
    an earlier commit joined them (and its checksum was refused), the object's size."""

    parts: list[s3.UploadedPart]
    joined_size: int | None = None


async def stored_parts(gw: Gateway, session: UploadSession) -> StoredParts:
    """The session's stored parts. A multipart upload that storage lost (NoSuchUpload: an S3
    restart, an abort behind our back) holds nothing: a fresh, empty one takes its place, so
    the client uploads its parts again instead of being stranded."""
    multipart_upload_id, _ = require_multipart(session)
    storage = await storage_for(gw, session.storage_profile_ref)
    with storage_errors("list parts"):
        try:
            return StoredParts(await storage.list_parts(session.object_key, multipart_upload_id))
        except s3.ObjectMissing:
            joined = await storage.head(session.object_key)
            if joined is not None:
                return StoredParts([], joined_size=joined.size)
        log.warning("storage lost a multipart upload; starting a fresh one",
                    extra={"upload_id": session.upload_id, "multipart_upload_id": multipart_upload_id})
        fresh = await storage.create_multipart(session.object_key, session.mime_type)
        if await repository.replace_multipart(gw.pool, session.upload_id, multipart_upload_id, fresh) is None:
            await storage.abort_multipart(session.object_key, fresh)  # another request replaced it first
            current = await repository.get(gw.pool, session.workspace_id, session.upload_id)
            require_open(current or session, utcnow())
            assert current is not None and current.multipart_upload_id is not None
            return StoredParts(await storage.list_parts(session.object_key, current.multipart_upload_id))
    return StoredParts([])


async def list_parts(gw: Gateway, session: UploadSession) -> api.PartList:
    _, part_count = require_multipart(session)
    require_open(session, utcnow())
    held = await stored_parts(gw, session)
    if held.joined_size is not None:
        raise InvalidState(
            f"upload {session.upload_id}'s parts were joined by an earlier commit; commit again or abort it"
        )
    chosen = parts.current(session, held.parts)
    parts.check_sizes(session, chosen)
    return api.PartList(
        part_size=session.part_size or 0,
        part_count=part_count,
        parts=[api.UploadedPart(part_number=p.part_number, etag=p.etag, size=p.size) for p in chosen],
    )


async def commit(gw: Gateway, sub: str, session: UploadSession, request: api.CommitRequest) -> api.CommitResult:
    given = request.sha256.lower() if request.sha256 else None
    check_given_sha256(session, given)
    if effective_state(session, utcnow()) in TRANSITIONS["commit"].sources:
        if request.parts is not None:
            _, part_count = require_multipart(session)
            check_part_numbers([p.part_number for p in request.parts], part_count, "parts")
        check_complete(session, await _received(gw, session, request))
        async with gw.pool.acquire() as conn, conn.transaction():
            await request_commit(conn, sub, session, given, request.parts)
    return await _await_verdict(gw, session)


async def _received(gw: Gateway, session: UploadSession, request: api.CommitRequest) -> int | None:
    """The bytes a commit would verify: tus counts them as they arrive; multipart parts go
    straight to storage, which is asked (only the parts the client lists, if it lists any)."""
    if session.resumable_protocol == "tus":
        return session.bytes_received
    held = await stored_parts(gw, session)
    if held.joined_size is not None:
        return held.joined_size
    etags = {p.part_number: p.etag for p in request.parts} if request.parts else None
    joined = [p for p in parts.current(session, held.parts, etags) if etags is None or p.part_number in etags]
    parts.check_sizes(session, joined)
    return parts.parts_received({p.part_number: p.size for p in joined}, None)


async def request_commit(
    conn: asyncpg.Connection, sub: str, session: UploadSession, given: str | None,
    listed: list[api.PartEtag] | None = None, *, bytes_received: int | None = None, attempt: int | None = None,
) -> bool:
    """Move the session to verifying and ask the verifier, inside the caller's transaction;
    False when it did not move (a concurrent commit won: the same verdict comes). With
    `bytes_received` the same statement records them; with `attempt` it moves only while that
    many commits were made (repository.apply)."""
    moved = await repository.apply(
        conn, session.upload_id, "commit", sha256=given, bytes_received=bytes_received, attempt=attempt
    )
    if moved is None:
        return False
    await enqueue(conn, new_event(commit_requested(moved, listed, sub), source=SOURCE))
    return True


async def _await_verdict(gw: Gateway, session: UploadSession) -> api.CommitResult:
    """Poll the row until the verdict lands or the wait runs out (then: still verifying)."""
    deadline = time.monotonic() + gw.settings.commit_wait_s
    while True:
        current = await repository.get(gw.pool, session.workspace_id, session.upload_id)
        if current is None:  # deleted under us: nothing sensible to wait for
            raise InvalidState(f"upload {session.upload_id} no longer exists")
        if commit_outcome(current, utcnow()) == "verified":
            return api.CommitResult(asset_id=current.asset_id, status="processing")
        if time.monotonic() >= deadline:
            return api.CommitResult(asset_id=current.asset_id, status="verifying")
        await asyncio.sleep(COMMIT_POLL_S)
