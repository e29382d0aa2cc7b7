"""upload_sessions in PostgreSQL: insert (within the workspaces' quotas), read, and apply a state
machine event atomically."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import asyncpg
import msgspec

from rawdrive_contracts import RejectionReason
from rawdrive_platform.outbox import OutboxRow, insert_with_rows
from rawdrive_platform.storage import MANAGED_PROFILE_ID
from upload_gateway.errors import UploadError
from upload_gateway.uploads import quotas
from upload_gateway.uploads.sessions import SETS_REJECTION, TRANSITIONS, SessionEvent, UploadSession

_COLUMNS = tuple(field.name for field in msgspec.structs.fields(UploadSession))


def _session(row: asyncpg.Record | None) -> UploadSession | None:
    return None if row is None else msgspec.convert(dict(row), UploadSession)


# New sessions arrive as one JSON array ($1), typed by the table's own row type. A row is kept
# only if its storage_profile_ref is still its workspace's active profile (no storage_profiles
# row: the managed one, $2), read in the same snapshot as the insert.
_INSERT = f"""INSERT INTO upload_sessions ({', '.join(_COLUMNS)})
    SELECT {', '.join(f'r.{column}' for column in _COLUMNS)}
      FROM json_populate_recordset(NULL::upload_sessions, $1::json) AS r
     WHERE r.storage_profile_ref = COALESCE(
               (SELECT p.ref FROM storage_profiles p WHERE p.workspace_id = r.workspace_id), $2)
    RETURNING upload_id"""
# Row-specific failures (a CHECK, a duplicate id, a value PostgreSQL refuses): worth retrying the
# other rows of a batch alone. Anything else (the database is down) fails the whole batch.
_ROW_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
# A connection that cannot take the next batch.
_CONNECTION_ERRORS = (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, asyncpg.PostgresConnectionError)


async def insert_many(
    conn: asyncpg.Connection | asyncpg.Pool, sessions: Sequence[tuple[UploadSession, OutboxRow]]
) -> set[str]:
    """New sessions and the events announcing them, in one statement (one round trip). Returns
    the upload ids written; a session whose profile is no longer its workspace's active one is
    not, nor is its event."""
    rows = msgspec.json.encode([session for session, _ in sessions]).decode()
    keyed = [(session.upload_id, created) for session, created in sessions]
    return set(await insert_with_rows(conn, _INSERT, [rows, MANAGED_PROFILE_ID], keyed))


class SessionWriter:
    """Group commit for new sessions: the inserts that arrive while statements are in flight go
    together in the next (`insert_many`), in one statement and one transaction.

    Up to `max_in_flight` statements run at once, each on its own connection: a commit's fixed
    latency (the WAL flush) then overlaps instead of queueing every batch behind the one before;
    with one in flight, that latency capped session creation well below what the CPUs allowed.

    Each session creation waits for its own commit, so a 201 still means its row and event are
    durable. What concurrent requests share is the round trip and the pool's reset of the
    connection, which were most of a creation's cost; alone, a request waits no longer than
    before. One row's failure (a constraint) fails only its own request: the batch is then
    written a row at a time.

    With `limits`, each batch is admitted under its workspaces' quotas first (quotas.admit): their
    usage is counted under a lock, in the transaction that inserts the admitted sessions; a
    refused one fails its own request with the refusal. That lock is per workspace, so a second
    statement on one of a batch's workspaces would only wait for it, holding a pooled connection
    meanwhile, and the other workspaces of its batch with it (with one workspace's lock held by
    another replica, creations in other workspaces hung behind it): a workspace is written by
    one flusher at a time, and its sessions arriving meanwhile wait in `_pending`, costing no
    connection, for that flusher's next batch. The lock in PostgreSQL still keeps replicas apart.
    """

    def __init__(
        self, pool: asyncpg.Pool, max_batch: int = 100, max_in_flight: int = 3,
        limits: quotas.QuotaLimits | None = None,
    ) -> None:  # fmt: skip
        self._pool = pool
        self._limits = limits
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[tuple[UploadSession, OutboxRow, asyncio.Future[bool]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        # Workspaces a flusher is writing now (only with limits: without, nothing waits on them).
        self._writing: set[str] = set()

    async def insert(self, session: UploadSession, created: OutboxRow) -> bool:
        """Commit the session and its event; False (nothing written) when the session's
        storage_profile_ref is no longer its workspace's active profile."""
        written = asyncio.get_running_loop().create_future()
        self._pending.append((session, created, written))
        if len(self._flushers) < self._max_in_flight:
            self._flushers.add(asyncio.create_task(self._flush(), name="session-writer"))
        return await written

    async def _flush(self) -> None:
        batch: list[tuple[UploadSession, OutboxRow, asyncio.Future[bool]]] = []
        try:
            # One connection for a whole burst of batches: the pool resets a connection on
            # release (another round trip), so release it only once nothing is waiting. The
            # outer loop: inserts that arrived during that release are this flusher's too. A
            # batch is taken before its connection, so no connection is held for nothing.
            while batch := self._take():
                async with self._pool.acquire() as conn:
                    while batch:
                        await self._write(conn, batch)
                        self._written(batch)
                        batch = self._take()
        except Exception as error:  # noqa: BLE001 - no connection: every waiter gets the failure
            self._written(batch)
            self._fail_others(batch, error)
        except BaseException:  # cancelled at shutdown: no waiter may hang
            self._written(batch)
            self._fail_others(batch, RuntimeError("the session writer stopped"))
            raise
        finally:
            # Here, not in a done callback: that runs a loop turn later, and an insert arriving
            # meanwhile would count this flusher as running and wait with nobody to write it.
            self._flushers.discard(asyncio.current_task())  # type: ignore[arg-type]

    def _written(self, batch: list[_Pending]) -> None:
        """The batch's workspaces are free for the next flusher to take."""
        self._writing.difference_update(session.workspace_id for session, _, _ in batch)

    def _take(self) -> list[_Pending]:
        """The next batch: pending sessions, in order, of workspaces no other flusher is writing
        (all of them without limits), now this flusher's."""
        if self._limits is None:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            return batch
        batch, left = [], []
        for item in self._pending:
            if len(batch) < self._max_batch and item[0].workspace_id not in self._writing:
                batch.append(item)
            else:
                left.append(item)
        # Marked after the loop: a workspace this batch takes stays takeable for its later sessions.
        self._writing.update(session.workspace_id for session, _, _ in batch)
        self._pending = left
        return batch

    def _fail_others(self, batch: list[_Pending], error: BaseException) -> None:
        """This flusher failed (no connection, or a broken one): its batch and every session
        waiting fail with it, except those of workspaces another flusher is writing (it takes
        them next)."""
        mine = [item for item in self._pending if item[0].workspace_id not in self._writing]
        self._pending = [item for item in self._pending if item[0].workspace_id in self._writing]
        _fail(batch + mine, error)

    async def _write(
        self, conn: asyncpg.Connection, batch: list[tuple[UploadSession, OutboxRow, asyncio.Future[bool]]]
    ) -> None:
        admitted, refusals = batch, []
        try:
            async with conn.transaction() if self._limits else contextlib.nullcontext():
                if self._limits is not None:
                    admitted, refusals = await _admit(conn, self._limits, batch)
                inserted = await insert_many(conn, [(session, created) for session, created, _ in admitted])
        except _ROW_ERRORS as error:
            if len(batch) == 1:
                _fail(batch, error)
            else:
                for item in batch:
                    await self._write(conn, [item])
            return
        except _CONNECTION_ERRORS:
            raise  # the connection is broken: _flush fails this batch and everything waiting
        except Exception as error:  # noqa: BLE001 - every waiter gets the failure as its own
            _fail(batch, error)
            return
        for written, refusal in refusals:
            if not written.done():
                written.set_exception(refusal)
        for session, _, written in admitted:
            if not written.done():  # its request may have been cancelled meanwhile
                written.set_result(session.upload_id in inserted)


