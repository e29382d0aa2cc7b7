"""Service lifecycle: wire connections, run workers until SIGTERM, stop in the right order.

A service's `__main__` reads like this:

    async def main(runtime: Runtime) -> None:
        js = await runtime.jetstream()
        pool = await runtime.database("verifier", MIGRATIONS)
        runtime.consume(js, SPEC, handler)
        runtime.relay(pool, js)

    run_service("commit-verifier", Settings, main)

On SIGTERM or SIGINT every worker is told to stop (a consumer finishes the message in hand and
fetches no more), then connections close in reverse order of opening. A worker that crashes
stops the whole process with a non-zero exit, so the orchestrator restarts it.

The health port also serves `/metrics`; the Runtime samples the lag and dead letters of every
consumer it runs, the backlog of every outbox it relays and the health of every dependency it
opened (`metrics`). Readiness fails once the service is stopping; whether it also follows the
dependencies is the service's choice (`serve_health`, see health.py).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from functools import partial
from importlib.resources.abc import Traversable
from typing import TypeVar

import asyncpg
import msgspec
import uvloop
from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from rawdrive_platform import bus, db, metrics
from rawdrive_platform.config import CommonSettings, ConfigError, load_settings
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.health import CheckFailed, Health, nats_check, postgres_check, s3_check
from rawdrive_platform.outbox import Relay
from rawdrive_platform.profiles import ProfileResolver, master_key, profile_resolver
from rawdrive_platform.storage import Storage, StorageRegistry, managed_storage_profile
from rawdrive_platform.telemetry import setup_telemetry

log = logging.getLogger(__name__)

SettingsT = TypeVar("SettingsT", bound=CommonSettings)
D = TypeVar("D")
Worker = Callable[[asyncio.Event], Awaitable[None]]
# Reads one source (a consumer's info, an outbox count) into its gauges.
Sampler = Callable[[], Awaitable[None]]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_MMAP_THRESHOLD_BYTES = 1024 * 1024
# How long workers cancelled at the stop timeout get to unwind.
_CANCELLED_UNWIND_S = 5.0


class Runtime:
    def __init__(self, name: str, settings: CommonSettings) -> None:
        self.name = name
        self.settings = settings
        self.stop = asyncio.Event()
        self.health = Health()
        self.storages = StorageRegistry()
        self._exit = AsyncExitStack()
        self._workers: list[asyncio.Task[None]] = []
        self._samplers: dict[str, Sampler] = {}
        self._nc: NATS | None = None
        self._resolver: ProfileResolver | None = None

    async def jetstream(self) -> JetStreamContext:
        """Connect to NATS (reconnecting forever) as this service's identity. The streams and the
        profile bucket are the provisioning identity's to create (`rawdrive_platform.provision
        --streams`): a service may not create, change or delete them (busauth)."""
        if self._nc is None:
            self._nc = await bus.connect(self.settings, name=self.name)
            self._exit.push_async_callback(self._nc.drain)
            self.health.add_dependency("nats", nats_check(self._nc))
        return self._nc.jetstream()

    async def database(
        self, schema: str, migrations: Traversable, *, max_size: int = 10, acquire_timeout_s: float | None = None
    ) -> asyncpg.Pool:
        """Apply this service's migrations, then open its pool (search_path = its schema) of at
        most `max_size` connections; a wait for one longer than `acquire_timeout_s` raises
        db.PoolExhausted. Its connections in use are on /metrics."""
        applied = await db.migrate(self.settings.database_url, schema, migrations)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        pool = await db.create_pool(
            self.settings.database_url, schema, max_size=max_size, acquire_timeout_s=acquire_timeout_s
        )
        self._exit.push_async_callback(pool.close)
        self.health.add_dependency("postgres", postgres_check(pool))
        metrics.watch_pool(pool, schema)
        return pool

    async def managed_storage(self) -> Storage:
        """The platform's own bucket; other profiles come from `self.storages` on demand."""
        storage = await self.storages.get(managed_storage_profile(self.settings))
        self.health.add_dependency("s3", s3_check(storage))
        return storage

    async def storage_resolver(self) -> ProfileResolver:
        """Resolves any `storage_profile_ref`: the managed bucket or a published BYOS profile."""
        if self._resolver is None:
            js = await self.jetstream()
            await self.managed_storage()
            self._resolver = await profile_resolver(js, self.settings, self.storages)
        return self._resolver

    def consume(
        self,
        js: JetStreamContext,
        spec: bus.ConsumerSpec,
        handle: bus.EventHandler,
        *,
        on_exhausted: bus.ExhaustedHandler | None = None,
        concurrency: int = 1,
    ) -> None:
        """Run a durable consumer as a worker, with the deployment's ack wait; its lag and dead
        letters are sampled for /metrics."""
        spec = msgspec.structs.replace(spec, ack_wait_s=self.settings.consumer_ack_wait_s)
        consumer = bus.Consumer(js, spec, handle, on_exhausted=on_exhausted, concurrency=concurrency)
        self.start(consumer.run, name=spec.durable)
        self._samplers[f"consumer {spec.durable}"] = partial(metrics.sample_consumer, js, spec.stream, spec.durable)

    def handle(
        self,
        js: JetStreamContext,
        table: HandlerTable[D],
        deps: D,
        *,
        max_deliver: int | None = None,
        concurrency: int = 1,
    ) -> None:
        """Run a handler table's durable consumer with `deps` (and the deployment's max_deliver)."""
        spec = table.spec if max_deliver is None else msgspec.structs.replace(table.spec, max_deliver=max_deliver)
        handle, on_exhausted = table.bind(deps)
        self.consume(js, spec, handle, on_exhausted=on_exhausted, concurrency=concurrency)

    def relay(self, pool: asyncpg.Pool, js: JetStreamContext) -> None:
        """Run the outbox relay of `pool`'s schema as a worker; its backlog is sampled for /metrics."""
        self.start(Relay(pool, js).run, name="outbox-relay")
        self._samplers["outbox"] = partial(metrics.sample_outbox, pool)

    def start(self, worker: Worker, *, name: str | None = None) -> None:
        self._workers.append(asyncio.create_task(worker(self.stop), name=name or getattr(worker, "__qualname__", None)))

    async def serve_health(
        self, app: web.Application | None = None, port: int | None = None, *, ready_on_dependencies: bool = True
    ) -> None:
        """Serve /livez, /readyz and /metrics, on `app` (which then serves everything) or on its own.
        `ready_on_dependencies=False`: readiness says only whether this process can serve (not
        stopping); the dependencies go to rawdrive_dependency_up alone."""
        self.health.dependencies_gate_readiness = ready_on_dependencies
        self.health.add_check("serving", self._serving)
        self._samplers["dependencies"] = self.health.sample_dependencies
        app = app if app is not None else web.Application()
        self.health.mount(app)
        metrics.mount(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.settings.stop_timeout_s)
        await runner.setup()
        await web.TCPSite(runner, "0.0.0.0", port or self.settings.health_port).start()
        self._exit.push_async_callback(runner.cleanup)

    async def _serving(self) -> None:
        if self.stop.is_set():
            raise CheckFailed("stopping")

    async def _sample(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, sample in self._samplers.items():
                try:
                    await sample()
                except Exception as exc:  # noqa: BLE001 - a gauge left stale must not stop the service
                    log.warning("metrics sample failed", extra={"sampler": name, "error": repr(exc)})
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.metrics_sample_interval_s)

    async def run(self) -> int:
        if self._samplers:
            self.start(self._sample, name="metrics-sampler")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        stopper = asyncio.create_task(self.stop.wait())
        pending = {stopper, *self._workers}
        log.info("service started", extra={"service": self.name, "workers": len(self._workers)})
        done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t is not stopper and t.exception() is not None]
        for task in crashed:
            log.error("worker crashed", exc_info=task.exception(), extra={"worker": task.get_name()})
        self.stop.set()
        stopper.cancel()
        if self._workers:
            _, unfinished = await asyncio.wait(self._workers, timeout=self.settings.stop_timeout_s)
            for task in unfinished:
                log.warning("worker did not stop in time", extra={"worker": task.get_name()})
                task.cancel()
            if unfinished:
                # Their cleanup (releasing a connection, nak'ing a message) runs before aclose
                # closes what it needs.
                await asyncio.wait(unfinished, timeout=_CANCELLED_UNWIND_S)
        log.info("service stopped", extra={"service": self.name})
        return 1 if crashed else 0

    async def aclose(self) -> None:
        await self._exit.aclose()
        await self.storages.aclose()


def _return_large_buffers_to_the_os() -> None:
    """Allocate every buffer of 1 MiB or more with mmap, so freeing it returns it to the OS.

    glibc otherwise raises its mmap threshold after the first large free, and later part-sized
    buffers (5-64 MiB upload parts, 4 MiB read chunks) come from the heap, which never shrinks:
    peak RSS then grows with the number of parts ever handled instead of the number in flight.
    Not lower: socket reads arrive as bytes of up to 256 KiB, and mmap'ing each one (page faults
    to zero it, munmap after) was half of the gateway's CPU while relaying tus uploads.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def run_service(
    name: str,
    settings_type: type[SettingsT],
    main: Callable[[Runtime], Awaitable[None]],
) -> None:
    """The whole life of a service process; exits with its status."""
    try:
        settings = load_settings(settings_type)
        # Malformed master keys stop the start here, named, rather than at the first BYOS upload.
        master_key(settings.storage_master_key, settings.storage_previous_master_keys)
        bus.auth_options(settings)
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"{name}: {exc}\n")
        sys.exit(2)
    provider = setup_telemetry(name, settings.log_level)
    _return_large_buffers_to_the_os()

    async def lifecycle() -> int:
        runtime = Runtime(name, settings)
        try:
            await main(runtime)
            return await runtime.run()
        finally:
            await runtime.aclose()

    try:
        # uvloop: the same asyncio, with socket I/O in C; the gateway's request path spends a
        # third of its time in transport writes on the default loop.
        status = uvloop.run(lifecycle())
    finally:
        provider.shutdown()
    sys.exit(status)
