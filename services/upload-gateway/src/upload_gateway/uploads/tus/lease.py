"""A TusLock that costs no pooled connection while a body streams: a lease on the upload, in
PostgreSQL (table tus_leases), claimed in one statement, renewed while the request runs, and
checked by every write of the upload's row in that write's own short transaction.

Why not a session advisory lock any more: it pinned one pooled connection per request for as long
as its body arrived, so ten phones on slow links filled a pool of ten and every other request
of the pod waited (issue 21). A lease is a row: claiming and releasing it each borrow a
connection for one statement, and one statement renews every lease the process holds, every few
seconds, however many bodies stream (one renewal per request was 20 statements a second at 100
slow clients, enough to fill a pool on a starved CPU).

Correctness rests on the fence, not on timing: `Lease.record()` opens a transaction whose first
statement extends the lease only if this request still holds it (and keeps the row locked until
the write commits), so a request that lost its lease (it expired and another claimed it) never
changes the upload's row; it answers 423, as a request that meets a held lease does at once.
The local clock only stops a request early: it gives up streaming once the lease may have
expired in the database (`lease_status`), before another request could claim it and write the
same S3 part numbers.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import asyncpg
import msgspec

from upload_gateway.uploads.tus.protocol import UploadLocked

log = logging.getLogger(__name__)

# --- the pure core: when to renew, when to give up --------------------------------------------

LeaseStatus = Literal["held", "renew", "lost"]


class LeaseTerms(msgspec.Struct, frozen=True, kw_only=True):
    """How long a claim or renewal holds in the database (`ttl_s`), and the local schedule."""

    # A gateway that dies keeps its uploads for at most this long (423 to a resuming client):
    # shorter than stock tus clients' retries of a 423 (tus-js-client's and Uppy's default
    # delays 0, 1, 3 and 5 s), so a client resuming on another pod gets through on its own.
    ttl_s: float = 8.0

    @property
    def renew_every_s(self) -> float:
        # Three renewals may fail (the database restarting, a busy pool) before the lease runs out.
        return self.ttl_s / 4

    @property
    def usable_for_s(self) -> float:
        # Measured from before the statement that confirmed the lease was sent, so locally the
        # lease ends before the database's expires_at does; the rest is margin for a loop that
        # was busy between a read and the check.
        return self.ttl_s * 3 / 4


def lease_status(terms: LeaseTerms, *, confirmed_at: float, lost: bool, now: float) -> LeaseStatus:
    """What a holder may do at `now` (monotonic seconds), its lease last confirmed by a statement
    sent at `confirmed_at`: keep writing, renew first, or stop (the database may let another
    request claim the upload)."""
    if lost or now - confirmed_at >= terms.usable_for_s:
        return "lost"
    if now - confirmed_at >= terms.renew_every_s:
        return "renew"
    return "held"


def renewal_delay_s(terms: LeaseTerms, *, confirmed_at: float, now: float, failures: int) -> float:
    """Seconds until the next renewal of the process's leases, the last one having succeeded at
    `confirmed_at`: at the schedule, or after a failed attempt soon again (a second, then two...)
    while the leases can still be saved."""
    if failures:
        return min(float(2 ** (failures - 1)), terms.renew_every_s)
    return max(0.0, confirmed_at + terms.renew_every_s - now)


# --- the shell ---------------------------------------------------------------------------------


class LeaseLost(UploadLocked):
    """The request's lease expired and may be another request's now: it stops without writing."""


_CLAIM = """
    INSERT INTO tus_leases AS lease (upload_id, holder, expires_at)
    VALUES ($1, $2, now() + make_interval(secs => $3))
    ON CONFLICT (upload_id) DO UPDATE SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
        WHERE lease.expires_at < now()
    RETURNING true"""
_RENEW = """
    UPDATE tus_leases SET expires_at = now() + make_interval(secs => $3)
    WHERE upload_id = $1 AND holder = $2
    RETURNING true"""
_RENEW_ALL = """
    UPDATE tus_leases AS lease SET expires_at = now() + make_interval(secs => $3)
    FROM unnest($1::text[], $2::uuid[]) AS held (upload_id, holder)
    WHERE lease.upload_id = held.upload_id AND lease.holder = held.holder
    RETURNING lease.upload_id, lease.holder"""
_RELEASE = "DELETE FROM tus_leases WHERE upload_id = $1 AND holder = $2"


class Lease:
    """One request's hold on one upload: `record()` for each write of the upload's state,
    `check()` between reads of the body."""

    def __init__(self, pool: asyncpg.Pool, upload_id: str, holder: uuid.UUID, terms: LeaseTerms, confirmed_at: float):
        self.upload_id = upload_id
        self._pool = pool
        self._holder = holder
        self._terms = terms
        self._confirmed_at = confirmed_at
        self._lost = False

    def status(self) -> LeaseStatus:
        return lease_status(self._terms, confirmed_at=self._confirmed_at, lost=self._lost, now=time.monotonic())

    def check(self) -> None:
        """Raise LeaseLost once the lease may be another request's."""
        if self.status() == "lost":
            raise LeaseLost("this request's hold on the upload ran out; HEAD, then resume")

    @asynccontextmanager
    async def record(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection in a transaction in which the lease is still this request's (renewed and
        row-locked until the block commits); LeaseLost when it is not."""
        self.check()
        sent = time.monotonic()
        async with self._pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(_RENEW, self.upload_id, self._holder, self._terms.ttl_s):
                self._lost = True
                raise LeaseLost("another request took over this upload")
            self._confirmed(sent)
            yield conn

    def _confirmed(self, sent: float) -> None:
        self._confirmed_at = max(self._confirmed_at, sent)

    def _taken(self) -> None:
        self._lost = True


class LeaseLock:
    """A TusLock over PostgreSQL leases (any instance): yields the Lease the store records
    through. One per process (the store's): it renews every lease it holds in one statement."""

    def __init__(self, pool: asyncpg.Pool, terms: LeaseTerms | None = None):
        self._pool = pool
        self._terms = terms or LeaseTerms()
        self._held: dict[tuple[str, uuid.UUID], Lease] = {}
        self._keeper: asyncio.Task[None] | None = None

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[Lease]:
        holder = uuid.uuid4()
        sent = time.monotonic()
        if not await self._pool.fetchval(_CLAIM, upload_id, holder, self._terms.ttl_s):
            raise UploadLocked("another request is writing this upload")
        lease = Lease(self._pool, upload_id, holder, self._terms, sent)
        self._held[(upload_id, holder)] = lease
        if self._keeper is None or self._keeper.done():
            self._keeper = asyncio.ensure_future(self._keep())
        try:
            yield lease
        finally:
            del self._held[(upload_id, holder)]
            # Shielded: a cancelled request still frees the upload for its client's retry at once.
            await asyncio.shield(self._release(upload_id, holder))

    async def _keep(self) -> None:
        """Renew every held lease on schedule, while any is held. A failed renewal (database
        down, pool busy) is retried; only the database no longer naming a request as the holder,
        or the time running out (Lease.check), loses a lease."""
        last_success, failures = time.monotonic(), 0
        while self._held:
            await asyncio.sleep(renewal_delay_s(self._terms, confirmed_at=last_success, now=time.monotonic(),
                                                failures=failures))  # fmt: skip
            held = list(self._held.items())
            if not held:
                return
            sent = time.monotonic()
            try:
                renewed = await self._pool.fetch(
                    _RENEW_ALL, [upload_id for (upload_id, _), _ in held], [holder for (_, holder), _ in held],
                    self._terms.ttl_s,
                )
            except Exception as error:  # noqa: BLE001 - any failure: try again while time is left
                failures += 1
                log.warning("tus lease renewal failed", extra={"leases": len(held), "error": repr(error)})
                continue
            last_success, failures = sent, 0
            still_ours = {(row["upload_id"], row["holder"]) for row in renewed}
            for key, lease in held:
                if key in still_ours:
                    lease._confirmed(sent)
                elif key in self._held:  # not released meanwhile: another request has the upload
                    lease._taken()

    async def _release(self, upload_id: str, holder: uuid.UUID) -> None:
        try:
            await self._pool.execute(_RELEASE, upload_id, holder)
        except Exception as error:  # noqa: BLE001 - the lease then runs out on its own
            log.warning("tus lease release failed", extra={"upload_id": upload_id, "error": repr(error)})
