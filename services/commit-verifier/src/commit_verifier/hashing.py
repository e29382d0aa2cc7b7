"""SHA-256 of a stored object, streamed with fixed-size ranged reads, reading and hashing overlapped.

Up to `read_ahead` ranged GETs are in flight while the previous chunk is hashed in a worker
thread (hashlib releases the GIL on large buffers), so neither the network nor the CPU waits
for the other. Memory stays at about (read_ahead + 1) x chunk_size whatever the object size.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque

import msgspec

from rawdrive_platform.storage import Storage, StorageUnavailable

MiB = 1024 * 1024


class ReadSettings(msgspec.Struct, frozen=True, kw_only=True):
    chunk_size: int = 8 * MiB
    read_ahead: int = 2


async def sha256_of(storage: Storage, key: str, size: int, settings: ReadSettings = ReadSettings()) -> str:
    """Hex SHA-256 of the first `size` bytes of `key` (its whole length, as HEAD reported it)."""
    digest = hashlib.sha256()
    starts = iter(range(0, size, settings.chunk_size))
    in_flight: deque[tuple[asyncio.Task[bytes], int]] = deque()  # (read, expected length)

    def read_more() -> None:
        while len(in_flight) < settings.read_ahead:
            start = next(starts, None)
            if start is None:
                return
            end = min(start + settings.chunk_size, size)
            in_flight.append((asyncio.create_task(storage.get_range(key, start, end)), end - start))

    try:
        read_more()
        while in_flight:
            read, expected_length = in_flight.popleft()
            chunk = await read
            if len(chunk) != expected_length:
                # Overwritten while we read: a retry heads and hashes the new object whole.
                raise StorageUnavailable(f"{key} changed while being read")
            read_more()  # the next reads run while this chunk is hashed
            await asyncio.to_thread(digest.update, chunk)
    finally:
        for task, _ in in_flight:
            task.cancel()
        if in_flight:
            await asyncio.gather(*(task for task, _ in in_flight), return_exceptions=True)
    return digest.hexdigest()
