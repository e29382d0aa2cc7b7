"""The real-server runners and the dev stack command, against real servers (no mocks)."""

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest

from rawdrive_devkit.devstack.servers import (
    NatsServer,
    PostgresServer,
    S3Server,
    free_port,
    s3_client,
    tcp_port_answers,
)
from rawdrive_platform import bus
from rawdrive_platform.config import NatsSettings, load_settings

pytestmark = pytest.mark.servers


@pytest.fixture
def server_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: as root, PostgreSQL runs as another user, who must be able to
    # traverse the parents, and pytest resets /tmp/pytest-of-root to 0700 on every session.
    path = Path(tempfile.mkdtemp(prefix="rawdrive-devstack-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def process_group_alive(pgid: int) -> bool:
    return any(_pgid(p) == pgid for p in psutil.process_iter())


def _pgid(process: psutil.Process) -> int | None:
    try:
        return os.getpgid(process.pid)
    except (ProcessLookupError, psutil.Error):
        return None


async def test_nats_runner_serves_jetstream_and_keeps_streams_across_restart(server_dir: Path) -> None:
    with NatsServer(server_dir / "nats") as server:
        client = await nats.connect(server.url)
        js = client.jetstream()
        await js.add_stream(name="DEVSTACK", subjects=["devstack.>"])
        ack = await js.publish("devstack.hello", b"hi")
        assert ack.stream == "DEVSTACK"
        await client.close()

        server.restart()
        client = await nats.connect(server.url)
        info = await client.jetstream().stream_info("DEVSTACK")
        await client.close()
        assert info.state.messages == 1
        pid = server.pid
    assert pid is not None and not process_group_alive(pid)
    assert not tcp_port_answers(server.port)


async def test_postgres_runner_serves_and_keeps_data_across_restart(server_dir: Path) -> None:
    with PostgresServer(server_dir / "postgres", durable=False) as server:
        connection = await asyncpg.connect(server.url)
        await connection.execute("CREATE TABLE kept (value text); INSERT INTO kept VALUES ('yes')")
        await connection.close()

        server.restart()
        connection = await asyncpg.connect(server.url)
        assert await connection.fetchval("SELECT value FROM kept") == "yes"
        await connection.close()
        pid = server.pid
    assert pid is not None and not process_group_alive(pid)
    assert not tcp_port_answers(server.port)


def test_s3_runner_checks_signatures_and_keeps_objects_across_restart(server_dir: Path) -> None:
    server = S3Server(server_dir / "s3", access_key_id="devstacktest", secret_access_key="devstack-secret")
    with server:
        connection = server.connection
        client = s3_client(connection)
        client.put_object(Bucket=connection.bucket, Key="a/b.txt", Body=b"payload")
        assert client.get_object(Bucket=connection.bucket, Key="a/b.txt")["Body"].read() == b"payload"

        anonymous_url = f"{connection.endpoint}/{connection.bucket}/a/b.txt"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous_url, timeout=5)
        assert refused.value.code == 403
        wrong_key = s3_client(connection, aws_secret_access_key="not-the-secret")
        with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied|403"):
            wrong_key.get_object(Bucket=connection.bucket, Key="a/b.txt")

        server.restart()
        assert client.get_object(Bucket=connection.bucket, Key="a/b.txt")["Body"].read() == b"payload"
        pid = server.pid
    assert pid is not None and not process_group_alive(pid)
    assert not tcp_port_answers(server.s3_port)


def _wait_for_line(log: Path, text: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in log.read_text(errors="replace"):
        assert process.poll() is None, f"devstack exited early:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no {text!r} after {timeout_s} s:\n{log.read_text()}"
        time.sleep(0.2)


@contextlib.contextmanager
def devstack(server_dir: Path, ports: dict[str, int], *flags: str, start_s: float, stop_s: float) -> Iterator[dict[str, str]]:
    """`python -m rawdrive_devkit.devstack --no-services` on these ports while the block runs,
    then stopped with Ctrl-C, which must end it cleanly and leave no server behind. Yields the
    env file it wrote."""
    data = server_dir / "data"
    command = [sys.executable, "-m", "rawdrive_devkit.devstack", "--data", str(data), "--no-services", *flags]
    for flag, port in ports.items():
        command += [flag, str(port)]
    log = server_dir / "devstack.out"
    with open(log, "wb") as out:
        stack = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_line(log, "Ctrl-C stops everything", stack, timeout_s=start_s)
        yield dict(line.split("=", 1) for line in (data / "env").read_text().splitlines() if not line.startswith("#"))

        stack.send_signal(signal.SIGINT)
        assert stack.wait(stop_s) == 0, log.read_text()
    finally:
        if stack.poll() is None:
            stack.terminate()
            stack.wait(stop_s)
        leftovers = kill_servers_using(data)
    assert leftovers == []


def test_devstack_command_starts_servers_writes_env_and_stops_on_sigint(server_dir: Path) -> None:
    ports = {
        "--nats-port": free_port(),
        "--nats-monitor-port": free_port(),
        "--pg-port": free_port(),
        "--s3-port": free_port(with_grpc_port=True),
        "--s3-master-port": free_port(with_grpc_port=True),
        "--s3-volume-port": free_port(with_grpc_port=True),
        "--s3-filer-port": free_port(with_grpc_port=True),
    }
    with devstack(server_dir, ports, start_s=40, stop_s=30) as env:
        assert env["RAWDRIVE_NATS_URL"] == f"nats://127.0.0.1:{ports['--nats-port']}"
        assert env["RAWDRIVE_S3_ENDPOINT"] == f"http://127.0.0.1:{ports['--s3-port']}"
        assert env["RAWDRIVE_JWT_SECRET"]
        assert env["RAWDRIVE_CORS_ORIGINS"] == "http://localhost:*,http://127.0.0.1:*"  # front-end dev servers
        assert all(tcp_port_answers(port) for port in ports.values())
        asyncio.run(_bus_refuses_strangers_and_serves_the_provisioning_identity(env))
    assert not any(tcp_port_answers(port) for port in ports.values())


def test_devstack_cluster_runs_three_nats_nodes_at_replicas_3_and_a_standby(server_dir: Path) -> None:
    ports = {
        "--s3-port": free_port(with_grpc_port=True),
        "--s3-master-port": free_port(with_grpc_port=True),
        "--s3-volume-port": free_port(with_grpc_port=True),
        "--s3-filer-port": free_port(with_grpc_port=True),
    }
    with devstack(server_dir, ports, "--cluster", start_s=180, stop_s=60) as env:
        nats_urls = bus.server_urls(env["RAWDRIVE_NATS_URL"])
        assert len(nats_urls) == 3 and env["RAWDRIVE_STREAM_REPLICAS"] == "3"
        dsn = env["RAWDRIVE_DATABASE_URL"]
        assert dsn.endswith("?target_session_attrs=read-write") and dsn.count(",") == 1
        asyncio.run(_cluster_is_provisioned_and_the_standby_reads_only(env))


async def _cluster_is_provisioned_and_the_standby_reads_only(env: dict[str, str]) -> None:
    await _bus_refuses_strangers_and_serves_the_provisioning_identity(
        {**env, "RAWDRIVE_NATS_URL": bus.server_urls(env["RAWDRIVE_NATS_URL"])[0]})
    client = await bus.connect(load_settings(NatsSettings, env), name="test-devstack-cluster")
    try:
        js = client.jetstream()
        for stream in ("RAWDRIVE_UPLOADS", "RAWDRIVE_ASSETS", "RAWDRIVE_DEADLETTER", "KV_rawdrive_storage_profiles"):
            info = await js.stream_info(stream)
            assert info.config.num_replicas == 3 and len(info.cluster.replicas or []) == 2, stream
    finally:
        await client.close()
    primary_host, standby_host = env["RAWDRIVE_DATABASE_URL"].split("@", 1)[1].split("/", 1)[0].split(",")
    for host, in_recovery in ((primary_host, False), (standby_host, True)):
        conn = await asyncpg.connect(f"postgresql://postgres@{host}/rawdrive")
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is in_recovery, host
        finally:
            await conn.close()


async def _bus_refuses_strangers_and_serves_the_provisioning_identity(env: dict[str, str]) -> None:
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(env["RAWDRIVE_NATS_URL"], allow_reconnect=False, max_reconnect_attempts=0)
    assert env["RAWDRIVE_NATS_USER"] == "provision"
    client = await bus.connect(load_settings(NatsSettings, env), name="test-devstack")
    try:
        info = await client.jetstream().stream_info("RAWDRIVE_UPLOADS")  # provisioned before the services
        assert info.config.name == "RAWDRIVE_UPLOADS"
    finally:
        await client.close()


def kill_servers_using(data: Path) -> list[str]:
    """Kill (and name) any server process still running on `data`: none should be."""
    leftovers = []
    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if process.info["name"] in {"nats-server", "postgres", "weed"} and str(data) in cmdline:
            leftovers.append(cmdline)
            process.kill()
    return leftovers
