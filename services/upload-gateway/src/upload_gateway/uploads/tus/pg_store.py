"""The tus upload store the gateway runs (a TusStore, store.py): request bodies into one S3
multipart upload, or one PutObject for a file of one part, state in PostgreSQL.

Every part is exactly `part_size` bytes except the last (R2 rejects anything else). A part
streams on to S3 while its bytes arrive, once the request's declared length is known to fill
it; bytes that do not fill a part when a request ends, or is cut, are the "tail". The tail lives in PostgreSQL, in the same row as the offset, rather than in a
separate S3 object: the offset and the bytes it counts then change in one statement, so no crash
between two writes can leave an offset that claims missing bytes, no second key kind is needed
under the asset's `original/` prefix, and nothing is left to clean up in the bucket. The cost,
at most one part of bytea per unaligned request, is what tusd's S3 store pays as an S3 object.

A row changes only after the S3 write it describes succeeded. Each request that changes an
upload holds a lease on it for its whole duration (lease.LeaseLock, a TusLock), so two gateway
instances never write the same upload at once; the loser gets UploadLocked (423) at once instead
of waiting. No database connection is held while bytes arrive: each change of the row is one
short transaction of its own (`Lease.record()`) that first checks the lease is still this
request's, so the offset and the tail still change together in one statement. The target's
callbacks run in that transaction right after each durable change, even when the body was cut
(and the handler cancelled), so the session layer's byte count never trails what HEAD reports.

A file of at most one part (most photos) has no multipart upload (multipart_id NULL): its one
part is the object itself, streamed in one PutObject once a body is known to bring its last byte,
so it costs storage one request where a multipart upload cost three (create, part, complete),
about a quarter of the gateway's CPU per small upload (bench/small_files_bench.py). Until then
its bytes are the tail, as any part's are; a body cut during the PutObject stores nothing in S3
(storage keeps no object of an incomplete body) and its bytes are kept as the tail. An empty
file is put at creation.

Storage can lose an unfinished multipart upload (NoSuchUpload: an S3 restart, an abort behind
our back) or parts of it. HEAD therefore asks storage what it still holds, and a PATCH that
meets NoSuchUpload checks the same way: the offset falls back to the parts storage still has,
with a fresh multipart upload behind it when it has none, and the client resumes from there
instead of retrying a part S3 can never accept. A multipart upload can also be gone because it
was completed and the row's update then lost (a database failover): when the whole object is at
its key, the completion is recorded instead; HEAD on an unfinished one-part upload checks the
same (its PutObject landed, the row's update did not).
"""

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress

import asyncpg
import msgspec

from rawdrive_platform.storage import ObjectMissing, Storage, StorageError, UploadedPart
from upload_gateway.uploads.tus.join import join_objects
from upload_gateway.uploads.tus.lease import Lease, LeaseLock, LeaseLost
from upload_gateway.uploads.tus.protocol import (
    BadRequest,
    ChecksumMismatch,
    Creation,
    OffsetMismatch,
    PastLength,
    Patch,
    UploadLocked,
    UploadNotFound,
    check_fits,
    check_offset,
    settle_length,
)
from upload_gateway.uploads.tus.store import BodyInterrupted, JoinSource, Reader, TusLock, UploadState
from upload_gateway.uploads.tus.target import TusTarget

Target = TusTarget[asyncpg.Connection, Storage]

# Read the body in pieces this big: small enough to keep the extra memory negligible, large
# enough to keep the per-read overhead low.
READ_SIZE = 256 * 1024

class _Row(msgspec.Struct, frozen=True, kw_only=True):
    object_key: str
    multipart_id: str | None
    length: int | None  # None: deferred, not known yet
    part_size: int
    part_etags: list[str]
    offset: int
    tail: bytes
    completed: bool


_STATE_COLUMNS = """upload_id, upload_offset AS offset, upload_length AS length, metadata,
                    expires_at, completed_at IS NOT NULL AS completed, concat"""


