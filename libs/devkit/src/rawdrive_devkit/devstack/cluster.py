"""The production shape on one machine: a 3-node JetStream cluster and PostgreSQL with a
synchronous hot standby, all on loopback ports, for the cluster fault tests (issue 17).

NATS: every node routes to every other through a `FaultProxy` of its own per direction (node i
reaches node j only through proxy (i, j)), so `partition(i)` cuts exactly node i's routes while
its clients still reach it, and `heal(i)` lets the routes reconnect. The advertised cluster
address is a port nothing listens on: a node then never learns a direct address of a peer
(gossiped implicit routes would bypass the proxies), and keeps only its configured routes.
Each node's whole configuration comes from `nats_node_config`: the same users and permissions
as every other NATS the project runs (rawdrive_platform.busauth, as `NatsServer` renders them),
so each service connects as its own identity. Once the nodes form a cluster, the provisioning
identity creates the streams and the profile KV bucket at replicas 3, as the provisioning Job
does in production (the services may not).

PostgreSQL: the standby is a `pg_basebackup` of the primary with `standby.signal`, streaming and
synchronous (`synchronous_standby_names`), so a commit the primary acknowledged is on the
standby too and a failover loses none. Services get `PostgresPair.dsn()`, a multi-host DSN with
`target_session_attrs=read-write`: asyncpg and libpq take the first host that accepts writes,
so after `fail_over()` new connections find the promoted standby without a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rawdrive_devkit.devstack.faultproxy import FaultProxy
from rawdrive_devkit.devstack.servers import (
    LOOPBACK,
    VENV_BIN,
    NatsServer,
    PostgresServer,
    ServerProcess,
    ServerStartError,
    _postgres_bin,
    free_port,
    provision_streams,
    run_psql,
    start_all,
    stop_all,
)
from rawdrive_platform.busauth import PROVISION, BusUsers

CLUSTER_NAME = "rawdrive"
STANDBY_NAME = "standby"
REPLICAS = 3  # of every stream and KV bucket, as in production


def kill(server: ServerProcess) -> None:
    """kill -9 the server's whole process group (no shutdown, as a crashed node); `start()` brings
    it back on the same ports and data."""
    if server.pid is not None:
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.stop()  # reaps it


# ---------------------------------------------------------------------------------------------
# NATS


@dataclass(frozen=True)
class NatsNodeSpec:
    name: str
    port: int
    monitor_port: int
    cluster_port: int
    store_dir: Path
    route_ports: tuple[int, ...]  # where this node reaches each peer (its proxies)
    advertise_port: int  # a port nothing listens on (see the module doc)
    users: BusUsers  # every busauth identity's password (and the tests' superuser)


def nats_node_config(spec: NatsNodeSpec) -> str:
    """The complete nats-server configuration of one cluster node (it holds passwords: 0600)."""
    routes = ", ".join(f'"nats://{LOOPBACK}:{port}"' for port in spec.route_ports)
    return spec.users.config() + f"""\
