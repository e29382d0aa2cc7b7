"""The scheduled work: expire stale sessions, purge soft-deleted assets, sweep stale multipart
uploads and orphaned objects, delete retired storage profile versions nothing names any more.
`policy` decides; this module fetches, acts and counts.

Replicas: a run acts only while holding a PostgreSQL advisory lock (`Lease`), so one janitor acts
at a time. Crashes: each expiry or purge runs in one transaction that first locks the row and
re-checks the decision, then removes the bytes (idempotent), then marks the row and enqueues the
event. A janitor killed anywhere before the commit leaves the row due; the next run repeats the
removal (finding less or nothing) and commits. Holding the row lock across the removal also
makes a restore or commit that arrives meanwhile wait, then see the outcome, instead of racing it.
Customers' buckets: every expiry or purge runs under `item_deadline_s` and every sweep of a
bucket under `sweep_deadline_s` and at most `sweep_max_keys` listed keys, so one slow or hostile
endpoint costs its own tenant a late run, not every tenant their expiry and purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import asyncpg
import msgspec

from janitor import tracking
from janitor.cleanup import count_removed, erase_prefix
from janitor.metrics import UPLOADS_EXPIRED
from janitor.policy import (
    Removal,
    RunReport,
    Thresholds,
    TrackedSession,
    is_orphan,
    is_stale_multipart,
    profile_version_may_go,
    should_expire,
    should_purge,
    within,
)
from janitor.tracking import TrackedAsset
from rawdrive_contracts import AssetPurged, UploadExpired, new_event
from rawdrive_contracts.facts import carry
from rawdrive_platform import keys, outbox
from rawdrive_platform.db import DATABASE_DOWN
from rawdrive_platform.profiles import PROFILES_BUCKET, ProfileVersions, StorageResolver, UnknownProfile
from rawdrive_platform.storage import MANAGED_PROFILE_ID, Storage, StorageError

log = logging.getLogger(__name__)

SOURCE = "/rawdrive/janitor"
LEASE_NAME = "rawdrive.janitor.lease"
# Keys checked against the janitor's tables per query during an orphan sweep.
_ORPHAN_BATCH = 1000

Job = Literal["expiry", "sweep"]
ALL_JOBS: tuple[Job, ...] = ("expiry", "sweep")


@dataclass(frozen=True)
class SweepTarget:
    """A bucket to sweep and the prefix the sweep must stay under: `workspaces/` in the managed
    bucket, `keys.workspace_prefix(ws, profile.key_prefix)` in a workspace's own bucket."""

    storage: Storage
    prefix: str


TargetSource = Callable[[], Awaitable[list[SweepTarget]]]


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    expiry_interval_s: float  # session expiry and asset purge
    sweep_interval_s: float  # stale multipart uploads and orphans