class PostgresS3Store:
    """Create, write, inspect and terminate tus uploads. One per process; safe to share."""

    def __init__(
        self, pool: asyncpg.Pool, *, lock: TusLock[Lease] | None = None, read_size: int = READ_SIZE
    ):
        self._pool = pool
        self._lock = lock or LeaseLock(pool)
        self._read_size = read_size

    async def state(self, upload_id: str) -> UploadState | None:
        """The upload's state as last recorded."""
        record = await self._pool.fetchrow(
            f"SELECT {_STATE_COLUMNS} FROM tus_uploads WHERE upload_id = $1", upload_id
        )
        return None if record is None else UploadState(**record)

    async def held(self, target: Target) -> UploadState | None:
        """The upload's state as storage still holds it (HEAD). An unfinished upload is checked
        against storage's parts and set back to what survived; while another request writes it,
        the row stands (that request meets any loss itself)."""
        state = await self.state(target.upload_id)
        if state is None or state.completed:
            return state
        try:
            async with self._lock.hold(target.upload_id) as lease:
                row = await self._row(target.upload_id)
                if row is not None:
                    offset = await self._reconcile(lease, target, row)
                    known = row.length if row.length is not None or target.length_deferred else target.size_bytes
                    if offset == known:  # (read again: the reconciling may have completed it)
                        await self._complete_if_whole(lease, target)
                return await self.state(target.upload_id)
        except UploadLocked:
            return state

    async def _complete_if_whole(self, lease: Lease, target: Target) -> None:
        """A deferred upload whose every byte was recorded before its length came reaches the
        length with that length, uncompleted; when the PATCH that brought it failed to complete
        it (storage), the client's HEAD answers offset = length and the client sends no more:
        complete it here. Storage failing again leaves it for the next HEAD."""
        row = await self._row(target.upload_id)
        if row is None or row.completed:
            return
        with suppress(BadRequest):  # a session's length short of the bytes held: PATCH says so
            row = await self._settled(lease, target, row, None)
        if row.length is not None and row.offset == row.length:
            with suppress(StorageError):
                await self._stream(lease, target, row, _memory_reader(bytearray()), 0)

    async def _settled(self, lease: Lease, target: Target, row: _Row, declared: int | None) -> _Row:
        """The row with its length settled (protocol.settle_length), recorded if it was deferred."""
        length = settle_length(row.length, declared, None if target.length_deferred else target.size_bytes,
                               row.offset)  # fmt: skip
        if length is None or row.length is not None:
            return row
        async with lease.record() as conn:
            await conn.execute("UPDATE tus_uploads SET upload_length = $2, updated_at = now() WHERE upload_id = $1",
                               target.upload_id, length)  # fmt: skip
        return msgspec.structs.replace(row, length=length)

    async def create(self, target: Target, creation: Creation) -> UploadState:
        """Start the upload; creating one that exists already changes nothing (client retries)."""
        if creation.length is not None and creation.length != target.size_bytes:
            raise BadRequest(
                f"Upload-Length {creation.length} differs from the session's {target.size_bytes}"
            )
        async with self._lock.hold(target.upload_id) as lease:
            # An empty file, a multipart one and one of deferred length change storage first, so
            # only a new upload may; one of one part (most photos) touches storage later: its
            # INSERT says whether it is new.
            storage_first = creation.length is None or creation.length == 0 or creation.length > target.part_size
            if storage_first:
                existing = await self.state(target.upload_id)
                if existing is not None:
                    return existing
            storage = target.storage
            multipart_id = None
            if creation.length == 0:  # S3 cannot complete a multipart upload without parts
                await storage.put(target.object_key, b"", target.content_type)
            elif creation.length is None or creation.length > target.part_size:  # else one PutObject, later
                multipart_id = await storage.create_multipart(target.object_key, target.content_type)
            async with lease.record() as conn:
                record = await conn.fetchrow(
                    f"""INSERT INTO tus_uploads (upload_id, workspace_id, object_key, multipart_id,
                            upload_length, part_size, metadata, expires_at, completed_at, concat)
                        VALUES ($1, $2, $3, $4, $5, $6, $7, $8,
                                CASE WHEN $5::bigint = 0 THEN now() END, $9)
                        ON CONFLICT (upload_id) DO NOTHING
                        RETURNING {_STATE_COLUMNS}""",
                    target.upload_id, target.workspace_id, target.object_key, multipart_id,
                    creation.length, target.part_size, creation.raw_metadata, target.expires_at, creation.concat,
                )
                if record is None:  # created before (a client's retry): changed nothing
                    record = await conn.fetchrow(
                        f"SELECT {_STATE_COLUMNS} FROM tus_uploads WHERE upload_id = $1", target.upload_id
                    )
                elif creation.length == 0:
                    await target.on_complete(conn)
        return UploadState(**record)

    async def write(self, target: Target, patch: Patch, read: Reader) -> UploadState:
        """Append the body at `patch.offset`; completes the object when the length is reached."""
        async with self._lock.hold(target.upload_id) as lease:
            row = await self._row(target.upload_id)
            if row is None:
                raise UploadNotFound("no tus upload was created for this session")
            row = await self._settled(lease, target, row, patch.length)  # a deferred length arrives first
            length = row.length
            check_offset(patch.offset, row.offset)
            # Until its length arrives, a deferred upload holds at most its target's size.
            check_fits(row.offset, patch.content_length, target.size_bytes if length is None else length)
            declared = patch.content_length
            if patch.checksum is not None:
                body = await _read_whole(read, patch, limit=row.part_size, offset=row.offset)
                if not patch.checksum.matches(body):
                    raise ChecksumMismatch(f"{patch.checksum.algorithm} of the body does not match")
                read, declared = _memory_reader(body), len(body)
            # A length learned at the offset already held completes the upload with what it holds.
            state = None
            if not row.completed:
                try:
                    state = await self._stream(lease, target, row, read, declared)
                except ObjectMissing:
                    current = await self._row(target.upload_id)
                    assert current is not None
                    offset = await self._reconcile(lease, target, current)
                    if current.length is None or offset < current.length:
                        raise OffsetMismatch(
                            f"storage lost bytes of this upload; it holds {offset}: HEAD, then resume from there"
                        ) from None
            if state is None:  # not completed by this request: read what it recorded
                state = await self.state(target.upload_id)
        assert state is not None  # only termination removes the row, under the lease
        return state

    async def concatenate(self, target: Target, creation: Creation, sources: Sequence[JoinSource]) -> UploadState:
        """The final upload: the partials' objects joined by storage (join.py), recorded complete."""
        async with self._lock.hold(target.upload_id) as lease:
            existing = await self.state(target.upload_id)
            if existing is not None:
                return existing
            part_size = await join_objects(
                target.storage, workspace_id=target.workspace_id, upload_id=target.upload_id,
                key=target.object_key, content_type=target.content_type, sources=sources,
            )
            async with lease.record() as conn:
                record = await conn.fetchrow(
                    f"""INSERT INTO tus_uploads (upload_id, workspace_id, object_key, upload_length, part_size,
                            upload_offset, metadata, expires_at, completed_at, concat)
                        VALUES ($1, $2, $3, $4, $5, $4, $6, $7, now(), $8)
                        RETURNING {_STATE_COLUMNS}""",
                    target.upload_id, target.workspace_id, target.object_key, creation.length, part_size,
                    creation.raw_metadata, target.expires_at, creation.concat,
                )
                await target.on_progress(conn, creation.length)
                await target.on_complete(conn)
        return UploadState(**record)

    async def confirm_complete(self, target: Target) -> None:
        """Tell the session layer again that a finished upload is complete (a HEAD after a lost
        answer); it records idempotently."""
        async with self._pool.acquire() as conn:
            await target.on_complete(conn)

    async def terminate(self, target: Target) -> None:
        """Abort the multipart upload (or delete the object, finished or of one part) and forget
        the upload."""
        async with self._lock.hold(target.upload_id) as lease:
            record = await self._pool.fetchrow(
                "SELECT object_key, multipart_id, completed_at IS NOT NULL AS completed"
                " FROM tus_uploads WHERE upload_id = $1",
                target.upload_id,
            )
            if record is None:
                raise UploadNotFound("no tus upload was created for this session")
            if record["multipart_id"] is None or record["completed"]:
                # An unfinished one-part upload has nothing in S3, unless its PutObject landed
                # and the row's update did not: deleting a missing key is no error.
                await target.storage.delete([record["object_key"]])
            else:
                await target.storage.abort_multipart(record["object_key"], record["multipart_id"])
            async with lease.record() as conn:
                await conn.execute("DELETE FROM tus_uploads WHERE upload_id = $1", target.upload_id)

    async def _stream(
        self, lease: Lease, target: Target, row: _Row, read: Reader, declared: int | None
    ) -> UploadState | None:
        """Send the body on into S3 parts as it arrives; the upload's state if this completed it.

        A part starts uploading as soon as this body (its `declared` length) is known to fill it;
        its bytes stream to S3 while the client is still sending them, and the part is recorded
        once S3 answered. Bytes of a part that this body cannot fill are gathered and kept as
        the tail. Memory stays within one part being gathered plus one being sent per upload.
        Between reads the lease is checked: a request that lost it stops, recording nothing.
        """
        parts = _PartWriter(lease, target, row)
        body_end = None if declared is None else row.offset + declared
        length = row.length  # None: deferred; every part a whole one until the length arrives
        most = target.size_bytes if length is None else length  # what the body may run up to
        position = row.offset  # the upload offset of the next byte to arrive
        pending: list[bytes] = [row.tail] if row.tail else []  # bytes since the last whole part
        tail_is_stored = True
        while True:
            start = parts.handed
            end = start + row.part_size if length is None else min(start + row.part_size, length)  # this part's end
            # A part starts once the body is known to fill it. The last part of a body of
            # undeclared length waits for the body's end (below): storage then never gets the
            # object (one-part uploads) or a last part of a body that runs past the length.
            if not parts.feeding and start < end and ((body_end or 0) >= end or position == end < most):
                await parts.begin(end - start, pending)
            # At least 1: with the final byte in hand, one more byte means "past the length".
            want = max(1, min(self._read_size, end - position))
            try:
                chunk = await read(want)
            except asyncio.CancelledError:
                await parts.keep_after_break(pending, tail_is_stored)
                raise
            except Exception as error:
                offset = await parts.keep_after_break(pending, tail_is_stored)
                raise BodyInterrupted(offset) from error
            if not chunk:
                break
            try:
                lease.check()
            except LeaseLost:
                await parts.drop()
                raise
            if position + len(chunk) > most:
                await parts.abandon()
                await parts.settle()
                limit = "Upload-Length" if length is not None else "the most this upload may hold,"
                raise PastLength(f"the body runs past {limit} {most}")
            position += len(chunk)
            pending.append(chunk)
            tail_is_stored = False
            if parts.feeding and parts.feed(chunk):
                pending.clear()  # the whole part is on its way to S3
        await parts.abandon()  # a body that ended before filling the part it fed
        if position > parts.handed and (position == length or position - parts.handed == row.part_size):
            # The last part of a body of undeclared length, or a whole part at the most a
            # deferred upload may hold (never a tail: a tail is shorter than a part).
            await parts.begin(position - parts.handed, pending)
        await parts.settle()
        if parts.handed == length:
            return await self._finish(lease, target, row, parts.etags)
        if not tail_is_stored:
            await _keep_tail(lease, target, parts.stored, b"".join(pending))
        return None

    async def _row(self, upload_id: str) -> _Row | None:
        record = await self._pool.fetchrow(
            """SELECT object_key, multipart_id, upload_length AS length, part_size,
                      part_etags, upload_offset AS offset, tail, completed_at IS NOT NULL AS completed
               FROM tus_uploads WHERE upload_id = $1""",
            upload_id,
        )
        return None if record is None else _Row(**record)

    async def _reconcile(self, lease: Lease, target: Target, row: _Row) -> int:
        """Set an unfinished upload back to the parts storage still holds, in order; a fresh
        multipart upload replaces one storage lost altogether, unless the whole object is there
        (then the completion is recorded). Returns the offset."""
        storage = target.storage
        if row.multipart_id is None:  # one part: nothing in S3 but the whole object
            info = await storage.head(row.object_key)
            if info is not None and row.length is not None and info.size == row.length:
                # Its PutObject landed, then the row's update was lost (the lease or the
                # database gone before it committed). Record it.
                await self._record_completion(lease, target, row, [info.etag])
                return row.length
            return row.offset  # the tail is ours
        try:
            stored = {part.part_number: part for part in await storage.list_parts(row.object_key, row.multipart_id)}
        except ObjectMissing:
            info = await storage.head(row.object_key)
            if info is not None and row.length is not None and info.size == row.length:
                # Not lost but completed: a previous attempt completed the object, then lost the
                # row's update (a database failover under it, never acknowledged). Record it.
                await self._record_completion(lease, target, row, list(row.part_etags))
                return row.length
            multipart_id = await storage.create_multipart(row.object_key, target.content_type)
            kept: list[str] = []
        else:
            multipart_id = row.multipart_id
            kept = []
            for number, etag in enumerate(row.part_etags, start=1):
                part = stored.get(number)
                if part is None or _etag(part.etag) != _etag(etag) or part.size != row.part_size:
                    break
                kept.append(etag)
            if len(kept) == len(row.part_etags):
                return row.offset  # storage holds every recorded part; the tail is ours
        # The tail (in PostgreSQL) still counts when every part before it survived: no part yet.
        tail = row.tail if len(kept) == len(row.part_etags) else b""
        offset = len(kept) * row.part_size + len(tail)
        async with lease.record() as conn:
            await conn.execute(
                """UPDATE tus_uploads SET multipart_id = $2, part_etags = $3, tail = $4, upload_offset = $5,
                          updated_at = now() WHERE upload_id = $1""",
                target.upload_id, multipart_id, kept, tail, offset,
            )
            await target.on_progress(conn, offset)
        return offset

    async def _finish(self, lease: Lease, target: Target, row: _Row, etags: list[str]) -> UploadState:
        storage, key = target.storage, row.object_key
        if row.multipart_id is None:  # its one PutObject made the object
            return await self._record_completion(lease, target, row, etags)
        try:
            await storage.complete_multipart(key, row.multipart_id, _parts(etags))
        except ObjectMissing:
            # A previous attempt completed the object but died before recording it.
            info = await storage.head(key)
            if info is None or info.size != row.length:
                raise
        return await self._record_completion(lease, target, row, etags)

    async def _record_completion(self, lease: Lease, target: Target, row: _Row, etags: list[str]) -> UploadState:
        # Offset reaches the length only together with completion: HEAD never reports a full
        # offset for an object that does not exist yet. The state comes back with the UPDATE:
        # no second read of the row for the answer.
        assert row.length is not None  # only an upload of known length completes
        async with lease.record() as conn:
            record = await conn.fetchrow(
                f"""UPDATE tus_uploads SET part_etags = $2, tail = '', upload_offset = upload_length,
                           completed_at = now(), updated_at = now() WHERE upload_id = $1
                    RETURNING {_STATE_COLUMNS}""",
                target.upload_id, etags,
            )
            await target.on_progress(conn, row.length)
            await target.on_complete(conn)
        return UploadState(**record)


