import asyncio
import os
import socket
import sys

import aiohttp
import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rawdrive_devkit.testkit import managed_profile
from rawdrive_platform.config import Secret
from rawdrive_platform.health import Health, nats_check, postgres_check, s3_check
from rawdrive_platform.storage import Storage


async def passing() -> None:
    return None


async def failing() -> None:
    raise ConnectionRefusedError("connection refused")


async def hanging() -> None:
    await asyncio.sleep(60)


@pytest.fixture
async def client_for():
    clients: list[TestClient] = []

    async def make(health: Health) -> TestClient:
        app = web.Application()
        health.mount(app)
        client = TestClient(TestServer(app))
        await client.start_server()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def test_livez_answers_200_even_when_dependencies_fail(client_for):
    health = Health()
    health.add_check("nats", failing)
    response = await (await client_for(health)).get("/livez")
    assert response.status == 200


async def test_readyz_answers_200_when_every_check_passes(client_for):
    health = Health()
    health.add_check("nats", passing)
    health.add_check("postgres", passing)
    response = await (await client_for(health)).get("/readyz")
    assert response.status == 200
    assert await response.json() == {
        "status": "ready", "failing": [], "checks": {"nats": "ok", "postgres": "ok"},
    }


async def test_readyz_answers_503_naming_failing_and_timed_out_checks(client_for):
    health = Health(timeout_s=0.2)
    health.add_check("nats", passing)
    health.add_check("postgres", failing)
    health.add_check("s3", hanging)
    client = await client_for(health)
    started = asyncio.get_running_loop().time()
    response = await client.get("/readyz")
    assert asyncio.get_running_loop().time() - started < 1  # checks run concurrently
    body = await response.json()
    assert response.status == 503
    assert body["status"] == "not ready"
    assert body["failing"] == ["postgres", "s3"]
    assert body["checks"]["postgres"] == "ConnectionRefusedError: connection refused"
    assert body["checks"]["s3"] == "timed out after 0.2 s"


async def test_the_health_routes_share_an_existing_app_with_its_own_routes():
    async def uploads(request: web.Request) -> web.Response:
        return web.Response(text="gateway")

    app = web.Application()
    app.router.add_get("/uploads", uploads)
    Health().mount(app)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/uploads")).status == 200
        assert (await client.get("/readyz")).status == 200


async def test_serve_runs_standalone_on_the_given_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    health = Health()
    health.add_check("nats", failing)
    runner = await health.serve(port, host="127.0.0.1")
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/livez") as response:
                assert response.status == 200
            async with http.get(f"http://127.0.0.1:{port}/readyz") as response:
                assert response.status == 503
    finally:
        await runner.cleanup()


class FakeNats:
    def __init__(self, connected: bool) -> None:
        self.is_connected = connected


async def test_nats_check_fails_while_the_client_is_disconnected():
    await nats_check(FakeNats(connected=True))()
    with pytest.raises(Exception, match="not connected"):
        await nats_check(FakeNats(connected=False))()


async def test_postgres_check_runs_select_one_against_a_real_server(database_url):
    import asyncpg

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        await postgres_check(pool)()
    finally:
        await pool.close()
    with pytest.raises(Exception):
        await postgres_check(pool)()  # closed pool


async def test_nats_check_passes_against_a_real_server_and_fails_after_close(nats_url):
    import nats

    nc = await nats.connect(nats_url)
    await nats_check(nc)()
    await nc.close()
    with pytest.raises(Exception):
        await nats_check(nc)()


async def test_s3_check_passes_for_the_bucket_and_fails_with_a_wrong_secret(s3_server):
    def open_with(secret: str):
        return Storage.open(msgspec.structs.replace(managed_profile(s3_server), secret_access_key=Secret(secret)))

    good, bad = await open_with(s3_server.secret_access_key), await open_with("wrong")
    try:
        await s3_check(good)()
        with pytest.raises(Exception):
            await s3_check(bad)()
    finally:
        await good.close()
        await bad.close()


def dependency_up(name: str) -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("rawdrive_dependency_up", {"dependency": name})


async def test_dependencies_that_do_not_gate_readiness_go_to_the_gauge_only(client_for):
    # The gateway's choice: NATS or storage having a bad minute must not take the pod out of rotation.
    health = Health(timeout_s=0.2, dependencies_gate_readiness=False)
    health.add_dependency("nats", passing)
    health.add_dependency("s3", failing)
    health.add_dependency("postgres", hanging)
    response = await (await client_for(health)).get("/readyz")
    assert response.status == 200
    assert await response.json() == {"status": "ready", "failing": [], "checks": {}}
    await health.sample_dependencies()
    assert (dependency_up("nats"), dependency_up("s3"), dependency_up("postgres")) == (1.0, 0.0, 0.0)


async def test_dependencies_gate_readiness_by_default_as_workers_keep_them(client_for):
    health = Health(timeout_s=0.2)
    health.add_check("serving", passing)
    health.add_dependency("nats", failing)
    response = await (await client_for(health)).get("/readyz")
    assert response.status == 503
    assert (await response.json())["failing"] == ["nats"]


async def livez_probe(port: str | None) -> tuple[int, str]:
    """`python -m rawdrive_platform.livez` as the images' HEALTHCHECK runs it: (exit status, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "RAWDRIVE_HEALTH_PORT"}
    if port is not None:
        env["RAWDRIVE_HEALTH_PORT"] = port
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rawdrive_platform.livez", env=env, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await process.communicate()
    return process.returncode, stderr.decode()


async def test_the_images_liveness_probe_passes_while_the_health_server_answers_and_fails_after():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    health = Health()
    health.add_check("nats", failing)  # readiness fails; liveness does not depend on it
    runner = await health.serve(port, host="127.0.0.1")
    try:
        assert await livez_probe(str(port)) == (0, "")
    finally:
        await runner.cleanup()
    status, stderr = await livez_probe(str(port))
    assert status == 1 and f"/livez on port {port}" in stderr and "refused" in stderr.lower()


async def test_the_liveness_probe_fails_when_the_health_port_is_unset_or_not_a_number():
    assert await livez_probe(None) == (1, "RAWDRIVE_HEALTH_PORT is None, not a port number\n")
    assert (await livez_probe("http"))[0] == 1


async def test_the_liveness_probe_fails_on_an_answer_other_than_2xx():
    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500)

    app = web.Application()
    app.router.add_get("/livez", broken)
    async with TestServer(app, host="127.0.0.1") as server:
        status, stderr = await livez_probe(str(server.port))
    assert status == 1 and "HTTP Error 500" in stderr
