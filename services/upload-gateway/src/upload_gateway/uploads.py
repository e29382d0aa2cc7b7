"""What each uploads route does: check with the pure core, then perform the effects.

Every state change and the event it implies commit in one transaction through the outbox.
Storage calls happen outside transactions; where one fails after the row changed (an abort),
repeating the request repeats the storage call, and the janitor sweeps anything left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import get_args

import asyncpg
import msgspec

from rawdrive_contracts import (
    CommitRequested,
    Kind,
    PartRef,
    ResumableProtocol,
    UploadAborted,
    UploadSessionCreated,
    new_event,
)
from rawdrive_platform import storage as s3
from rawdrive_platform.keys import original_key, safe_filename
from rawdrive_platform.metrics import UPLOADS_STARTED
from rawdrive_platform.outbox import enqueue, outbox_row
from rawdrive_platform.profiles import ProfileResolver, UnknownProfile, managed_only
from rawdrive_platform.storage import MANAGED_PROFILE_ID
from rawdrive_platform.telemetry import stored_context
from upload_gateway import api, catalogue_store, parts, profile_store, repository
from upload_gateway.auth import TokenVerifier, UploadGrant
from upload_gateway.limits import check_file, essence
from upload_gateway.names import display_name
from upload_gateway.problems import (
    REJECTION_TEXTS,
    FieldError,
    InvalidRequest,
    InvalidState,
    StorageError,
    StorageUnavailable,
    UploadError,
    storage_errors,
)
from upload_gateway.quotas import QuotaLimits
from upload_gateway.sessions import (
    TRANSITIONS,
    UploadSession,
    attempts_left,
    check_complete,
    check_given_sha256,
    commit_outcome,
    effective_state,
    parts_received,
    plan_parts,
    require_open,
)
from upload_gateway.settings import Settings

log = logging.getLogger(__name__)

SOURCE = "/services/upload-gateway"
# How often a waiting commit looks at its row; the row is the truth across replicas.
COMMIT_POLL_S = 0.1
# The counter's children, looked up once rather than by label on every creation.
_STARTED = {protocol: UPLOADS_STARTED.labels(protocol=protocol) for protocol in get_args(ResumableProtocol)}
# Workspaces whose last seen active storage profile a gateway remembers (see create_session).
KNOWN_PROFILES = 10_000
# Tries to insert a session under the workspace's active profile while it keeps changing.
PROFILE_ATTEMPTS = 3


@dataclass(frozen=True)
class Gateway:
    """Everything the routes need: long-lived connections and settings."""

    settings: Settings
    pool: asyncpg.Pool
    storage: s3.Storage
    tokens: TokenVerifier
    # Resolves storage_profile_refs and publishes BYOS profiles; None: the managed bucket only.
    profiles: ProfileResolver | None = None

    # cached_property writes the instance __dict__ directly, so it works on a frozen dataclass.
    @cached_property
    def session_writer(self) -> repository.SessionWriter:
        return repository.SessionWriter(self.pool, limits=QuotaLimits.from_settings(self.settings))

    @cached_property
    def known_profiles(self) -> dict[str, str]:
        """workspace_id -> the storage_profile_ref last seen active: a guess, checked at insert."""
        return {}


def utcnow() -> datetime:
    return datetime.now(UTC)


async def storage_for(gw: Gateway, ref: str) -> s3.Storage:
    """The bucket behind a session's storage_profile_ref, or a problem when it cannot be opened."""
    resolve = gw.profiles or managed_only(gw.storage)
    try:
        with storage_errors("open storage profile"):
            return await resolve(ref)
    except UnknownProfile as error:
        log.error("storage profile cannot be resolved", extra={"ref": ref, "error": str(error)})
        raise StorageError("the workspace's storage profile cannot be opened") from None


def upload_url(settings: Settings, session: UploadSession) -> str:
    base = f"{settings.public_url.rstrip('/')}/v1/workspaces/{session.workspace_id}/uploads/{session.upload_id}"
    return f"{base}/tus" if session.resumable_protocol == "tus" else f"{base}/parts"


class NewFile(msgspec.Struct, frozen=True):
    """What a create request says about its file, checked and normalised."""

    shown: str  # the name as the client gave it, for display
    file_name: str  # safe for an object key
    kind: Kind
    mime_type: str


