"""Upload quotas: what a workspace may hold open, and how many byte-sending requests a user may
have running at once.

Per workspace (RAWDRIVE_MAX_OPEN_UPLOADS_PER_WORKSPACE, RAWDRIVE_MAX_BYTES_IN_FLIGHT_PER_WORKSPACE):
the sessions not yet committed, aborted or expired, and the bytes they declared. They are counted
in PostgreSQL whenever sessions are created (`lock_usage`, in the transaction that inserts them,
under a lock per workspace), so every gateway replica sees the same count and two replicas
cannot both pass the limit. `admit` decides; a refusal is 429 `quota_exceeded` with Retry-After,
and a file larger than the bytes limit on its own is 413.

Per user (RAWDRIVE_MAX_CONCURRENT_PATCHES_PER_USER): tus requests sending bytes at once, counted
in each replica's memory (`ConcurrencyLimit`), so with N replicas a user may have up to N times
the limit running; a request over it is 429 `rate_limited` with Retry-After.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import asyncpg
import msgspec

from upload_gateway.problems import FileTooLarge, QuotaExceeded, RateLimited, UploadError
from upload_gateway.settings import Settings

# Open sessions end as their uploads are committed or expire: there is no telling when, so a
# refused creation is told to come back in this many seconds.
QUOTA_RETRY_AFTER_S = 30
# A byte-sending request ends when its body is in: a few seconds for a 5 MiB chunk.
PATCH_RETRY_AFTER_S = 1


class QuotaLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_open_uploads: int
    max_bytes_in_flight: int

    @classmethod
    def from_settings(cls, settings: Settings) -> QuotaLimits:
        return cls(
            max_open_uploads=settings.max_open_uploads_per_workspace,
            max_bytes_in_flight=settings.max_bytes_in_flight_per_workspace,
        )


class Usage(msgspec.Struct, frozen=True):
    """A workspace's open sessions and the bytes they declared."""

    open_uploads: int = 0
    bytes_in_flight: int = 0


def admit(
    limits: QuotaLimits, usage: Mapping[str, Usage], requests: Sequence[tuple[str, int]]
) -> list[UploadError | None]:
    """For each new session (workspace id, size_bytes), in order: None if it fits beside the
    workspace's usage and the sessions admitted before it, else the refusal."""
    held = dict(usage)
    verdicts: list[UploadError | None] = []
    for workspace_id, size_bytes in requests:
        now = held.get(workspace_id, Usage())
        refusal = refused(limits, now, size_bytes)
        if refusal is None:
            held[workspace_id] = Usage(now.open_uploads + 1, now.bytes_in_flight + size_bytes)
        verdicts.append(refusal)
    return verdicts


def refused(limits: QuotaLimits, usage: Usage, size_bytes: int) -> UploadError | None:
    if size_bytes > limits.max_bytes_in_flight:
        return FileTooLarge(
            f"the file ({size_bytes} bytes) is larger than the {limits.max_bytes_in_flight} bytes a workspace "
            "may have in flight"
        )
    retry = {"Retry-After": str(QUOTA_RETRY_AFTER_S)}
    if usage.open_uploads >= limits.max_open_uploads:
        return QuotaExceeded(
            f"the workspace has {usage.open_uploads} open uploads, as many as it may; commit or abort some "
            "(unfinished ones expire) and retry",
            headers=retry,
        )
    if usage.bytes_in_flight + size_bytes > limits.max_bytes_in_flight:
        return QuotaExceeded(
            f"the workspace's open uploads declare {usage.bytes_in_flight} bytes; {size_bytes} more would pass "
            f"its {limits.max_bytes_in_flight} bytes in flight; commit or abort some and retry",
            headers=retry,
        )
    return None


async def lock_usage(conn: asyncpg.Connection, workspace_ids: Sequence[str]) -> dict[str, Usage]:
    """The workspaces' usage, locked until the transaction `conn` is in ends (migration 0008)."""
    rows = await conn.fetch("SELECT * FROM lock_open_upload_usage($1::text[])", sorted(set(workspace_ids)))
    return {row["workspace_id"]: Usage(row["open_uploads"], row["bytes_in_flight"]) for row in rows}


class ConcurrencyLimit:
    """At most `limit` holders at once per key, in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def in_use(self, key: str) -> int:
        return self._held.get(key, 0)

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold one of the key's places for the block, or raise RateLimited when all are taken."""
        if self.in_use(key) >= self.limit:
            raise RateLimited(
                f"{self.limit} uploads of yours are already sending bytes to this server; retry when one is done",
                headers={"Retry-After": str(PATCH_RETRY_AFTER_S)},
            )
        self._held[key] = self.in_use(key) + 1
        try:
            yield
        finally:
            left = self._held[key] - 1
            if left:
                self._held[key] = left
            else:
                del self._held[key]
