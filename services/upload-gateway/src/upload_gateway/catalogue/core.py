"""The asset catalogue's pure core: what the events say about an asset, and the status it follows.

The read model keeps one record of facts per asset, one field per kind of fact (described,
processed, failed, deleted, restored, purged), never a status that events overwrite. Every event
becomes a record holding only its own fact, and `merge` combines two records field by field:
each field keeps the later of two facts by the event's own time, so merging is associative,
commutative and idempotent. Redelivered or reordered events therefore leave the same record,
and `status_of` derives the status from that record alone. No I/O here.

Cursors for listings are here too: keyset positions on (created_at, asset_id), opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Any, Literal

import msgspec

from rawdrive_contracts import (
    AssetCreated,
    AssetDeleted,
    AssetProcessingFailed,
    AssetPurged,
    AssetRestored,
    CloudEvent,
    ProcessingFailureReason,
    Provider,
    UploadVerified,
)
from rawdrive_contracts.events import Timestamp
from rawdrive_contracts.facts import carry

Status = Literal["processing", "available", "failed", "deleted"]
# A purged asset is gone for clients; the row stays so late events cannot bring it back.
RecordStatus = Literal["processing", "available", "failed", "deleted", "purged"]
STATUSES: tuple[Status, ...] = ("processing", "available", "failed", "deleted")
# What a listing shows when no status is asked for: deleted assets are in the trash.
LISTED_BY_DEFAULT: tuple[Status, ...] = ("processing", "available", "failed")


class Description(msgspec.Struct, frozen=True, kw_only=True):
    """What the file is and where it lives; the verifier's word beats the processor's copy."""

    upload_id: str
    library_id: str
    folder_id: str | None
    file_name: str
    mime_type: str
    size_bytes: int
    sha256: str
    object_key: str
    storage_profile_ref: str
    provider: Provider
    # 2: from upload.verified, 1: from asset.created. Equal ranks come from the same producer
    # and so say the same; the rank keeps the merge order-free when they would not.
    rank: int


# What asset.created says about the media: the processed fact holds these, when it was said
# (`at`), and nothing else; the assets API shows them.
MEDIA_FACTS = ("kind", "width", "height", "duration_s", "taken_at", "metadata", "variants")


def _as_declared(struct: type[msgspec.Struct], names: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    """The fields `names`, typed and defaulted as `struct` declares them, in msgspec.defstruct's form."""
    declared = {field.name: field for field in msgspec.structs.fields(struct)}
    return [
        (field.name, field.type, msgspec.field(default=field.default, default_factory=field.default_factory))
        for field in (declared[name] for name in names)
    ]


# Declared by the event, so a media fact is typed (and defaulted) in one place, asset.created.
Processed = msgspec.defstruct(
    "Processed", [("at", datetime), *_as_declared(AssetCreated, MEDIA_FACTS)], frozen=True, kw_only=True,
    module=__name__,
)


def media_facts(source: Any) -> dict[str, Any]:
    """The media facts of an asset.created or a Processed, by name."""
    return {name: getattr(source, name) for name in MEDIA_FACTS}