def check_new_file(request: api.CreateUpload) -> NewFile:
    """The file a create request describes, or UnsupportedType / FileTooLarge."""
    shown = display_name(request.file_name)
    file_name = safe_filename(shown)
    kind = check_file(file_name, request.mime_type, request.size_bytes)
    return NewFile(shown, file_name, kind, essence(request.mime_type))


def new_id() -> str:
    """A random (version 4) UUID as text, as str(uuid.uuid4()) gives, in a fifth of its time."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def new_session(
    sub: str,
    workspace_id: str,
    request: api.CreateUpload,
    file: NewFile,
    *,
    storage: s3.Storage,
    profile_ref: str,
    asset_id: str,
    object_key: str,
    multipart_upload_id: str | None,
    now: datetime,
    ttl_s: int,
    trace_context: str,
    commit_on_complete: bool = False,
) -> tuple[UploadSession, UploadSessionCreated]:
    """The session row and the event announcing it (pure)."""
    plan = plan_parts(request.size_bytes) if request.resumable_protocol == "s3_multipart" else None
    session = UploadSession(
        upload_id=new_id(),
        workspace_id=workspace_id,
        asset_id=asset_id,
        library_id=request.library_id,
        folder_id=request.folder_id,
        file_name=file.shown,
        mime_type=file.mime_type,
        kind=file.kind,
        size_bytes=request.size_bytes,
        sha256=request.sha256.lower() if request.sha256 else None,
        resumable_protocol=request.resumable_protocol,
        provider=storage.profile.provider,
        storage_profile_ref=profile_ref,
        object_key=object_key,
        multipart_upload_id=multipart_upload_id,
        part_size=plan.part_size if plan else None,
        part_count=plan.part_count if plan else None,
        state="created",
        bytes_received=0,
        rejection_reason=None,
        rejection_detail=None,
        created_by=sub,
        created_at=now,
        expires_at=now + timedelta(seconds=ttl_s),
        trace_context=trace_context,
        commit_on_complete=commit_on_complete,
    )
    event = UploadSessionCreated(
        workspace_id=workspace_id,
        upload_id=session.upload_id,
        asset_id=asset_id,
        library_id=session.library_id,
        folder_id=session.folder_id,
        file_name=session.file_name,
        mime_type=session.mime_type,
        size_bytes=session.size_bytes,
        sha256=session.sha256,
        resumable_protocol=session.resumable_protocol,
        provider=session.provider,
        storage_profile_ref=session.storage_profile_ref,
        object_key=session.object_key,
        expires_at=session.expires_at,
        created_by=sub,
    )
    return session, event


def remember_profile(known: dict[str, str], workspace_id: str, profile_ref: str) -> None:
    """Keep the workspace's last seen active profile; the oldest entry goes past KNOWN_PROFILES."""
    known.pop(workspace_id, None)
    if len(known) >= KNOWN_PROFILES:
        del known[next(iter(known))]
    known[workspace_id] = profile_ref


async def find_duplicate(gw: Gateway, workspace_id: str, request: api.CreateUpload) -> api.DuplicateFound | None:
    """The available asset of the workspace with the request's sha256, if there is one. The file
    is checked first: a request the gateway would refuse is refused whatever the workspace holds."""
    check_new_file(request)
    if request.sha256 is None:
        return None
    asset_id = await catalogue_store.available_with_sha256(gw.pool, workspace_id, request.sha256)
    return None if asset_id is None else api.DuplicateFound(duplicate_of=asset_id)


