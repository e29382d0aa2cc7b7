"""Joining partial uploads' objects into a final object in S3, as concat.plan_join lays it out:
seams first, then every part of the final object copied by storage (UploadPartCopy), a few at
a time; or, for a small file split into parts under S3's minimum, read and uploaded again here.
The seams are deleted and a failed join's multipart upload aborted before this returns."""

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from rawdrive_platform import keys
from rawdrive_platform.storage import Storage, StorageError, UploadedPart
from upload_gateway.uploads.tus.concat import (
    CopyPlan,
    Piece,
    Seam,
    ThroughGateway,
    plan_join,
)
from upload_gateway.uploads.tus.store import JoinSource

# Copies in flight at once: storage does the work; more mostly queue there.
COPIES_IN_FLIGHT = 8
_SEAM_TYPE = "application/octet-stream"
T = TypeVar("T")


async def join_objects(
    storage: Storage, *, workspace_id: str, upload_id: str, key: str, content_type: str, sources: Sequence[JoinSource]
) -> int:
    """Make the object `key` of the `sources` joined in order; returns the part size used."""
    plan = plan_join([source.length for source in sources])
    multipart_id = await storage.create_multipart(key, content_type)
    seam_keys = [keys.tus_piece_key(workspace_id, upload_id, f"seam-{n}", storage.profile.key_prefix)
                 for n in range(1, len(plan.seams) + 1)] if isinstance(plan, CopyPlan) else []  # fmt: skip
    try:
        if isinstance(plan, ThroughGateway):
            parts = await _upload_again(storage, key, multipart_id, sources, plan)
        else:
            await _limited([_make_seam(storage, seam_key, seam, sources) for seam_key, seam in zip(seam_keys, plan.seams)])
            objects = [source.object_key for source in sources] + seam_keys
            parts = await _limited([
                _copy(storage, key, multipart_id, number, objects, piece)
                for number, piece in enumerate(plan.parts, start=1)
            ])
        await storage.complete_multipart(key, multipart_id, parts)
    except BaseException:
        with contextlib.suppress(StorageError):
            await asyncio.shield(storage.abort_multipart(key, multipart_id))
        raise
    finally:
        if seam_keys:
            with contextlib.suppress(StorageError):
                await asyncio.shield(storage.delete(seam_keys))
    return plan.part_size


async def _copy(storage: Storage, key: str, multipart_id: str, number: int, objects: list[str], piece: Piece) -> UploadedPart:
    return await storage.copy_part(key, multipart_id, number, objects[piece.source], piece.start, piece.end)


async def _make_seam(storage: Storage, seam_key: str, seam: Seam, sources: Sequence[JoinSource]) -> None:
    multipart_id = await storage.create_multipart(seam_key, _SEAM_TYPE)
    objects = [source.object_key for source in sources]
    try:
        parts = [await _copy(storage, seam_key, multipart_id, n, objects, piece)
                 for n, piece in enumerate((seam.left, seam.right), start=1)]  # fmt: skip
        await storage.complete_multipart(seam_key, multipart_id, parts)
    except BaseException:
        with contextlib.suppress(StorageError):
            await asyncio.shield(storage.abort_multipart(seam_key, multipart_id))
        raise


async def _upload_again(
    storage: Storage, key: str, multipart_id: str, sources: Sequence[JoinSource], plan: ThroughGateway
) -> list[UploadedPart]:
    """A small file only (concat.JOIN_IN_GATEWAY_MAX): memory stays within one part."""
    parts: list[UploadedPart] = []
    pending = bytearray()
    for source in sources:
        if source.length == 0:
            continue
        async for chunk in storage.iter_chunks(source.object_key):
            pending += chunk
            while len(pending) >= plan.part_size:
                body, pending = bytes(pending[: plan.part_size]), pending[plan.part_size :]
                parts.append(await storage.upload_part(key, multipart_id, len(parts) + 1, body))
    if pending:
        parts.append(await storage.upload_part(key, multipart_id, len(parts) + 1, bytes(pending)))
    return parts


async def _limited(calls: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run the calls, at most COPIES_IN_FLIGHT at once; the results in order. The first
    failure cancels the rest (TaskGroup), so none runs on after the join is aborted."""
    gate = asyncio.Semaphore(COPIES_IN_FLIGHT)

    async def one(call: Coroutine[Any, Any, T]) -> T:
        async with gate:
            return await call

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(call)) for call in calls]
    return [task.result() for task in tasks]
