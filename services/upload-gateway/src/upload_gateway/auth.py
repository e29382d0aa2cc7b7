"""Bearer tokens for the RawDrive API, and who may do what.

User tokens: JWTs with `sub`, `exp` (both required) and `workspaces`, an object mapping each
workspace id the user may use to their role there: "viewer", "member" or "admin". Development
signs them HS256 with RAWDRIVE_JWT_SECRET; production verifies RS256 against the identity
provider's JWKS (RAWDRIVE_JWT_JWKS_URL). A user token must not carry the upload audience.

Upload tokens: minted here when a session is created, HS256 with the gateway's own secret,
audience `UPLOAD_AUDIENCE`, bound to one upload and workspace, expiring with the session. They
open that upload's data routes (tus, parts) and nothing else; a user token is never one. To
rotate the secret without breaking uploads in flight, the replaced one goes to
RAWDRIVE_UPLOAD_TOKEN_PREVIOUS_SECRETS: it still verifies, never signs, until the longest session
minted under it has expired.

Access rule: a workspace missing from the token is 404 (existence never leaks); a role below
the action's minimum is 403. A token refused is 401 with a fixed message saying what to send
instead (`token_refusal`), never PyJWT's or a codec's own text.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Literal, NamedTuple

import jwt
import msgspec

from upload_gateway.problems import Forbidden, NotFound, Unauthorized

log = logging.getLogger(__name__)

Role = Literal["viewer", "member", "admin"]
Action = Literal["read", "upload", "delete", "restore", "manage_storage"]

ROLE_RANK: dict[Role, int] = {"viewer": 0, "member": 1, "admin": 2}
# The one table of what each action needs.
MINIMUM_ROLE: dict[Action, Role] = {
    "read": "viewer",
    "upload": "member",
    "delete": "member",
    "restore": "member",
    "manage_storage": "admin",
}

UPLOAD_AUDIENCE = "rawdrive:upload"
# Clock skew tolerated between the identity provider, gateway replicas and clients.
LEEWAY_S = 30
# Verified user tokens remembered (see VerifiedTokens): how many, and for how long at most, which
# matches PyJWKClient's key-set lifespan, so a key withdrawn from the JWKS stops working as soon
# as it would without the cache.
VERIFIED_CAPACITY = 4096
VERIFIED_MAX_AGE_S = 300.0


class Principal(msgspec.Struct, frozen=True):
    """A verified user: who, and their role in each workspace they belong to."""

    sub: str
    workspaces: dict[str, Role]


class UploadGrant(msgspec.Struct, frozen=True):
    """A verified upload token: the one upload it opens, for whom."""

    sub: str
    workspace_id: str
    upload_id: str


class _UserClaims(msgspec.Struct):
    sub: str
    exp: int
    workspaces: dict[str, Role] = {}


class _UploadClaims(msgspec.Struct):
    sub: str
    exp: int
    workspace_id: str
    upload_id: str


def require(principal: Principal, workspace_id: str, action: Action) -> Role:
    role = principal.workspaces.get(workspace_id)
    if role is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    needed = MINIMUM_ROLE[action]
    if ROLE_RANK[role] < ROLE_RANK[needed]:
        raise Forbidden(f"{action} needs the {needed} role in this workspace; you are {role}")
    return role


def bearer_token(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("send Authorization: Bearer <token>")
    return token.strip()


USER_TOKEN_HINT = "a user token from your identity provider (`make token` in development)"
NOT_A_JWT = (
    "the bearer token is not a JWT: send " + USER_TOKEN_HINT + ", or on an upload's tus and parts "
    "URLs the upload token from the session's `headers`"
)
UPLOAD_TOKEN_ON_USER_ROUTE = (
    "this is an upload token: it opens only the tus and parts URLs of its own upload; this route "
    "needs " + USER_TOKEN_HINT
)


def token_refusal(error: jwt.PyJWTError, kind: Literal["user", "upload"]) -> Unauthorized:
    """What a client is told about a token PyJWT refused: which fix applies, in fixed words."""
    fresh = "get a new one" if kind == "user" else "open a new session for a new upload token"
    if isinstance(error, jwt.ExpiredSignatureError):
        detail = f"the {kind} token expired; {fresh}"
    elif isinstance(error, jwt.ImmatureSignatureError):
        detail = f"the {kind} token is not valid yet (nbf/iat in the future); check the issuer's clock"
    elif isinstance(error, jwt.InvalidAudienceError):
        detail = f"the {kind} token's audience (aud) is not this API's; send " + USER_TOKEN_HINT
    elif isinstance(error, jwt.MissingRequiredClaimError):
        detail = f"the {kind} token lacks the {error.claim!r} claim"
    elif isinstance(error, jwt.InvalidSignatureError):
        detail = f"the {kind} token's signature does not verify: it was not issued for this deployment"
    elif isinstance(error, jwt.InvalidAlgorithmError):
        detail = f"the {kind} token is signed with an algorithm this deployment does not accept"
    elif isinstance(error, jwt.PyJWKClientError):
        detail = "no signing key of the identity provider matches the token (kid); " + fresh
    else:  # DecodeError and the rest: claims that cannot be read or checked
        detail = f"the {kind} token's claims cannot be read; {fresh}"
    return Unauthorized(detail)


def is_jwt(token: str) -> bool:
    """Whether `token` has a JWT's shape: three dot-separated parts, the first a JOSE header."""
    try:
        jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False
    return True


