"""The pure core of the verifier: which parts to complete, and what the stored object proves.

No I/O here. The handlers feed in what storage reported (parts, size, computed digest) and
perform whatever these functions decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from rawdrive_contracts import (
    CloudEvent,
    CommitRefused,
    CommitRequested,
    PartRef,
    RejectionReason,
    UploadRejected,
    UploadVerified,
    new_event,
)
from rawdrive_platform.storage import UploadedPart

SOURCE = "commit-verifier"


class Verified(msgspec.Struct, frozen=True, kw_only=True):
    size: int
    sha256: str


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    reason: RejectionReason
    detail: str
    actual_size: int | None = None
    actual_sha256: str | None = None


Verdict = Verified | Rejected

# Rejections a client can correct without sending the bytes again: the SHA-256 (or a part's
# ETag) it gave was wrong, while the stored bytes are untouched. Sizes and missing bytes are
# refused by the gateway before a commit gets here.
CORRECTABLE: frozenset[RejectionReason] = frozenset({"checksum_mismatch"})


def is_refusal(commit: CommitRequested, verdict: Verdict) -> bool:
    """Whether this rejection only refuses the attempt (the client may commit again)."""
    return isinstance(verdict, Rejected) and verdict.reason in CORRECTABLE and commit.attempts_left > 0


def precheck(declared_size: int, actual_size: int | None) -> Rejected | None:
    """What can be decided before reading a byte: the object must exist with the declared size.

    A size mismatch is rejected without hashing: those bytes are deleted anyway, and a client
    must not be able to make us read an object far larger than it declared.
    """
    if actual_size is None:
        return Rejected(reason="missing_object", detail="no object at the upload's key")
    if actual_size != declared_size:
        return Rejected(
            reason="size_mismatch",
            detail=f"declared {declared_size} bytes, stored {actual_size}",
            actual_size=actual_size,
        )
    return None


def decide(
    declared_size: int, actual_size: int | None, expected_sha256: str | None, computed_sha256: str
) -> Verdict:
    """The verdict once the object was hashed; without an expected checksum, size alone decides."""
    rejection = precheck(declared_size, actual_size)
    if rejection is not None:
        return rejection
    assert actual_size is not None  # precheck rejected None
    if expected_sha256 is not None and expected_sha256.lower() != computed_sha256.lower():
        return Rejected(
            reason="checksum_mismatch",
            detail="the stored bytes' SHA-256 differs from the client's",
            actual_size=actual_size,
            actual_sha256=computed_sha256,
        )
    return Verified(size=actual_size, sha256=computed_sha256)


def _etag(value: str) -> str:
    # Clients copy ETags with or without quotes, in any case; S3 compares the hex value.
    return value.strip().strip('"').lower()


def plan_completion(
    stored: Sequence[UploadedPart], listed: Sequence[PartRef] | None
) -> list[UploadedPart] | Rejected:
    """The parts to join, in order, or why the upload cannot be completed.

    Without a client list, every stored part is joined. With one, the client's list defines
    the object (as in S3's CompleteMultipartUpload): stored parts it leaves out are dropped;
    a listed part that is not stored means bytes are missing (`missing_object`); a listed part
    whose ETag differs means the stored bytes are not the ones the client sent
    (`checksum_mismatch`). The size and SHA-256 checks still follow either way.
    """
    by_number = {part.part_number: part for part in stored}
    if not listed:
        if not by_number:
            return Rejected(reason="missing_object", detail="the multipart upload has no parts")
        return [by_number[n] for n in sorted(by_number)]
    plan: dict[int, UploadedPart] = {}
    for ref in listed:
        part = by_number.get(ref.part_number)
        if part is None:
            return Rejected(reason="missing_object", detail=f"part {ref.part_number} was never uploaded")
        if _etag(part.etag) != _etag(ref.etag):
            return Rejected(
                reason="checksum_mismatch",
                detail=f"part {ref.part_number}: stored ETag differs from the client's",
            )
        plan[ref.part_number] = part
    return [plan[n] for n in sorted(plan)]


def verdict_event(
    commit: CommitRequested, verdict: Verdict, *, duplicate_of: str | None, now: datetime
) -> CloudEvent[Any]:
    """The event announcing the verdict; its id derives from the upload (and, for a refusal, the
    attempt), so a retry reuses it."""
    if isinstance(verdict, Verified):
        data: UploadVerified | UploadRejected | CommitRefused = UploadVerified(
            workspace_id=commit.workspace_id,
            upload_id=commit.upload_id,
            asset_id=commit.asset_id,
            library_id=commit.library_id,
            folder_id=commit.folder_id,
            file_name=commit.file_name,
            mime_type=commit.mime_type,
            size_bytes=verdict.size,
            sha256=verdict.sha256,
            provider=commit.provider,
            storage_profile_ref=commit.storage_profile_ref,
            object_key=commit.object_key,
            duplicate_of=duplicate_of,
            verified_at=now,
        )
    elif is_refusal(commit, verdict):
        data = CommitRefused(
            workspace_id=commit.workspace_id,
            upload_id=commit.upload_id,
            asset_id=commit.asset_id,
            attempt=commit.attempt,
            attempts_left=commit.attempts_left,
            reason=verdict.reason,
            detail=verdict.detail,
            storage_profile_ref=commit.storage_profile_ref,
            object_key=commit.object_key,
            expected_size_bytes=commit.size_bytes,
            actual_size_bytes=verdict.actual_size,
            expected_sha256=commit.expected_sha256,
            actual_sha256=verdict.actual_sha256,
        )
    else:
        data = UploadRejected(
            workspace_id=commit.workspace_id,
            upload_id=commit.upload_id,
            asset_id=commit.asset_id,
            reason=verdict.reason,
            detail=verdict.detail,
            storage_profile_ref=commit.storage_profile_ref,
            object_key=commit.object_key,
            # The janitor aborts a multipart upload that was never completed.
            multipart_upload_id=commit.multipart_upload_id,
            expected_size_bytes=commit.size_bytes,
            actual_size_bytes=verdict.actual_size,
            expected_sha256=commit.expected_sha256,
            actual_sha256=verdict.actual_sha256,
        )
    return new_event(data, source=SOURCE, time=now)
