"""The cluster test kit's pure parts: node configuration, the DSN services get, the URL list.
The servers themselves are exercised by tests/e2e/test_cluster.py."""

from pathlib import Path

from rawdrive_platform.bus import server_urls
from rawdrive_platform.devstack.cluster import NatsNodeSpec, PostgresPair, nats_node_config


def test_a_node_routes_only_to_its_own_proxies_and_advertises_no_reachable_address():
    spec = NatsNodeSpec(name="n1", port=4001, monitor_port=8001, cluster_port=6001, store_dir=Path("/data/n1"),
                        route_ports=(7010, 7012), advertise_port=9001)
    config = nats_node_config(spec)
    assert 'server_name: "n1"' in config
    assert 'store_dir: "/data/n1"' in config
    assert 'listen: "127.0.0.1:6001"' in config
    assert 'routes: ["nats://127.0.0.1:7010", "nats://127.0.0.1:7012"]' in config
    assert 'advertise: "127.0.0.1:9001"' in config
    assert "pool_size: -1" in config


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
