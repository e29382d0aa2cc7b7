"""Slow clients must not take a gateway down (issue 21): 30 tus clients each capped at 256 KiB/s
by a FaultProxy, and 3 fast ones, on one gateway process with its default pool of 10 connections.

Every upload completes, /readyz answers 200 throughout, no client gets a 5xx, and the pool is
never exhausted (no acquire timed out; while the slow bodies stream, with fast uploads beside
them, fewer connections in use than it has), while more bodies stream at once than the pool has
connections. The speed of the fast clients under this load is
measured by bench/slow_clients_bench.py, not asserted here. And a storage outage leaves the
gateway ready, answering 503 with Retry-After, its dependency gauge showing the outage.
"""

from __future__ import annotations

import asyncio
import socket

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from rawdrive_devkit import slow_clients
from rawdrive_devkit.devstack.faultproxy import FaultProxy, Faults
from upload_gateway.auth import mint_dev_token

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


async def test_a_storage_outage_leaves_the_gateway_in_rotation_answering_503_with_retry_after(
    start_service, service_env
):
    with socket.socket() as sock:  # a port nothing listens on: storage is down from the start
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    # ServiceProcess.start waits for /readyz 200: the pod comes into rotation with storage down.
    gateway = start_service("upload_gateway", RAWDRIVE_S3_ENDPOINT=f"http://127.0.0.1:{closed}",
                            RAWDRIVE_METRICS_SAMPLE_INTERVAL_S="0.5")  # fmt: skip
    base = f"http://127.0.0.1:{gateway.port}"
    token = mint_dev_token(service_env["RAWDRIVE_JWT_SECRET"], sub="outage", workspaces={"e2e": "member"}, ttl_s=600)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        # Two parts (5 MiB each): the tus POST opens the multipart upload, so it meets the outage
        # (a file of one part touches storage only once its bytes arrive).
        size = 6 * 1024 * 1024
        request = {"file_name": "IMG_0001.jpg", "mime_type": "image/jpeg", "size_bytes": size,
                   "library_id": "lib1", "resumable_protocol": "tus"}  # fmt: skip
        async with http.post(f"{base}/v1/workspaces/e2e/uploads", json=request) as response:
            assert response.status == 201, await response.text()  # a tus session touches no storage yet
            session = await response.json()
        tus = {**session["headers"], "Tus-Resumable": "1.0.0", "Upload-Length": str(size)}
        async with http.post(session["upload_url"], headers=tus) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "5"
            assert response.content_type == "application/problem+json"
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200, await response.text()
        # The outage shows where alerts read it.
        for _ in range(100):
            async with http.get(f"{base}/metrics") as response:
                text = await response.text()
            up = {sample.labels["dependency"]: sample.value for family in text_string_to_metric_families(text)
                  for sample in family.samples if sample.name == "rawdrive_dependency_up"}  # fmt: skip
            if up.get("s3") == 0.0:
                break
            await asyncio.sleep(0.1)
        assert up == {"nats": 1.0, "postgres": 1.0, "s3": 0.0}
