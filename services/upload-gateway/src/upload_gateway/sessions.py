"""The upload session: its record, its state machine and its multipart part plan. No I/O.

States are the six the API shows. A verifier's rejection ends a session `aborted` with the reason
kept beside it (`rejection_reason`): the stored bytes are wrong and cannot be resumed, so the
client starts a new session, exactly as after an abort; a seventh state would add nothing a
client could act on differently.

Every event has one target state and a set of states it may start from; the repository applies
the same table in SQL (`UPDATE ... WHERE state = ANY(sources)`), so racing requests cannot both
move a session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from rawdrive_contracts import Kind, Provider, RejectionReason, ResumableProtocol
from upload_gateway.problems import Gone, InvalidState, UploadError, rejection_error

State = Literal["created", "uploading", "verifying", "committed", "aborted", "expired"]
SessionEvent = Literal["receive", "commit", "verify", "reject", "abort", "expire"]


class Transition(msgspec.Struct, frozen=True):
    sources: frozenset[State]
    target: State


_OPEN: frozenset[State] = frozenset({"created", "uploading"})

TRANSITIONS: dict[SessionEvent, Transition] = {
    "receive": Transition(_OPEN, "uploading"),  # bytes or part URLs handed out
    "commit": Transition(_OPEN, "verifying"),
    "verify": Transition(frozenset({"verifying"}), "committed"),
    "reject": Transition(frozenset({"verifying"}), "aborted"),
    "abort": Transition(_OPEN, "aborted"),
    "expire": Transition(_OPEN, "expired"),
}


def transition(state: State, event: SessionEvent) -> State:
    rule = TRANSITIONS[event]
    if state not in rule.sources:
        raise InvalidState(f"cannot {event} an upload that is {state}")
    return rule.target


class UploadSession(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    workspace_id: str
    asset_id: str
    library_id: str
    folder_id: str | None
    file_name: str  # as the client gave it, for display
    mime_type: str
    kind: Kind
    size_bytes: int
    sha256: str | None
    resumable_protocol: ResumableProtocol
    provider: Provider
    storage_profile_ref: str
    object_key: str
    multipart_upload_id: str | None
    part_size: int | None
    part_count: int | None
    state: State
    bytes_received: int
    rejection_reason: RejectionReason | None
    rejection_detail: str | None
    created_by: str
    created_at: datetime
    expires_at: datetime
    # The trace every request about this upload continues (tracing.py); None: start new ones.
    trace_context: str | None = None


def effective_state(session: UploadSession, now: datetime) -> State:
    """The stored state, except that an open session past its expiry is expired already,
    whether or not the janitor has announced it yet."""
    if session.state in TRANSITIONS["expire"].sources and now >= session.expires_at:
        return "expired"
    return session.state


def require_open(session: UploadSession, now: datetime) -> None:
    """Raise unless bytes may still be sent to this session."""
    state = effective_state(session, now)
    if state == "expired":
        raise Gone(f"upload {session.upload_id} expired at {session.expires_at.isoformat()}")
    if state not in _OPEN:
        raise InvalidState(f"upload {session.upload_id} is {state}; it accepts no more data")


CommitOutcome = Literal["verified", "verifying"]


def commit_outcome(session: UploadSession, now: datetime) -> CommitOutcome:
    """What a (repeated) commit answers for a session it has already moved past `uploading`."""
    state = effective_state(session, now)
    if state == "committed":
        return "verified"
    if state == "verifying":
        return "verifying"
    if state == "aborted" and session.rejection_reason is not None:
        raise rejected(session)
    if state == "expired":
        raise Gone(f"upload {session.upload_id} expired before it was committed")
    raise InvalidState(f"upload {session.upload_id} is {state}; it cannot be committed")


def rejected(session: UploadSession) -> UploadError:
    assert session.rejection_reason is not None
    return rejection_error(session.rejection_reason)


# -- multipart part plan (Cloudflare R2's rules are the strictest we serve) -------------------

MIB = 1024 * 1024
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB


class PartPlan(msgspec.Struct, frozen=True):
    """Every part is `part_size` bytes except the last, which holds the remainder."""

    part_size: int
    part_count: int


def plan_parts(size_bytes: int, preferred: int = DEFAULT_PART_SIZE) -> PartPlan:
    """The preferred size, grown in whole MiB when the file would otherwise need >10,000 parts."""
    if size_bytes < 1:
        raise ValueError("a multipart upload needs at least one byte")
    needed = -(-size_bytes // MAX_PARTS)
    part_size = max(preferred, MIN_PART_SIZE, -(-needed // MIB) * MIB)
    if part_size > MAX_PART_SIZE:
        raise ValueError(f"{size_bytes} bytes cannot fit in {MAX_PARTS} parts of at most 5 GiB")
    return PartPlan(part_size=part_size, part_count=-(-size_bytes // part_size))

