"""Development tokens: user JWTs as the dev stack mints them (`make token`), signed HS256 with
RAWDRIVE_JWT_SECRET. Claims are the gateway's user-token contract (its auth.py): `sub`, `exp`,
and `workspaces` mapping each workspace to a role. Production tokens come from the identity
provider; this is for the dev stack and tests."""

from __future__ import annotations

import time
from typing import Literal

import jwt

Role = Literal["viewer", "member", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "member", "admin")
DEFAULT_TTL_S = 86400


def mint(secret: str, *, workspace: str, role: Role = "admin", sub: str = "dev-user", ttl_s: int = DEFAULT_TTL_S,
         now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    claims = {"sub": sub, "iat": issued, "exp": issued + ttl_s, "workspaces": {workspace: role}}
    return jwt.encode(claims, secret, algorithm="HS256")
