"""What the verifier does with each event: complete, verify, record the decision, announce it.

Each commit attempt is decided once: verified, rejected (final: the janitor removes the bytes)
or, for a checksum the client may still correct, refused (the bytes stay; the client commits
again as attempt n + 1). The decision row and its outbox event commit in one transaction; the
bus acks the request only after that, so a verifier killed at any point leaves the request to
be redelivered, and a redelivery of a decided attempt republishes the stored event (same id)
without touching storage.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from opentelemetry import trace

from commit_verifier.hashing import ReadSettings, sha256_of
from commit_verifier.verification import (
    Rejected,
    Verdict,
    Verified,
    decide,
    is_refusal,
    plan_completion,
    precheck,
    verdict_event,
)
from rawdrive_contracts import CloudEvent, CommitRequested, decode, encode
from rawdrive_platform import outbox
from rawdrive_platform.bus import Poison, Transient
from rawdrive_platform.metrics import (
    INGESTED_BYTES,
    UNKNOWN_KIND,
    UPLOADS_COMPLETED,
    UPLOADS_REJECTED,
    VERIFICATION_SECONDS,
    Stopwatch,
)
from rawdrive_platform.profiles import StorageResolver, UnknownProfile
from rawdrive_platform.storage import ObjectMissing, Storage, StorageError, StorageUnavailable

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Dependencies:
    pool: asyncpg.Pool
    storage_for: StorageResolver
    reading: ReadSettings = ReadSettings()


# -- handlers ----------------------------------------------------------------------------------


async def commit_requested(event: CloudEvent[CommitRequested], deps: Dependencies) -> None:
    commit = event.data
    if await _announce_decided(deps.pool, commit):
        log.info("already decided, decision republished", extra={"upload_id": commit.upload_id, "attempt": commit.attempt})
        return
    kind = commit.kind or UNKNOWN_KIND
    attributes = {"rawdrive.upload_id": commit.upload_id, "rawdrive.kind": kind}
    with tracer.start_as_current_span("verify upload", attributes=attributes), Stopwatch(VERIFICATION_SECONDS, kind):
        try:
            storage = await deps.storage_for(commit.storage_profile_ref)
        except UnknownProfile as exc:
            verdict: Verdict = Rejected(reason="storage_error", detail=str(exc))
        else:
            verdict = await _inspect(storage, commit, deps.reading)
        await _record(deps.pool, commit, verdict)


async def commit_exhausted(event: CloudEvent[CommitRequested], error: BaseException, deps: Dependencies) -> None:
    """Storage stayed unavailable through every delivery: reject, so the upload does not hang."""
    commit = event.data
    if await _announce_decided(deps.pool, commit):
        return
    detail = f"storage unavailable through every retry: {error}"
    await _record(deps.pool, commit, Rejected(reason="storage_error", detail=detail))


HANDLERS = {CommitRequested: commit_requested}
EXHAUSTED_HANDLERS = {CommitRequested: commit_exhausted}


async def dispatch(event: CloudEvent[Any], deps: Dependencies) -> None:
    handler = HANDLERS.get(type(event.data))
    if handler is None:
        raise Poison(f"commit-verifier does not handle {event.type}")
    await handler(event, deps)


async def dispatch_exhausted(event: CloudEvent[Any], error: BaseException, deps: Dependencies) -> None:
    handler = EXHAUSTED_HANDLERS.get(type(event.data))
    if handler is not None:
        await handler(event, error, deps)


# -- effects -----------------------------------------------------------------------------------


async def _inspect(storage: Storage, commit: CommitRequested, reading: ReadSettings) -> Verdict:
    """Complete (multipart), head and hash the object. Outages raise Transient for a retry."""
    key = commit.object_key
    try:
        if commit.resumable_protocol == "s3_multipart":
            rejection = await _complete_multipart(storage, commit)
            if rejection is not None:
                return rejection
        # tus: the gateway wrote the object itself; only its presence and content matter.
        info = await storage.head(key)
        rejection = precheck(commit.size_bytes, None if info is None else info.size)
        if rejection is not None:
            return rejection
        assert info is not None  # precheck rejects a missing object
        log.info("hashing", extra={"upload_id": commit.upload_id, "size_bytes": info.size})
        digest = await sha256_of(storage, key, info.size, reading)
        return decide(commit.size_bytes, info.size, commit.expected_sha256, digest)
    except StorageUnavailable as exc:
        raise Transient(str(exc)) from exc
    except ObjectMissing:
        return Rejected(reason="missing_object", detail="the object disappeared while being read")
    except StorageError as exc:
        # Access denied or refused for good: retrying cannot help. Messages name the operation
        # and key, never credentials.
        return Rejected(reason="storage_error", detail=str(exc))


async def _complete_multipart(storage: Storage, commit: CommitRequested) -> Rejected | None:
    if commit.multipart_upload_id is None:
        return Rejected(reason="missing_object", detail="s3_multipart commit without a multipart_upload_id")
    key, upload_id = commit.object_key, commit.multipart_upload_id
    try:
        stored = await storage.list_parts(key, upload_id)
    except ObjectMissing:
        # NoSuchUpload: an earlier delivery completed it (or it was aborted); the head that
        # follows tells which.
        return None
    plan = plan_completion(stored, commit.parts)
    if isinstance(plan, Rejected):
        return plan
    try:
        await storage.complete_multipart(key, upload_id, plan)
    except ObjectMissing:
        pass  # completed by a concurrent delivery between our list and our complete
    return None


async def _announce_decided(pool: asyncpg.Pool, commit: CommitRequested) -> bool:
    """Re-enqueue the attempt's stored decision event, if any (a no-op while it is still in the
    outbox)."""
    async with pool.acquire() as conn, conn.transaction():
        return await _reannounce(conn, commit)


async def _reannounce(conn: asyncpg.Connection, commit: CommitRequested) -> bool:
    stored = await conn.fetchval(
        "SELECT event FROM decisions WHERE upload_id = $1 AND attempt = $2", commit.upload_id, commit.attempt
    )
    if stored is None:
        return False
    await outbox.enqueue(conn, decode(stored))
    return True


async def _record(pool: asyncpg.Pool, commit: CommitRequested, verdict: Verdict) -> None:
    async with pool.acquire() as conn, conn.transaction():
        duplicate_of = None
        if isinstance(verdict, Verified):
            # Serialise decisions on the same content, so two copies verified at once do not
            # both miss each other.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext($1))", f"{commit.workspace_id}/{verdict.sha256}"
            )
            duplicate_of = await conn.fetchval(
                """SELECT asset_id FROM decisions
                   WHERE workspace_id = $1 AND sha256 = $2 AND outcome = 'verified' AND asset_id <> $3
                   ORDER BY decided_at, upload_id LIMIT 1""",
                commit.workspace_id, verdict.sha256, commit.asset_id,
            )
        event = verdict_event(commit, verdict, duplicate_of=duplicate_of, now=datetime.now(UTC))
        outcome = "verified" if isinstance(verdict, Verified) else "refused" if is_refusal(commit, verdict) else "rejected"
        inserted = await conn.fetchval(
            """INSERT INTO decisions (upload_id, workspace_id, asset_id, outcome, reason, sha256, event_id, event, attempt)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9)
               ON CONFLICT (upload_id, attempt) DO NOTHING RETURNING upload_id""",
            commit.upload_id, commit.workspace_id, commit.asset_id, outcome,
            None if isinstance(verdict, Verified) else verdict.reason,
            verdict.sha256 if isinstance(verdict, Verified) else verdict.actual_sha256,
            event.id, encode(event).decode(), commit.attempt,
        )
        if inserted is None:
            # Another replica decided first: announce its decision, not ours.
            await _reannounce(conn, commit)
            return
        await outbox.enqueue(conn, event)
    # Counted once per decision this replica committed: redeliveries and lost races return above.
    if isinstance(verdict, Verified):
        UPLOADS_COMPLETED.labels(kind=commit.kind or UNKNOWN_KIND).inc()
        INGESTED_BYTES.labels(kind=commit.kind or UNKNOWN_KIND).inc(verdict.size)
    elif outcome == "rejected":  # a refused attempt rejects no upload
        UPLOADS_REJECTED.labels(reason=verdict.reason).inc()
    log.info(
        "decided",
        extra={"upload_id": commit.upload_id, "event_id": event.id, "outcome": event.type,
               "reason": getattr(verdict, "reason", None)},
    )
