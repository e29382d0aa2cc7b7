"""The upload session: its record, its state machine and its multipart part plan. No I/O.

States are the six the API shows. A verifier's rejection ends a session `aborted` with the reason
kept beside it (`rejection_reason`): the stored bytes are wrong and cannot be resumed, so the
client starts a new session, exactly as after an abort; a seventh state would add nothing a
client could act on differently.

A caller's mistake at commit leaves the upload as it was. A commit before every byte arrived
is refused without moving the session (`check_complete`). A commit whose SHA-256 the verifier
finds wrong is `refuse`d back to `uploading`, its reason kept beside it, and the client may
commit again, up to COMMIT_ATTEMPTS commits in all; the last one's mismatch is a rejection.

Every event has one target state and a set of states it may start from; the repository applies
the same table in SQL (`UPDATE ... WHERE state = ANY(sources)`), so racing requests cannot both
move a session.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import Literal

import msgspec

from rawdrive_contracts import Kind, Provider, RejectionReason, ResumableProtocol
from upload_gateway.problems import (
    REJECTION_TEXTS,
    Aborted,
    ChecksumMismatch,
    Gone,
    InvalidState,
    ProblemFacts,
    Rejected,
    UploadError,
    UploadIncomplete,
    rejection_error,
)

State = Literal["created", "uploading", "verifying", "committed", "aborted", "expired"]
SessionEvent = Literal["receive", "commit", "verify", "reject", "refuse", "abort", "expire"]

# Commits a client may make of one upload; every one hashes the whole object once more, so it
# is bounded. After the last one's checksum mismatch the upload is rejected and its bytes go.
COMMIT_ATTEMPTS = 3


class Transition(msgspec.Struct, frozen=True):
    sources: frozenset[State]
    target: State


_OPEN: frozenset[State] = frozenset({"created", "uploading"})

TRANSITIONS: dict[SessionEvent, Transition] = {
    "receive": Transition(_OPEN, "uploading"),  # bytes or part URLs handed out
    "commit": Transition(_OPEN, "verifying"),
    "verify": Transition(frozenset({"verifying"}), "committed"),
    "reject": Transition(frozenset({"verifying"}), "aborted"),
    "refuse": Transition(frozenset({"verifying"}), "uploading"),  # the client may commit again
    "abort": Transition(_OPEN, "aborted"),
    "expire": Transition(_OPEN, "expired"),
}


def transition(state: State, event: SessionEvent) -> State:
    rule = TRANSITIONS[event]
    if state not in rule.sources:
        raise InvalidState(f"cannot {event} an upload that is {state}")
    return rule.target


# The events that set the session's rejection (to the verifier's reason, or none: a new
# commit, an abort, an expiry). The others leave it as it is.
SETS_REJECTION: frozenset[SessionEvent] = frozenset({"commit", "reject", "refuse", "abort", "expire"})


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
    # Commits made so far (see COMMIT_ATTEMPTS), and the SHA-256 given with the latest one;
    # `sha256` is only ever the one declared at creation.
    commit_attempts: int = 0
    commit_sha256: str | None = None
    # Opened by the tus creation endpoint: the gateway commits it when the last byte arrives.
    commit_on_complete: bool = False

    @property
    def expected_sha256(self) -> str | None:
        """What the stored bytes must hash to: declared at creation, else given at commit."""
        return self.sha256 or self.commit_sha256


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


def gone(session: UploadSession, now: datetime) -> UploadError | None:
    """The 410 for a session whose bytes are gone, saying why (expired, aborted or rejected);
    None while it is not."""
    state = effective_state(session, now)
    if state == "expired":
        return Gone(f"upload {session.upload_id} expired at {session.expires_at.isoformat()}")
    if state == "aborted" and session.rejection_reason is not None:
        return Rejected(f"upload {session.upload_id} was rejected ({session.rejection_reason}): "
                        f"{session.rejection_detail or 'no detail'}")
    if state == "aborted":
        return Aborted(f"upload {session.upload_id} was aborted")
    return None


CommitOutcome = Literal["verified", "verifying"]


def commit_outcome(session: UploadSession, now: datetime) -> CommitOutcome:
    """What a (repeated) commit answers for a session it has already moved past `uploading`,
    or that its latest commit left `uploading` again (refused)."""
    state = effective_state(session, now)
    if state == "committed":
        return "verified"
    if state == "verifying":
        return "verifying"
    if state in _OPEN and session.rejection_reason is not None:
        raise refused(session)
    if state == "aborted" and session.rejection_reason is not None:
        raise rejected(session)
    if state == "expired":
        raise Gone(f"upload {session.upload_id} expired before it was committed")
    raise InvalidState(f"upload {session.upload_id} is {state}; it cannot be committed")


def rejected(session: UploadSession) -> UploadError:
    assert session.rejection_reason is not None
    return rejection_error(session.rejection_reason)


def attempts_left(session: UploadSession) -> int:
    return max(0, COMMIT_ATTEMPTS - session.commit_attempts)


def refused(session: UploadSession) -> UploadError:
    """The latest commit failed its checksum; the upload is kept for another commit."""
    assert session.rejection_reason is not None
    left = attempts_left(session)
    against = "declared when the upload was created" if session.sha256 else "given at commit"
    detail = (
        f"{REJECTION_TEXTS[session.rejection_reason]} (the SHA-256 {against}); the upload is kept: "
        + (f"commit again with the right sha256 ({left} attempt{'s' if left != 1 else ''} left) or abort it"
           if left else "abort it")
    )
    facts = ProblemFacts(declared_sha256=session.sha256, given_sha256=session.commit_sha256, attempts_left=left)
    return rejection_error(session.rejection_reason, detail, facts)


def check_given_sha256(session: UploadSession, given: str | None) -> None:
    """A SHA-256 given at commit must agree with one declared at creation; say which is which."""
    if given and session.sha256 and given != session.sha256:
        raise ChecksumMismatch(
            f"the sha256 given at commit ({given}) differs from the one declared when the upload was "
            f"created ({session.sha256}); commit with the declared one, or none",
            facts=ProblemFacts(declared_sha256=session.sha256, given_sha256=given),
        )


def check_complete(session: UploadSession, bytes_received: int | None) -> None:
    """Refuse a commit before every byte arrived; None: storage cannot tell (the verifier will)."""
    if bytes_received is not None and bytes_received < session.size_bytes:
        raise UploadIncomplete(bytes_received, session.size_bytes)


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


def parts_received(sizes: dict[int, int | None], listed: Collection[int] | None) -> int | None:
    """Bytes in the stored parts (part number -> size) a commit would join: those the client
    lists, or all without a list; None when storage did not report a size."""
    chosen = [size for number, size in sizes.items() if listed is None or number in listed]
    return None if None in chosen else sum(size or 0 for size in chosen)


def plan_parts(size_bytes: int, preferred: int = DEFAULT_PART_SIZE) -> PartPlan:
    """The preferred size, grown in whole MiB when the file would otherwise need >10,000 parts."""
    if size_bytes < 1:
        raise ValueError("a multipart upload needs at least one byte")
    needed = -(-size_bytes // MAX_PARTS)
    part_size = max(preferred, MIN_PART_SIZE, -(-needed // MIB) * MIB)
    if part_size > MAX_PART_SIZE:
        raise ValueError(f"{size_bytes} bytes cannot fit in {MAX_PARTS} parts of at most 5 GiB")
    return PartPlan(part_size=part_size, part_count=-(-size_bytes // part_size))

