"""A request that finds no free database connection in time is told to retry (issue 21)."""

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from rawdrive_platform.db import PoolExhausted
from upload_gateway.http.problems import BUSY_RETRY_AFTER_S, PROBLEM_CONTENT_TYPE, problem_middleware


async def test_an_exhausted_pool_is_answered_503_with_retry_after_as_a_problem():
    async def busy(request: web.Request) -> web.Response:
        raise PoolExhausted("no database connection came free within 5 s")

    app = web.Application(middlewares=[problem_middleware])
    app.router.add_get("/v1/busy", busy)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/v1/busy")
        assert response.status == 503
        assert response.headers["Retry-After"] == str(BUSY_RETRY_AFTER_S)
        assert response.content_type == PROBLEM_CONTENT_TYPE
        problem = await response.json()
        assert (problem["code"], problem["status"]) == ("unavailable", 503)
        assert "retry later" in problem["detail"]

