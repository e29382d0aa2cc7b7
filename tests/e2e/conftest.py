"""End-to-end harness: every service a separate process, against the real servers of the session."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rawdrive_devkit.testing import node_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The session's NATS identities (rawdrive_devkit.testing.NatsIdentities), set by the autouse
# fixture below; None when this file is loaded outside pytest (bench/), whose NATS has no users.
NATS_IDENTITIES = None


def nats_user_of(module: str) -> str:
    """The busauth identity a service runs as: its package name with dashes."""
    return module.replace("_", "-")


class ServiceProcess:
    """One service (`python -m <module>`) with its own health port and log file, connecting to
    NATS as its own identity, with exactly the permissions it has in production. `identities`
    (a NatsIdentities) names the NATS it runs against: the session's unless given (a cluster's)."""

    def __init__(self, module: str, env: dict[str, str], log_dir: Path, identities=None) -> None:
        self.module = module
        self.port = free_port()
        if module == "upload_gateway":
            own = {"RAWDRIVE_HTTP_PORT": str(self.port), "RAWDRIVE_PUBLIC_URL": f"http://127.0.0.1:{self.port}"}
        else:
            own = {"RAWDRIVE_HEALTH_PORT": str(self.port)}
        identities = identities or NATS_IDENTITIES
        identity = identities.env(nats_user_of(module)) if identities is not None else {}
        self.env = {**env, **identity, **own}
        self.log_path = log_dir / f"{module}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([sys.executable, "-m", self.module], env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.module} not ready after {ready_timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """kill -9: no cleanup, no acks, as a crash or an OOM kill would."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.terminate()
        return self.process.wait(30)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session", autouse=True)
def _services_have_their_own_nats_identity(nats_identities):
    global NATS_IDENTITIES
    NATS_IDENTITIES = nats_identities
    yield
    NATS_IDENTITIES = None


@pytest.fixture
def service_env(nats_identities, fresh_database_url, s3_server) -> dict[str, str]:
    """What every service gets; ServiceProcess adds the NATS identity of the one it starts."""
    return {
        **os.environ,
        "RAWDRIVE_NATS_URL": nats_identities.url,
        "RAWDRIVE_DATABASE_URL": fresh_database_url,
        "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint,
        "RAWDRIVE_S3_REGION": s3_server.region,
        "RAWDRIVE_S3_BUCKET": s3_server.bucket,
        "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "RAWDRIVE_JWT_SECRET": "e2e-secret-of-at-least-thirty-two-bytes",
        "RAWDRIVE_CONSUMER_ACK_WAIT_S": "2",
        "RAWDRIVE_LOG_LEVEL": "INFO",
    }


@pytest.fixture
def start_service(service_env, tmp_path) -> Iterator:
    started: list[ServiceProcess] = []

    def start(module: str, **overrides: str) -> ServiceProcess:
        service = ServiceProcess(module, {**service_env, **overrides}, tmp_path)
        service.start()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


# ---------------------------------------------------------------------------------------------
# A whole pipeline per module: the four services started once, in their own database, bucket and
# workspace, with an outside consumer of the asset events and the client helpers a user has.

SERVICES = ("commit_verifier", "media_processor", "janitor", "upload_gateway")
SCHEMAS = Path(__file__).parents[2] / "libs" / "contracts" / "schemas"
TUS_JS = Path(__file__).parents[2] / "services" / "upload-gateway" / "tests" / "tus" / "js"
MEDIA = Path(__file__).parents[2] / "services" / "media-processor" / "tests" / "data"
JWT_SECRET = "e2e-secret-of-at-least-thirty-two-bytes"


