"""The relay when a publish fails, against real PostgreSQL and NATS: the rows confirmed go, the
failed one stays with its error, and while it keeps failing it holds back every later row."""

from __future__ import annotations

import uuid

import pytest

from rawdrive_contracts import UploadAborted, decode, new_event, subject_filter, subject_for
from rawdrive_platform import bus, db, outbox

# No stream captures this subject: JetStream answers a publish to it with "no responders".
NO_STREAM = "rawdrive.nowhere.test"


@pytest.fixture
async def relay_env(fresh_database_url, nats_url, tmp_path):
    (tmp_path / "0001_nothing.sql").write_text("SELECT 1;")
    await db.migrate(fresh_database_url, "svc", tmp_path)
    pool = await db.create_pool(fresh_database_url, "svc")
    nc = await bus.connect(nats_url, name="test-outbox-relay")
    js = nc.jetstream()
    await bus.provision(js, bus.StreamSettings(duplicate_window_s=60))
    yield pool, js
    await nc.close()
    await pool.close()


async def add(pool, workspace: str, subject: str | None = None) -> str:
    """An outbox row for a new event, to `subject` (default: the event's own); its event id."""
    event = new_event(
        UploadAborted(workspace_id=workspace, upload_id=uuid.uuid4().hex, asset_id=uuid.uuid4().hex,
                      storage_profile_ref="managed", object_key="k", aborted_by="tester"),
        source="test",
    )  # fmt: skip
    row = outbox.outbox_row(event)
    await pool.execute(
        "INSERT INTO outbox (event_id, subject, payload, headers) VALUES ($1, $2, $3, $4::jsonb)",
        row.event_id, subject or subject_for(event.data), row.payload, row.headers,
    )  # fmt: skip
    return event.id


async def stored_events(js, workspace: str) -> list[str]:
    """Event ids in the stream for this workspace, in stream order."""
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


async def pending(pool) -> list[tuple[str, int, bool]]:
    rows = await pool.fetch("SELECT event_id, attempts, last_error IS NOT NULL AS failed FROM outbox ORDER BY seq")
    return [(r["event_id"], r["attempts"], r["failed"]) for r in rows]


async def test_a_failed_row_stays_with_its_error_and_holds_back_later_rows_until_it_goes_through(relay_env):
    pool, js = relay_env
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
