"""Transactional outbox: record events in the same transaction as the state change they announce.

`enqueue` runs inside the caller's transaction. The `Relay` publishes pending rows in order and
deletes each one only after JetStream confirmed it. A relay that dies between the publish and
the delete republishes the row later under the same `Nats-Msg-Id`, which JetStream drops as a
duplicate within its window, so consumers see the event once. Several relays may run: rows are
claimed with `FOR UPDATE SKIP LOCKED`.

A batch is sent in order without waiting for each ack, then the acks are awaited together: one
write for the batch rather than a write and a wake-up per event. So when one row fails, rows
sent after it in the same batch may be stored before it (they are deleted once confirmed, so
they are not sent again); after a failure the relay sends one row at a time until a row goes
through, so a row that keeps failing holds back every later one, as a sequential relay would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import asyncpg
import msgspec
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import PubAck

from rawdrive_contracts import CloudEvent, encode, subject_for
from rawdrive_platform.bus import MSG_ID_HEADER
from rawdrive_platform.db import DATABASE_DOWN
from rawdrive_platform.telemetry import stored_context

log = logging.getLogger(__name__)

_NOTIFY_CHANNEL = "rawdrive_outbox"
# How long the relay waits for JetStream to confirm a batch.
PUBLISH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Transaction:
    """A connection inside a transaction, and the outbox of the same schema."""

    conn: asyncpg.Connection

    async def enqueue(self, event: CloudEvent[Any]) -> None:
        await enqueue(self.conn, event)


class UnitOfWork:
    """What a handler writes through, as in "Architecture Patterns with Python": `async with
    uow.begin() as tx:` gives a connection in a transaction plus the outbox, and everything done
    through it, the events enqueued included, commits at the end of the block or not at all.
    Handlers never take connections from the pool themselves, so the boundary is in one place."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def begin(self) -> AsyncIterator[Transaction]:
        async with self.pool.acquire() as conn, conn.transaction():
            yield Transaction(conn)


async def enqueue(conn: asyncpg.Connection, event: CloudEvent[Any]) -> None:
    """Add an event to the outbox inside the caller's transaction; a second enqueue of the same
    event id is a no-op."""
    await change_with_events(conn, None, (), [event])


async def change_with_events(
    conn: asyncpg.Connection | asyncpg.Pool,
    change: str | None,
    args: Sequence[Any],
    events: Sequence[CloudEvent[Any]],
) -> None:
    """One statement, so one round trip and atomic without an explicit transaction: `change` (an
    INSERT or UPDATE using $1..$n for `args`), the outbox rows of `events`, and a wake-up for the
    relay that PostgreSQL delivers at commit, so the relay wakes only for rows it can see.

    The events are recorded whatever `change` matched: use it for changes that either happen
    or fail (an insert), and an explicit transaction for conditional ones.
    """
    params: list[Any] = list(args)
    rows = []
    for event in events:
        n = len(params)
        rows.append(f"(${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}::jsonb)")
        params += [event.id, subject_for(event.data), encode(event), stored_context()]
    params.append(_NOTIFY_CHANNEL)
    parts = [f"change AS ({change})"] if change else []
    parts.append(
        "queued AS (INSERT INTO outbox (event_id, subject, payload, headers) "
        f"VALUES {', '.join(rows)} ON CONFLICT (event_id) DO NOTHING)"
    )
    await conn.execute(f"WITH {', '.join(parts)} SELECT pg_notify(${len(params)}, current_schema())", *params)


class OutboxRow(NamedTuple):
    """An event as its outbox row. Made where the event is (`outbox_row`), so it carries that
    place's trace context even when another task writes it."""

    event_id: str
    subject: str
    payload: bytes
    headers: str  # JSON: the trace context


def outbox_row(event: CloudEvent[Any], trace_context: str | None = None) -> OutboxRow:
    """`trace_context`: the current one (`stored_context()`) if the caller has it already."""
    return OutboxRow(event.id, subject_for(event.data), encode(event), trace_context or stored_context())


