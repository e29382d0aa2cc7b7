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
