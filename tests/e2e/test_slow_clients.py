"""Slow clients must not take a gateway down (issue 21): 30 tus clients each capped at 256 KiB/s
by a FaultProxy, and 3 fast ones, on one gateway process with its default pool of 10 connections.

Every upload completes, /readyz answers 200 throughout, no client gets a 5xx, and the pool is
never exhausted (no acquire timed out; while the slow bodies stream, with fast uploads beside
them, fewer connections in use than it has), while more bodies stream at once than the pool has
connections. The speed of the fast clients under this load is
measured by bench/slow_clients_bench.py, not asserted here.
"""

from __future__ import annotations

from rawdrive_devkit import slow_clients
from rawdrive_devkit.devstack.faultproxy import FaultProxy, Faults

SLOW_CLIENTS = 30
SLOW_LINK = Faults(bandwidth_bytes_s=256 * 1024)
# Two parts and a tail in one PATCH: ~24 s at 256 KiB/s, so the lease is renewed while it streams.
SLOW_SIZE = 6 * slow_clients.MIB
FAST_CLIENTS = 3
FAST_SIZE = 20 * slow_clients.MIB


async def test_many_throttled_tus_clients_leave_the_gateway_ready_and_serving_everyone(start_service, service_env):
    gateway = start_service("upload_gateway")
    gateway_url = f"http://127.0.0.1:{gateway.port}"
    link = FaultProxy(upstream_port=gateway.port)
    link.start()
    link.set_faults(SLOW_LINK)
    try:
        report = await slow_clients.run(
            gateway_url, link.url_base, secret=service_env["RAWDRIVE_JWT_SECRET"], workspace="e2e-slow",
            slow=SLOW_CLIENTS, slow_size=SLOW_SIZE, fast=FAST_CLIENTS, fast_size=FAST_SIZE,
        )
    finally:
        link.stop()
    observed = report.observed
    assert observed.errors == [], (observed.errors, gateway.log_tail())
    assert [upload.status for upload in report.slow] == [204] * SLOW_CLIENTS
    assert observed.server_errors == 0, observed.statuses
    assert set(observed.readyz) == {"200"}, observed.readyz
    # More bodies streamed at once than the pool has connections, and the pool was never short.
    assert observed.pool_max == 10
    assert observed.in_flight_max > observed.pool_max, observed.in_flight_max
    assert report.pool_in_use_max_while_streaming < observed.pool_max, observed.pool_in_use
    assert observed.acquire_timeouts == 0
    # The loaded round ran while the slow bodies streamed (what makes it a measurement under load).
    assert report.slow_streaming_when_loaded_ended > 0