@dataclass
class AssetEvents:
    """What an outside system sees on RAWDRIVE_ASSETS for one workspace: a plain nats-py durable
    pull consumer, every event checked against the published JSON Schema of its type (not the
    Python contracts)."""

    by_type: dict[str, dict[str, list[dict]]] = field(default_factory=dict)  # type -> asset -> events
    stream_seqs: dict[tuple[str, str], set[int]] = field(default_factory=dict)  # (type, asset) -> seqs
    # Stream seq -> when the stream stored it (epoch s), from the delivery's own metadata.
    stored_at: dict[int, float] = field(default_factory=dict)
    invalid: list[str] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def of(self, event_type: str, asset_id: str) -> list[dict]:
        return self.by_type.get(event_type, {}).get(asset_id, [])

    def ids(self, event_type: str) -> set[str]:
        return {e["id"] for events in self.by_type.get(event_type, {}).values() for e in events}

    def assets(self, event_type: str) -> set[str]:
        return set(self.by_type.get(event_type, {}))

    async def wait(self, predicate, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def _validators() -> dict[str, object]:
    from jsonschema import Draft202012Validator

    found = {}
    for path in SCHEMAS.glob("com.rawdrive.asset.*.json"):
        found[path.stem] = Draft202012Validator(json.loads(path.read_text()))
    return found


async def consume_asset_events(nats_url: str, workspace: str, stop: asyncio.Event) -> AssetEvents:
    """Start the outside consumer; it runs until `stop`, surviving NATS restarts."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    validators = _validators()
    seen = AssetEvents()
    servers = [url.strip() for url in nats_url.split(",")]  # a cluster's URLs, comma-separated
    nc = await nats.connect(servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, name=f"outside-{workspace}")
    js = nc.jetstream()
    durable = f"outside-{workspace}"
    config = ConsumerConfig(
        durable_name=durable, filter_subject=f"rawdrive.asset.*.{workspace}",
        ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=30,
    )
    await js.add_consumer("RAWDRIVE_ASSETS", config)
    subscription = await js.pull_subscribe_bind(durable, "RAWDRIVE_ASSETS")

    def record(msg) -> None:
        document = json.loads(msg.data)
        event_type = document.get("type", "")
        validator = validators.get(event_type)
        errors = [] if validator is None else [e.message for e in validator.iter_errors(document)]
        if validator is None or errors:
            seen.invalid.append(f"{event_type}: {errors or 'no schema'}")
            return
        asset_id = document["data"]["asset_id"]
        seqs = seen.stream_seqs.setdefault((event_type, asset_id), set())
        if msg.metadata.sequence.stream in seqs:
            return  # a redelivery of a message we already have (our ack was lost)
        seqs.add(msg.metadata.sequence.stream)
        seen.stored_at[msg.metadata.sequence.stream] = msg.metadata.timestamp.timestamp()
        seen.by_type.setdefault(event_type, {}).setdefault(asset_id, []).append(document)

    async def run() -> None:
        try:
            while not stop.is_set():
                try:
                    messages = await subscription.fetch(100, timeout=0.5)
                except Exception:  # timeout, or NATS away: keep polling until stopped
                    await asyncio.sleep(0.1)
                    continue
                for msg in messages:
                    record(msg)
                    try:
                        await msg.ack()
                    except Exception:
                        pass  # a redelivery will come; record() skips it by stream sequence
                seen.changed.set()
        finally:
            await nc.close()

    seen.task = asyncio.create_task(run())  # type: ignore[attr-defined]
    return seen


class Pipeline:
    """The four services (or more replicas) and a user's view of them."""

    def __init__(self, env: dict[str, str], log_dir: Path, workspace: str, identities=None) -> None:
        self.env = env
        self.identities = identities or NATS_IDENTITIES
        self.log_dir = log_dir
        self.workspace = workspace
        self.services: dict[str, list[ServiceProcess]] = {}
        self.token = _mint_token(workspace)
        self.events: AssetEvents | None = None

    def start(self, module: str, **overrides: str) -> ServiceProcess:
        replicas = self.services.setdefault(module, [])
        log_dir = self.log_dir / f"{module}-{len(replicas)}"
        log_dir.mkdir(parents=True, exist_ok=True)
        service = ServiceProcess(module, {**self.env, **overrides}, log_dir, self.identities)
        service.start(ready_timeout_s=60)
        replicas.append(service)
        return service

    @property
    def gateway(self) -> ServiceProcess:
        return self.services["upload_gateway"][0]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def stop_all(self) -> None:
        for replicas in self.services.values():
            for service in replicas:
                service.stop()

    def s3(self):
        from rawdrive_devkit.devstack.servers import s3_client

        return s3_client(self.connection)

    @property
    def connection(self):
        from rawdrive_devkit.devstack.servers import S3Connection

        return S3Connection(
            endpoint=self.env["RAWDRIVE_S3_ENDPOINT"], region=self.env["RAWDRIVE_S3_REGION"],
            access_key_id=self.env["RAWDRIVE_S3_ACCESS_KEY_ID"],
            secret_access_key=self.env["RAWDRIVE_S3_SECRET_ACCESS_KEY"], bucket=self.env["RAWDRIVE_S3_BUCKET"],
        )

    def keys_under(self, prefix: str) -> list[str]:
        client, bucket = self.s3(), self.env["RAWDRIVE_S3_BUCKET"]
        found = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found += [item["Key"] for item in page.get("Contents", [])]
        return found

    def multipart_uploads_under(self, prefix: str) -> list[dict]:
        answer = self.s3().list_multipart_uploads(Bucket=self.env["RAWDRIVE_S3_BUCKET"], Prefix=prefix)
        return answer.get("Uploads", [])

    def object_exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.s3().head_object(Bucket=self.env["RAWDRIVE_S3_BUCKET"], Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise
        return True

    def asset_prefix(self, asset_id: str) -> str:
        from rawdrive_platform import keys

        return keys.asset_prefix(self.workspace, asset_id)


def _mint_token(workspace: str) -> str:
    from upload_gateway.auth import mint_dev_token

    return mint_dev_token(JWT_SECRET, sub="e2e-user", workspaces={workspace: "admin"}, ttl_s=3600)


class Client:
    """What a browser, an app or another system does over HTTP, by each upload protocol."""

    def __init__(self, pipeline: Pipeline, http) -> None:
        self.pipeline = pipeline
        self.http = http  # aiohttp.ClientSession with the user's token
        self.ws = pipeline.workspace

    async def create_session(self, body: bytes, file_name: str, mime_type: str, protocol: str, **extra) -> dict:
        request = {
            "file_name": file_name, "mime_type": mime_type, "size_bytes": len(body),
            "library_id": "lib1", "resumable_protocol": protocol, **extra,
        }
        async with self.http.post(f"/v1/workspaces/{self.ws}/uploads", json=request) as response:
            assert response.status == 201, await response.text()
            return await response.json()

    async def send_tus(self, session: dict, body: bytes) -> None:
        from tusclient.client import TusClient

        def upload() -> None:
            client = TusClient(session["upload_url"], headers=session["headers"])
            client.uploader(file_stream=io.BytesIO(body), chunk_size=5 * 1024 * 1024).upload()

        await asyncio.to_thread(upload)

    async def send_tus_js(self, session: dict, body: bytes, tmp: Path) -> None:
        node = node_for(TUS_JS)
        path = tmp / f"tusjs-{uuid.uuid4().hex}"
        path.write_bytes(body)
        process = await asyncio.create_subprocess_exec(
            node, str(TUS_JS / "upload.mjs"), session["upload_url"], str(path), json.dumps(session["headers"]),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 0, stderr.decode()

    async def send_multipart(self, session: dict, body: bytes) -> list[dict]:
        """Presigned part URLs, PUT straight to storage with no credentials; returns the ETags."""
        import aiohttp

        part_size, part_count = session["part_size"], session["part_count"]
        async with self.http.post(
            f"/v1/workspaces/{self.ws}/uploads/{session['upload_id']}/parts",
            json={"part_numbers": list(range(1, part_count + 1))}, headers=session["headers"],
        ) as response:
            assert response.status == 200, await response.text()
            presigned = (await response.json())["parts"]
        parts = []
        async with aiohttp.ClientSession() as s3:
            for part in presigned:
                n = part["part_number"]
                async with s3.put(part["url"], data=body[(n - 1) * part_size : n * part_size],
                                  headers=part["headers"]) as put:
                    assert put.status == 200, await put.text()
                    parts.append({"part_number": n, "etag": put.headers["ETag"]})
        return parts

    async def commit(self, upload_id: str, **body) -> tuple[int, dict]:
        async with self.http.post(f"/v1/workspaces/{self.ws}/uploads/{upload_id}/commit", json=body) as response:
            return response.status, await response.json()

    async def upload(self, body: bytes, file_name: str, mime_type: str, protocol: str = "tus",
                     tmp: Path | None = None, **commit_body) -> dict:
        """Session, bytes by `protocol` ("tus", "tus-js" or "s3_multipart"), commit; the session."""
        wire = "s3_multipart" if protocol == "s3_multipart" else "tus"
        session = await self.create_session(body, file_name, mime_type, wire,
                                            sha256=hashlib.sha256(body).hexdigest())
        if protocol == "s3_multipart":
            commit_body.setdefault("parts", await self.send_multipart(session, body))
        elif protocol == "tus-js":
            assert tmp is not None
            await self.send_tus_js(session, body, tmp)
        else:
            await self.send_tus(session, body)
        status, outcome = await self.commit(session["upload_id"], **commit_body)
        session["commit"] = (status, outcome)
        return session

    async def asset(self, asset_id: str, **params) -> tuple[int, dict]:
        async with self.http.get(f"/v1/workspaces/{self.ws}/assets/{asset_id}", params=params) as response:
            return response.status, await response.json()

    async def asset_when(self, asset_id: str, statuses: set[str], timeout_s: float = 30.0) -> dict:
        """The catalogue entry once its status is one of `statuses` (the read model follows events)."""
        async with asyncio.timeout(timeout_s):
            while True:
                status, body = await self.asset(asset_id)
                if status == 200 and body["status"] in statuses:
                    return body
                await asyncio.sleep(0.2)


def _with_database(dsn: str, database: str) -> str:
    import urllib.parse

    return urllib.parse.urlsplit(dsn)._replace(path=f"/{database}").geturl()


def _own_database_and_bucket(admin_dsn: str, dsn_of, nats_url: str, s3_server, **settings: str) -> Iterator[dict[str, str]]:
    """The services' env for one module: its own database (`dsn_of(name)`, created and dropped
    through `admin_dsn`) and its own bucket, so the janitor's sweeps see only this module's objects;
    `settings` adds RAWDRIVE_* of its own."""
    from rawdrive_devkit.devstack.servers import create_database, drop_database, s3_client

    name = f"e2e_{uuid.uuid4().hex[:12]}"
    create_database(admin_dsn, name)
    bucket = f"e2e-{uuid.uuid4().hex[:12]}"
    s3_client(s3_server).create_bucket(Bucket=bucket)
    try:
        yield {
            **os.environ,
            "RAWDRIVE_NATS_URL": nats_url,
            "RAWDRIVE_DATABASE_URL": dsn_of(name),
            "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint,
            "RAWDRIVE_S3_REGION": s3_server.region,
            "RAWDRIVE_S3_BUCKET": bucket,
            "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
            "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "RAWDRIVE_JWT_SECRET": JWT_SECRET,
            "RAWDRIVE_CONSUMER_ACK_WAIT_S": "5",
            "RAWDRIVE_LOG_LEVEL": "INFO",
            **settings,
        }
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture(scope="module")
def module_service_env(nats_identities, database_url, s3_server) -> Iterator[dict[str, str]]:
    """Like service_env, but for a whole module: its own database and its own bucket."""
    yield from _own_database_and_bucket(_with_database(database_url, "postgres"),
                                        lambda name: _with_database(database_url, name), nats_identities.url, s3_server)


@pytest.fixture(scope="module")
def cluster_service_env(cluster_servers, s3_server) -> Iterator[dict[str, str]]:
    """module_service_env against the module's `cluster_servers`: every NATS URL, the multi-host
    DSN (services follow a promotion), streams at replicas 3."""
    yield from _own_database_and_bucket(cluster_servers.postgres.dsn("postgres"), cluster_servers.postgres.dsn,
                                        cluster_servers.nats.url, s3_server, RAWDRIVE_STREAM_REPLICAS="3")


async def open_pipeline(env: dict[str, str], log_dir: Path, replicas: int = 1, identities=None):
    """Start every service (`replicas` of each) and the outside consumer; yields (pipeline, client).
    `identities`: the NATS to run against when not the session's (a NatsIdentities, e.g. a cluster's)."""
    import aiohttp

    workspace = f"ws{uuid.uuid4().hex[:12]}"
    pipeline = Pipeline(env, log_dir, workspace, identities)
    stop = asyncio.Event()
    try:
        for _ in range(replicas):
            for module in SERVICES:
                pipeline.start(module)
        # Another team's consumer: its identity is theirs to define, so the test's superuser here.
        identities = pipeline.identities
        outside_url = identities.superuser_url if identities is not None else env["RAWDRIVE_NATS_URL"]
        pipeline.events = await consume_asset_events(outside_url, workspace, stop)
        headers = {"Authorization": f"Bearer {pipeline.token}"}
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(pipeline.base_url, headers=headers, timeout=timeout) as http:
            yield pipeline, Client(pipeline, http)
    finally:
        stop.set()
        if pipeline.events is not None:
            await pipeline.events.task  # type: ignore[attr-defined]
        pipeline.stop_all()


@pytest.fixture(scope="session")
def pipeline_opener():
    """`open_pipeline` for test modules (conftest is not importable under importlib mode)."""
    return open_pipeline


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The media processor's real sample files (see its README for their origin)."""
    return MEDIA


# Debian's package (make browser-packages), not Playwright's download.
CHROMIUM = Path("/usr/bin/chromium")
@pytest.fixture
async def browser():
    from playwright.async_api import async_playwright

    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: `make browser-packages` installs Debian's chromium"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--headless"])
        try:
            yield browser
        finally:
            await browser.close()
