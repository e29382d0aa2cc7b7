"""Small helpers the services' and the end-to-end tests share: a service's handler table
consuming in the test's process, the events a service under test has announced, the test S3
server as the managed storage profile, a stand-in HTTP server (a collector, a JWKS, a hostile
endpoint), a janitor sweep with every age at zero, and a workspace's dead letters."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources.abc import Traversable
from typing import Any, TypeVar

import asyncpg
import msgspec
from aiohttp import web
from nats.js import JetStreamContext

from rawdrive_contracts import CloudEvent, decode
from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_devkit.testing import NatsIdentities
from rawdrive_platform import bus, db
from rawdrive_platform.config import Secret
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.deadletter import DeadLetter, list_dead_letters
from rawdrive_platform.storage import StorageProfile

D = TypeVar("D")


@asynccontextmanager
async def migrated_pool(database_url: str, schema: str, migrations: Traversable) -> AsyncIterator[asyncpg.Pool]:
    """A pool on `schema` of the test's database with the service's `migrations` (and the
    outbox's) applied, as the service starts; closed when the block ends."""
    await db.migrate(database_url, schema, migrations)
    pool = await db.create_pool(database_url, schema)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def jetstream(nats_url: str, name: str, **stream_settings: Any) -> AsyncIterator[JetStreamContext]:
    """A connection of the test's own to NATS, as `name`, with the pipeline's streams provisioned
    (`stream_settings`: bus.StreamSettings' fields); closed when the block ends."""
    nc = await bus.connect(nats_url, name=name)
    try:
        js = nc.jetstream()
        await bus.provision(js, bus.StreamSettings(**stream_settings))
        yield js
    finally:
        await nc.close()


def consumer_for_test(table: HandlerTable[Any], workspace_id: str | None = None, **settings: Any) -> bus.ConsumerSpec:
    """`table`'s consumer under a durable of the test's own, reading only `workspace_id`'s events
    when given (the streams hold every other test's too) and redelivering after 0.2 s; `settings`
    change any other of its settings (ack_wait_s, max_deliver, backoff_s...)."""
    spec = table.spec
    filters = spec.filter_subjects
    if workspace_id is not None:
        filters = tuple(f.removesuffix("*") + workspace_id for f in filters)
    return msgspec.structs.replace(
        spec,
        durable=f"{spec.durable}-{uuid.uuid4().hex[:8]}",
        filter_subjects=filters,
        **({"backoff_s": (0.2,)} | settings),
    )


@asynccontextmanager
async def consuming(
    js: JetStreamContext, table: HandlerTable[D], deps: D, spec: bus.ConsumerSpec, *, concurrency: int = 1
) -> AsyncIterator[bus.ConsumerSpec]:
    """`table`'s handlers consuming `spec` (see `consumer_for_test`) with `deps` in this process,
    as the service's Runtime runs them; the durable is deleted when the block ends."""
    handle, on_exhausted = table.bind(deps)
    consumer = bus.Consumer(js, spec, handle, on_exhausted=on_exhausted, concurrency=concurrency)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        yield spec
    finally:
        stop.set()
        # A handler still working (hashing, decoding) finishes before the consumer ends.
        await asyncio.wait_for(task, 30)
        await js.delete_consumer(spec.stream, spec.durable)


async def stored_events(js: JetStreamContext, *subjects: str, quiet_s: float = 0.3) -> list[CloudEvent[Any]]:
    """Every event stored so far under each subject (wildcards allowed), read with an ordered
    consumer until none more comes within `quiet_s`."""
    found = []
    for subject in subjects:
        sub = await js.subscribe(subject, ordered_consumer=True)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=quiet_s)
                except Exception:  # nats' TimeoutError: nothing more stored
                    break
                found.append(decode(msg.data))
        finally:
            await sub.unsubscribe()
    return found


def managed_profile(connection: S3Connection) -> StorageProfile:
    """The test S3 server's bucket as the managed storage profile, as a service's settings give it."""
    return StorageProfile(
        profile_id="managed",
        provider="r2",
        endpoint=connection.endpoint,
        region=connection.region,
        bucket=connection.bucket,
        access_key_id=connection.access_key_id,
        secret_access_key=Secret(connection.secret_access_key),
    )


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[int]:
    """`app` served on a free loopback port while the block runs; yields the port."""
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


def janitor_pass(env: dict[str, str], identities: NatsIdentities) -> dict:
    """One `janitor sweep` as the janitor's NATS identity over `env`'s database and bucket, with
    every age threshold at zero (orphans are reported, not deleted): multipart uploads a fault
    orphaned (created in S3 by a session whose database write then failed) are its to abort.
    Returns the sweep's JSON report."""
    overrides = {"RAWDRIVE_JANITOR_ORPHAN_MIN_AGE_HOURS": "0", "RAWDRIVE_JANITOR_MULTIPART_MIN_AGE_HOURS": "0",
                 **identities.env("janitor")}
    result = subprocess.run([sys.executable, "-m", "janitor", "sweep"], env={**env, **overrides},
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


async def dead_letters_of(nats_url: str, workspace: str) -> list[DeadLetter]:
    """The dead letters of one workspace's events (their subjects end with its id)."""
    nc = await bus.connect(nats_url, name="test-deadletters")
    try:
        letters = await list_dead_letters(nc.jetstream())
    finally:
        await nc.close()
    return [d for d in letters if d.subject and d.subject.endswith(f".{workspace}")]