async def insert_with_rows(
    conn: asyncpg.Connection | asyncpg.Pool,
    change: str,
    args: Sequence[Any],
    rows: Sequence[tuple[str, OutboxRow]],
) -> list[str]:
    """One statement for many changes at once: `change` (an INSERT or UPDATE using $1..$n for
    `args`, ending `RETURNING <key>`), then the outbox rows whose key it returned, then a wake-up
    for the relay (delivered at commit). Returns the keys `change` returned: a row it skipped
    (a guard in its WHERE) records no events. Atomic: one statement is one transaction.
    """
    n = len(args)
    keys, event_ids, subjects, payloads, headers = [], [], [], [], []
    for key, row in rows:
        keys.append(key)
        event_ids.append(row.event_id)
        subjects.append(row.subject)
        payloads.append(row.payload)
        headers.append(row.headers)
    records = await conn.fetch(
        f"""WITH change AS ({change}),
        queued AS (
            INSERT INTO outbox (event_id, subject, payload, headers)
            SELECT e.event_id, e.subject, e.payload, e.headers::jsonb
              FROM unnest(${n + 1}::text[], ${n + 2}::text[], ${n + 3}::text[], ${n + 4}::bytea[], ${n + 5}::text[])
                   AS e(key, event_id, subject, payload, headers)
             WHERE e.key IN (SELECT * FROM change)
            ON CONFLICT (event_id) DO NOTHING)
        SELECT c.*, pg_notify(${n + 6}, current_schema()) FROM change c""",
        *args, keys, event_ids, subjects, payloads, headers, _NOTIFY_CHANNEL,
    )
    return [record[0] for record in records]


class Relay:
    """Publishes the outbox of one schema to JetStream until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        js: JetStreamContext,
        *,
        batch_size: int = 100,
        poll_interval_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._js = js
        self._batch_size = batch_size
        self._poll_interval_s = poll_interval_s
        self._wake = asyncio.Event()
        self._failing = False  # the last batch had a failure: send one row at a time

    async def run(self, stop: asyncio.Event) -> None:
        listener = await self._pool.acquire()
        await listener.add_listener(_NOTIFY_CHANNEL, self._on_notify)
        try:
            while not stop.is_set():
                try:
                    published = await self.publish_pending()
                except DATABASE_DOWN as exc:
                    log.warning("outbox relay: database unavailable: %r", exc)
                    published = 0
                if published:
                    continue  # more may be waiting
                self._wake.clear()
                stopper = asyncio.create_task(stop.wait())
                waker = asyncio.create_task(self._wake.wait())
                await asyncio.wait({stopper, waker}, timeout=self._poll_interval_s, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                waker.cancel()
        finally:
            try:
                await listener.remove_listener(_NOTIFY_CHANNEL, self._on_notify)
            except (asyncpg.InterfaceError, OSError):
                pass
            await self._pool.release(listener)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch; returns how many rows were published (and removed)."""
        published: list[int] = []
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT seq, event_id, subject, payload, headers FROM outbox
                   ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED""",
                1 if self._failing else self._batch_size,
            )
            outcomes = await self._publish(rows)
            self._failing = False
            for row, outcome in zip(rows, outcomes):
                if isinstance(outcome, PubAck):
                    if outcome.duplicate:
                        log.info("outbox event was already published", extra={"event_id": row["event_id"]})
                    published.append(row["seq"])
                    continue
                self._failing = True
                await conn.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE seq = $1",
                    row["seq"], repr(outcome)[:500],
                )
                log.warning("outbox publish failed, will retry", extra={"event_id": row["event_id"], "error": repr(outcome)})
            if published:
                await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", published)
        return len(published)

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> list[PubAck | BaseException]:
        """Each row's ack or why it failed, in row order."""
        sent: list[asyncio.Future[PubAck]] = []
        unsent: BaseException | None = None
        for row in rows:
            headers = {**msgspec.json.decode(row["headers"]), MSG_ID_HEADER: row["event_id"]}
            try:
                sent.append(await self._js.publish_async(row["subject"], row["payload"], headers=headers))
            except Exception as exc:  # noqa: BLE001 - not even sent (disconnected): it and the rest wait
                unsent = exc
                break
        if sent:
            # One timer for the batch: asyncio.wait_for per ack cost more than the publish.
            await asyncio.wait(sent, timeout=PUBLISH_TIMEOUT_S)
        outcomes: list[PubAck | BaseException] = []
        for ack in sent:
            if not ack.done():
                ack.cancel()  # frees its slot in the client's pending publishes
                outcomes.append(NatsTimeoutError())
            elif ack.cancelled():
                outcomes.append(asyncio.CancelledError())
            else:
                outcomes.append(ack.exception() or ack.result())
        if unsent is not None:
            outcomes += [unsent] * (len(rows) - len(outcomes))
        return outcomes