server_name: "{spec.name}"
listen: "{LOOPBACK}:{spec.port}"
http: "{LOOPBACK}:{spec.monitor_port}"
jetstream {{
  store_dir: "{spec.store_dir}"
}}
cluster {{
  name: "{CLUSTER_NAME}"
  listen: "{LOOPBACK}:{spec.cluster_port}"
  advertise: "{LOOPBACK}:{spec.advertise_port}"
  # One route per pair: a pooled route's extra connections dial the advertised address.
  pool_size: -1
  routes: [{routes}]
  # Clients keep the servers they were given: a gossiped client address would carry none of the
  # credentials a test's nats://user:password@ URL has, and be refused.
  no_advertise: true
}}
"""


class NatsClusterNode(NatsServer):
    def __init__(self, data_dir: Path, *, name: str, users: BusUsers) -> None:
        super().__init__(data_dir, users=users)
        self.node_name = name
        self.cluster_port = free_port()
        self.route_ports: tuple[int, ...] = ()
        self.advertise_port = free_port()  # reserved, never bound

    @property
    def config_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.conf"

    def ports(self) -> list[int]:
        return [self.port, self.monitor_port, self.cluster_port]

    def prepare(self) -> None:
        super().prepare()
        assert self.users is not None
        spec = NatsNodeSpec(
            name=self.node_name, port=self.port, monitor_port=self.monitor_port, cluster_port=self.cluster_port,
            store_dir=self.data_dir, route_ports=self.route_ports, advertise_port=self.advertise_port,
            users=self.users,
        )  # fmt: skip
        self.config_file.touch(mode=0o600)
        self.config_file.write_text(nats_node_config(spec))

    def command(self) -> list[str]:
        return [str(VENV_BIN / "nats-server"), "-c", str(self.config_file)]

    def after_ready(self) -> None:
        pass  # one node cannot make replicated streams: NatsCluster.provision, once they form one

    def jsz(self, query: str = "") -> dict:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.monitor_port}/jsz{query}", timeout=2) as response:
            return json.load(response)


class NatsCluster:
    """Three (or `size`) JetStream nodes in one cluster, with cuttable routes."""

    def __init__(self, base: Path, size: int = 3, *, users: BusUsers | None = None) -> None:
        # With a superuser for the tests' set-up and inspection, as the single-server fixture has.
        self.users = users or BusUsers.generate(superuser=True)
        self.nodes = [NatsClusterNode(base / f"nats-{i}", name=f"n{i}", users=self.users) for i in range(size)]
        self.route_proxies: dict[tuple[int, int], FaultProxy] = {}
        for i, node in enumerate(self.nodes):
            for j, peer in enumerate(self.nodes):
                if i != j:
                    self.route_proxies[(i, j)] = FaultProxy(upstream_port=peer.cluster_port)
            node.route_ports = tuple(p.port for (a, _), p in self.route_proxies.items() if a == i)

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (RAWDRIVE_NATS_URL), without credentials."""
        return ",".join(node.url for node in self.nodes)

    def url_as(self, user: str) -> str:
        """Every node's client URL carrying `user`'s credentials (a busauth identity or the superuser)."""
        return self.users.url(self.url, user)

    def provision(self) -> None:
        """What the provisioning Job does: every stream and the profile KV bucket at replicas 3,
        as the provisioning identity."""
        provision_streams(self.url_as(PROVISION), replicas=min(REPLICAS, len(self.nodes)))

    def start(self) -> None:
        for proxy in self.route_proxies.values():
            proxy.start()
        start_all(self.nodes)

    def stop(self) -> None:
        stop_all(self.nodes)
        for proxy in self.route_proxies.values():
            proxy.stop()

    def node(self, name: str) -> NatsClusterNode:
        return next(node for node in self.nodes if node.node_name == name)

    def _any_running(self) -> list[NatsClusterNode]:
        return [node for node in self.nodes if node.is_running()]

    def meta_leader(self) -> NatsClusterNode:
        """The running node that leads the JetStream meta group, as the running nodes see it
        (a follower may still name a leader that was just killed)."""
        for node in self._any_running():
            try:
                leader = node.jsz().get("meta_cluster", {}).get("leader")
            except OSError:
                continue
            if leader and self.node(leader).is_running():
                return self.node(leader)
        raise RuntimeError("no JetStream meta leader")

    def stream_leader(self, stream: str) -> NatsClusterNode:
        for node in self._any_running():
            try:
                details = node.jsz("?accounts=true&streams=true").get("account_details", [])
            except OSError:
                continue
            for account in details:
                for info in account.get("stream_detail", []):
                    leader = info.get("cluster", {}).get("leader")
                    if info.get("name") == stream and leader and self.node(leader).is_running():
                        return self.node(leader)
        raise RuntimeError(f"no leader for stream {stream}")

    def partition(self, node: NatsClusterNode) -> None:
        """Cut every route to and from `node`; its clients stay connected to it."""
        index = self.nodes.index(node)
        for (a, b), proxy in self.route_proxies.items():
            if index in (a, b):
                proxy.disable()

    def heal(self, node: NatsClusterNode) -> None:
        index = self.nodes.index(node)
        for (a, b), proxy in self.route_proxies.items():
            if index in (a, b):
                proxy.enable()

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        """Until every node is up and healthy, all agree on the meta leader, the leader has every
        other node current (only the leader tracks its followers), and so does every stream's
        leader: a stream whose leader was just killed answers no request until it elects anew."""
        deadline = time.monotonic() + timeout_s
        while not self._whole():
            if time.monotonic() > deadline:
                raise ServerStartError(f"NATS cluster not whole after {timeout_s:.0f} s")
            time.sleep(0.2)

    def _whole(self) -> bool:
        try:
            if not all(node.is_running() and node.is_ready() for node in self.nodes):
                return False
            leaders = {node.jsz().get("meta_cluster", {}).get("leader") for node in self.nodes}
            if len(leaders) != 1 or None in leaders:
                return False
            replicas = self.node(leaders.pop()).jsz()["meta_cluster"].get("replicas") or []
        except (OSError, KeyError, StopIteration):
            return False
        return self._all_current(replicas) and self._streams_whole()

    def _all_current(self, replicas: list[dict]) -> bool:
        return len(replicas) == len(self.nodes) - 1 and all(r.get("current") and not r.get("offline") for r in replicas)

    def _streams_whole(self) -> bool:
        names: set[str] = set()
        led: dict[str, list[dict]] = {}
        for node in self.nodes:
            for account in node.jsz("?accounts=true&streams=true").get("account_details", []):
                for info in account.get("stream_detail", []):
                    names.add(info["name"])
                    cluster = info.get("cluster", {})
                    if cluster.get("leader") == node.node_name:
                        led[info["name"]] = cluster.get("replicas") or []
        return all(name in led and self._all_current(led[name]) for name in names)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresPrimary(PostgresServer):
    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir, durable=True)

    def command(self) -> list[str]:
        return super().command() + [
            "-c", "wal_level=replica",
            "-c", "max_wal_senders=10",
            "-c", "wal_keep_size=512MB",
            # Tests kill processes, never the machine: the page cache keeps what fsync would.
            "-c", "fsync=off",
        ]  # fmt: skip


