"""What the session layer hands the tus routes for one request: the upload it authorised."""

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Generic, TypeVar

import msgspec

from upload_gateway.uploads.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE

# What a store records through (PostgresS3Store: the connection of the short transaction that
# changes the upload's row), and where it keeps the bytes (PostgresS3Store: a bucket's Storage).
Held = TypeVar("Held")
Bytes = TypeVar("Bytes")


async def _only_the_store_records(*_: object) -> None:
    """The default `on_progress`/`on_complete`: an upload without a session (a partial, one of
    deferred length) has nothing of its own to record; the store's row is all there is."""


class TusTarget(msgspec.Struct, Generic[Held, Bytes], frozen=True, kw_only=True):
    """One authorised upload session, as `authorize(request)` returns it.

    `on_progress(held, offset)` runs after every durable change of the offset (each part, each
    kept tail, completion), also when the client cut the body off; `on_complete(held)` runs once
    the object exists at `object_key`, and again on any later HEAD that finds the upload
    complete, so the session layer must treat both as idempotent. Both run while the upload is
    locked and get what the store records the change through (PostgresS3Store: the connection of
    that change's transaction, so the session's count commits with the upload's offset).
    `on_terminate()` runs after a termination removed the stored bytes and the upload's state.

    `length_deferred`: the upload was created without its length (creation-defer-length) and has
    no session yet; `size_bytes` is then the most it may hold, and `part_size` fits that.
    """

    upload_id: str
    workspace_id: str
    object_key: str
    content_type: str
    size_bytes: int
    expires_at: datetime
    part_size: int
    storage: Bytes
    on_terminate: Callable[[], Awaitable[None]]
    on_progress: Callable[[Held, int], Awaitable[None]] = _only_the_store_records
    on_complete: Callable[[Held], Awaitable[None]] = _only_the_store_records
    # Added to every successful answer about the upload (e.g. the asset id the session layer chose).
    response_headers: dict[str, str] = {}
    length_deferred: bool = False

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size {self.part_size} is outside {MIN_PART_SIZE}..{MAX_PART_SIZE}")
        if self.size_bytes > self.part_size * MAX_PARTS:
            raise ValueError(f"{self.size_bytes} bytes need more than {MAX_PARTS} parts")
