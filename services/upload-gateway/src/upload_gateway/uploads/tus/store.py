"""The tus upload store as a port, as tusd has it: the routes speak to any `TusStore`, and a
store serialises the requests that change an upload with a `TusLock`, a separate part.

`PostgresS3Store` (pg_store.py: bytes in one S3 multipart upload, state and the unaligned tail
in PostgreSQL, leases in PostgreSQL: lease.py) is the implementation the gateway runs; the tests
run the routes against an in-memory one as well. `concatenate` joins finished partial uploads
into a final one (tus's concatenation; the layout is concat.py's, PostgresS3Store copies on the
storage side).
"""

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol, TypeVar

import msgspec

from upload_gateway.uploads.tus.protocol import Creation, Patch
from upload_gateway.uploads.tus.target import TusTarget

Reader = Callable[[int], Awaitable[bytes]]
"""`read(n)` returns up to n bytes of the request body, b"" at its end, or raises if it broke."""

Held_co = TypeVar("Held_co", covariant=True)


class UploadState(msgspec.Struct, frozen=True, kw_only=True):
    upload_id: str
    offset: int
    length: int | None  # None: deferred, not known yet
    metadata: str | None
    expires_at: datetime
    completed: bool
    concat: str | None = None  # Upload-Concat of a partial or final upload (concatenation)


class JoinSource(msgspec.Struct, frozen=True):
    """A finished partial upload whose object a final upload joins."""

    upload_id: str
    object_key: str
    length: int


class BodyInterrupted(Exception):
    """The request body broke off; every byte that arrived before is stored."""

    def __init__(self, offset: int):
        super().__init__(f"request body interrupted; upload kept at offset {offset}")
        self.offset = offset


class TusLock(Protocol[Held_co]):
    """One request at a time changes an upload, across every gateway instance."""

    def hold(self, upload_id: str) -> AbstractAsyncContextManager[Held_co]:
        """Hold the upload for the block, or raise protocol.UploadLocked (423) at once when another
        request holds it; yields what the store records through while it holds the lock. Holding
        must not tie up a scarce resource (a pooled connection) while a body streams: a slow
        client would hold it for as long as it takes to send."""
        ...


class TusStore(Protocol):
    """Create, write, inspect and terminate tus uploads (tus core, creation, termination).

    Every method that changes an upload holds its lock; offsets, lengths and checksums are
    checked under it (protocol.check_offset, check_fits), so racing requests cannot both pass.
    """

    async def state(self, upload_id: str) -> UploadState | None:
        """The upload's state as last recorded; None before its creation."""
        ...

    async def held(self, target: TusTarget[Any, Any]) -> UploadState | None:
        """The state as storage still holds it (HEAD): an unfinished upload whose bytes storage
        lost is set back to what survived. None before its creation."""
        ...

    async def create(self, target: TusTarget[Any, Any], creation: Creation) -> UploadState:
        """Start the upload; creating one that exists already changes nothing (client retries)."""
        ...

    async def write(self, target: TusTarget[Any, Any], patch: Patch, read: Reader) -> UploadState:
        """Append the body at `patch.offset`; completes the object when the length is reached.
        An upload created with its length deferred records it first (protocol.settle_length:
        `patch.length`, or the session's `target.size_bytes` once it has one); until then its
        body may run up to `target.size_bytes`.
        Raises BodyInterrupted, with every byte that arrived kept, when the body broke off, and
        UploadNotFound, before reading any of the body, when the upload was never created."""
        ...

    async def confirm_complete(self, target: TusTarget[Any, Any]) -> None:
        """Tell the session layer again that a finished upload is complete (a HEAD after a lost
        answer): runs `target.on_complete`, which records idempotently."""
        ...

    async def concatenate(
        self, target: TusTarget[Any, Any], creation: Creation, sources: Sequence[JoinSource]
    ) -> UploadState:
        """Create the final upload `target` (`creation`: its length, the sum of the sources',
        its metadata and Upload-Concat) as the finished partial uploads `sources` joined in
        order, record it complete and run `target.on_progress` and `target.on_complete`. A
        final that exists already is returned unchanged (client retries)."""
        ...

    async def terminate(self, target: TusTarget[Any, Any]) -> None:
        """Remove the stored bytes (unfinished or finished) and forget the upload."""
        ...