class _PartFeed:
    """The bytes of one part, handed from the request body to the upload streaming them."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.missing = size
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def put(self, chunk: bytes) -> bool:
        """Queue a chunk; True once the part is whole."""
        self._queue.put_nowait(chunk)
        self.missing -= len(chunk)
        if self.missing == 0:
            self._queue.put_nowait(None)
        return self.missing == 0

    async def chunks(self) -> AsyncIterator[bytes]:
        while (chunk := await self._queue.get()) is not None:
            yield chunk


class _PartWriter:
    """Streams parts to S3 one after another and records each in the row once S3 has it.

    At most two parts are open: one being fed from the body and, before it, one fully sent
    whose answer is awaited (`settle`) before the next part starts, so parts are recorded in
    order and the row never counts a part S3 does not have.
    """

    def __init__(self, lease: Lease, target: Target, row: _Row) -> None:
        self._lease = lease
        self._target = target
        self._row = row
        self.etags = list(row.part_etags)
        self.handed = self.stored  # bytes in parts recorded or wholly sent
        self.recorded = row.offset  # the offset the row holds
        self._sent: asyncio.Task[UploadedPart] | None = None  # wholly sent, answer awaited
        self._feed: _PartFeed | None = None
        self._feeding: asyncio.Task[UploadedPart] | None = None

    @property
    def stored(self) -> int:
        """Bytes in parts S3 confirmed and the row records."""
        whole = len(self.etags) * self._row.part_size  # a deferred upload's parts are all whole
        return whole if self._row.length is None else min(whole, self._row.length)

    @property
    def feeding(self) -> bool:
        return self._feed is not None

    async def begin(self, size: int, pending: list[bytes]) -> None:
        """Start streaming the next part of `size` bytes, beginning with `pending`."""
        await self.settle()
        self._feed = _PartFeed(size)
        self._feeding = asyncio.ensure_future(self._send(len(self.etags) + 1, size, self._feed.chunks()))
        for chunk in pending:
            if self.feed(chunk):
                pending.clear()

    async def _send(self, number: int, size: int, chunks: AsyncIterator[bytes]) -> UploadedPart:
        row, storage = self._row, self._target.storage
        if row.multipart_id is None:  # the one part is the object
            etag = await storage.stream_put(row.object_key, self._target.content_type, size, chunks)
            return UploadedPart(part_number=number, etag=etag)
        return await storage.stream_part(row.object_key, row.multipart_id, number, size, chunks)

    def feed(self, chunk: bytes) -> bool:
        """Send a chunk of the part being fed; True once that part is whole."""
        assert self._feed is not None
        if not self._feed.put(chunk):
            return False
        self.handed += self._feed.size
        self._sent, self._feeding, self._feed = self._feeding, None, None
        return True

    async def abandon(self) -> None:
        """Drop the part being fed: its bytes are still in the caller's pending list."""
        if self._feeding is None:
            return
        task, self._feeding, self._feed = self._feeding, None, None
        task.cancel()
        with suppress(asyncio.CancelledError, StorageError):
            await task

    async def settle(self) -> None:
        """Wait for the sent part's answer, then record it: the row changes only after S3 did."""
        if self._sent is None:
            return
        task, self._sent = self._sent, None
        part = await asyncio.shield(task)  # a cancelled request still lets its part land
        self.etags.append(part.etag)
        if self.stored == self._row.length:
            return  # the final part: completion records it with the object
        async with self._lease.record() as conn:
            await conn.execute(
                """UPDATE tus_uploads SET part_etags = $2, tail = '', upload_offset = $3,
                          updated_at = now() WHERE upload_id = $1""",
                self._target.upload_id, self.etags, self.stored,
            )
            await self._target.on_progress(conn, self.stored)
        self.recorded = self.stored

    async def keep_after_break(self, pending: list[bytes], tail_is_stored: bool) -> int:
        """After a broken body: record the part sent, keep the rest as the tail; the offset."""
        await self.abandon()
        try:
            await self.settle()
        except Exception:  # noqa: BLE001 - the part did not land: the bytes after it cannot count
            return self.recorded
        # The offset reaches the length only with completion, which a broken body does not get
        # to: a HEAD answering offset = length tells the client it is done, and nothing would
        # commit the upload. So a last part that landed is not recorded (the client sends it
        # again), and a tail never holds the last byte.
        if self.stored == self._row.length:
            return self.recorded
        tail = b"".join(pending)
        if len(tail) == self._row.part_size:
            # A whole last part whose body broke before its end was seen, so it was never
            # sent; a tail is shorter than a part: the client sends it again.
            tail = b""
        elif self.stored + len(tail) == self._row.length:
            tail = tail[:-1]
        if not tail_is_stored:
            await _keep_tail(self._lease, self._target, self.stored, tail)
        return self.stored + len(tail)

    async def drop(self) -> None:
        """After the lease was lost: stop both parts and record nothing."""
        await self.abandon()
        if self._sent is not None:
            task, self._sent = self._sent, None
            with suppress(StorageError):
                await asyncio.shield(task)


