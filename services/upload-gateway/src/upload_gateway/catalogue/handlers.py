"""What the assets routes do: read an entry and present it with fresh URLs, or change it and
announce the change in one transaction (the pure rules are in core.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rawdrive_contracts import AssetDeleted, AssetRestored, Variant, new_event
from rawdrive_contracts.facts import carry
from rawdrive_platform.outbox import enqueue
from upload_gateway.auth import Principal
from upload_gateway.catalogue import api as asset_api
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.catalogue.core import (
    PROCESSING_FAILURE_TEXTS,
    AssetFacts,
    Deletion,
    Entry,
    media_facts,
    merge,
    restore_outcome,
    status_of,
)
from upload_gateway.errors import NotFound, RetentionOver
from upload_gateway.gateway import SOURCE, Gateway, storage_for, utcnow
from upload_gateway.http.problems import storage_errors


async def visible(gw: Gateway, workspace_id: str, asset_id: str) -> Entry:
    entry = await catalogue_store.get(gw.pool, workspace_id, asset_id)
    if entry is None:
        raise NotFound(f"no asset {asset_id!r} in this workspace")
    return entry


async def view(gw: Gateway, entry: Entry, now: datetime) -> asset_api.Asset:
    """The response for one entry, with fresh presigned URLs for its variants."""
    facts = entry.facts
    status = status_of(facts)
    description = facts.description
    assert description is not None and status not in (None, "purged")  # only visible entries get here
    ttl_s = gw.settings.asset_url_ttl_s
    processed, deletion = facts.processed, facts.deletion
    media: dict[str, Any] = {}  # once processed: the media facts, the stored variants as links
    if processed is not None:
        storage = await storage_for(gw, description.storage_profile_ref)

        async def link(variant: Variant | None) -> asset_api.VariantLink | None:
            if variant is None:
                return None
            with storage_errors("presign variant"):
                url = await storage.presign_get(variant.key, ttl_s)
            return asset_api.VariantLink(
                url=url, width=variant.width, height=variant.height,
                mime_type=variant.mime_type, size_bytes=variant.size_bytes,
            )

        stored = processed.variants
        variants = asset_api.VariantLinks(
            thumb=await link(stored.thumb), medium=await link(stored.medium), large=await link(stored.large),
            motion=await link(stored.motion), motion_poster=await link(stored.motion_poster),
        )
        media = media_facts(processed) | {"variants": variants, "urls_expire_at": now + timedelta(seconds=ttl_s)}
    return carry(
        description,  # what the file is: name, type, size, digest, library, folder, provider
        asset_api.Asset,
        asset_id=facts.asset_id,
        status=status,
        created_at=entry.created_at,
        **media,
        failure=asset_api.ProcessingFailure(
            facts.failure.reason, PROCESSING_FAILURE_TEXTS[facts.failure.reason], facts.failure.cause
        )
        if status == "failed" and facts.failure
        else None,
        paired_with=entry.paired_with,
        duplicate_of=entry.duplicate_of,
        deleted_at=deletion.at if status == "deleted" and deletion else None,
        purge_after=deletion.purge_after if status == "deleted" and deletion else None,
    )


async def change(gw: Gateway, principal: Principal, workspace_id: str, asset_id: str, *, restore: bool) -> Entry:
    """Soft delete or restore under the row lock, with its event in the same transaction.
    Deleting a deleted asset, or restoring one that is not deleted, changes nothing (204/200)."""
    now = utcnow()
    async with gw.pool.acquire() as conn, conn.transaction():
        entry = await catalogue_store.lock(conn, workspace_id, asset_id)
        if entry is None or status_of(entry.facts) in (None, "purged"):
            raise NotFound(f"no asset {asset_id!r} in this workspace")
        facts = entry.facts
        if restore:
            outcome = restore_outcome(facts, now)
            if outcome == "retention_over":
                assert facts.deletion is not None
                raise RetentionOver(
                    f"asset {asset_id} was deleted on {facts.deletion.at.isoformat()}; the retention period "
                    f"ended {facts.deletion.purge_after.isoformat()}, so it can no longer be restored"
                )
            if outcome == "not_deleted":
                return entry
            change = AssetFacts(asset_id=asset_id, workspace_id=workspace_id, restored_at=now)
            event = AssetRestored(workspace_id=workspace_id, asset_id=asset_id, restored_by=principal.sub, restored_at=now)
        else:
            if status_of(facts) == "deleted":
                return entry
            purge_after = now + timedelta(days=gw.settings.retention_days)
            assert facts.description is not None
            change = AssetFacts(
                asset_id=asset_id, workspace_id=workspace_id,
                deletion=Deletion(at=now, purge_after=purge_after, by=principal.sub),
            )
            event = AssetDeleted(
                workspace_id=workspace_id, asset_id=asset_id, deleted_by=principal.sub, deleted_at=now,
                purge_after=purge_after, storage_profile_ref=facts.description.storage_profile_ref,
            )
        merged = merge(facts, change)
        await catalogue_store.save(conn, merged)
        await enqueue(conn, new_event(event, source=SOURCE, time=now))
    return Entry(
        created_at=entry.created_at, facts=merged, paired_with=entry.paired_with, duplicate_of=entry.duplicate_of
    )