def principal_from_claims(claims: dict[str, object]) -> Principal:
    try:
        parsed = msgspec.convert(claims, _UserClaims)
    except msgspec.ValidationError as error:
        raise Unauthorized(f"token claims are invalid: {error}") from None
    return Principal(sub=parsed.sub, workspaces=parsed.workspaces)


class _Verified(NamedTuple):
    principal: Principal
    until: float  # epoch seconds


class VerifiedTokens:
    """User tokens already verified, and their principals, until the token's `exp` (never past
    it) or `max_age_s` after verification, whichever is first.

    A client sends the same token with every request; checking its signature and parsing its
    claims each time was a tenth of the gateway's time per session created. Keyed by the whole
    token, so only a byte-identical token (same signature) is ever a hit. Failures are never
    kept. Bounded: when full, the oldest entry goes. Pure: the caller passes the clock.
    """

    def __init__(self, capacity: int = VERIFIED_CAPACITY, max_age_s: float = VERIFIED_MAX_AGE_S) -> None:
        self._capacity = capacity
        self._max_age_s = max_age_s
        self._entries: dict[str, _Verified] = {}

    def get(self, token: str, now: float) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.until:
            del self._entries[token]
            return None
        return entry.principal

    def put(self, token: str, principal: Principal, exp: float, now: float) -> None:
        until = min(exp, now + self._max_age_s)
        if until <= now:
            return
        self._entries.pop(token, None)
        while len(self._entries) >= self._capacity:
            del self._entries[next(iter(self._entries))]  # dicts keep insertion order: oldest first
        self._entries[token] = _Verified(principal, until)

    def __len__(self) -> int:
        return len(self._entries)


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


# The JOSE header of every upload token (RFC 7515/7519), encoded once.
_HS256_HEADER = _b64url(b'{"alg":"HS256","typ":"JWT"}')


def sign_hs256(claims: dict[str, object], secret: bytes) -> str:
    """An HS256 JWT of `claims`: what jwt.encode makes, without its per-call key checks (PEM
    sniffing, key-length warnings), which cost more than the signature itself."""
    signing_input = _HS256_HEADER + b"." + _b64url(msgspec.json.encode(claims))
    signature = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64url(signature)).decode("ascii")


def mint_dev_token(secret: str, *, sub: str, workspaces: dict[str, str], ttl_s: int) -> str:
    """A token for development and tests; production tokens come from the identity provider."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + ttl_s, "workspaces": workspaces}
    return jwt.encode(claims, secret, algorithm="HS256")


# HS256 secrets shorter than SHA-256's output can be guessed offline from one token (RFC 7518 3.2).
MIN_SECRET_BYTES = 32


def derived_upload_secret(user_secret: str) -> str:
    """The upload token secret when none is configured: a key of its own, derived from the user
    token secret, so an upload token's key never verifies a user token and vice versa."""
    return hmac.new(user_secret.encode(), b"rawdrive upload tokens", hashlib.sha256).hexdigest()


