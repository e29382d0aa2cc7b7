"""The gateway's RAWDRIVE_* settings (see rawdrive_platform.config)."""

from typing import Annotated

import msgspec

from rawdrive_platform.config import CommonSettings, Port, Secret

# An origin has no path: `https://app.example.com`, `http://localhost:3000`; see cors.origin_allowed.
CorsOrigin = Annotated[str, msgspec.Meta(pattern=r"^(\*|https?://[^/\s*:]+(:([0-9]{1,5}|\*))?)$")]


class Settings(CommonSettings, kw_only=True, frozen=True):
    http_port: Port = 8080
    public_url: str = "http://127.0.0.1:8080"
    # User tokens: HS256 with jwt_secret (development) or RS256 from jwt_jwks_url (production).
    jwt_secret: Secret | None = None
    jwt_jwks_url: str | None = None
    jwt_audience: str | None = None  # required with a JWKS URL
    jwt_issuer: str | None = None  # required with a JWKS URL
    # Signs the gateway's own upload tokens; by default a key derived from jwt_secret, required
    # with a JWKS URL.
    upload_token_secret: Secret | None = None
    # During a rotation: the replaced secrets, comma-separated; they verify upload tokens, never sign.
    upload_token_previous_secrets: Secret | None = None
    session_ttl_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 24 * 3600)] = 24 * 3600
    commit_wait_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 10.0
    # Lifetime of the download and variant URLs the assets API hands out.
    asset_url_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] = 15 * 60
    # Browser origins allowed by CORS: exact origins, "*" for any, "scheme://host:*" for any port.
    cors_origins: tuple[CorsOrigin, ...] = ()
    # The upload console at /console (console/); RAWDRIVE_CONSOLE_DEV_TOKEN also hands the page an
    # admin token for workspace dev, so only the dev stack sets it (refused with a JWKS URL).
    console: bool = False
    console_dev_token: bool = False
    # Quotas and lifetimes (uploads/parts.py, uploads/quotas.py). Part URLs: 15 minutes, at most an hour.
    part_url_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=3600)] = 15 * 60
    # Per workspace, counted in PostgreSQL across replicas: open sessions and their declared bytes.
    max_open_uploads_per_workspace: Annotated[int, msgspec.Meta(ge=1)] = 5000
    max_bytes_in_flight_per_workspace: Annotated[int, msgspec.Meta(ge=1)] = 100 * 1024**3
    # Per user and per replica, in memory: tus requests sending bytes at once.
    max_concurrent_patches_per_user: Annotated[int, msgspec.Meta(ge=1)] = 8
    # A tus request body that sends nothing for this long is cut; its bytes are kept (resumable).
    tus_idle_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 60.0
    # A JSON request body (session, parts, commit, storage profile: a few KiB, at most 1 MiB) must be
    # in within this long, or the request is 408 and its connection closed.
    json_body_timeout_s: Annotated[float, msgspec.Meta(ge=1, le=600)] = 30.0
    # The PostgreSQL pool: its size, and how long a request waits for a connection before it is
    # answered 503 with Retry-After (no request holds one while a body streams).
    db_pool_max_size: Annotated[int, msgspec.Meta(ge=2, le=500)] = 10
    db_pool_acquire_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0
