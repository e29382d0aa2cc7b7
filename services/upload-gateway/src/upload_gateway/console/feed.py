"""The console's live feed, pure part: which asset events a workspace's page follows, what each
becomes on the page, and how it is framed as a server-sent event.

The feed reads RAWDRIVE_ASSETS with an ordered (ephemeral, in-memory, no acks) consumer filtered to
the workspace's subjects of the events the catalogue follows (its `ASSET_EVENTS`, so the page shows
every change a listing will); each message becomes one SSE message whose `id` is its stream
sequence, so a client that reconnects with `Last-Event-ID` resumes right after it. An item is built
from the event alone, not from the catalogue (which follows the same events through its own
durable consumer and may not have merged this one yet).
"""

from __future__ import annotations

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
    Kind,
    ProcessingFailureReason,
    subject_filter,
)
from upload_gateway.catalogue.core import ASSET_EVENTS
from upload_gateway.errors import FieldError, InvalidRequest

# A comment line this often keeps proxies from closing an idle stream, and finds a client gone.
KEEPALIVE_S = 15.0
# SSE ids are stream sequences: JetStream's are unsigned 64-bit.
MAX_SEQUENCE = 2**64 - 1

Change = Literal["created", "failed", "deleted", "restored", "purged"]


class FeedItem(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """What the page learns from one event: the asset and what happened to it."""

    change: Change
    asset_id: str
    # created:
    file_name: str | None = None
    library_id: str | None = None
    kind: Kind | None = None
    thumb_url: str | None = None  # presigned, valid for RAWDRIVE_ASSET_URL_TTL_S
    # failed:
    reason: ProcessingFailureReason | None = None
    detail: str | None = None
    # deleted:
    purge_after: datetime | None = None


def subjects(workspace_id: str) -> list[str]:
    """The consumer's filters: the followed event types in this workspace only."""
    return [subject_filter(event_type.spec, workspace_id) for event_type in ASSET_EVENTS]


def thumb_key(event: CloudEvent[Any]) -> tuple[str, str] | None:
    """(storage_profile_ref, key) of the thumbnail to presign for this event, if it has one."""
    data = event.data
    if isinstance(data, AssetCreated) and data.variants.thumb is not None:
        return data.storage_profile_ref, data.variants.thumb.key
    return None


def feed_item(event: CloudEvent[Any], thumb_url: str | None) -> FeedItem | None:
    """The page's item for an event, or None for an event the page does not show."""
    data = event.data
    if isinstance(data, AssetCreated):
        return FeedItem(
            change="created", asset_id=data.asset_id, file_name=data.file_name,
            library_id=data.library_id, kind=data.kind, thumb_url=thumb_url,
        )  # fmt: skip
    if isinstance(data, AssetProcessingFailed):
        return FeedItem(change="failed", asset_id=data.asset_id, reason=data.reason, detail=data.detail)
    if isinstance(data, AssetDeleted):
        return FeedItem(change="deleted", asset_id=data.asset_id, purge_after=data.purge_after)
    if isinstance(data, AssetRestored):
        return FeedItem(change="restored", asset_id=data.asset_id)
    if isinstance(data, AssetPurged):
        return FeedItem(change="purged", asset_id=data.asset_id)
    return None


def resume_after(last_event_id: str | None) -> int | None:
    """The stream sequence a reconnecting client last saw (its Last-Event-ID), or None: from now."""
    if last_event_id is None or not last_event_id.strip():
        return None
    value = last_event_id.strip()
    if not value.isascii() or not value.isdigit() or not 0 < int(value) <= MAX_SEQUENCE:
        message = "Last-Event-ID must be the id of an event this feed sent (a positive integer)"
        raise InvalidRequest(message, errors=[FieldError(path="Last-Event-ID", message=message)])
    return int(value)


def sse_message(sequence: int, item: FeedItem) -> bytes:
    # msgspec's JSON has no raw newline, so the data is one `data:` line.
    return b"id: %d\nevent: asset\ndata: %s\n\n" % (sequence, msgspec.json.encode(item))


# Sent first: the consumer exists, so nothing published from now on is missed.
SSE_OPEN = b": feed open\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"
