"""The gateway's aiohttp application: routes, problem+json errors, CORS, request tracing and the access log."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from aiohttp import web

from upload_gateway.auth import TokenVerifier, derived_upload_secret
from upload_gateway.catalogue import routes as catalogue_routes
from upload_gateway.console.docs import mount_docs
from upload_gateway.gateway import GATEWAY, Gateway
from upload_gateway.http.access import access_middleware
from upload_gateway.http.cors import cors_middleware
from upload_gateway.http.openapi import mount, mount_openapi
from upload_gateway.http.problems import JSON_BODY_TIMEOUT, problem_middleware
from upload_gateway.http.tracing import tracing_middleware
from upload_gateway.settings import Settings
from upload_gateway.uploads.limits import accepted_files
from upload_gateway.uploads.routes import mount_uploads, upload_trace


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


def create_app(
    gateway: Gateway, *, mounts: Sequence[Callable[[web.Application], None]] = ()
) -> web.Application:
    """The whole HTTP API and its documentation (/openapi.json, /docs); `mounts` add more routes
    (the tus endpoint) before it starts."""
    # The access log outermost: it times and counts everything. Then tracing: its span covers the
    # CORS and problem answers too.
    middlewares = [
        access_middleware,
        tracing_middleware(upload_trace),
        cors_middleware(gateway.settings.cors_origins),
        problem_middleware,
    ]
    app = web.Application(middlewares=middlewares)
    app[GATEWAY] = gateway
    app[JSON_BODY_TIMEOUT] = gateway.settings.json_body_timeout_s
    mount_uploads(app)
    mount(app, catalogue_routes.ROUTES)
    for mount_more in mounts:
        mount_more(app)
    mount_docs(app)
    mount_openapi(app, description=accepted_files())
    return app
