"""The storage-profile routes (admin only): authenticate, decode, call `storage_profiles`, encode."""

from __future__ import annotations

from aiohttp import web

from upload_gateway import api, storage_profiles
from upload_gateway.openapi import Operation, Reply, Route, mount
from upload_gateway.problems import decode_body
from upload_gateway.routes import GATEWAY, _json, _user

PATH = "/v1/workspaces/{workspace_id}/storage-profile"
WRITES = web.AppKey("storage_profile_writes", storage_profiles.WriteLimiter)


async def put(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "manage_storage")
    request.config_dict[WRITES].admit_now(workspace_id)
    body = await decode_body(request, api.PutStorageProfile)
    return _json(await storage_profiles.save(request.config_dict[GATEWAY], principal.sub, workspace_id, body))


async def get(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "manage_storage")
    return _json(await storage_profiles.show(request.config_dict[GATEWAY], workspace_id))


async def delete(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "manage_storage")
    request.config_dict[WRITES].admit_now(workspace_id)
    await storage_profiles.remove(request.config_dict[GATEWAY], workspace_id)
    return web.Response(status=204)


_PROBLEMS = (401, 403, 404, 503)

ROUTES: tuple[Route, ...] = (
    Route(
        Operation(
            method="PUT", path=PATH, operation_id="putStorageProfile", tag="storage-profile",
            summary="Save the workspace's storage profile after a live check of the bucket (admin)",
            body=api.PutStorageProfile,
            replies=(Reply(200, "Saved; credentials are never returned", api.StorageProfileView),),
            problems=(400, 413, 422, 429, 502, *_PROBLEMS),
        ),
        put,
    ),
    Route(
        Operation(
            method="GET", path=PATH, operation_id="getStorageProfile", tag="storage-profile",
            summary="The workspace's storage profile, credentials masked (admin)",
            replies=(Reply(200, "The active profile", api.StorageProfileView),),
            problems=_PROBLEMS,
        ),
        get,
    ),
    Route(
        Operation(
            method="DELETE", path=PATH, operation_id="deleteStorageProfile", tag="storage-profile",
            summary="Back to the managed bucket for new uploads (admin)",
            replies=(Reply(204, "Removed"),),
            problems=(429, *_PROBLEMS),
        ),
        delete,
    ),
)


def mount_storage_profiles(app: web.Application) -> None:
    app[WRITES] = storage_profiles.WriteLimiter()
    mount(app, ROUTES)
