"""What the gateway's tests share: its settings over the test servers, a user's bearer header,
a test client of the app with the test's workspace, and the request for a new upload session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp.test_utils import TestClient

from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_platform.config import Secret
from upload_gateway.auth import mint_dev_token
from upload_gateway.gateway import Gateway
from upload_gateway.settings import Settings


def settings_for(database_url: str, s3: S3Connection, jwt_secret: str, **settings: Any) -> Settings:
    """The gateway's settings over the test database, the test S3 server's bucket as the managed
    storage, and user tokens signed with `jwt_secret`; `settings` adds or overrides any other."""
    return Settings(**({
        "database_url": database_url, "s3_bucket": s3.bucket, "s3_access_key_id": s3.access_key_id,
        "s3_secret_access_key": Secret(s3.secret_access_key), "s3_endpoint": s3.endpoint, "s3_region": s3.region,
        "public_url": "http://gateway.test", "jwt_secret": Secret(jwt_secret),
    } | settings))  # fmt: skip


def bearer(jwt_secret: str, workspace: str, role: str, ttl_s: int = 600, sub: str = "alice") -> dict[str, str]:
    """The Authorization header of a user with `role` in `workspace`."""
    token = mint_dev_token(jwt_secret, sub=sub, workspaces={workspace: role}, ttl_s=ttl_s)
    return {"Authorization": f"Bearer {token}"}


@dataclass
class GatewayUnderTest:
    """A test client of a gateway app and the workspace the test's users belong to; each test
    module's harness adds what its tests need."""

    client: TestClient
    gw: Gateway
    workspace: str
    default_role: ClassVar[str] = "member"  # a user's role where a test names none

    def user(self, role: str | None = None, workspace: str | None = None, ttl_s: int = 600) -> dict[str, str]:
        """The Authorization header of a user with `role` in the test's workspace (or `workspace`),
        signed with the app's user-token secret."""
        secret = self.gw.settings.jwt_secret
        assert secret is not None
        return bearer(secret.reveal(), workspace or self.workspace, role or self.default_role, ttl_s)


def session_request(**fields: Any) -> dict[str, Any]:
    """The body that creates an upload session: a phone photo over tus, unless `fields` say otherwise."""
    return {
        "file_name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size_bytes": 1000,
        "library_id": "lib1", "resumable_protocol": "tus",
    } | fields  # fmt: skip
