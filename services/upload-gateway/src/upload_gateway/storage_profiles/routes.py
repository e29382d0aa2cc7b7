"""The storage-profile routes (admin only): authenticate, decode, call `handlers`, encode."""

from __future__ import annotations

from aiohttp import web

from upload_gateway.gateway import GATEWAY
from upload_gateway.http.openapi import Reply, RouteTable, mount
from upload_gateway.http.problems import decode_body
from upload_gateway.http.requests import json_response, user
from upload_gateway.storage_profiles import api, handlers
from upload_gateway.storage_profiles.core import WriteLimiter

ROUTES = RouteTable(tag="storage-profile", prefix="/v1/workspaces/{workspace_id}/storage-profile")
_PROBLEMS = (401, 403, 404, 503)
WRITES = web.AppKey("storage_profile_writes", WriteLimiter)


@ROUTES.route(
    "PUT", "", operation_id="putStorageProfile",
    summary="Save the workspace's storage profile after a live check of the bucket (admin)",
    body=api.PutStorageProfile,
    replies=(Reply(200, "Saved; credentials are never returned", api.StorageProfileView),),
    problems=(400, 413, 422, 429, 502, *_PROBLEMS),
)
async def put(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    principal, workspace_id = await user(request, gw.tokens, "manage_storage")
    request.config_dict[WRITES].admit_now(workspace_id)
    body = await decode_body(request, api.PutStorageProfile)
    return json_response(await handlers.save(gw, principal.sub, workspace_id, body))


@ROUTES.route(
    "GET", "", operation_id="getStorageProfile",
    summary="The workspace's storage profile, credentials masked (admin)",
    replies=(Reply(200, "The active profile", api.StorageProfileView),),
    problems=_PROBLEMS,
)
async def get(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "manage_storage")
    return json_response(await handlers.show(gw, workspace_id))


@ROUTES.route(
    "DELETE", "", operation_id="deleteStorageProfile",
    summary="Back to the managed bucket for new uploads (admin)",
    replies=(Reply(204, "Removed"),),
    problems=(429, *_PROBLEMS),
)
async def delete(request: web.Request) -> web.Response:
    gw = request.config_dict[GATEWAY]
    _, workspace_id = await user(request, gw.tokens, "manage_storage")
    request.config_dict[WRITES].admit_now(workspace_id)
    await handlers.remove(gw, workspace_id)
    return web.Response(status=204)


def mount_storage_profiles(app: web.Application) -> None:
    app[WRITES] = WriteLimiter()
    mount(app, ROUTES)
