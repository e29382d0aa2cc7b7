"""A TusStore and TusLock kept in memory: the tus routes' port served without PostgreSQL or S3.

A target's `storage` is a plain dict here, the "bucket": a finished upload's bytes land in it
under the target's object_key. The lock hands the store nothing to record through (None).
"""

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from upload_gateway.uploads.tus import protocol
from upload_gateway.uploads.tus.store import BodyInterrupted, JoinSource, Reader, UploadState
from upload_gateway.uploads.tus.target import TusTarget

READ_SIZE = 64 * 1024
MemoryTarget = TusTarget[None, dict[str, bytes]]


class MemoryLock:
    """At most one holder per upload; another request is refused at once, as tusd's lockers do."""

    def __init__(self) -> None:
        self.held: set[str] = set()

    @asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        if upload_id in self.held:
            raise protocol.UploadLocked("another request is writing this upload")
        self.held.add(upload_id)
        try:
            yield None
        finally:
            self.held.discard(upload_id)


@dataclass
class _Upload:
    length: int | None  # None: deferred
    metadata: str | None
    expires_at: datetime
    data: bytearray = field(default_factory=bytearray)
    completed: bool = False
    concat: str | None = None

    def state(self, upload_id: str) -> UploadState:
        return UploadState(upload_id=upload_id, offset=len(self.data), length=self.length, metadata=self.metadata,
                           expires_at=self.expires_at, completed=self.completed, concat=self.concat)


class MemoryTusStore:
    def __init__(self, lock: MemoryLock | None = None) -> None:
        self.lock = lock or MemoryLock()
        self.uploads: dict[str, _Upload] = {}

    async def state(self, upload_id: str) -> UploadState | None:
        upload = self.uploads.get(upload_id)
        return None if upload is None else upload.state(upload_id)

    async def held(self, target: MemoryTarget) -> UploadState | None:
        return await self.state(target.upload_id)  # memory loses nothing behind our back

    async def create(self, target: MemoryTarget, creation: protocol.Creation) -> UploadState:
        if creation.length is not None and creation.length != target.size_bytes:
            raise protocol.BadRequest(f"Upload-Length {creation.length} differs from the session's {target.size_bytes}")
        async with self.lock.hold(target.upload_id) as held:
            if target.upload_id not in self.uploads:
                self.uploads[target.upload_id] = _Upload(
                    creation.length, creation.raw_metadata, target.expires_at, concat=creation.concat
                )
                if creation.length == 0:
                    await self._complete(held, target, self.uploads[target.upload_id])
            return self.uploads[target.upload_id].state(target.upload_id)

    async def write(self, target: MemoryTarget, patch: protocol.Patch, read: Reader) -> UploadState:
        async with self.lock.hold(target.upload_id) as held:
            upload = self.uploads.get(target.upload_id)
            if upload is None:
                raise protocol.UploadNotFound("no tus upload was created for this session")
            known = None if target.length_deferred else target.size_bytes
            upload.length = protocol.settle_length(upload.length, patch.length, known, len(upload.data))
            protocol.check_offset(patch.offset, len(upload.data))
            most = target.size_bytes if upload.length is None else upload.length
            protocol.check_fits(len(upload.data), patch.content_length, most)
            body = bytearray()
            try:
                while chunk := await read(READ_SIZE):
                    body += chunk
                    if len(upload.data) + len(body) > most:
                        raise protocol.PastLength(f"the body runs past {most}")
            except (protocol.PastLength, protocol.ChecksumMismatch):
                raise
            except Exception as error:
                if patch.checksum is None:  # what arrived counts; a checksummed body cannot be verified
                    upload.data += body
                    await target.on_progress(held, len(upload.data))
                raise BodyInterrupted(len(upload.data)) from error
            if patch.checksum is not None and not patch.checksum.matches(body):
                raise protocol.ChecksumMismatch(f"{patch.checksum.algorithm} of the body does not match")
            upload.data += body
            await target.on_progress(held, len(upload.data))
            if len(upload.data) == upload.length and not upload.completed:
                await self._complete(held, target, upload)
            return upload.state(target.upload_id)

    async def concatenate(
        self, target: MemoryTarget, creation: protocol.Creation, sources: Sequence[JoinSource]
    ) -> UploadState:
        async with self.lock.hold(target.upload_id) as held:
            if target.upload_id not in self.uploads:
                joined = bytearray(b"".join(target.storage[source.object_key] for source in sources))
                upload = _Upload(creation.length, creation.raw_metadata, target.expires_at, joined, concat=creation.concat)
                self.uploads[target.upload_id] = upload
                await target.on_progress(held, len(joined))
                await self._complete(held, target, upload)
            return self.uploads[target.upload_id].state(target.upload_id)

    async def confirm_complete(self, target: MemoryTarget) -> None:
        await target.on_complete(None)

    async def terminate(self, target: MemoryTarget) -> None:
        async with self.lock.hold(target.upload_id):
            if self.uploads.pop(target.upload_id, None) is None:
                raise protocol.UploadNotFound("no tus upload was created for this session")
            target.storage.pop(target.object_key, None)

    async def _complete(self, held: Any, target: MemoryTarget, upload: _Upload) -> None:
        target.storage[target.object_key] = bytes(upload.data)
        upload.completed = True
        await target.on_complete(held)
