"""The janitor's event handlers: one table per durable consumer, from event type to handler.

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
)
from rawdrive_platform import keys
from rawdrive_platform.bus import Poison
from rawdrive_platform.consumers import Handler, HandlerTable
from rawdrive_platform.outbox import UnitOfWork
from rawdrive_platform.profiles import StorageResolver, UnknownProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dependencies:
    uow: UnitOfWork
    storage_for: StorageResolver
    dry_run: bool = False


def recorded(*records: Callable[[asyncpg.Connection, CloudEvent[Any]], Awaitable[None]]) -> Handler[Dependencies]:
    """A handler that only records the event in the janitor's tables (tracking.py): every
    record in one unit of work."""

    async def handle(event: CloudEvent[Any], deps: Dependencies) -> None:
        async with deps.uow.begin() as tx:
            for record in records:
                await record(tx.conn, event)

    return handle


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
    async with deps.uow.begin() as tx:
        await tracking.close_session(tx.conn, event)
    log.info(
        "upload bytes removed" if not deps.dry_run else "upload bytes would be removed (dry run)",
        extra={"upload_id": data.upload_id, "reason": reason, "objects": sum(r.multipart_upload_id is None for r in removals),
               "bytes": sum(r.size_bytes for r in removals), "multipart_uploads": sum(r.multipart_upload_id is not None for r in removals)},
    )


UPLOAD_HANDLERS = HandlerTable[Dependencies](
    durable="janitor-uploads",
    stream=UPLOADS_STREAM,
    handlers={
        UploadSessionCreated: recorded(tracking.track_session),
        CommitRequested: recorded(tracking.commit_requested),
        # The bytes stay (the client may commit again): the session is open, so it expires again.
        CommitRefused: recorded(tracking.commit_refused),
        UploadVerified: recorded(tracking.track_asset, tracking.close_session),
        UploadRejected: upload_discarded,
        UploadAborted: upload_discarded,
        # The janitor's own announcement coming back: its bytes were removed before it was sent.
        UploadExpired: recorded(tracking.close_session),
    },
)
ASSET_HANDLERS = HandlerTable[Dependencies](
    durable="janitor-assets",
    stream=ASSETS_STREAM,
    handlers={
        AssetCreated: recorded(tracking.track_asset),
        AssetDeleted: recorded(tracking.asset_deleted),
        AssetRestored: recorded(tracking.asset_restored),
    },
)
# What the provisioning Job creates (janitor.handlers:UPLOAD_EVENTS, janitor.handlers:ASSET_EVENTS).
UPLOAD_EVENTS = UPLOAD_HANDLERS.spec
ASSET_EVENTS = ASSET_HANDLERS.spec