class Failure(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    reason: ProcessingFailureReason
    detail: str = ""
    cause: str | None = None  # processing_failed's finer cause (too_many_pixels, corrupt_content)


class Deletion(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    purge_after: datetime
    by: str


class AssetFacts(msgspec.Struct, frozen=True, kw_only=True):
    asset_id: str
    workspace_id: str
    description: Description | None = None
    verified_at: datetime | None = None
    processed: Processed | None = None
    failure: Failure | None = None
    deletion: Deletion | None = None  # the latest deletion
    restored_at: datetime | None = None  # the latest restore
    purged_at: datetime | None = None


class Entry(msgspec.Struct, frozen=True):
    """A catalogue row: the facts, and when the catalogue first heard of the asset (the key
    listings sort by, fixed at insertion so a page boundary never moves)."""

    created_at: datetime
    facts: AssetFacts
    # The other half of a Live Photo (same content identifier, the other kind), found on read.
    paired_with: str | None = None
    # The earliest earlier available asset with the same bytes (verified SHA-256), found on read.
    duplicate_of: str | None = None


def content_identifier(facts: AssetFacts) -> str | None:
    """What links a Live Photo's still and video: set by the processor from MakerNote / QuickTime."""
    return facts.processed.metadata.content_identifier if facts.processed is not None else None


class MergeConflict(ValueError):
    """Two records about one asset id disagree on its workspace: never the same asset."""


def _later(a: Any, b: Any, key: str = "at") -> Any:
    if a is None or b is None:
        return a if b is None else b
    ka, kb = getattr(a, key), getattr(b, key)
    if ka != kb:
        return a if ka > kb else b
    # Same time: the same event seen twice, unless a producer lies; pick one canonically.
    return a if msgspec.json.encode(a) >= msgspec.json.encode(b) else b


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return a if b is None else b if a is None else max(a, b)


def merge(a: AssetFacts, b: AssetFacts) -> AssetFacts:
    if (a.asset_id, a.workspace_id) != (b.asset_id, b.workspace_id):
        raise MergeConflict(f"asset {b.asset_id} of {b.workspace_id} is recorded under {a.workspace_id}")
    return AssetFacts(
        asset_id=a.asset_id,
        workspace_id=a.workspace_id,
        description=_later(a.description, b.description, key="rank"),
        verified_at=_latest(a.verified_at, b.verified_at),
        processed=_later(a.processed, b.processed),
        failure=_later(a.failure, b.failure),
        deletion=_later(a.deletion, b.deletion),
        restored_at=_latest(a.restored_at, b.restored_at),
        purged_at=_latest(a.purged_at, b.purged_at),
    )


def status_of(facts: AssetFacts) -> RecordStatus | None:
    """None while nothing says what the file is (only a deletion or a failure arrived so far)."""
    if facts.purged_at is not None:
        return "purged"
    if facts.description is None:
        return None
    deletion = facts.deletion
    if deletion is not None and (facts.restored_at is None or facts.restored_at < deletion.at):
        return "deleted"
    processed, failure = facts.processed, facts.failure
    # A failure older than the success is stale (a retry succeeded); a newer one stands.
    if processed is not None and (failure is None or processed.at >= failure.at):
        return "available"
    if failure is not None:
        return "failed"
    return "processing"


# The asset events the catalogue follows on RAWDRIVE_ASSETS: `facts_of` states a fact for each.
ASSET_EVENTS = (AssetCreated, AssetProcessingFailed, AssetDeleted, AssetRestored, AssetPurged)


def facts_of(event: CloudEvent[Any]) -> AssetFacts:
    """The one fact an event states. Facts without a time of their own take the envelope's."""
    data = event.data
    base = {"asset_id": data.asset_id, "workspace_id": data.workspace_id}
    match data:
        case UploadVerified():
            return AssetFacts(**base, description=_description(data, rank=2), verified_at=data.verified_at)
        case AssetCreated():
            processed = Processed(at=event.time, **media_facts(data))
            return AssetFacts(**base, description=_description(data, rank=1), processed=processed)
        case AssetProcessingFailed():
            failure = Failure(at=event.time, reason=data.reason, detail=data.detail, cause=data.cause)
            return AssetFacts(**base, failure=failure)
        case AssetDeleted():
            deletion = Deletion(at=data.deleted_at, purge_after=data.purge_after, by=data.deleted_by)
            return AssetFacts(**base, deletion=deletion)
        case AssetRestored():
            return AssetFacts(**base, restored_at=data.restored_at)
        case AssetPurged():
            return AssetFacts(**base, purged_at=data.purged_at)
    raise TypeError(f"the catalogue does not follow {event.type}")


def _description(data: UploadVerified | AssetCreated, *, rank: int) -> Description:
    return carry(data, Description, rank=rank)


# What clients are told about a failed processing: one fixed text per reason. The processor's
# own details (the content's first bytes, a decoder's stderr) stay in events and the logs.
PROCESSING_FAILURE_TEXTS: dict[ProcessingFailureReason, str] = {
    "type_mismatch": "the content is not of the type its name and mime type declare",
    "unsupported_content": "the file's content is of a kind that is not processed",
    "decode_failed": "the file could not be decoded",
    "timeout": "decoding the file took too long",
    "storage_error": "the stored file could not be read or its variants written",
    "internal": "processing failed",
}


# -- what a client may do ------------------------------------------------------------------------

RestoreOutcome = Literal["restore", "not_deleted", "retention_over"]


def restore_outcome(facts: AssetFacts, now: datetime) -> RestoreOutcome:
    """Restoring is possible until the promised purge time; one that is not deleted stays as is."""
    if status_of(facts) != "deleted":
        return "not_deleted"
    assert facts.deletion is not None
    return "restore" if now < facts.deletion.purge_after else "retention_over"


# -- listing cursors -----------------------------------------------------------------------------


class Position(msgspec.Struct, frozen=True, array_like=True):
    """Where a page ended: the last row's sort key. Rows are listed newest first."""

    created_at: Timestamp
    asset_id: str


class InvalidCursor(ValueError):
    pass


def encode_cursor(position: Position) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(position)).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> Position:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        return msgspec.json.decode(raw, type=Position)
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError):
        raise InvalidCursor("the cursor is not one this API handed out") from None
