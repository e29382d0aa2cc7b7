"""Liveness and readiness over HTTP for the orchestrator.

``/livez`` answers 200 while the event loop runs. ``/readyz`` runs every registered check
concurrently, each under a timeout, and answers 200 only if all pass, else 503 naming the
failing ones. Mount the routes on an existing aiohttp app or serve them on their own port.

Dependencies (NATS, PostgreSQL, S3) are checked apart from readiness: `sample_dependencies`
sets the gauge `rawdrive_dependency_up` for each, for metrics and alerts. Whether they also
decide readiness is the service's choice (`dependencies_gate_readiness`): a worker keeps them
(no traffic reaches it through a Service; a new version that cannot reach its dependencies
halts a rollout instead of replacing working pods), while the gateway's readiness says only
whether the pod can serve: NATS or storage having a bad minute would otherwise take every
replica out of rotation at once, and clients are better told 503 with Retry-After by a pod
that stays in it.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web

from rawdrive_platform.metrics import DEPENDENCY_UP
from rawdrive_platform.storage import Storage

# A check returns normally when its dependency is usable and raises (anything) when not.
ReadinessCheck = Callable[[], Awaitable[None]]


class CheckFailed(Exception):
    pass


class ReadinessReport(msgspec.Struct, frozen=True):
    status: Literal["ready", "not ready"]
    failing: list[str]
    checks: dict[str, str]  # name -> "ok" or why it failed


class Health:
    def __init__(self, timeout_s: float = 2.0, *, dependencies_gate_readiness: bool = True) -> None:
        self.timeout_s = timeout_s
        self.dependencies_gate_readiness = dependencies_gate_readiness
        self._checks: dict[str, ReadinessCheck] = {}
        self._dependencies: dict[str, ReadinessCheck] = {}

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """A condition of readiness, always."""
        self._checks[name] = check

    def add_dependency(self, name: str, check: ReadinessCheck) -> None:
        """A dependency: sampled into rawdrive_dependency_up; a condition of readiness only
        while `dependencies_gate_readiness`."""
        self._dependencies[name] = check

    async def readiness(self) -> ReadinessReport:
        gating = self._checks | (self._dependencies if self.dependencies_gate_readiness else {})
        checks = await self._run_all(gating)
        failing = [name for name, outcome in checks.items() if outcome != "ok"]
        return ReadinessReport(
            status="not ready" if failing else "ready", failing=failing, checks=checks
        )

    async def sample_dependencies(self) -> None:
        """Check every dependency now and set its rawdrive_dependency_up."""
        for name, outcome in (await self._run_all(self._dependencies)).items():
            DEPENDENCY_UP.labels(name).set(1 if outcome == "ok" else 0)

    async def _run_all(self, checks: dict[str, ReadinessCheck]) -> dict[str, str]:
        names = list(checks)
        return dict(zip(names, await asyncio.gather(*(self._run(checks[name]) for name in names))))

    async def _run(self, check: ReadinessCheck) -> str:
        try:
            await asyncio.wait_for(check(), self.timeout_s)
        except asyncio.TimeoutError:
            return f"timed out after {self.timeout_s} s"
        except Exception as error:  # a failing dependency, whatever it raised
            return f"{type(error).__name__}: {error}"
        return "ok"

    def mount(self, app: web.Application) -> None:
        """Add /livez and /readyz to an app that has not started yet."""
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)

    async def serve(self, port: int, host: str = "0.0.0.0") -> web.AppRunner:
        """Serve on a port of its own; ``await runner.cleanup()`` to stop."""
        app = web.Application()
        self.mount(app)
        runner = web.AppRunner(app, access_log=None)  # probes every few seconds: not news
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner

    async def _livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _readyz(self, request: web.Request) -> web.Response:
        report = await self.readiness()
        return web.Response(
            body=msgspec.json.encode(report),
            status=200 if report.status == "ready" else 503,
            content_type="application/json",
        )


def nats_check(nc: Any) -> ReadinessCheck:
    """Ready while the nats-py client is connected (not connecting, draining or closed)."""

    async def check() -> None:
        if not nc.is_connected:
            raise CheckFailed("not connected to NATS")

    return check


def postgres_check(pool: Any) -> ReadinessCheck:
    """Ready when an asyncpg pool can run SELECT 1."""

    async def check() -> None:
        await pool.fetchval("SELECT 1")

    return check


def s3_check(storage: Storage) -> ReadinessCheck:
    """Ready when the profile's bucket answers HEAD with its credentials."""
    return storage.check_bucket