_Pending = tuple[UploadSession, OutboxRow, "asyncio.Future[bool]"]


async def _admit(
    conn: asyncpg.Connection, limits: quotas.QuotaLimits, batch: list[_Pending]
) -> tuple[list[_Pending], list[tuple[asyncio.Future[bool], UploadError]]]:
    """The sessions of `batch` within their workspaces' quotas, and the refusals of the others."""
    usage = await lock_usage(conn, [session.workspace_id for session, _, _ in batch])
    verdicts = quotas.admit(limits, usage, [(session.workspace_id, session.size_bytes) for session, _, _ in batch])
    admitted = [item for item, refusal in zip(batch, verdicts) if refusal is None]
    refusals = [(item[2], refusal) for item, refusal in zip(batch, verdicts) if refusal is not None]
    return admitted, refusals


class QuotaTurns:
    """Admissions under one workspace's quota lock take turns in this process before they take a
    pooled connection: PostgreSQL would let them in one at a time anyway, each of the others
    meanwhile holding a connection (30 partials at once in one workspace held a pool of 3)."""

    def __init__(self) -> None:
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # workspace -> lock, [holders + waiters]

    @contextlib.asynccontextmanager
    async def turn(self, workspace_id: str) -> AsyncIterator[None]:
        lock, users = self._turns.setdefault(workspace_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._turns[workspace_id]


async def lock_usage(conn: asyncpg.Connection, workspace_ids: Sequence[str]) -> dict[str, quotas.Usage]:
    """The workspaces' open uploads and the bytes they hold (the view open_uploads, migration
    0013), locked until the transaction `conn` is in ends (migration 0008), so two replicas
    cannot both admit past a quota."""
    rows = await conn.fetch("SELECT * FROM lock_open_upload_usage($1::text[])", sorted(set(workspace_ids)))
    return {row["workspace_id"]: quotas.Usage(row["open_uploads"], row["bytes_in_flight"]) for row in rows}


def _fail(batch: Sequence[tuple[UploadSession, OutboxRow, asyncio.Future[bool]]], error: BaseException) -> None:
    for *_, written in batch:
        if not written.done():
            written.set_exception(error)


async def get(
    conn: asyncpg.Connection | asyncpg.Pool, workspace_id: str, upload_id: str
) -> UploadSession | None:
    row = await conn.fetchrow(
        "SELECT * FROM upload_sessions WHERE workspace_id = $1 AND upload_id = $2",
        workspace_id,
        upload_id,
    )
    return _session(row)


async def apply(
    conn: asyncpg.Connection | asyncpg.Pool,
    upload_id: str,
    event: SessionEvent,
    *,
    sha256: str | None = None,
    rejection: tuple[RejectionReason, str] | None = None,
    bytes_received: int | None = None,
    attempt: int | None = None,
) -> UploadSession | None:
    """Move the session by `event` if its state allows; None when it did not move (another
    request moved it first, or it is in a state the event does not start from).

    A commit counts one more attempt and keeps the `sha256` given with it (None: none given);
    `rejection` records why the verifier refused (see SETS_REJECTION); `attempt` moves the
    session only while that is its latest commit (a late verdict on an older attempt changes
    nothing); `bytes_received` is what storage now holds for it.
    """
    rule = TRANSITIONS[event]
    reason, detail = rejection if rejection is not None else (None, None)
    committing = event == "commit"
    row = await conn.fetchrow(
        """UPDATE upload_sessions
              SET state = $3,
                  updated_at = now(),
                  commit_attempts = commit_attempts + $4::int,
                  commit_sha256 = CASE WHEN $4::int = 1 THEN $5 ELSE commit_sha256 END,
                  rejection_reason = CASE WHEN $6 THEN $7 ELSE rejection_reason END,
                  rejection_detail = CASE WHEN $6 THEN $8 ELSE rejection_detail END,
                  bytes_received = COALESCE($9, bytes_received)
            WHERE upload_id = $1 AND state = ANY($2::text[])
              AND ($10::int IS NULL OR commit_attempts = $10)
        RETURNING *""",
        upload_id,
        sorted(rule.sources),
        rule.target,
        int(committing),
        sha256 if committing else None,
        event in SETS_REJECTION,
        reason,
        detail,
        bytes_received,
        attempt,
    )
    return _session(row)


async def replace_multipart(
    conn: asyncpg.Connection | asyncpg.Pool, upload_id: str, lost: str, fresh: str
) -> UploadSession | None:
    """Put a fresh multipart upload behind an open session in place of one storage lost; None
    when the session moved on, or another request replaced it first."""
    row = await conn.fetchrow(
        """UPDATE upload_sessions SET multipart_upload_id = $3, bytes_received = 0, updated_at = now()
            WHERE upload_id = $1 AND multipart_upload_id = $2 AND state = ANY($4::text[])
        RETURNING *""",
        upload_id,
        lost,
        fresh,
        sorted(TRANSITIONS["receive"].sources),
    )
    return _session(row)


async def record_progress(
    conn: asyncpg.Connection | asyncpg.Pool, upload_id: str, bytes_received: int
) -> UploadSession | None:
    """Bytes arrived (tus): the session is `uploading` with this many bytes, fewer only when
    storage lost some (the tus store records its changes in order, under the upload's lock);
    None if it no longer accepts data."""
    return await apply(conn, upload_id, "receive", bytes_received=bytes_received)