class TokenVerifier:
    """Checks user tokens (HS256 secret or RS256 JWKS) and mints and checks upload tokens."""

    def __init__(
        self,
        *,
        upload_secret: str,
        hs256_secret: str | None = None,
        jwks_url: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
        previous_upload_secrets: Sequence[str] = (),
    ) -> None:
        if (hs256_secret is None) == (jwks_url is None):
            raise ValueError("configure exactly one of an HS256 secret and a JWKS URL")
        if jwks_url is not None and (issuer is None or audience is None):
            # An identity provider signs tokens for many applications: only iss and aud say ours.
            raise ValueError("a JWKS URL needs the issuer and the audience (RAWDRIVE_JWT_ISSUER, RAWDRIVE_JWT_AUDIENCE)")
        for secret in (hs256_secret, upload_secret, *previous_upload_secrets):
            if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
                raise ValueError(f"a token secret must be at least {MIN_SECRET_BYTES} bytes")
        # The first signs; all verify (the others only during a rotation).
        self._upload_secrets = (upload_secret, *previous_upload_secrets)
        self._upload_key = upload_secret.encode()
        self._hs256_secret = hs256_secret
        self._jwks = jwt.PyJWKClient(jwks_url, cache_keys=True) if jwks_url else None
        self._audience = audience
        self._issuer = issuer
        self._verified = VerifiedTokens()

    async def principal(self, authorization: str | None) -> Principal:
        token = bearer_token(authorization)
        now = time.time()
        known = self._verified.get(token, now)
        if known is not None:
            return known
        if not is_jwt(token):
            raise Unauthorized(NOT_A_JWT)
        if _has_upload_audience(token):
            raise Unauthorized(UPLOAD_TOKEN_ON_USER_ROUTE)
        if self._jwks is not None:
            try:
                # PyJWKClient fetches with urllib; keep the event loop free while it does.
                key = (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
            except jwt.PyJWTError as error:
                log.warning("token signing key not found", extra={"error": str(error)})
                raise token_refusal(error, "user") from None
            algorithm = "RS256"
        else:
            key, algorithm = self._hs256_secret, "HS256"
        try:
            # With no audience configured, PyJWT refuses any token that names one, and with
            # one configured it must match: either way an upload token never passes here.
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options={"require": ["sub", "exp", *(["iss"] if self._issuer else [])]},
            )
        except jwt.PyJWTError as error:
            raise token_refusal(error, "user") from None
        principal = principal_from_claims(claims)
        self._verified.put(token, principal, float(claims["exp"]), now)
        return principal

    def mint_upload_token(self, grant: UploadGrant, expires_at: datetime) -> str:
        claims = {
            "sub": grant.sub,
            "aud": UPLOAD_AUDIENCE,
            "workspace_id": grant.workspace_id,
            "upload_id": grant.upload_id,
            "iat": int(time.time()),
            "exp": int(expires_at.timestamp()),
        }
        return sign_hs256(claims, self._upload_key)

    def upload_grant(self, authorization: str | None) -> UploadGrant:
        token = bearer_token(authorization)
        try:
            parsed = msgspec.convert(self._upload_claims(token), _UploadClaims)
        except jwt.PyJWTError as error:
            raise token_refusal(error, "upload") from None
        except msgspec.ValidationError as error:
            raise Unauthorized(f"upload token claims are invalid: {error}") from None
        return UploadGrant(sub=parsed.sub, workspace_id=parsed.workspace_id, upload_id=parsed.upload_id)

    def _upload_claims(self, token: str) -> dict[str, object]:
        """The claims, checked against each upload secret in turn; only a signature that no
        secret matches moves on to the next (an expired token fails at once)."""
        for secret in self._upload_secrets[:-1]:
            try:
                return self._decode_upload_token(token, secret)
            except jwt.InvalidSignatureError:
                continue
        return self._decode_upload_token(token, self._upload_secrets[-1])

    @staticmethod
    def _decode_upload_token(token: str, secret: str) -> dict[str, object]:
        return jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=UPLOAD_AUDIENCE,
            leeway=LEEWAY_S,
            options={"require": ["sub", "exp", "aud"]},
        )

    def is_upload_token(self, authorization: str | None) -> bool:
        """Whether the bearer token claims the upload audience (unverified: only picks the check)."""
        try:
            return _has_upload_audience(bearer_token(authorization))
        except Unauthorized:
            return False


def _has_upload_audience(token: str) -> bool:
    """Whether `token` claims the upload audience, unverified: it only picks the check or the message."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    audience = claims.get("aud")
    return audience == UPLOAD_AUDIENCE or (isinstance(audience, list) and UPLOAD_AUDIENCE in audience)
