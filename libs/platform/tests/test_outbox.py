"""Migrations, the transactional outbox and its relay against real PostgreSQL and NATS."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from rawdrive_contracts import UPLOADS_STREAM, CloudEvent, UploadAborted, decode, new_event, subject_filter, subject_for
from rawdrive_devkit.testkit import jetstream, migrated_pool
from rawdrive_platform import bus, db, outbox


@pytest.fixture
def migrations_dir(tmp_path):
    (tmp_path / "0001_widgets.sql").write_text("CREATE TABLE widgets (id int PRIMARY KEY);")
    (tmp_path / "0002_widget_names.sql").write_text("ALTER TABLE widgets ADD COLUMN name text;")
    return tmp_path


async def test_concurrent_starts_apply_each_migration_exactly_once(fresh_database_url, migrations_dir):
    results = await asyncio.gather(*(db.migrate(fresh_database_url, "svc", migrations_dir) for _ in range(5)))
    applied = [name for names in results for name in names]
    assert sorted(applied) == ["platform/0001_outbox.sql", "svc/0001_widgets.sql", "svc/0002_widget_names.sql"]
    conn = await asyncpg.connect(fresh_database_url)
    try:
        count = await conn.fetchval("SELECT count(*) FROM svc.schema_migrations")
        columns = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='svc' AND table_name='widgets'"
        )
    finally:
        await conn.close()
    assert count == 3
    assert {c["column_name"] for c in columns} == {"id", "name"}


async def test_a_migration_edited_after_it_was_applied_stops_the_start(fresh_database_url, migrations_dir):
    await db.migrate(fresh_database_url, "svc", migrations_dir)
    (migrations_dir / "0001_widgets.sql").write_text("CREATE TABLE widgets (id bigint PRIMARY KEY);")
    with pytest.raises(db.MigrationError, match="changed after it was applied"):
        await db.migrate(fresh_database_url, "svc", migrations_dir)


def test_badly_named_migration_files_are_refused(tmp_path):
    (tmp_path / "1_widgets.sql").write_text("SELECT 1;")
    with pytest.raises(db.MigrationError, match="NNNN_snake_case.sql"):
        db.load_migrations("svc", tmp_path)


@pytest.fixture
async def outbox_env(fresh_database_url, migrations_dir, nats_url):
    async with (
        migrated_pool(fresh_database_url, "svc", migrations_dir) as pool,
        jetstream(nats_url, "test-outbox", duplicate_window_s=60) as js,
    ):
        yield pool, js


def aborted(workspace: str) -> UploadAborted:
    return UploadAborted(
        workspace_id=workspace,
        upload_id=uuid.uuid4().hex,
        asset_id=uuid.uuid4().hex,
        storage_profile_ref="managed",
        object_key="k",
        aborted_by="tester",
    )


async def stored_events(js, workspace: str) -> list[str]:
    """Event ids in the stream for this workspace, read with a throwaway ordered view."""
    sub = await js.subscribe(subject_filter(UploadAborted.spec, workspace), ordered_consumer=True)
    ids = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:  # noqa: BLE001 - timeout: nothing more
                break
            ids.append(decode(msg.data).id)
    finally:
        await sub.unsubscribe()
    return ids


async def enqueued(pool: asyncpg.Pool, workspace: str, count: int = 1) -> list[CloudEvent[Any]]:
    """`count` new upload.aborted events of `workspace`, enqueued in one committed transaction."""
    events = [new_event(aborted(workspace), source="test") for _ in range(count)]
    async with pool.acquire() as conn, conn.transaction():
        for event in events:
            await outbox.enqueue(conn, event)
    return events


async def test_an_event_enqueued_in_a_rolled_back_transaction_is_never_published(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    async with pool.acquire() as conn:
        with pytest.raises(RuntimeError):
            async with conn.transaction():
                await conn.execute("INSERT INTO widgets (id) VALUES (1)")
                await outbox.enqueue(conn, new_event(aborted(workspace), source="test"))
                raise RuntimeError("state change failed")
    assert await outbox.Relay(pool, js).publish_pending() == 0
    assert await stored_events(js, workspace) == []


async def test_the_relay_publishes_committed_events_in_order_and_clears_them(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    events = await enqueued(pool, workspace, 3)
    stop = asyncio.Event()
    relay = asyncio.create_task(outbox.Relay(pool, js).run(stop))
    try:
        async with asyncio.timeout(10):
            while await pool.fetchval("SELECT count(*) FROM outbox"):
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await relay
    assert await stored_events(js, workspace) == [e.id for e in events]


async def test_a_relay_that_died_after_publishing_does_not_duplicate_the_event(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    [event] = await enqueued(pool, workspace)
    # The first relay published, then died before deleting its row.
    await bus.publish(js, event)
    assert await outbox.Relay(pool, js).publish_pending() == 1
    assert await stored_events(js, workspace) == [event.id]


async def test_two_relays_at_once_publish_every_event_exactly_once(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    events = await enqueued(pool, workspace, 60)
    relays = [outbox.Relay(pool, js, batch_size=7) for _ in range(2)]
    while sum(await asyncio.gather(*(r.publish_pending() for r in relays))):
        pass
    stored = await stored_events(js, workspace)
    assert sorted(stored) == sorted(e.id for e in events)
    assert len(stored) == len(set(stored)) == 60


async def test_a_consumer_in_another_process_sees_an_outbox_event_once_after_redelivery(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    [event] = await enqueued(pool, workspace)
    await bus.publish(js, event)  # a relay crash after publishing: the row is published again
    await outbox.Relay(pool, js).publish_pending()
    spec = bus.ConsumerSpec(
        durable=f"test-{uuid.uuid4().hex[:8]}", stream=UPLOADS_STREAM.name,
        filter_subjects=(subject_filter(UploadAborted.spec, workspace),), backoff_s=(0.1,),
    )
    handled: list[str] = []

    async def first_attempt_crashes(e):
        handled.append(e.id)
        if len(handled) == 1:
            raise bus.Transient("forced redelivery")

    stop = asyncio.Event()
    task = asyncio.create_task(bus.Consumer(js, spec, first_attempt_crashes).run(stop))
    async with asyncio.timeout(10):
        while len(handled) < 2:
            await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)
    stop.set()
    await task
    # Delivered twice (the forced redelivery), but one stored copy despite two publishes.
    assert handled == [event.id, event.id]
    assert await stored_events(js, workspace) == [event.id]

# -- the relay when a publish fails: the rows confirmed go, the failed one stays with its error,
# and while it keeps failing it holds back every later row.

# No stream captures this subject: JetStream answers a publish to it with "no responders".
NO_STREAM = "rawdrive.nowhere.test"


async def add(pool, workspace: str, subject: str | None = None) -> str:
    """An outbox row for a new event, to `subject` (default: the event's own); its event id."""
    event = new_event(aborted(workspace), source="test")
    row = outbox.outbox_row(event)
    await pool.execute(
        "INSERT INTO outbox (event_id, subject, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
        row.event_id, subject or subject_for(event.data), row.payload, row.headers,
    )  # fmt: skip
    return event.id


async def pending(pool) -> list[tuple[str, int, bool]]:
    rows = await pool.fetch("SELECT event_id, attempts, last_error IS NOT NULL AS failed FROM outbox ORDER BY seq")
    return [(r["event_id"], r["attempts"], r["failed"]) for r in rows]


async def test_a_failed_row_stays_with_its_error_and_holds_back_later_rows_until_it_goes_through(outbox_env):
    pool, js = outbox_env
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    first, stuck, third = await add(pool, workspace), await add(pool, workspace, NO_STREAM), await add(pool, workspace)
    relay = outbox.Relay(pool, js)
    # One batch: the rows JetStream confirmed are removed, the failed one stays.
    assert await relay.publish_pending() == 2
    assert await pending(pool) == [(stuck, 1, True)]

    # While it fails, nothing after it goes out.
    later = await add(pool, workspace)
    assert await relay.publish_pending() == 0
    assert await pending(pool) == [(stuck, 2, True), (later, 0, False)]

    # Once it goes through, so does the rest, in order.
    subject = await pool.fetchval("SELECT subject FROM outbox WHERE event_id = $1", later)
    await pool.execute("UPDATE outbox SET subject = $2 WHERE event_id = $1", stuck, subject)
    assert await relay.publish_pending() == 1  # alone: the last batch had a failure
    assert await relay.publish_pending() == 1
    assert await pending(pool) == []
    assert await stored_events(js, workspace) == [first, third, stuck, later]
