"""What the processor does with each verified upload: check, decode, store variants, announce.

The processor keeps no state. Variants go to fixed keys and events carry ids derived from the
asset id, so a redelivery after a crash redoes the work onto the same keys and republishes
events JetStream drops as duplicates. A verdict about the content (type mismatch, undecodable)
is announced as processing_failed and acked; storage outages are retried (`Transient`), and when
the retries run out `on_exhausted` announces processing_failed with reason storage_error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from opentelemetry import trace

from media_processor.magic import FORMATS, HEAD_BYTES, Family, TypeMismatch, check
from media_processor.sandbox import FailureCause, Outcome, Produced, Sandbox, Unprocessable
from rawdrive_contracts import (
    AssetAnalysisRequested,
    AssetCreated,
    AssetProcessingFailed,
    CloudEvent,
    Kind,
    ProcessingFailureReason,
    UploadVerified,
    Variant,
    Variants,
    new_event,
)
from rawdrive_platform import bus, keys
from rawdrive_platform.metrics import PROCESSING_FAILED, PROCESSING_SECONDS, Stopwatch
from rawdrive_platform.profiles import StorageResolver, UnknownProfile
from rawdrive_platform.storage import Storage, StorageError, StorageUnavailable

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

SOURCE = "rawdrive/media-processor"
# The file name under each variant's key, by what the variant is: WebP pictures, and a motion
# photo's video stored as it came.
VARIANT_FILES = {"image/webp": "image.webp", "video/mp4": "video.mp4"}


@dataclass(frozen=True)
class Dependencies:
    js: JetStreamContext
    storage_for: StorageResolver
    sandbox: Sandbox
    # Where originals are downloaded for decoding (None: the system's temporary folder).
    scratch_dir: str | None = None


# -- handlers ----------------------------------------------------------------------------------


async def upload_verified(event: CloudEvent[UploadVerified], deps: Dependencies) -> None:
    upload = event.data
    # The span covers the publish of the outcome; the stopwatch learns the kind from the magic bytes.
    attributes = {"rawdrive.asset_id": upload.asset_id}
    with (
        tracer.start_as_current_span("process upload", attributes=attributes) as span,
        Stopwatch(PROCESSING_SECONDS) as stopwatch,
    ):
        try:
            storage = await deps.storage_for(upload.storage_profile_ref)
        except UnknownProfile as exc:
            await _announce_failure(deps, upload, "storage_error", str(exc))
            return
        try:
            with tempfile.TemporaryDirectory(prefix="media-", dir=deps.scratch_dir) as workdir:
                original = Path(workdir, "original")
                family = await _download_checked(storage, upload, original)
                stopwatch.kind = FORMATS[family].kind
                span.set_attribute("rawdrive.kind", stopwatch.kind)
                outcome = await deps.sandbox.process(str(original), family, workdir)
                variants = await _store_variants(storage, upload, outcome)
        except TypeMismatch as exc:
            await _announce_failure(deps, upload, "type_mismatch", str(exc))
            return
        except Unprocessable as exc:
            log.info("asset not processable", extra={"asset_id": upload.asset_id, "reason": exc.cause or exc.reason})
            await _announce_failure(deps, upload, exc.reason, exc.detail, exc.cause)
            return
        except StorageUnavailable as exc:
            raise bus.Transient(str(exc)) from exc
        except StorageError as exc:
            # Missing object or access refused: retrying cannot help.
            await _announce_failure(deps, upload, "storage_error", str(exc))
            return
        await _announce_created(deps, upload, FORMATS[family].kind, outcome, variants)


async def upload_verified_exhausted(
    event: CloudEvent[UploadVerified], error: BaseException, deps: Dependencies
) -> None:
    """Storage stayed unavailable through every delivery: say so, so the asset does not hang."""
    await _announce_failure(deps, event.data, "storage_error", f"storage unavailable through every retry: {error}")


HANDLERS = {UploadVerified: upload_verified}
EXHAUSTED_HANDLERS = {UploadVerified: upload_verified_exhausted}


async def dispatch(event: CloudEvent[Any], deps: Dependencies) -> None:
    handler = HANDLERS.get(type(event.data))
    if handler is None:
        raise bus.Poison(f"media-processor does not handle {event.type}")
    await handler(event, deps)


async def dispatch_exhausted(event: CloudEvent[Any], error: BaseException, deps: Dependencies) -> None:
    handler = EXHAUSTED_HANDLERS.get(type(event.data))
    if handler is not None:
        await handler(event, error, deps)


# -- effects -----------------------------------------------------------------------------------


async def _download_checked(storage: Storage, upload: UploadVerified, target: Path) -> Family:
    """Stream the object to disk, one chunk in memory at a time, after checking its magic bytes.

    One GET: the first HEAD_BYTES are judged before anything is written, and on a mismatch the
    stream is closed there, so a mislabelled file is never downloaded (a separate ranged GET
    first would cost a round trip on every asset).
    """
    head = bytearray()
    family: Family | None = None
    with target.open("wb") as out:
        async with contextlib.aclosing(storage.iter_chunks(upload.object_key)) as chunks:
            async for chunk in chunks:
                if family is not None:
                    out.write(chunk)
                    continue
                head += chunk
                if len(head) >= HEAD_BYTES:
                    family = check(bytes(head[:HEAD_BYTES]), upload.mime_type, upload.file_name)
                    out.write(head)
        if family is None:  # the whole object is shorter than HEAD_BYTES
            family = check(bytes(head), upload.mime_type, upload.file_name)
            out.write(head)
    return family


async def _store_variants(storage: Storage, upload: UploadVerified, outcome: Outcome) -> Variants:
    """Put every variant at once: the round trips to S3 overlap instead of adding up."""

    async def store(produced: Produced) -> Variant:
        key = keys.derived_key(
            upload.workspace_id, upload.asset_id, produced.name, VARIANT_FILES[produced.mime_type],
            storage.profile.key_prefix,
        )
        body = Path(produced.path).read_bytes()
        await storage.put(key, body, produced.mime_type)
        return Variant(
            key=key, width=produced.width, height=produced.height, mime_type=produced.mime_type, size_bytes=len(body)
        )

    # Wait for all of them before raising, so no put is left running unobserved; the first
    # failure is the one the handler judges (StorageUnavailable is retried, StorageError is not).
    results = await asyncio.gather(*(store(p) for p in outcome.variants), return_exceptions=True)
    stored: dict[str, Variant] = {}
    for produced, result in zip(outcome.variants, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        stored[produced.name] = result
    return Variants(**stored)


async def _announce_created(
    deps: Dependencies, upload: UploadVerified, kind: Kind, outcome: Outcome, variants: Variants
) -> None:
    metadata = outcome.metadata
    created = AssetCreated(
        workspace_id=upload.workspace_id,
        asset_id=upload.asset_id,
        upload_id=upload.upload_id,
        library_id=upload.library_id,
        folder_id=upload.folder_id,
        file_name=upload.file_name,
        mime_type=upload.mime_type,
        size_bytes=upload.size_bytes,
        sha256=upload.sha256,
        kind=kind,
        width=metadata.width,
        height=metadata.height,
        duration_s=metadata.duration_s,
        taken_at=metadata.taken_at,
        metadata=metadata,
        object_key=upload.object_key,
        variants=variants,
        provider=upload.provider,
        storage_profile_ref=upload.storage_profile_ref,
        duplicate_of=upload.duplicate_of,
    )
    analysis = AssetAnalysisRequested(
        workspace_id=upload.workspace_id,
        asset_id=upload.asset_id,
        kind=kind,
        mime_type=upload.mime_type,
        object_key=upload.object_key,
        variants=variants,
        storage_profile_ref=upload.storage_profile_ref,
    )
    await _publish(deps, created)
    await _publish(deps, analysis)
    log.info("asset created", extra={"asset_id": upload.asset_id, "kind": kind})


async def _announce_failure(
    deps: Dependencies,
    upload: UploadVerified,
    reason: ProcessingFailureReason,
    detail: str,
    cause: FailureCause | None = None,
) -> None:
    failed = AssetProcessingFailed(
        workspace_id=upload.workspace_id,
        asset_id=upload.asset_id,
        upload_id=upload.upload_id,
        reason=reason,
        detail=detail[:1000],
        cause=cause,
        object_key=upload.object_key,
        storage_profile_ref=upload.storage_profile_ref,
    )
    await _publish(deps, failed)
    PROCESSING_FAILED.labels(reason=reason).inc()
    log.info("asset processing failed", extra={"asset_id": upload.asset_id, "reason": reason})


async def _publish(deps: Dependencies, data: Any) -> None:
    try:
        await bus.publish(deps.js, new_event(data, source=SOURCE))
    except bus.PublishFailed as exc:
        raise bus.Transient(str(exc)) from exc
