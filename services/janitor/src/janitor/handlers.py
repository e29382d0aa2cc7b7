"""The janitor's event handlers: one table from event type to handler.

Upload events keep its record of open sessions; rejected and aborted uploads have their bytes
removed. Asset events keep its record of live assets and of soft deletions awaiting purge.
Every handler is idempotent: a redelivery repeats nothing that matters.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from janitor import tracking
from janitor.cleanup import erase_prefix
from rawdrive_contracts import (
    ASSETS_STREAM,
    UPLOADS_STREAM,
    AssetCreated,
    AssetDeleted,
    AssetRestored,
    CloudEvent,
    CommitRefused,
    CommitRequested,
    UploadAborted,
    UploadExpired,
    UploadRejected,
    UploadSessionCreated,
    UploadVerified,
    subject_filter,
)
from rawdrive_platform import keys
from rawdrive_platform.bus import ConsumerSpec, Poison
from rawdrive_platform.profiles import StorageResolver, UnknownProfile

log = logging.getLogger(__name__)

UPLOAD_EVENTS = ConsumerSpec(
    durable="janitor-uploads",
    stream=UPLOADS_STREAM.name,
    filter_subjects=tuple(
        subject_filter(cls.spec)
        for cls in (UploadSessionCreated, CommitRequested, CommitRefused, *tracking.CLOSING_EVENTS)
    ),
)
ASSET_EVENTS = ConsumerSpec(
    durable="janitor-assets",
    stream=ASSETS_STREAM.name,
    filter_subjects=tuple(subject_filter(cls.spec) for cls in (AssetCreated, AssetDeleted, AssetRestored)),
)


@dataclass(frozen=True)
class Dependencies:
    pool: asyncpg.Pool
    storage_for: StorageResolver
    dry_run: bool = False


async def session_created(event: CloudEvent[UploadSessionCreated], deps: Dependencies) -> None:
    await tracking.track_session(deps.pool, event)


async def commit_requested(event: CloudEvent[CommitRequested], deps: Dependencies) -> None:
    await tracking.commit_requested(deps.pool, event)


async def commit_refused(event: CloudEvent[CommitRefused], deps: Dependencies) -> None:
    # The bytes stay (the client may commit again): the session is open, so it expires again.
    await tracking.commit_refused(deps.pool, event)


async def upload_verified(event: CloudEvent[UploadVerified], deps: Dependencies) -> None:
    await tracking.track_asset(deps.pool, event)
    await tracking.close_session(deps.pool, event)


async def upload_discarded(event: CloudEvent[UploadRejected | UploadAborted], deps: Dependencies) -> None:
    """Rejected or aborted: the stored bytes go (parts, partial objects, a completed object),
    then the session closes. A crash between the two redelivers the event, which repeats both."""
    data = event.data
    try:
        storage = await deps.storage_for(data.storage_profile_ref)
    except UnknownProfile as exc:
        raise Poison(str(exc)) from exc
    prefix = keys.asset_prefix(data.workspace_id, data.asset_id, storage.profile.key_prefix)
    reason = "rejected_upload" if isinstance(data, UploadRejected) else "aborted_upload"
    removals = await erase_prefix(storage, prefix, reason, dry_run=deps.dry_run)
    await tracking.close_session(deps.pool, event)
    log.info(
        "upload bytes removed" if not deps.dry_run else "upload bytes would be removed (dry run)",
        extra={"upload_id": data.upload_id, "reason": reason, "objects": sum(r.multipart_upload_id is None for r in removals),
               "bytes": sum(r.size_bytes for r in removals), "multipart_uploads": sum(r.multipart_upload_id is not None for r in removals)},
    )


async def upload_expired(event: CloudEvent[UploadExpired], deps: Dependencies) -> None:
    # The janitor's own announcement coming back: its bytes were removed before it was sent.
    await tracking.close_session(deps.pool, event)


async def asset_created(event: CloudEvent[AssetCreated], deps: Dependencies) -> None:
    await tracking.track_asset(deps.pool, event)


async def asset_deleted(event: CloudEvent[AssetDeleted], deps: Dependencies) -> None:
    await tracking.asset_deleted(deps.pool, event)


async def asset_restored(event: CloudEvent[AssetRestored], deps: Dependencies) -> None:
    await tracking.asset_restored(deps.pool, event)


HANDLERS: dict[type, Callable[[CloudEvent[Any], Dependencies], Awaitable[None]]] = {
    UploadSessionCreated: session_created,
    CommitRequested: commit_requested,
    CommitRefused: commit_refused,
    UploadVerified: upload_verified,
    UploadRejected: upload_discarded,
    UploadAborted: upload_discarded,
    UploadExpired: upload_expired,
    AssetCreated: asset_created,
    AssetDeleted: asset_deleted,
    AssetRestored: asset_restored,
}


async def dispatch(event: CloudEvent[Any], deps: Dependencies) -> None:
    handler = HANDLERS.get(type(event.data))
    if handler is None:
        raise Poison(f"the janitor does not handle {event.type}")
    await handler(event, deps)
