"""The storage-profile routes (admin only): authenticate, decode, call `storage_profiles`, encode."""

from __future__ import annotations

from aiohttp import web

from upload_gateway import api, storage_profiles
from upload_gateway.problems import decode_body
from upload_gateway.routes import GATEWAY, _json, _user

PATH = "/v1/workspaces/{workspace_id}/storage-profile"


async def put(request: web.Request) -> web.Response:
    principal, workspace_id = await _user(request, "manage_storage")
    body = await decode_body(request, api.PutStorageProfile)
    return _json(await storage_profiles.save(request.config_dict[GATEWAY], principal.sub, workspace_id, body))


async def get(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "manage_storage")
    return _json(await storage_profiles.show(request.config_dict[GATEWAY], workspace_id))


async def delete(request: web.Request) -> web.Response:
    _, workspace_id = await _user(request, "manage_storage")
    await storage_profiles.remove(request.config_dict[GATEWAY], workspace_id)
    return web.Response(status=204)


def mount_storage_profiles(app: web.Application) -> None:
    app.router.add_put(PATH, put)
    app.router.add_get(PATH, get)
    app.router.add_delete(PATH, delete)
