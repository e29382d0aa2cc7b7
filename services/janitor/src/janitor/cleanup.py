"""Removing bytes from a bucket: every step is idempotent, so a crash anywhere is finished by a rerun."""

from __future__ import annotations

from collections.abc import Iterable

from janitor.metrics import JANITOR_ABORTED_MULTIPART, JANITOR_DELETED_BYTES, JANITOR_DELETED_OBJECTS
from janitor.policy import Reason, Removal, within
from rawdrive_platform.storage import ObjectInfo, Storage


async def erase_prefix(storage: Storage, prefix: str, reason: Reason, *, dry_run: bool) -> list[Removal]:
    """Abort every multipart upload and delete every object under `prefix` (unless dry_run).

    Multipart uploads go first, so an upload completed meanwhile leaves an object the listing
    that follows still finds.
    """
    removals = [
        Removal(reason=reason, bucket=storage.bucket, key=upload.key, multipart_upload_id=upload.upload_id)
        async for upload in storage.list_multipart_uploads(prefix)
        if within(upload.key, prefix)
    ]
    if not dry_run:
        for removal in removals:
            assert removal.multipart_upload_id is not None
            await storage.abort_multipart(removal.key, removal.multipart_upload_id)
        count_removed(removals)
    objects = [
        Removal(reason=reason, bucket=storage.bucket, key=info.key, size_bytes=info.size)
        for info in await list_objects(storage, prefix)
    ]
    if not dry_run:
        await storage.delete(removal.key for removal in objects)
        count_removed(objects)
    return removals + objects


def count_removed(removals: Iterable[Removal]) -> None:
    """Count what was actually removed (never a dry run's findings) in the janitor's metrics."""
    for removal in removals:
        if removal.multipart_upload_id is not None:
            JANITOR_ABORTED_MULTIPART.labels(reason=removal.reason).inc()
        else:
            JANITOR_DELETED_OBJECTS.labels(reason=removal.reason).inc()
            JANITOR_DELETED_BYTES.labels(reason=removal.reason).inc(removal.size_bytes)


async def list_objects(storage: Storage, prefix: str) -> list[ObjectInfo]:
    """Keys under `prefix` with their size and age. Storage.list_keys yields keys only, hence a
    HEAD per key; one gone meanwhile is simply skipped."""
    found = []
    async for key in storage.list_keys(prefix):
        if within(key, prefix) and (info := await storage.head(key)) is not None:
            found.append(info)
    return found
