"""What the session layer hands the tus routes for one request: the upload it authorised."""

from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
import msgspec

from rawdrive_platform.storage import Storage

# R2 (and S3) refuse parts below 5 MiB except the last, and more than 10,000 parts.
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PART_SIZE = 5 * 1024**3
MAX_PARTS = 10_000


class TusTarget(msgspec.Struct, frozen=True, kw_only=True):
    """One authorised upload session, as `authorize(request)` returns it.

    `on_progress(conn, offset)` runs after every durable change of the offset (each part, each
    kept tail, completion), also when the client cut the body off; `on_complete(conn)` runs once the
    object exists at `object_key`, and again on any later HEAD that finds the upload complete,
    so the session layer must treat both as idempotent. Both run while the upload is locked and
    get the connection holding the lock: recording on it never waits for a second connection
    from a pool that every active upload's lock may have exhausted.
    `on_terminate()` runs after a termination removed the stored bytes and the upload's state.
    """

    upload_id: str
    workspace_id: str
    object_key: str
    content_type: str
    size_bytes: int
    expires_at: datetime
    part_size: int
    storage: Storage
    on_progress: Callable[[asyncpg.Connection, int], Awaitable[None]]
    on_complete: Callable[[asyncpg.Connection], Awaitable[None]]
    on_terminate: Callable[[], Awaitable[None]]
    # Added to every successful answer about the upload (e.g. the asset id the session layer chose).
    response_headers: dict[str, str] = {}

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.part_size <= MAX_PART_SIZE:
            raise ValueError(f"part_size {self.part_size} is outside {MIN_PART_SIZE}..{MAX_PART_SIZE}")
        if self.size_bytes > self.part_size * MAX_PARTS:
            raise ValueError(f"{self.size_bytes} bytes need more than {MAX_PARTS} parts")
