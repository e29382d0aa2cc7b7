"""What every route does with a request before its capability's handler: the ids in its path,
the caller it is, and the JSON it answers with."""

from __future__ import annotations

from typing import Annotated

import msgspec
from aiohttp import web

from rawdrive_platform.keys import ID_PATTERN
from upload_gateway.auth import Action, Principal, TokenVerifier, require
from upload_gateway.errors import NotFound

# An id in a request body: the same rule as an id in the path (path_ids).
Id = Annotated[str, msgspec.Meta(pattern=f"^{ID_PATTERN.pattern}$")]


def json_response(body: msgspec.Struct, status: int = 200) -> web.Response:
    return web.Response(status=status, body=msgspec.json.encode(body), content_type="application/json")


def path_ids(request: web.Request) -> tuple[str, str | None]:
    """The workspace and (on an upload's routes) upload ids in the URL. Ids that no key or
    subject could hold do not exist, whoever asks: 404 before any token is looked at."""
    workspace_id = request.match_info["workspace_id"]
    upload_id = request.match_info.get("upload_id")
    for value in (workspace_id, upload_id):
        if value is not None and ID_PATTERN.fullmatch(value) is None:
            raise NotFound(f"no such resource {value!r}")
    return workspace_id, upload_id


async def user(request: web.Request, tokens: TokenVerifier, action: Action) -> tuple[Principal, str]:
    """The caller's user token, allowed `action` in the URL's workspace (401, 403 or 404 if not)."""
    workspace_id, _ = path_ids(request)
    principal = await tokens.principal(request.headers.get("Authorization"))
    require(principal, workspace_id, action)
    return principal, workspace_id
