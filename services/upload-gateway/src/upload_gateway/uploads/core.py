"""The uploads API's pure core: what a request makes of a session, its answers and its events.

The state machine is in sessions.py, the part rules (plan, sizes, URL lifetime) in parts.py;
this module builds on them what the handlers (handlers.py) then store and send. No I/O here.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import msgspec

from rawdrive_contracts import CommitRequested, Kind, PartRef, UploadAborted, UploadSessionCreated
from rawdrive_contracts.facts import carry
from rawdrive_platform import storage as s3
from rawdrive_platform.keys import safe_filename
from upload_gateway.errors import FieldError, InvalidRequest, InvalidState
from upload_gateway.settings import Settings
from upload_gateway.uploads import api
from upload_gateway.uploads.limits import check_file, essence
from upload_gateway.uploads.names import display_name
from upload_gateway.uploads.parts import MAX_PARTS, PartPlan, plan_parts
from upload_gateway.uploads.sessions import REJECTION_TEXTS, State, UploadSession, attempts_left

# Workspaces whose last seen active storage profile a gateway remembers (see SessionOpener).
KNOWN_PROFILES = 10_000


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
    """The file a create request describes, or UnsupportedType / FileTooLarge (or InvalidRequest
    for a part size that cannot carry it)."""
    shown = display_name(request.file_name)
    file_name = safe_filename(shown)
    kind = check_file(file_name, request.mime_type, request.size_bytes)
    part_plan(request)
    return NewFile(shown, file_name, kind, essence(request.mime_type))


def part_plan(request: api.CreateUpload) -> PartPlan | None:
    """An S3 multipart session's parts: of the client's `part_size` when it gave one, else the
    gateway's plan; None for tus. Raises InvalidRequest for a part size it cannot use."""
    def refuse(message: str) -> InvalidRequest:
        return InvalidRequest(message, errors=[FieldError(path="$.part_size", message=message)])

    if request.resumable_protocol != "s3_multipart":
        if request.part_size is not None:
            raise refuse("part_size is for s3_multipart sessions; tus sends the bytes in chunks of any size")
        return None
    if request.part_size is None:
        return plan_parts(request.size_bytes)
    part_count = -(-request.size_bytes // request.part_size)
    if part_count > MAX_PARTS:
        raise refuse(f"{request.size_bytes} bytes in parts of {request.part_size} make {part_count} parts; "
                     f"at most {MAX_PARTS} are allowed")  # fmt: skip
    return PartPlan(part_size=request.part_size, part_count=part_count)


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
    upload_id: str | None = None,
) -> tuple[UploadSession, UploadSessionCreated]:
    """The session row and the event announcing it (pure). `commit_on_complete`: the gateway
    commits the session itself when its last byte arrives (the tus creation endpoint's);
    `upload_id`: the id an upload had before it was a session (tus creation-defer-length), else new."""
    plan = part_plan(request)
    session = carry(
        request,  # what the client declared as it is: library, folder, size, protocol
        UploadSession,
        upload_id=upload_id or new_id(),
        workspace_id=workspace_id,
        asset_id=asset_id,
        # The name, type and kind as check_new_file normalised them, the digest in lower case.
        file_name=file.shown,
        mime_type=file.mime_type,
        kind=file.kind,
        sha256=request.sha256.lower() if request.sha256 else None,
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
    event = carry(session, UploadSessionCreated, expires_at=session.expires_at, created_by=sub)
    return session, event


def remember_profile(known: dict[str, str], workspace_id: str, profile_ref: str) -> None:
    """Keep the workspace's last seen active profile; the oldest entry goes past KNOWN_PROFILES."""
    known.pop(workspace_id, None)
    if len(known) >= KNOWN_PROFILES:
        del known[next(iter(known))]
    known[workspace_id] = profile_ref


def require_multipart(session: UploadSession) -> tuple[str, int]:
    if session.resumable_protocol != "s3_multipart" or not session.multipart_upload_id or not session.part_count:
        raise InvalidState(f"upload {session.upload_id} uses {session.resumable_protocol}, not s3_multipart")
    return session.multipart_upload_id, session.part_count


def check_part_numbers(numbers: list[int], part_count: int, field: str) -> None:
    errors = [
        FieldError(path=f"$.{field}[{index}]", message=f"part {number} is outside 1..{part_count}")
        for index, number in enumerate(numbers)
        if number > part_count
    ]
    if len(set(numbers)) != len(numbers):
        errors.append(FieldError(path=f"$.{field}", message="part numbers repeat"))
    if errors:
        raise InvalidRequest(f"this upload has {part_count} parts", errors=errors)


def status_view(session: UploadSession, state: State, received: int) -> api.UploadStatus:
    """The session as GET shows it, in `state` with `received` bytes stored."""
    return carry(
        session,  # the upload's own facts: ids, name, type, size, protocol, provider
        api.UploadStatus,
        state=state,
        bytes_received=received,
        created_at=session.created_at,
        expires_at=session.expires_at,
        sha256=session.expected_sha256,
        part_size=session.part_size,
        part_count=session.part_count,
        rejection=api.Rejection(session.rejection_reason, REJECTION_TEXTS[session.rejection_reason])
        if session.rejection_reason
        else None,
    )


def upload_aborted(session: UploadSession, sub: str) -> UploadAborted:
    return carry(session, UploadAborted, aborted_by=sub)


def commit_requested(moved: UploadSession, parts: list[api.PartEtag] | None, sub: str) -> CommitRequested:
    """The event asking the verifier to check the upload `moved` to verifying by this commit,
    joining the `parts` the client listed (None: every stored part, or not multipart)."""
    return carry(
        moved,
        CommitRequested,
        expected_sha256=moved.expected_sha256,
        multipart_upload_id=moved.multipart_upload_id if moved.resumable_protocol == "s3_multipart" else None,
        parts=[PartRef(part_number=p.part_number, etag=p.etag) for p in parts] if parts is not None else None,
        requested_by=sub,
        attempt=moved.commit_attempts,
        attempts_left=attempts_left(moved),
    )
