"""The cluster test kit's pure parts: node configuration, the DSN services get, the URL list.
The servers themselves are exercised by tests/e2e/test_cluster.py."""

from pathlib import Path

from rawdrive_platform.bus import server_urls
from rawdrive_platform.busauth import PROVISION, USERS, BusUsers
from rawdrive_platform.devstack.cluster import NatsCluster, NatsNodeSpec, PostgresPair, nats_node_config

USERS_OF_TEST = BusUsers.generate(superuser=True)


def node_spec() -> NatsNodeSpec:
    return NatsNodeSpec(name="n1", port=4001, monitor_port=8001, cluster_port=6001, store_dir=Path("/data/n1"),
                        route_ports=(7010, 7012), advertise_port=9001, users=USERS_OF_TEST)


def test_a_node_routes_only_to_its_own_proxies_and_advertises_no_reachable_address():
    config = nats_node_config(node_spec())
    assert 'server_name: "n1"' in config
    assert 'store_dir: "/data/n1"' in config
    assert 'listen: "127.0.0.1:6001"' in config
    assert 'routes: ["nats://127.0.0.1:7010", "nats://127.0.0.1:7012"]' in config
    assert 'advertise: "127.0.0.1:9001"' in config
    assert "pool_size: -1" in config
    assert "no_advertise: true" in config  # clients keep the URLs (and credentials) they were given


def test_a_node_runs_the_same_users_and_permissions_as_every_other_nats():
    config = nats_node_config(node_spec())
    assert config.startswith(USERS_OF_TEST.config())  # busauth's rendering, as NatsServer uses it
    for user in USERS:
        assert f'"user": "{user}"' in config and USERS_OF_TEST.passwords[user] in config
    assert f'"user": "{USERS_OF_TEST.superuser[0]}"' in config


def test_the_cluster_gives_every_node_url_with_one_identity(tmp_path):
    cluster = NatsCluster(tmp_path, users=USERS_OF_TEST)
    urls = server_urls(cluster.url_as(PROVISION))
    assert len(urls) == 3 and len(server_urls(cluster.url)) == 3
    password = USERS_OF_TEST.passwords[PROVISION]
    for url, node in zip(urls, cluster.nodes):
        assert url == f"nats://{PROVISION}:{password}@127.0.0.1:{node.port}"


def test_services_get_both_postgres_hosts_and_ask_for_the_writable_one(tmp_path):
    pair = PostgresPair(tmp_path)
    dsn = pair.dsn("e2e")
    primary, standby = pair.hosts
    assert dsn == (f"postgresql://postgres@127.0.0.1:{primary},127.0.0.1:{standby}/e2e"
                   "?target_session_attrs=read-write")


def test_nats_url_takes_one_server_or_a_comma_separated_cluster():
    assert server_urls("nats://a:4222") == ["nats://a:4222"]
    assert server_urls("nats://a:4222, nats://b:4222,,nats://c:4222") == [
        "nats://a:4222", "nats://b:4222", "nats://c:4222"]


def test_identities_of_a_cluster_carry_credentials_on_every_url():
    base = "nats://127.0.0.1:4001,nats://127.0.0.1:4002"
    password = USERS_OF_TEST.passwords["janitor"]
    assert USERS_OF_TEST.url(base, "janitor") == (
        f"nats://janitor:{password}@127.0.0.1:4001,nats://janitor:{password}@127.0.0.1:4002")