class Lease:
    """One janitor acts at a time: a session-level advisory lock on a dedicated connection.

    If the holder dies, PostgreSQL ends its session and the lock is free again at once.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None

    async def try_acquire(self) -> bool:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self._dsn)
        return await self._conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", LEASE_NAME)

    async def release(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.execute("SELECT pg_advisory_unlock(hashtext($1))", LEASE_NAME)

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


@dataclass
class Janitor:
    pool: asyncpg.Pool
    storage_for: StorageResolver
    sweep_targets: TargetSource
    lease: Lease
    thresholds: Thresholds
    schedule: Schedule
    delete_orphans: bool
    dry_run: bool
    item_deadline_s: float = 60.0  # one session's expiry or one asset's purge
    sweep_deadline_s: float = 600.0  # one bucket's multipart or orphan sweep
    sweep_max_keys: int = 100_000  # keys (or multipart uploads) listed per bucket per sweep
    # The profiles KV's records, to delete retired versions; None: no BYOS profiles here.
    profile_versions: ProfileVersions | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Run each job at its interval until stopped; the first runs start at once."""
        loop = asyncio.get_running_loop()
        intervals = {"expiry": self.schedule.expiry_interval_s, "sweep": self.schedule.sweep_interval_s}
        next_at: dict[Job, float] = {job: loop.time() for job in ALL_JOBS}
        try:
            while not stop.is_set():
                due = tuple(job for job in ALL_JOBS if next_at[job] <= loop.time())
                for job in due:
                    next_at[job] = loop.time() + intervals[job]
                if due:
                    try:
                        await self.run_once(due, stop)
                    except DATABASE_DOWN as exc:
                        # The database is away: try again at the next interval.
                        log.warning("janitor run failed", extra={"jobs": list(due), "error": repr(exc)})
                        await self.lease.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), max(0.0, min(next_at.values()) - loop.time()))
        finally:
            await self.lease.close()

    async def run_once(self, jobs: Iterable[Job] = ALL_JOBS, stop: asyncio.Event | None = None) -> RunReport | None:
        """One pass of `jobs`; None when another janitor holds the lease. A dry run changes
        nothing, so it needs no lease. Once `stop` is set, the pass ends after the item in hand:
        whatever is left stays due for the next run (of any replica)."""
        jobs = tuple(jobs)
        stopping = stop.is_set if stop is not None else (lambda: False)
        if not self.dry_run and not await self.lease.try_acquire():
            log.info("another janitor holds the lease; skipping", extra={"jobs": list(jobs)})
            return None
        report = RunReport(dry_run=self.dry_run)
        try:
            now = datetime.now(UTC)
            if "expiry" in jobs:
                for session in await tracking.sessions_past_expiry(self.pool, now):
                    if should_expire(session, now, self.thresholds) and not stopping():
                        async with self._item(report, "expire", session.upload_id, self.item_deadline_s):
                            await self._expire(session, report, now)
                for asset in await tracking.assets_awaiting_purge(self.pool):
                    if should_purge(asset.lifecycle, now, self.thresholds) and not stopping():
                        async with self._item(report, "purge", asset.asset_id, self.item_deadline_s):
                            await self._purge(asset, report, now)
            if "sweep" in jobs:
                for target in await self.sweep_targets():
                    if stopping():
                        break
                    subject = f"{target.storage.bucket}/{target.prefix}"
                    async with self._item(report, "sweep multipart", subject, self.sweep_deadline_s):
                        await self._sweep_multipart(target, report, now)
                    async with self._item(report, "sweep orphans", subject, self.sweep_deadline_s):
                        await self._sweep_orphans(target, report, now, stopping)
                if self.profile_versions is not None and not stopping():
                    async with self._item(report, "delete retired profiles", PROFILES_BUCKET, self.sweep_deadline_s):
                        await self._delete_retired_profiles(self.profile_versions, report, now, stopping)
        finally:
            if not self.dry_run:
                await self.lease.release()
        log.info("janitor run", extra={"jobs": list(jobs), "report": report.counters()})
        return report

    @contextlib.asynccontextmanager
    async def _item(self, report: RunReport, action: str, subject: str, deadline_s: float) -> AsyncIterator[None]:
        # One failing or silent item (a bucket refusing or never answering, an unknown profile)
        # must not stop the others; it stays due (its transaction rolled back) and the next run
        # tries again.
        try:
            async with asyncio.timeout(deadline_s):
                yield
        except (StorageError, UnknownProfile, asyncpg.PostgresError, TimeoutError) as exc:
            report.errors += 1
            log.warning("janitor action failed", extra={"action": action, "subject": subject, "error": repr(exc)})

    # -- expiry and purge --------------------------------------------------------------------

    async def _expire(self, session: TrackedSession, report: RunReport, now: datetime) -> None:
        storage = await self.storage_for(session.storage_profile_ref)
        prefix = keys.asset_prefix(session.workspace_id, session.asset_id, storage.profile.key_prefix)
        if self.dry_run:
            report.record(await erase_prefix(storage, prefix, "expired_session", dry_run=True))
            report.sessions_expired += 1
            return
        async with self.pool.acquire() as conn, conn.transaction():
            current = await tracking.lock_session(conn, session.upload_id)
            if current is None or not should_expire(current, now, self.thresholds):
                return  # closed or committed since we looked
            removals = await erase_prefix(storage, prefix, "expired_session", dry_run=False)
            await tracking.mark_expired(conn, session.upload_id, now)
            event = new_event(
                carry(
                    session,
                    UploadExpired,
                    # The S3 multipart upload aborted at the object key, when this run found one.
                    multipart_upload_id=next(
                        (r.multipart_upload_id for r in removals if r.key == session.object_key and r.multipart_upload_id),
                        None,
                    ),
                    expired_at=now,
                ),
                source=SOURCE,
                time=now,
            )
            await outbox.enqueue(conn, event)
        report.record(removals)
        report.sessions_expired += 1
        UPLOADS_EXPIRED.inc()
        log.info("session expired", extra={"upload_id": session.upload_id, "event_id": event.id, "removed": len(removals)})

    async def _purge(self, asset: TrackedAsset, report: RunReport, now: datetime) -> None:
        # Only a restore seen alone leaves the profile unknown; those assets are not deleted,
        # so this fallback is for rows written before asset.deleted named its profile.
        storage = await self.storage_for(asset.storage_profile_ref or MANAGED_PROFILE_ID)
        prefix = keys.asset_prefix(asset.workspace_id, asset.asset_id, storage.profile.key_prefix)
        if self.dry_run:
            report.record(await erase_prefix(storage, prefix, "purged_asset", dry_run=True))
            report.assets_purged += 1
            return
        async with self.pool.acquire() as conn, conn.transaction():
            current = await tracking.lock_asset(conn, asset.asset_id)
            if current is None or not should_purge(current.lifecycle, now, self.thresholds):
                return  # restored since we looked
            removals = await erase_prefix(storage, prefix, "purged_asset", dry_run=False)
            objects = [r for r in removals if r.multipart_upload_id is None]
            event = new_event(
                AssetPurged(
                    workspace_id=asset.workspace_id,
                    asset_id=asset.asset_id,
                    purged_at=now,
                    # What this run removed: after a crash mid-purge, the rerun counts only the rest.
                    deleted_object_count=len(objects),
                    deleted_bytes=sum(r.size_bytes for r in objects),
                ),
                source=SOURCE,
                time=now,
            )
            await tracking.mark_purged(conn, asset.asset_id, now, event.id)
            await outbox.enqueue(conn, event)
        report.record(removals)
        report.assets_purged += 1
        log.info("asset purged", extra={"asset_id": asset.asset_id, "event_id": event.id, "removed": len(removals)})

    # -- retired storage profiles ------------------------------------------------------------

    async def _delete_retired_profiles(
        self, versions: ProfileVersions, report: RunReport, now: datetime, stopping: Callable[[], bool]
    ) -> None:
        listed = await versions.listing()
        referenced = await tracking.referenced_profile_refs(self.pool)
        for version in listed:
            if stopping():
                return
            if not profile_version_may_go(version.retired_at, version.ref, referenced, now, self.thresholds):
                continue
            if not self.dry_run:
                await versions.delete(version)
            report.profile_versions_deleted += 1
            log.info(
                "retired storage profile deleted" if not self.dry_run else "retired storage profile would be deleted",
                extra={"ref": version.ref, "workspace_id": version.workspace_id},
            )

    # -- safety-net sweeps -------------------------------------------------------------------

    async def _sweep_multipart(self, target: SweepTarget, report: RunReport, now: datetime) -> None:
        storage, key_prefix = target.storage, target.storage.profile.key_prefix
        uploads = []
        async for upload in storage.list_multipart_uploads(target.prefix):
            if len(uploads) == self.sweep_max_keys:
                log.warning("multipart sweep cut at its cap", extra={"bucket": storage.bucket, "prefix": target.prefix})
                break
            if within(upload.key, target.prefix):
                uploads.append(upload)
        candidates = {ref.asset_id for u in uploads if (ref := keys.asset_of_key(u.key, key_prefix)) is not None}
        open_ids = await tracking.open_session_asset_ids(self.pool, candidates)
        for upload in uploads:
            if not is_stale_multipart(upload.key, upload.initiated, open_ids, now, self.thresholds, key_prefix):
                continue
            removal = Removal(reason="stale_multipart", bucket=storage.bucket, key=upload.key,
                              multipart_upload_id=upload.upload_id)
            if not self.dry_run:
                await storage.abort_multipart(upload.key, upload.upload_id)
                count_removed([removal])
            report.record([removal])

    async def _sweep_orphans(
        self, target: SweepTarget, report: RunReport, now: datetime, stopping: Callable[[], bool]
    ) -> None:
        batch: list[str] = []
        listed = 0
        async for key in target.storage.list_keys(target.prefix):
            if stopping():
                return
            listed += 1
            if listed > self.sweep_max_keys:
                log.warning("orphan sweep cut at its cap", extra={"bucket": target.storage.bucket, "prefix": target.prefix})
                break
            if within(key, target.prefix) and keys.asset_of_key(key, target.storage.profile.key_prefix) is not None:
                batch.append(key)
            if len(batch) == _ORPHAN_BATCH:
                await self._remove_orphans(target.storage, batch, report, now, stopping)
                batch = []
        if batch:
            await self._remove_orphans(target.storage, batch, report, now, stopping)

    async def _remove_orphans(
        self, storage: Storage, batch: list[str], report: RunReport, now: datetime, stopping: Callable[[], bool]
    ) -> None:
        key_prefix = storage.profile.key_prefix
        refs = {key: ref for key in batch if (ref := keys.asset_of_key(key, key_prefix)) is not None}
        known = await tracking.known_asset_ids(self.pool, {ref.asset_id for ref in refs.values()})
        orphans = []
        for key, ref in refs.items():
            if stopping():
                break
            if ref.asset_id in known:
                continue  # no HEAD for the common case
            info = await storage.head(key)
            if info is not None and is_orphan(key, info.last_modified, known, now, self.thresholds, key_prefix):
                orphans.append(Removal(reason="orphan", bucket=storage.bucket, key=key, size_bytes=info.size))
        report.orphans_found += len(orphans)
        for orphan in orphans:
            log.info("orphan found", extra={"bucket": orphan.bucket, "key": orphan.key, "size_bytes": orphan.size_bytes,
                                            "deleting": self.delete_orphans and not self.dry_run})
        if not self.delete_orphans:
            report.orphans_kept.extend(orphans)
            return
        if not self.dry_run:
            await storage.delete(orphan.key for orphan in orphans)
            count_removed(orphans)
        report.record(orphans)
