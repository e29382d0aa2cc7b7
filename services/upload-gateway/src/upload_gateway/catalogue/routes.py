"""The assets routes: the catalogue read model as an API, plus soft delete and restore.

Reads come from the `assets` table (kept from events by events.py and uploads/verdicts.py). A
delete or restore changes the row and enqueues its event in one transaction (handlers.py); the
consumer later sees the gateway's own event and merges the same fact again, which changes nothing.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from rawdrive_platform.keys import ID_PATTERN
from upload_gateway.catalogue import api as asset_api
from upload_gateway.catalogue import handlers
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.catalogue.core import (
    LISTED_BY_DEFAULT,
    InvalidCursor,
    Position,
    decode_cursor,
    encode_cursor,
)
from upload_gateway.errors import FieldError, InvalidRequest, NotFound
from upload_gateway.gateway import GATEWAY, storage_for, utcnow
from upload_gateway.http.openapi import Reply, RouteTable
from upload_gateway.http.problems import from_validation_error, storage_errors
from upload_gateway.http.requests import json_response, user

ROUTES = RouteTable(tag="assets", prefix="/v1/workspaces/{workspace_id}/assets")
_ASSET_PROBLEMS = (401, 403, 404, 502, 503)


def _asset_id(request: web.Request) -> str:
    # The same rule as every path id: ids no key could hold do not exist.
    asset_id = request.match_info["asset_id"]
    if ID_PATTERN.fullmatch(asset_id) is None:
        raise NotFound(f"no such asset {asset_id!r}")
    return asset_id


@ROUTES.route(
    "GET", "", operation_id="listAssets",
    summary="List the workspace's assets, newest first, a page at a time",
    query=asset_api.AssetQuery,
    replies=(Reply(200, "A page; follow next_cursor for the next", asset_api.AssetPage),),
    problems=(*_ASSET_PROBLEMS, 422),
)
async def listing(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "read")
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
    return json_response(
        asset_api.AssetPage(
            items=[await handlers.view(gw, entry, now) for entry in shown],
            next_cursor=encode_cursor(Position(last.created_at, last.facts.asset_id)) if last else None,
        )
    )


@ROUTES.route(
    "GET", "/{asset_id}", operation_id="getAsset",
    summary="An asset with its metadata and short-lived variant URLs",
    replies=(Reply(200, "The asset", asset_api.Asset),),
    problems=_ASSET_PROBLEMS,
)
async def show(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "read")
    entry = await handlers.visible(gw, workspace_id, _asset_id(request))
    return json_response(await handlers.view(gw, entry, utcnow()))


@ROUTES.route(
    "GET", "/{asset_id}/download", operation_id="downloadAsset",
    summary="Redirect to a short-lived URL that downloads the original under its file name",
    replies=(Reply(302, "Follow Location (RFC 6266 Content-Disposition on the target)", headers=("Location",)),),
    problems=_ASSET_PROBLEMS,
)
async def download(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "read")
    description = (await handlers.visible(gw, workspace_id, _asset_id(request))).facts.description
    assert description is not None
    storage = await storage_for(gw, description.storage_profile_ref)
    with storage_errors("presign download"):
        url = await storage.presign_get(
            description.object_key, gw.settings.asset_url_ttl_s, download_name=description.file_name
        )
    # no-store: the URL expires, so a cached redirect would turn into a failed download.
    return web.Response(status=302, headers={"Location": url, "Cache-Control": "no-store"})


@ROUTES.route(
    "DELETE", "/{asset_id}", operation_id="deleteAsset",
    summary="Soft delete: hidden from listings, restorable until purge_after, then purged",
    replies=(Reply(204, "Deleted (or already deleted)"),),
    problems=_ASSET_PROBLEMS,
)
async def delete(request: web.Request) -> web.Response:
    principal, workspace_id = await user(request, request.config_dict[GATEWAY].tokens, "delete")
    await handlers.change(request.config_dict[GATEWAY], principal, workspace_id, _asset_id(request), restore=False)
    return web.Response(status=204)


@ROUTES.route(
    "POST", "/{asset_id}/restore", operation_id="restoreAsset",
    summary="Undo a soft delete within the retention period",
    replies=(Reply(200, "Restored (or was not deleted)", asset_api.Asset),),
    problems=(*_ASSET_PROBLEMS, 410),
)
async def restore(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    principal, workspace_id = await user(request, gw.tokens, "restore")
    entry = await handlers.change(gw, principal, workspace_id, _asset_id(request), restore=True)
    return json_response(await handlers.view(gw, entry, utcnow()))
