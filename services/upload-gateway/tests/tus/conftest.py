"""A minimal gateway for the tus routes: real PostgreSQL and S3, a test `authorize`, and as many
app instances over the same database as a test wants (to resume on "another instance")."""

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib.resources import files
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web

from rawdrive_platform.config import Secret
from rawdrive_platform.db import create_pool, migrate
from rawdrive_platform.keys import original_key
from rawdrive_platform.storage import Storage, StorageProfile
from upload_gateway.uploads.parts import MIN_PART_SIZE
from upload_gateway.uploads.tus import LeaseLock, LeaseTerms, PostgresS3Store, TusTarget, tus_routes

MiB = 1024 * 1024
MAX_SIZE = 500 * MiB
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = TUS | {"Content-Type": "application/offset+octet-stream"}


async def run(*command: str, kill_after_lines: int | None = None) -> list[dict]:
    """The client's JSON lines; with `kill_after_lines`, SIGKILL it once it printed that many."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    lines: list[dict] = []
    try:
        async with asyncio.timeout(90):
            while line := await process.stdout.readline():
                lines.append(json.loads(line))
                if kill_after_lines is not None and len(lines) >= kill_after_lines:
                    process.kill()
                    break
            await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if kill_after_lines is None:
        assert process.returncode == 0, (await process.stderr.read()).decode()
    else:
        assert process.returncode == -9, "the client finished before it could be killed"
    return lines


@dataclass
class Session:
    """What the session layer would hold for one upload, plus what the callbacks reported."""

    target: TusTarget
    progress: list[int] = field(default_factory=list)
    completions: int = 0
    terminations: int = 0
    token: str | None = None  # when set, requests must carry "Authorization: Bearer <token>"


class Gateway:
    """Upload sessions shared by every instance, as the sessions table would be."""

    def __init__(self, storage: Storage, dsn: str):
        self.storage = storage
        self.dsn = dsn
        self.sessions: dict[str, Session] = {}
        self._runners: list[web.AppRunner] = []
        self.pools: list = []

    def session(self, size_bytes: int, *, part_size: int = MIN_PART_SIZE, expires_in_s: int = 3600) -> Session:
        upload_id = uuid.uuid4().hex
        record = Session(target=None)  # type: ignore[arg-type]  # filled just below

        async def on_progress(conn, offset: int) -> None:
            record.progress.append(offset)

        async def on_complete(conn) -> None:
            record.completions += 1

        async def on_terminate() -> None:
            record.terminations += 1

        record.target = TusTarget(
            upload_id=upload_id,
            workspace_id="ws-test",
            object_key=original_key("ws-test", f"a-{upload_id}", "photo.jpg"),
            content_type="image/jpeg",
            size_bytes=size_bytes,
            expires_at=datetime.now(timezone.utc) + timedelta(seconds=expires_in_s),
            part_size=part_size,
            storage=self.storage,
            on_progress=on_progress,
            on_complete=on_complete,
            on_terminate=on_terminate,
        )
        self.sessions[upload_id] = record
        return record

    async def instance(
        self, *, handler_cancellation: bool = False, idle_timeout_s: float | None = None, lease_ttl_s: float | None = None
    ) -> str:
        """Start one more gateway process-equivalent (own pool, own store); returns its base URL.
        Its pool is `self.pools[-1]`; `idle_timeout_s` and `lease_ttl_s` as the gateway's settings.

        `handler_cancellation` is aiohttp's choice of cancelling a handler whose client went away
        (off in web.run_app, on in aiohttp's TestServer): the store must keep bytes either way.
        """
        pool = await create_pool(self.dsn, "gateway", max_size=20)
        self.pools.append(pool)
        terms = LeaseTerms() if lease_ttl_s is None else LeaseTerms(ttl_s=lease_ttl_s)
        store = PostgresS3Store(pool, lock=LeaseLock(pool, terms))

        async def authorize(request: web.Request) -> TusTarget:
            record = self.sessions.get(request.match_info["upload_id"])
            if record is None or record.target.workspace_id != request.match_info["workspace_id"]:
                raise web.HTTPNotFound(text="no such upload")
            if record.token and request.headers.get("Authorization") != f"Bearer {record.token}":
                raise web.HTTPUnauthorized(text="no or wrong token")
            return record.target

        app = web.Application()
        app.add_routes(tus_routes(lambda request: store, authorize, max_size=MAX_SIZE, idle_timeout_s=idle_timeout_s))
        runner = web.AppRunner(app, handler_cancellation=handler_cancellation)
        await runner.setup()
        self._runners.append(runner)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        await web.SockSite(runner, sock).start()
        return f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def close(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        for pool in self.pools:
            await pool.close()


def tus_url(base: str, session: Session) -> str:
    target = session.target
    return f"{base}/v1/workspaces/{target.workspace_id}/uploads/{target.upload_id}/tus"


async def held_body(data: bytes, started: asyncio.Event, release: asyncio.Event) -> AsyncIterator[bytes]:
    """A PATCH body caught mid-way: its first MiB, then `started` is set and nothing more comes
    until `release` is, then the rest."""
    yield data[:MiB]
    started.set()
    await release.wait()
    yield data[MiB:]


async def raw_patch(url: str, data: bytes, sent: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PATCH at offset 0 announcing all of `data` but sending only its first `sent` bytes, over
    a socket of its own, so that the test decides what the client does next (stall, go away)."""
    split = urlsplit(url)
    reader, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(
        f"PATCH {split.path} HTTP/1.1\r\nHost: {split.netloc}\r\nTus-Resumable: 1.0.0\r\n"
        f"Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
    )
    writer.write(data[:sent])
    await writer.drain()
    return reader, writer


@pytest.fixture(scope="session")
async def storage(s3_server) -> AsyncIterator[Storage]:
    opened = await Storage.open(
        StorageProfile(
            profile_id="managed", provider="r2", endpoint=s3_server.endpoint,
            region=s3_server.region, bucket=s3_server.bucket,
            access_key_id=s3_server.access_key_id,
            secret_access_key=Secret(s3_server.secret_access_key),
        )
    )
    yield opened
    await opened.close()


@pytest.fixture
async def gateway(storage, fresh_database_url) -> AsyncIterator[Gateway]:
    await migrate(fresh_database_url, "gateway", files("upload_gateway") / "migrations")
    gateway = Gateway(storage, fresh_database_url)
    yield gateway
    await gateway.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