async def create_session(
    gw: Gateway, sub: str, workspace_id: str, request: api.CreateUpload, *, commit_on_complete: bool = False
) -> api.UploadCreated:
    """`commit_on_complete`: the gateway commits the session itself when its last byte arrives
    (the tus creation endpoint's sessions; see tus_session)."""
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
        profile_ref = gw.known_profiles.get(workspace_id, MANAGED_PROFILE_ID)
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
            written = await gw.session_writer.insert(session, created)
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
    remember_profile(gw.known_profiles, workspace_id, profile_ref)
    _STARTED[session.resumable_protocol].inc()
    token = gw.tokens.mint_upload_token(
        UploadGrant(sub=sub, workspace_id=workspace_id, upload_id=session.upload_id), session.expires_at
    )
    return api.UploadCreated(
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
    return api.UploadStatus(
        upload_id=session.upload_id,
        asset_id=session.asset_id,
        state=state,
        file_name=session.file_name,
        mime_type=session.mime_type,
        size_bytes=session.size_bytes,
        bytes_received=received,
        resumable_protocol=session.resumable_protocol,
        provider=session.provider,
        created_at=session.created_at,
        expires_at=session.expires_at,
        sha256=session.expected_sha256,
        part_size=session.part_size,
        part_count=session.part_count,
        rejection=api.Rejection(session.rejection_reason, REJECTION_TEXTS[session.rejection_reason])
        if session.rejection_reason
        else None,
    )


async def abort(gw: Gateway, sub: str, session: UploadSession) -> None:
    """Idempotent: aborting an aborted or expired upload succeeds again (and retries storage)."""
    async with gw.pool.acquire() as conn, conn.transaction():
        moved = await repository.apply(conn, session.upload_id, "abort")
        if moved is not None:
            event = UploadAborted(
                workspace_id=session.workspace_id,
                upload_id=session.upload_id,
                asset_id=session.asset_id,
                storage_profile_ref=session.storage_profile_ref,
                object_key=session.object_key,
                multipart_upload_id=session.multipart_upload_id,
                aborted_by=sub,
            )
            await enqueue(conn, new_event(event, source=SOURCE))
        else:
            current = await repository.get(conn, session.workspace_id, session.upload_id)
            if current is not None and current.state in ("verifying", "committed"):
                raise InvalidState(f"upload {session.upload_id} is {current.state}; it can no longer be aborted")
    if session.multipart_upload_id:
        storage = await storage_for(gw, session.storage_profile_ref)
        with storage_errors("abort multipart upload"):
            await storage.abort_multipart(session.object_key, session.multipart_upload_id)


def _multipart(session: UploadSession) -> tuple[str, int]:
    if session.resumable_protocol != "s3_multipart" or not session.multipart_upload_id or not session.part_count:
        raise InvalidState(f"upload {session.upload_id} uses {session.resumable_protocol}, not s3_multipart")
    return session.multipart_upload_id, session.part_count


def _check_part_numbers(numbers: list[int], part_count: int, field: str) -> None:
    errors = [
        FieldError(path=f"$.{field}[{index}]", message=f"part {number} is outside 1..{part_count}")
        for index, number in enumerate(numbers)
        if number > part_count
    ]
    if len(set(numbers)) != len(numbers):
        errors.append(FieldError(path=f"$.{field}", message="part numbers repeat"))
    if errors:
        raise InvalidRequest(f"this upload has {part_count} parts", errors=errors)


async def presign_parts(gw: Gateway, session: UploadSession, request: api.PartsRequest) -> api.PresignedParts:
    multipart_upload_id, part_count = _multipart(session)
    now = utcnow()
    require_open(session, now)
    _check_part_numbers(request.part_numbers, part_count, "part_numbers")
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
    multipart_upload_id, _ = _multipart(session)
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
    _, part_count = _multipart(session)
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
            _, part_count = _multipart(session)
            _check_part_numbers([p.part_number for p in request.parts], part_count, "parts")
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
    return parts_received({p.part_number: p.size for p in joined}, None)


async def request_commit(
    conn: asyncpg.Connection, sub: str, session: UploadSession, given: str | None,
    parts: list[api.PartEtag] | None = None,
) -> bool:
    """Move the session to verifying and ask the verifier, inside the caller's transaction;
    False when it did not move (a concurrent commit won: the same verdict comes)."""
    moved = await repository.apply(conn, session.upload_id, "commit", sha256=given)
    if moved is None:
        return False
    event = CommitRequested(
        workspace_id=moved.workspace_id,
        upload_id=moved.upload_id,
        asset_id=moved.asset_id,
        library_id=moved.library_id,
        folder_id=moved.folder_id,
        file_name=moved.file_name,
        mime_type=moved.mime_type,
        size_bytes=moved.size_bytes,
        resumable_protocol=moved.resumable_protocol,
        provider=moved.provider,
        storage_profile_ref=moved.storage_profile_ref,
        object_key=moved.object_key,
        expected_sha256=moved.expected_sha256,
        multipart_upload_id=moved.multipart_upload_id if moved.resumable_protocol == "s3_multipart" else None,
        parts=[PartRef(part_number=p.part_number, etag=p.etag) for p in parts] if parts is not None else None,
        requested_by=sub,
        kind=moved.kind,
        attempt=moved.commit_attempts,
        attempts_left=attempts_left(moved),
    )
    await enqueue(conn, new_event(event, source=SOURCE))
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