async def _keep_tail(lease: Lease, target: Target, stored: int, tail: bytes) -> None:
    async with lease.record() as conn:
        await conn.execute(
            """UPDATE tus_uploads SET tail = $2, upload_offset = $3, updated_at = now()
               WHERE upload_id = $1""",
            target.upload_id, tail, stored + len(tail),
        )
        await target.on_progress(conn, stored + len(tail))


def _etag(value: str) -> str:
    # Stores differ in quoting and case between an upload's answer and a listing.
    return value.strip().strip('"').lower()


def _parts(etags: list[str]) -> list[UploadedPart]:
    return [UploadedPart(part_number=n, etag=etag) for n, etag in enumerate(etags, start=1)]


async def _read_whole(read: Reader, patch: Patch, *, limit: int, offset: int) -> bytearray:
    """A checksummed body is verified before any of it counts, so it is read into memory whole;
    `limit` (one part) keeps that bounded. A body cut short is dropped: it cannot be verified."""
    if patch.content_length is not None and patch.content_length > limit:
        raise PastLength(f"a PATCH with Upload-Checksum may carry at most {limit} bytes")
    body = bytearray()
    while chunk := await _read_or_interrupt(read, limit + 1 - len(body), offset):
        body += chunk
        if len(body) > limit:
            raise PastLength(f"a PATCH with Upload-Checksum may carry at most {limit} bytes")
    return body


async def _read_or_interrupt(read: Reader, size: int, offset: int) -> bytes:
    try:
        return await read(min(size, READ_SIZE))
    except Exception as error:
        raise BodyInterrupted(offset) from error


def _memory_reader(body: bytearray) -> Reader:
    view = memoryview(body)
    position = 0

    async def read(size: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position : position + size])
        position += len(chunk)
        return chunk

    return read
