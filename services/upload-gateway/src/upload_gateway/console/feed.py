"""The console's live feed, pure part: which asset events a workspace's page follows, what each
becomes on the page, and how it is framed as a server-sent event.

The feed reads RAWDRIVE_ASSETS with an ephemeral push consumer (no acks, named by us: `feed-<hex>`,
so the gateway's NATS user needs no unnamed consumer create) filtered to the workspace's subjects
of the events the catalogue follows (its `ASSET_EVENTS`, so the page shows every change a listing
will); each message becomes one SSE message whose `id` is its stream sequence, so a client that
reconnects with `Last-Event-ID` resumes right after it. The same holds inside one feed: when a
delivery does not follow the last one (a message lost, the consumer gone) the feed replaces its
consumer with a new one starting right after the last stream sequence it delivered (`Position`). An item is built
from the event alone, not from the catalogue (which follows the same events through its own
durable consumer and may not have merged this one yet).
"""

from __future__ import annotations

import uuid
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

# The consumer's idle heartbeat; with none (and no message) for HEARTBEAT_MISSED_S the consumer is
# taken for lost (deleted, its server gone) and replaced.
HEARTBEAT_S = 5.0
HEARTBEAT_MISSED_S = 3 * HEARTBEAT_S
# A consumer whose gateway vanished without deleting it is removed by the server after this long.
INACTIVE_THRESHOLD_S = 60.0

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


def consumer_name() -> str:
    """A fresh name for each consumer a feed creates (a replaced one may still exist)."""
    return f"feed-{uuid.uuid4().hex}"


class Position(msgspec.Struct, frozen=True):
    """Where a feed's current consumer stands: the stream sequence of the last event the feed
    delivered (or the one it started after), and the consumer sequence of the last delivery of this
    consumer (0: none yet)."""

    stream: int
    consumer: int = 0

    def next_start(self) -> int:
        """The stream sequence a replacing consumer starts at: nothing delivered twice or skipped."""
        return self.stream + 1


def delivered(position: Position, stream_sequence: int, consumer_sequence: int) -> Position | None:
    """The position after a delivery, or None when it does not follow the last one (a gap: a
    message was lost on the way, or the consumer is not the one we think)."""
    if consumer_sequence != position.consumer + 1:
        return None
    return Position(stream=stream_sequence, consumer=consumer_sequence)


def heartbeat_in_order(position: Position, last_consumer_sequence: int) -> bool:
    """An idle heartbeat names the consumer sequence the server last delivered: ours, or we lost
    the tail."""
    return last_consumer_sequence == position.consumer


def sse_message(sequence: int, item: FeedItem) -> bytes:
    # msgspec's JSON has no raw newline, so the data is one `data:` line.
    return b"id: %d\nevent: asset\ndata: %s\n\n" % (sequence, msgspec.json.encode(item))


# Sent first: the consumer exists, so nothing published from now on is missed.
SSE_OPEN = b": feed open\n\n"
SSE_KEEPALIVE = b": keep-alive\n\n"