class PostgresStandby(PostgresServer):
    """A hot standby of `primary`, cloned with pg_basebackup on first start."""

    def __init__(self, data_dir: Path, *, primary: PostgresServer) -> None:
        super().__init__(data_dir, durable=True, database=primary.database)
        self.primary = primary

    def _initdb(self) -> None:  # a clone of the primary instead of a new cluster
        command = [_postgres_bin("pg_basebackup"), "-D", str(self.data_dir), "-h", LOOPBACK,
                   "-p", str(self.primary.port), "-U", self.superuser, "-X", "stream", "-c", "fast"]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, **self.popen_options())
        if result.returncode != 0:
            raise ServerStartError(f"pg_basebackup failed:\n{result.stderr[-4000:]}")
        conninfo = (f"host={LOOPBACK} port={self.primary.port} user={self.superuser} "
                    f"application_name={STANDBY_NAME}")  # fmt: skip
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")
        (self.data_dir / "standby.signal").touch()

    def command(self) -> list[str]:
        return super().command() + ["-c", "hot_standby=on", "-c", "fsync=off"]

    def after_ready(self) -> None:
        pass  # read-only until promoted; the primary created the database


class PostgresPair:
    """A primary and its synchronous hot standby; `fail_over()` swaps their roles for good."""

    def __init__(self, base: Path) -> None:
        self.primary: PostgresServer = PostgresPrimary(base / "pg-primary")
        self.standby: PostgresServer = PostgresStandby(base / "pg-standby", primary=self.primary)
        self.hosts = (self.primary.port, self.standby.port)

    def dsn(self, database: str | None = None) -> str:
        """Both hosts; clients take whichever accepts writes (the primary of the moment)."""
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.hosts)
        return f"postgresql://{PostgresServer.superuser}@{hosts}/{database or self.primary.database}" \
               "?target_session_attrs=read-write"

    def start(self) -> None:
        self.primary.start()
        self.standby.start()
        # Only now (a synchronous primary without its standby blocks every commit): from here a
        # commit returns once the standby has flushed it, so a failover loses none.
        run_psql(self.primary.dsn("postgres"), f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        run_psql(self.primary.dsn("postgres"), "SELECT pg_reload_conf()")
        self.wait_streaming()

    def stop(self) -> None:
        stop_all([self.primary, self.standby])

    def wait_streaming(self, timeout_s: float = 60.0) -> None:
        """Until the standby streams synchronously from the primary."""
        deadline = time.monotonic() + timeout_s
        query = f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
        while run_psql(self.primary.dsn("postgres"), query) != "sync":
            if time.monotonic() > deadline:
                raise ServerStartError(f"standby not streaming synchronously after {timeout_s:.0f} s")
            time.sleep(0.2)

    def fail_over(self) -> None:
        """Promote the standby, then kill -9 the old primary (its commits were waiting for the
        standby, so none of them was acknowledged). The pair is left without a standby."""
        run_psql(self.standby.dsn("postgres"), "SELECT pg_promote(true, 60)")
        kill(self.primary)
        self.primary, self.standby = self.standby, self.primary


# ---------------------------------------------------------------------------------------------
# Both


@dataclass
class ClusterServers:
    nats: NatsCluster
    postgres: PostgresPair

    @classmethod
    def create(cls, base: Path) -> ClusterServers:
        return cls(nats=NatsCluster(base), postgres=PostgresPair(base))

    def start(self) -> None:
        try:
            self.nats.start()
            self.postgres.start()
            self.nats.wait_healthy()
            self.nats.provision()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.postgres.stop()
        self.nats.stop()
