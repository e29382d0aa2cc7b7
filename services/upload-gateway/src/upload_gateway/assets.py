"""The assets routes: the catalogue read model as an API, plus soft delete and restore.

Reads come from the `assets` table (kept from events by asset_events.py and verdicts.py). A
delete or restore changes the row and enqueues its event in one transaction; the consumer later
sees the gateway's own event and merges the same fact again, which changes nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from aiohttp import web

from rawdrive_contracts import AssetDeleted, AssetRestored, Variant, new_event
from rawdrive_platform.keys import ID_PATTERN
from rawdrive_platform.outbox import enqueue
from upload_gateway import asset_api, catalogue_store
from upload_gateway.auth import Principal
from upload_gateway.catalogue import (
    LISTED_BY_DEFAULT,
    AssetFacts,
    Deletion,
    Entry,
    InvalidCursor,
    Position,
    decode_cursor,
    encode_cursor,
    merge,
    restore_outcome,
    status_of,
)
from upload_gateway.openapi import Operation, Reply, Route
from upload_gateway.problems import (
    PROCESSING_FAILURE_TEXTS,
    FieldError,
    InvalidRequest,
    NotFound,
    RetentionOver,
    from_validation_error,
    storage_errors,
)
from upload_gateway.routes import GATEWAY, _json, _user
from upload_gateway.uploads import SOURCE, Gateway, storage_for, utcnow

PREFIX = "/v1/workspaces/{workspace_id}/assets"


def _asset_id(request: web.Request) -> str:
    # The same rule as every path id: ids no key could hold do not exist.
    asset_id = request.match_info["asset_id"]
    if ID_PATTERN.fullmatch(asset_id) is None:
        raise NotFound(f"no such asset {asset_id!r}")
    return asset_id


async def _visible(gw: Gateway, workspace_id: str, asset_id: str) -> Entry:
    entry = await catalogue_store.get(gw.pool, workspace_id, asset_id)
    if entry is None:
        raise NotFound(f"no asset {asset_id!r} in this workspace")
    return entry


async def _view(gw: Gateway, entry: Entry, now: datetime) -> asset_api.Asset:
    """The response for one entry, with fresh presigned URLs for its variants."""
    facts = entry.facts
    status = status_of(facts)
    description = facts.description
    assert description is not None and status not in (None, "purged")  # only visible entries get here
    ttl_s = gw.settings.asset_url_ttl_s
    processed, deletion = facts.processed, facts.deletion
    variants = None
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
    return asset_api.Asset(
        asset_id=facts.asset_id,
        status=status,
        file_name=description.file_name,
        mime_type=description.mime_type,
        size_bytes=description.size_bytes,
        sha256=description.sha256,
        library_id=description.library_id,
        folder_id=description.folder_id,
        provider=description.provider,
        created_at=entry.created_at,
        kind=processed.kind if processed else None,
        width=processed.width if processed else None,
        height=processed.height if processed else None,
        duration_s=processed.duration_s if processed else None,
        taken_at=processed.taken_at if processed else None,
        metadata=processed.metadata if processed else None,
        variants=variants,
        urls_expire_at=now + timedelta(seconds=ttl_s) if variants is not None else None,
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


# -- routes ----------------------------------------------------------------------------------------


async def show(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "read")
    gw = request.config_dict[GATEWAY]
    entry = await _visible(gw, workspace_id, _asset_id(request))
    return _json(await _view(gw, entry, utcnow()))


async def listing(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "read")
    gw = request.config_dict[GATEWAY]
    try:
        query = msgspec.convert(dict(request.query), asset_api.AssetQuery, strict=False)
    except msgspec.ValidationError as error:
        raise from_validation_error(error) from None
    try:
        after = decode_cursor(query.cursor) if query.cursor else None
    except InvalidCursor as error:
        raise InvalidRequest(str(error), errors=[FieldError(path="$.cursor", message=str(error))]) from None
    # One row more than asked tells whether another page follows.
    entries = await catalogue_store.page(
        gw.pool, workspace_id,
        statuses=(query.status,) if query.status else LISTED_BY_DEFAULT,
        library_id=query.library_id, folder_id=query.folder_id, after=after, limit=query.limit + 1,
    )
    shown = entries[: query.limit]
    last = shown[-1] if shown and len(entries) > query.limit else None
    now = utcnow()
    return _json(
        asset_api.AssetPage(
            items=[await _view(gw, entry, now) for entry in shown],
            next_cursor=encode_cursor(Position(last.created_at, last.facts.asset_id)) if last else None,
        )
    )


async def download(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "read")
    gw = request.config_dict[GATEWAY]
    description = (await _visible(gw, workspace_id, _asset_id(request))).facts.description
    assert description is not None
    storage = await storage_for(gw, description.storage_profile_ref)
    with storage_errors("presign download"):
        url = await storage.presign_get(
            description.object_key, gw.settings.asset_url_ttl_s, download_name=description.file_name
        )
    # no-store: the URL expires, so a cached redirect would turn into a failed download.
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


async def delete(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "delete")
    await _change(request.config_dict[GATEWAY], principal, workspace_id, _asset_id(request), restore=False)
    return web.Response(status=204)


async def restore(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "restore")
    gw = request.config_dict[GATEWAY]
    entry = await _change(gw, principal, workspace_id, _asset_id(request), restore=True)
    return _json(await _view(gw, entry, utcnow()))


async def _change(gw: Gateway, principal: Principal, workspace_id: str, asset_id: str, *, restore: bool) -> Entry:
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


_ASSET_PROBLEMS = (401, 403, 404, 502, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        Operation(
            method="GET", path=PREFIX, operation_id="listAssets", tag="assets",
            summary="List the workspace's assets, newest first, a page at a time",
            query=asset_api.AssetQuery,
            replies=(Reply(200, "A page; follow next_cursor for the next", asset_api.AssetPage),),
            problems=(*_ASSET_PROBLEMS, 422),
        ),
        listing,
    ),
    Route(
        Operation(
            method="GET", path=PREFIX + "/{asset_id}", operation_id="getAsset", tag="assets",
            summary="An asset with its metadata and short-lived variant URLs",
            replies=(Reply(200, "The asset", asset_api.Asset),),
            problems=_ASSET_PROBLEMS,
        ),
        show,
    ),
    Route(
        Operation(
            method="GET", path=PREFIX + "/{asset_id}/download", operation_id="downloadAsset", tag="assets",
            summary="Redirect to a short-lived URL that downloads the original under its file name",
            replies=(Reply(302, "Follow Location (RFC 6266 Content-Disposition on the target)", headers=("Location",)),),
            problems=_ASSET_PROBLEMS,
        ),
        download,
    ),
    Route(
        Operation(
            method="DELETE", path=PREFIX + "/{asset_id}", operation_id="deleteAsset", tag="assets",
            summary="Soft delete: hidden from listings, restorable until purge_after, then purged",
            replies=(Reply(204, "Deleted (or already deleted)"),),
            problems=_ASSET_PROBLEMS,
        ),
        delete,
    ),
    Route(
        Operation(
            method="POST", path=PREFIX + "/{asset_id}/restore", operation_id="restoreAsset", tag="assets",
            summary="Undo a soft delete within the retention period",
            replies=(Reply(200, "Restored (or was not deleted)", asset_api.Asset),),
            problems=(*_ASSET_PROBLEMS, 410),
        ),
        restore,
    ),
)
