"""A whole gateway (every route, the tus endpoint, /metrics) on a real port over real PostgreSQL
and S3: what a browser, curl, tuspy or tus-js-client in another process talks to."""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files

import aiohttp
import msgspec
import pytest
from aiohttp import web

from rawdrive_devkit.testkit import managed_profile
from rawdrive_platform import db, metrics
from rawdrive_platform.storage import Storage
from upload_gateway.app import create_app, token_verifier
from upload_gateway.auth import mint_dev_token
from upload_gateway.gateway import Gateway
from upload_gateway.storage_profiles.routes import mount_storage_profiles
from upload_gateway.uploads.tus_session import mount_tus

from .gatewaykit import bearer, session_request, settings_for

LIVE_SECRET = "live-gateway-secret-" + "x" * 20
LIVE_CORS_ORIGINS = ("https://app.example", "http://localhost:*")


@dataclass
class LiveGateway:
    url: str  # the base URL, also the gateway's RAWDRIVE_PUBLIC_URL
    gw: Gateway
    http: aiohttp.ClientSession
    workspace: str
    app: web.Application

    def user_token(self, role: str = "member") -> str:
        return mint_dev_token(LIVE_SECRET, sub="alice", workspaces={self.workspace: role}, ttl_s=600)

    def user(self, role: str = "member") -> dict[str, str]:
        return bearer(LIVE_SECRET, self.workspace, role)

    def uploads(self, suffix: str = "") -> str:
        return f"{self.url}/v1/workspaces/{self.workspace}/uploads{suffix}"

    async def open_session(self, size_bytes: int, **overrides: object) -> dict:
        body = session_request(size_bytes=size_bytes, **overrides)
        async with self.http.post(self.uploads(), json=body, headers=self.user()) as response:
            assert response.status == 201, await response.text()
            return await response.json()


StartGateway = Callable[..., Awaitable[LiveGateway]]


@pytest.fixture
async def start_gateway(fresh_database_url, s3_server) -> AsyncIterator[StartGateway]:
    """Starts gateways over one database; `s3_endpoint` points one at another S3 (a dead one),
    `settings` overrides the gateway's settings."""
    await db.migrate(fresh_database_url, "gateway", files("upload_gateway") / "migrations")
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())

        async def start(*, s3_endpoint: str | None = None, **settings: object) -> LiveGateway:
            profile = managed_profile(s3_server)
            storage = await Storage.open(msgspec.structs.replace(profile, endpoint=s3_endpoint or profile.endpoint))
            stack.push_async_callback(storage.close)
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{sock.getsockname()[1]}"
            settings = settings_for(
                fresh_database_url, s3_server, LIVE_SECRET, s3_endpoint=s3_endpoint or s3_server.endpoint,
                public_url=url, cors_origins=LIVE_CORS_ORIGINS, **settings,
            )  # fmt: skip
            # As __main__ makes it: the pool's size and acquire timeout are settings.
            pool = await db.create_pool(fresh_database_url, "gateway", max_size=settings.db_pool_max_size,
                                        acquire_timeout_s=settings.db_pool_acquire_timeout_s)  # fmt: skip
            stack.push_async_callback(pool.close)
            gw = Gateway(settings=settings, pool=pool, storage=storage, tokens=token_verifier(settings))
            app = create_app(gw, mounts=[mount_tus, mount_storage_profiles])
            metrics.mount(app)  # as Runtime.serve_health does for the running service
            # As in production (Runtime.serve_health): a handler keeps running when its client goes away.
            runner = web.AppRunner(app, access_log=None, handler_cancellation=False)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            await web.SockSite(runner, sock).start()
            return LiveGateway(url=url, gw=gw, http=http, workspace=f"ws{uuid.uuid4().hex[:10]}", app=app)

        yield start


@pytest.fixture
async def live_gateway(start_gateway: StartGateway) -> LiveGateway:
    return await start_gateway()
