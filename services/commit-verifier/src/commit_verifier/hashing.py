"""SHA-256 of a stored object, streamed in one GET and hashed as the bytes arrive.

Storage.iter_chunks reads the next piece in a worker thread while this hashes the current one
on the loop (hashlib releases the GIL for large buffers), so reading and hashing overlap and
memory stays at two pieces whatever the object size. Pieces of 4 MiB: each costs a thread
hand-off, and at 1 MiB those hand-offs took about a fifth more CPU per GiB (bench/verify_bench.py).
Earlier, ranged GETs with read-ahead and hashing in a worker thread were slower than this.
"""

from __future__ import annotations

import hashlib

import msgspec

from rawdrive_platform.storage import Storage, StorageUnavailable

MiB = 1024 * 1024


class ReadSettings(msgspec.Struct, frozen=True, kw_only=True):
    chunk_size: int = 4 * MiB  # one read, one hash call; a verification holds two of these


async def sha256_of(storage: Storage, key: str, size: int, settings: ReadSettings = ReadSettings()) -> str:
    """Hex SHA-256 of `key`, whose length HEAD reported as `size`."""
    digest = hashlib.sha256()
    received = 0
    async for piece in storage.iter_chunks(key, settings.chunk_size):
        digest.update(piece)
        received += len(piece)
    if received != size:
        # Overwritten while we read: a retry heads and hashes the new object whole.
        raise StorageUnavailable(f"{key} changed while being read ({received} of {size} bytes)")
    return digest.hexdigest()
