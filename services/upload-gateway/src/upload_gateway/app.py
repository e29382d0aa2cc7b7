"""The gateway's aiohttp application: routes, problem+json errors, CORS and request tracing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from upload_gateway import assets
from upload_gateway.auth import TokenVerifier, derived_upload_secret
from upload_gateway.openapi import mount, mount_openapi
from upload_gateway.problems import Handler, problem_middleware
from upload_gateway.routes import GATEWAY, add_routes
from upload_gateway.settings import Settings
from upload_gateway.tracing import tracing_middleware
from upload_gateway.uploads import Gateway

# What a browser may send and read: the uploads API plus the tus protocol's headers.
CORS_ALLOW_HEADERS = (
    "Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Offset, Upload-Metadata, "
    "Upload-Checksum, Upload-Defer-Length, Upload-Concat, X-HTTP-Method-Override, X-Requested-With"
)
CORS_EXPOSE_HEADERS = (
    "Location, Upload-Offset, Upload-Length, Upload-Expires, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm"
)
CORS_ALLOW_METHODS = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
CORS_MAX_AGE_S = "86400"


def token_verifier(settings: Settings) -> TokenVerifier:
    user_secret = settings.jwt_secret.reveal() if settings.jwt_secret else None
    if settings.upload_token_secret is not None:
        upload_secret = settings.upload_token_secret.reveal()
    elif user_secret is not None:
        upload_secret = derived_upload_secret(user_secret)
    else:
        raise ValueError("set RAWDRIVE_UPLOAD_TOKEN_SECRET (or RAWDRIVE_JWT_SECRET in development)")
    previous = settings.upload_token_previous_secrets
    return TokenVerifier(
        upload_secret=upload_secret,
        hs256_secret=None if settings.jwt_jwks_url else user_secret,
        jwks_url=settings.jwt_jwks_url,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
        previous_upload_secrets=[s.strip() for s in previous.reveal().split(",") if s.strip()] if previous else (),
    )


def cors_middleware(origins: Sequence[str]) -> Middleware:
    allowed = frozenset(origins)

    def cors_headers(origin: str) -> dict[str, str]:
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin", "Access-Control-Expose-Headers": CORS_EXPOSE_HEADERS}

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not ("*" in allowed or origin in allowed):
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            # A preflight, not a tus OPTIONS (which carries no Access-Control-Request-Method).
            return web.Response(
                status=204,
                headers={
                    **cors_headers(origin),
                    "Access-Control-Allow-Methods": CORS_ALLOW_METHODS,
                    "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
                    "Access-Control-Max-Age": CORS_MAX_AGE_S,
                },
            )
        try:
            response = await handler(request)
        except web.HTTPException as error:  # a response raised by a handler still needs them
            error.headers.update(cors_headers(origin))
            raise
        response.headers.update(cors_headers(origin))
        return response

    return cors


def create_app(
    gateway: Gateway, *, mounts: Sequence[Callable[[web.Application], None]] = ()
) -> web.Application:
    """The whole HTTP API; `mounts` add more routes (the tus endpoint) before it starts."""
    # Tracing outermost: its span covers the CORS and problem answers too.
    middlewares = [tracing_middleware(gateway.pool), cors_middleware(gateway.settings.cors_origins), problem_middleware]
    app = web.Application(middlewares=middlewares)
    app[GATEWAY] = gateway
    add_routes(app)
    mount(app, assets.ROUTES)
    for mount_more in mounts:
        mount_more(app)
    mount_openapi(app)
    return app
