"""CORS: which browser origins may call the API, and the one list of headers they may send and read.

Origins come from RAWDRIVE_CORS_ORIGINS: exact origins (`https://app.example.com`), `*` for any,
or `scheme://host:*` for any port of a host (the dev stack allows `http://localhost:*` and
`http://127.0.0.1:*`, where front-end dev servers run). Every preflight (OPTIONS with
Access-Control-Request-Method) is answered 204, on every route; only an allowed origin gets the
Access-Control-* headers, so the browser, not a 405, tells a developer which origin is missing.
A tus OPTIONS (no Access-Control-Request-Method) reaches the tus routes as before.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from aiohttp.typedefs import Middleware

from upload_gateway.problems import Handler

# What a browser may send: the uploads API's and tus 1.0's request headers (tus-js-client adds
# X-Request-ID with addRequestId, X-HTTP-Method-Override with overridePatchMethod).
ALLOW_HEADERS = (
    "Authorization", "Content-Type", "Tus-Resumable", "Upload-Length", "Upload-Offset", "Upload-Metadata",
    "Upload-Checksum", "Upload-Defer-Length", "Upload-Concat", "X-HTTP-Method-Override", "X-Requested-With",
    "X-Request-ID",
)
# What a browser may read: everything tus-js-client reads (Location, Upload-Offset, Upload-Length,
# X-Request-ID), the rest of tus's answer headers, the asset id of a tus upload, and Retry-After on a 503.
EXPOSE_HEADERS = (
    "Location", "Upload-Offset", "Upload-Length", "Upload-Expires", "Upload-Metadata", "Upload-Defer-Length",
    "Upload-Concat", "Tus-Resumable", "Tus-Version", "Tus-Extension", "Tus-Max-Size", "Tus-Checksum-Algorithm",
    "Upload-Asset-Id", "Retry-After", "X-Request-ID",
)
ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
MAX_AGE_S = 86400


def origin_allowed(origin: str, allowed: Iterable[str]) -> bool:
    """Whether `origin` is one of `allowed`: an exact origin, `*`, or `scheme://host:*` (any port,
    or none)."""
    for pattern in allowed:
        if pattern in ("*", origin):
            return True
        if pattern.endswith(":*"):
            host = pattern[:-2]
            port = origin.removeprefix(host + ":") if origin.startswith(host + ":") else None
            if origin == host or (port is not None and port.isdigit()):
                return True
    return False


def response_headers(origin: str) -> dict[str, str]:
    return {
        "Access-Control-Allow-Origin": origin,
        "Vary": "Origin",
        "Access-Control-Expose-Headers": ", ".join(EXPOSE_HEADERS),
    }


def preflight_headers(origin: str) -> dict[str, str]:
    return response_headers(origin) | {
        "Access-Control-Allow-Methods": ", ".join(ALLOW_METHODS),
        "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
        "Access-Control-Max-Age": str(MAX_AGE_S),
    }


def cors_middleware(origins: Iterable[str]) -> Middleware:
    allowed = tuple(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None:
            return await handler(request)
        ok = origin_allowed(origin, allowed)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=preflight_headers(origin) if ok else {"Vary": "Origin"})
        if not ok:
            return await handler(request)
        try:
            response = await handler(request)
        except web.HTTPException as error:  # a response raised by a handler still needs them
            error.headers.update(response_headers(origin))
            raise
        response.headers.update(response_headers(origin))
        return response

    return cors
