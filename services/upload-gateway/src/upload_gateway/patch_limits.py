"""Per-user concurrent byte-sending tus requests (quotas.ConcurrencyLimit), around the tus routes.

A request sends bytes when it is a PATCH (also as a POST with X-HTTP-Method-Override) or a
creation-with-upload POST. Its sender is the token's subject: the user an upload token was
minted for, or the user token's. The place is held for the whole request, body included; a
request whose token does not verify passes on to the route, which refuses it (401) itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from upload_gateway.problems import UploadError
from upload_gateway.quotas import ConcurrencyLimit
from upload_gateway.routes import GATEWAY
from upload_gateway.tus.protocol import TusError, effective_method

PATCH_LIMIT = web.AppKey("patch_limit", ConcurrencyLimit)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sends_bytes(request: web.Request) -> bool:
    try:
        method = effective_method(request.method, request.headers.get("X-HTTP-Method-Override"))
    except TusError:  # a bad override: the route answers it
        return False
    return method == "PATCH" or (method == "POST" and request.can_read_body)


async def sender(request: web.Request) -> str | None:
    """The subject of the request's token; None when it does not verify."""
    tokens = request.config_dict[GATEWAY].tokens
    authorization = request.headers.get("Authorization")
    try:
        if tokens.is_upload_token(authorization):
            return tokens.upload_grant(authorization).sub
        return (await tokens.principal(authorization)).sub
    except UploadError:
        return None


def limit_patches(app: web.Application, routes: list[web.RouteDef]) -> list[web.RouteDef]:
    """The tus routes, with the PATCH and POST handlers holding a place of their sender's."""
    app[PATCH_LIMIT] = limit = ConcurrencyLimit(app[GATEWAY].settings.max_concurrent_patches_per_user)

    def limited(handler: Handler) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            sub = await sender(request) if sends_bytes(request) else None
            if sub is None:
                return await handler(request)
            with limit.hold(sub):
                return await handler(request)

        return handle

    return [
        web.RouteDef(r.method, r.path, limited(r.handler), r.kwargs) if r.method in ("PATCH", "POST") else r
        for r in routes
    ]
