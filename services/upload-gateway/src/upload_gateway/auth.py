"""Bearer tokens for the RawDrive API: HS256 JWTs signed with RAWDRIVE_JWT_SECRET.

Claims: `sub` (user id), `iat`, `exp` and `workspaces`, an object mapping each workspace id the
user may use to their role there: "viewer", "member" or "admin".
"""

import time

import jwt


def mint_dev_token(secret: str, *, sub: str, workspaces: dict[str, str], ttl_s: int) -> str:
    """A token for development and tests; production tokens come from the identity provider."""
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + ttl_s, "workspaces": workspaces}
    return jwt.encode(claims, secret, algorithm="HS256")
