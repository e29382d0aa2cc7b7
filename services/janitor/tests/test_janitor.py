"""The janitor against real NATS, PostgreSQL and S3, with short thresholds: what other services
and the buckets see after it ran."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from janitor.__main__ import MIGRATIONS
from janitor.handlers import ASSET_HANDLERS, UPLOAD_HANDLERS, Dependencies
from janitor.policy import RunReport, Thresholds
from janitor.sweeps import Janitor, Lease, Schedule, SweepTarget
from rawdrive_contracts import (
    AssetDeleted,
    AssetPurged,
    AssetRestored,
    CloudEvent,
    CommitRefused,
    CommitRequested,
    EventData,
    UploadAborted,
    UploadExpired,
    UploadRejected,
    UploadSessionCreated,
    UploadVerified,
    new_event,
)
from rawdrive_contracts.facts import carry
from rawdrive_devkit.devstack.servers import S3Connection, loopback_endpoint_policy
from rawdrive_devkit.testkit import consumer_for_test, consuming, jetstream, migrated_pool, stored_events
from rawdrive_platform import bus, keys
from rawdrive_platform.config import Secret
from rawdrive_platform.outbox import Relay, UnitOfWork
from rawdrive_platform.profiles import (
    MasterKey,
    ProfileResolver,
    ProfileVersions,
    StorageResolver,
    new_profile_ref,
    profile_bucket,
)
from rawdrive_platform.storage import Storage, StorageProfile

SHORT = Thresholds(
    retention=timedelta(seconds=1),
    expiry_grace=timedelta(0),
    orphan_min_age=timedelta(0),
    multipart_min_age=timedelta(0),
    profile_retire_grace=timedelta(0),
)


async def dispatch(event: CloudEvent[Any], deps: Dependencies) -> None:
    """Hand an event to whichever of the janitor's two consumers reads it."""
    table = UPLOAD_HANDLERS if type(event.data) in UPLOAD_HANDLERS.handlers else ASSET_HANDLERS
    await table.dispatch(event, deps)


def profile_for(connection: S3Connection, profile_id: str = "managed", key_prefix: str = "") -> StorageProfile:
    return StorageProfile(
        profile_id=profile_id, provider="r2" if profile_id == "managed" else "byos",
        endpoint=connection.endpoint, region=connection.region, bucket=connection.bucket,
        access_key_id=connection.access_key_id, secret_access_key=Secret(connection.secret_access_key),
        key_prefix=key_prefix, endpoint_policy=loopback_endpoint_policy(connection.endpoint),
    )


class CountingStorage(Storage):
    """Records every key deleted and every multipart upload aborted through it."""

    deleted: Counter[str]
    aborted: Counter[str]

    @classmethod
    async def open(cls, profile: StorageProfile) -> CountingStorage:
        storage = await super().open(profile)
        storage.deleted, storage.aborted = Counter(), Counter()
        return storage  # type: ignore[return-value]

    async def delete(self, keys: Iterable[str]) -> None:
        batch = list(keys)
        await super().delete(batch)
        self.deleted.update(batch)

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await super().abort_multipart(key, upload_id)
        self.aborted[upload_id] += 1


async def wait_for(predicate, timeout_s: float = 15.0):
    async with asyncio.timeout(timeout_s):
        while not (result := await predicate()):
            await asyncio.sleep(0.05)
    return result


@dataclass
class Env:
    """A fresh janitor schema, the bus and the managed bucket, and one workspace for one test."""

    dsn: str
    pool: asyncpg.Pool
    js: JetStreamContext
    storage: CountingStorage
    workspace: str
    storages: list[Storage] = field(default_factory=list)

    def asset_prefix(self, asset_id: str) -> str:
        return keys.asset_prefix(self.workspace, asset_id)

    def resolver(self, storage: Storage | None = None) -> StorageResolver:
        async def storage_for(ref: str) -> Storage:
            return storage or self.storage

        return storage_for

    def janitor(self, storage: Storage | None = None, **overrides: Any) -> Janitor:
        storage = storage or self.storage
        fields: dict[str, Any] = dict(
            pool=self.pool,
            storage_for=self.resolver(storage),
            # Only this test's workspace: the managed bucket is shared by the whole session.
            sweep_targets=_targets(SweepTarget(storage=storage, prefix=keys.workspace_prefix(self.workspace))),
            lease=Lease(self.dsn),
            thresholds=SHORT,
            schedule=Schedule(expiry_interval_s=0.05, sweep_interval_s=0.05),
            delete_orphans=True,
            dry_run=False,
        )
        return Janitor(**(fields | overrides))

    async def publish(self, data: EventData) -> CloudEvent[Any]:
        event = new_event(data, source="/test")
        await bus.publish(self.js, event)
        return event

    @contextlib.asynccontextmanager
    async def consuming(self, storage: Storage | None = None) -> AsyncIterator[None]:
        """The janitor's two consumers (on this workspace only) and its outbox relay."""
        deps = Dependencies(uow=UnitOfWork(self.pool), storage_for=self.resolver(storage))
        stop = asyncio.Event()
        relay = asyncio.create_task(Relay(self.pool, self.js).run(stop))
        try:
            async with contextlib.AsyncExitStack() as consumers:
                for table in (UPLOAD_HANDLERS, ASSET_HANDLERS):
                    spec = consumer_for_test(table, self.workspace)
                    await consumers.enter_async_context(consuming(self.js, table, deps, spec))
                yield
        finally:
            stop.set()
            await asyncio.wait_for(relay, 10)

    async def relay_once(self) -> None:
        await Relay(self.pool, self.js).publish_pending()

    async def announced(self, entity: str, action: str) -> list[CloudEvent[Any]]:
        """Every event of this type stored in the stream for this workspace."""
        return await stored_events(self.js, f"rawdrive.{entity}.{action}.{self.workspace}")

    async def keys_under(self, prefix: str, storage: Storage | None = None) -> list[str]:
        return sorted([key async for key in (storage or self.storage).list_keys(prefix)])

    async def uploads_under(self, prefix: str, storage: Storage | None = None) -> list[str]:
        return [u.upload_id async for u in (storage or self.storage).list_multipart_uploads(prefix)]

    # -- events a test starts from ---------------------------------------------------------

    def session(self, asset_id: str, *, expires_in: timedelta, protocol: str = "s3_multipart") -> UploadSessionCreated:
        return UploadSessionCreated(
            workspace_id=self.workspace, upload_id=uuid.uuid4().hex, asset_id=asset_id, library_id="lib1",
            file_name="IMG_0001.JPG", mime_type="image/jpeg", size_bytes=6 * 1024 * 1024,
            resumable_protocol=protocol, storage_profile_ref="managed",
            object_key=keys.original_key(self.workspace, asset_id, "IMG_0001.JPG"),
            expires_at=datetime.now(UTC) + expires_in, created_by="user1",
        )

    def verified(self, asset_id: str, profile: str = "managed") -> UploadVerified:
        return UploadVerified(
            workspace_id=self.workspace, upload_id=uuid.uuid4().hex, asset_id=asset_id, library_id="lib1",
            file_name="IMG_0001.JPG", mime_type="image/jpeg", size_bytes=1, sha256=hashlib.sha256(b"x").hexdigest(),
            storage_profile_ref=profile, object_key=keys.original_key(self.workspace, asset_id, "IMG_0001.JPG"),
            verified_at=datetime.now(UTC),
        )

    def deleted(self, asset_id: str, at: datetime) -> AssetDeleted:
        return AssetDeleted(workspace_id=self.workspace, asset_id=asset_id, deleted_by="user1", deleted_at=at, purge_after=at)

    def restored(self, asset_id: str, at: datetime) -> AssetRestored:
        return AssetRestored(workspace_id=self.workspace, asset_id=asset_id, restored_by="user1", restored_at=at)

    async def partial_upload(self, session: UploadSessionCreated) -> str:
        """What a client leaves behind mid-upload: an S3 multipart upload with a part at the
        object key, and a stored tail under the asset prefix. Returns the multipart upload id."""
        upload_id = await self.storage.create_multipart(session.object_key, session.mime_type)
        await self.storage.upload_part(session.object_key, upload_id, 1, os.urandom(5 * 1024 * 1024))
        await self.storage.put(f"{self.asset_prefix(session.asset_id)}tus/tail", b"tail bytes", "application/octet-stream")
        return upload_id

    async def stored_asset(self, asset_id: str) -> dict[str, int]:
        """An original and two derived variants; returns key -> size."""
        objects = {
            keys.original_key(self.workspace, asset_id, "IMG_0001.JPG"): 3000,
            keys.derived_key(self.workspace, asset_id, "webp-320", "thumb.webp"): 200,
            keys.derived_key(self.workspace, asset_id, "webp-2560", "large.webp"): 1000,
        }
        for key, size in objects.items():
            await self.storage.put(key, os.urandom(size), "image/webp")
        return objects

    async def tracked(self, upload_id: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM tracked_uploads WHERE upload_id = $1", upload_id)


def _targets(*targets: SweepTarget):
    async def source() -> list[SweepTarget]:
        return list(targets)

    return source


@pytest.fixture
async def env(fresh_database_url: str, nats_url: str, s3_server: S3Connection) -> AsyncIterator[Env]:
    storage = await CountingStorage.open(profile_for(s3_server))
    try:
        async with (
            migrated_pool(fresh_database_url, "janitor", MIGRATIONS) as pool,
            jetstream(nats_url, "test-janitor") as js,
        ):
            env = Env(dsn=fresh_database_url, pool=pool, js=js, storage=storage, workspace=f"ws{uuid.uuid4().hex[:12]}")
            try:
                yield env
            finally:
                for opened in env.storages:  # the ones a test opened
                    await opened.close()
    finally:
        await storage.close()


# -- expiry -------------------------------------------------------------------------------------


async def test_an_expired_session_leaves_no_objects_and_no_open_multipart_upload_and_is_announced_once(env: Env):
    stale = env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1))
    live = env.session(uuid.uuid4().hex, expires_in=timedelta(hours=1))
    async with env.consuming():
        for session in (stale, live):
            await env.publish(session)
        multipart_id = await env.partial_upload(stale)
        live_multipart_id = await env.partial_upload(live)
        await wait_for(lambda: env.tracked(live.upload_id))

        report = await env.janitor().run_once(["expiry"])
        again = await env.janitor().run_once(["expiry"])
        [expired] = await wait_for(lambda: env.announced("upload", "expired"))

    assert await env.keys_under(env.asset_prefix(stale.asset_id)) == []
    assert await env.uploads_under(env.asset_prefix(stale.asset_id)) == []
    assert isinstance(expired.data, UploadExpired)
    assert (expired.data.upload_id, expired.data.object_key, expired.data.multipart_upload_id) == (
        stale.upload_id, stale.object_key, multipart_id,
    )
    assert (await env.tracked(stale.upload_id))["closed_by"] == "expired"
    assert report is not None and (report.sessions_expired, report.multipart_uploads_aborted) == (1, 1)
    assert (report.objects_deleted, report.bytes_deleted) == (1, len(b"tail bytes"))
    assert again is not None and again.sessions_expired == again.objects_deleted == 0
    # The live session is untouched.
    assert await env.uploads_under(env.asset_prefix(live.asset_id)) == [live_multipart_id]
    assert len(await env.keys_under(env.asset_prefix(live.asset_id))) == 1


async def test_a_committed_session_is_left_to_the_verifier_even_past_its_expiry(env: Env):
    session = env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1))
    commit = carry(session, CommitRequested, requested_by="user1")
    async with env.consuming():
        await env.publish(session)
        multipart_id = await env.partial_upload(session)
        await env.publish(commit)
        await wait_for(lambda: env.pool.fetchval(
            "SELECT commit_requested_at IS NOT NULL FROM tracked_uploads WHERE upload_id = $1", session.upload_id))
        report = await env.janitor().run_once(["expiry"])
    assert report is not None and report.sessions_expired == 0
    assert await env.uploads_under(env.asset_prefix(session.asset_id)) == [multipart_id]


async def test_a_refused_commit_keeps_the_bytes_and_the_session_expires_again_once_abandoned(env: Env):
    session = env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1))
    commit = carry(session, CommitRequested, requested_by="user1", attempts_left=2)
    refused = carry(session, CommitRefused, attempt=1, attempts_left=2, reason="checksum_mismatch")
    committed = "SELECT commit_requested_at IS NOT NULL FROM tracked_uploads WHERE upload_id = $1"
    async with env.consuming():
        await env.publish(session)
        multipart_id = await env.partial_upload(session)
        await env.publish(commit)
        await wait_for(lambda: env.pool.fetchval(committed, session.upload_id))
        await env.publish(refused)

        async def reopened() -> bool:
            return await env.pool.fetchval(committed, session.upload_id) is False

        await wait_for(reopened)
        assert (await env.tracked(session.upload_id))["closed_by"] is None  # a refusal deletes nothing
        assert await env.uploads_under(env.asset_prefix(session.asset_id)) == [multipart_id]
        report = await env.janitor().run_once(["expiry"])
    assert report is not None and report.sessions_expired == 1
    assert await env.uploads_under(env.asset_prefix(session.asset_id)) == []


# -- rejected and aborted uploads ---------------------------------------------------------------


async def test_rejected_and_aborted_uploads_have_their_bytes_deleted(env: Env):
    rejected_session = env.session(uuid.uuid4().hex, expires_in=timedelta(hours=1), protocol="tus")
    aborted_session = env.session(uuid.uuid4().hex, expires_in=timedelta(hours=1))
    async with env.consuming():
        for session in (rejected_session, aborted_session):
            await env.publish(session)
            await env.partial_upload(session)
        await env.storage.put(rejected_session.object_key, b"the wrong bytes", "image/jpeg")
        common = dict(workspace_id=env.workspace, storage_profile_ref="managed")
        await env.publish(UploadRejected(
            upload_id=rejected_session.upload_id, asset_id=rejected_session.asset_id,
            object_key=rejected_session.object_key, reason="checksum_mismatch", **common,
        ))
        await env.publish(UploadAborted(
            upload_id=aborted_session.upload_id, asset_id=aborted_session.asset_id,
            object_key=aborted_session.object_key, aborted_by="user1", **common,
        ))

        async def both_closed():
            rows = [await env.tracked(s.upload_id) for s in (rejected_session, aborted_session)]
            return all(row is not None and row["closed_by"] for row in rows) and rows

        rows = await wait_for(both_closed)
    assert [row["closed_by"] for row in rows] == ["rejected", "aborted"]
    for session in (rejected_session, aborted_session):
        assert await env.keys_under(env.asset_prefix(session.asset_id)) == []
        assert await env.uploads_under(env.asset_prefix(session.asset_id)) == []


async def test_a_closing_event_redelivered_ahead_of_the_sessions_creation_keeps_it_closed(env: Env):
    session = env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1))
    aborted = UploadAborted(
        workspace_id=env.workspace, upload_id=session.upload_id, asset_id=session.asset_id,
        storage_profile_ref="managed", object_key=session.object_key, aborted_by="user1",
    )
    deps = Dependencies(uow=UnitOfWork(env.pool), storage_for=env.resolver())
    await dispatch(new_event(aborted, source="/test"), deps)
    await dispatch(new_event(session, source="/test"), deps)
    assert (await env.tracked(session.upload_id))["closed_by"] == "aborted"
    report = await env.janitor().run_once(["expiry"])
    assert report is not None and report.sessions_expired == 0


# -- purge after retention ----------------------------------------------------------------------


async def test_purge_after_a_short_retention_removes_every_object_of_the_asset_and_announces_the_counts(env: Env):
    asset = uuid.uuid4().hex
    kept = uuid.uuid4().hex
    objects = await env.stored_asset(asset)
    await env.stored_asset(kept)
    async with env.consuming():
        for a in (asset, kept):
            await env.publish(env.verified(a))
        await env.publish(env.deleted(asset, datetime.now(UTC)))
        await wait_for(lambda: env.pool.fetchval("SELECT deleted_at FROM tracked_assets WHERE asset_id = $1", asset))

        early = await env.janitor().run_once(["expiry"])
        assert early is not None and early.assets_purged == 0
        assert await env.keys_under(env.asset_prefix(asset)) == sorted(objects)
        await asyncio.sleep(SHORT.retention.total_seconds())
        report = await env.janitor().run_once(["expiry"])
        [purged] = await wait_for(lambda: env.announced("asset", "purged"))

    assert await env.keys_under(env.asset_prefix(asset)) == []
    assert len(await env.keys_under(env.asset_prefix(kept))) == 3
    assert isinstance(purged.data, AssetPurged) and purged.data.asset_id == asset
    assert (purged.data.deleted_object_count, purged.data.deleted_bytes) == (3, sum(objects.values()))
    assert report is not None and (report.assets_purged, report.objects_deleted, report.bytes_deleted) == (
        1, 3, sum(objects.values()),
    )


async def test_a_restore_before_the_retention_cancels_the_purge_and_a_later_delete_schedules_it_again(env: Env):
    asset = uuid.uuid4().hex
    objects = await env.stored_asset(asset)
    t0 = datetime.now(UTC)
    async with env.consuming():
        await env.publish(env.verified(asset))
        await env.publish(env.deleted(asset, t0))
        await env.publish(env.restored(asset, t0 + timedelta(milliseconds=10)))
        await wait_for(lambda: env.pool.fetchval("SELECT restored_at FROM tracked_assets WHERE asset_id = $1", asset))
        await asyncio.sleep(SHORT.retention.total_seconds())
        after_restore = await env.janitor().run_once(["expiry"])
        assert after_restore is not None and after_restore.assets_purged == 0
        assert await env.keys_under(env.asset_prefix(asset)) == sorted(objects)

        await env.publish(env.deleted(asset, datetime.now(UTC)))
        await asyncio.sleep(SHORT.retention.total_seconds() + 0.2)
        report = await env.janitor().run_once(["expiry"])
    assert report is not None and report.assets_purged == 1
    assert await env.keys_under(env.asset_prefix(asset)) == []


async def test_deletes_and_restores_arriving_out_of_order_follow_their_timestamps(env: Env):
    stays, goes = uuid.uuid4().hex, uuid.uuid4().hex
    for asset in (stays, goes):
        await env.stored_asset(asset)
    t0 = datetime.now(UTC) - timedelta(seconds=10)
    async with env.consuming():
        # stays: deleted at t0, restored at t0+1 - but the restore arrives first.
        await env.publish(env.restored(stays, t0 + timedelta(seconds=1)))
        await env.publish(env.deleted(stays, t0))
        # goes: restored at t0+1, deleted again at t0+2 - the deletion arrives first.
        await env.publish(env.deleted(goes, t0 + timedelta(seconds=2)))
        await env.publish(env.restored(goes, t0 + timedelta(seconds=1)))

        async def all_seen():
            return await env.pool.fetchval(
                "SELECT count(*) = 2 FROM tracked_assets WHERE deleted_at IS NOT NULL AND restored_at IS NOT NULL"
            )

        await wait_for(all_seen)
        report = await env.janitor().run_once(["expiry"])
    assert report is not None and report.assets_purged == 1
    assert len(await env.keys_under(env.asset_prefix(stays))) == 3
    assert await env.keys_under(env.asset_prefix(goes)) == []


# -- sweeps -------------------------------------------------------------------------------------


async def test_a_byos_sweep_never_touches_keys_outside_the_workspace_prefix(env: Env, start_s3_server):
    byob = start_s3_server(bucket="byob")
    key_prefix = f"customer/{env.workspace}/"
    storage = await CountingStorage.open(profile_for(byob.connection, "byob-profile", key_prefix))
    env.storages.append(storage)
    ws, other_ws = env.workspace, f"ws{uuid.uuid4().hex[:12]}"
    known, orphan = uuid.uuid4().hex, uuid.uuid4().hex
    inside = {
        "known": keys.original_key(ws, known, "a.jpg", key_prefix),
        "orphan": keys.original_key(ws, orphan, "a.jpg", key_prefix),
        "orphan_derived": keys.derived_key(ws, orphan, "webp-320", "t.webp", key_prefix),
    }
    outside = [
        keys.original_key(ws, orphan, "a.jpg"),  # same asset, no customer prefix
        keys.original_key(other_ws, orphan, "a.jpg", f"customer/{other_ws}/"),
        f"customer/{ws}/notes.txt",
        "unrelated/file.bin",
    ]
    for key in [*inside.values(), *outside]:
        await storage.put(key, b"12345", "application/octet-stream")
    inside_upload = await storage.create_multipart(keys.original_key(ws, orphan, "big.mov", key_prefix), "video/mp4")
    outside_uploads = [
        await storage.create_multipart(keys.original_key(ws, orphan, "big.mov"), "video/mp4"),
        await storage.create_multipart("unrelated/big.mov", "video/mp4"),
    ]
    await dispatch(new_event(env.verified(known, "byob-profile"), source="/test"), Dependencies(UnitOfWork(env.pool), env.resolver(storage)))
    target = SweepTarget(storage=storage, prefix=keys.workspace_prefix(ws, key_prefix))

    dry = await env.janitor(storage, sweep_targets=_targets(target), dry_run=True).run_once(["sweep"])
    assert dry is not None and dry.orphans_found == 2 and dry.multipart_uploads_aborted == 1
    assert sorted(r.key for r in dry.removals if r.multipart_upload_id is None) == sorted(
        [inside["orphan"], inside["orphan_derived"]]
    )
    assert not storage.deleted and not storage.aborted

    report = await env.janitor(storage, sweep_targets=_targets(target)).run_once(["sweep"])
    assert report is not None and (report.orphans_found, report.objects_deleted, report.multipart_uploads_aborted) == (2, 2, 1)
    remaining = await env.keys_under("", storage)
    assert remaining == sorted([inside["known"], *outside])
    assert set(storage.deleted) == {inside["orphan"], inside["orphan_derived"]}
    assert set(storage.aborted) == {inside_upload}
    assert sorted(await env.uploads_under("", storage)) == sorted(outside_uploads)


async def test_orphans_are_only_reported_while_their_deletion_is_disabled(env: Env):
    orphan = uuid.uuid4().hex
    objects = await env.stored_asset(orphan)
    report = await env.janitor(delete_orphans=False).run_once(["sweep"])
    assert report is not None and report.orphans_found == 3 and report.objects_deleted == 0
    assert sorted(r.key for r in report.orphans_kept) == sorted(objects)
    assert await env.keys_under(env.asset_prefix(orphan)) == sorted(objects)


# -- replicas and crashes -----------------------------------------------------------------------


async def test_two_janitors_at_once_do_each_deletion_once(env: Env, s3_server: S3Connection):
    sessions = [env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1)) for _ in range(4)]
    assets = [uuid.uuid4().hex for _ in range(3)]
    multipart_ids = []
    async with env.consuming():
        for session in sessions:
            await env.publish(session)
            multipart_ids.append(await env.partial_upload(session))
        stored = {}
        for asset in assets:
            stored |= await env.stored_asset(asset)
            await env.publish(env.verified(asset))
            await env.publish(env.deleted(asset, datetime.now(UTC) - timedelta(seconds=5)))
        await wait_for(lambda: env.pool.fetchval(
            "SELECT count(*) = 3 FROM tracked_assets WHERE deleted_at IS NOT NULL"))
        await wait_for(lambda: env.pool.fetchval("SELECT count(*) = 4 FROM tracked_uploads"))

        storages = [await CountingStorage.open(profile_for(s3_server)) for _ in range(2)]
        env.storages.extend(storages)
        janitors = [env.janitor(storage) for storage in storages]
        stop = asyncio.Event()
        runs = [asyncio.create_task(janitor.run(stop)) for janitor in janitors]
        await asyncio.sleep(2.0)
        stop.set()
        await asyncio.gather(*runs)

        expired = await wait_for(lambda: _at_least(env.announced("upload", "expired"), 4))
        purged = await wait_for(lambda: _at_least(env.announced("asset", "purged"), 3))

    deleted = storages[0].deleted + storages[1].deleted
    aborted = storages[0].aborted + storages[1].aborted
    tails = {f"{env.asset_prefix(s.asset_id)}tus/tail" for s in sessions}
    assert deleted == Counter(set(stored) | tails)  # every key deleted by one janitor, once
    assert aborted == Counter(multipart_ids)
    assert sorted(e.data.upload_id for e in expired) == sorted(s.upload_id for s in sessions)
    assert len({e.id for e in expired}) == 4 and len({e.id for e in purged}) == 3
    assert sorted(e.data.asset_id for e in purged) == sorted(assets)


async def test_a_janitor_killed_mid_purge_leaves_nothing_the_next_run_cannot_finish(env: Env, s3_server: S3Connection):
    asset = uuid.uuid4().hex
    objects = await env.stored_asset(asset)
    await dispatch(new_event(env.verified(asset), source="/test"), Dependencies(UnitOfWork(env.pool), env.resolver()))
    await dispatch(new_event(env.deleted(asset, datetime.now(UTC) - timedelta(seconds=5)), source="/test"),
                   Dependencies(UnitOfWork(env.pool), env.resolver()))

    class DiesMidDelete(CountingStorage):
        """Deletes the first key, then hangs until killed."""

        dying = asyncio.Event()

        async def delete(self, keys: Iterable[str]) -> None:
            first, *_ = list(keys)
            await super().delete([first])
            self.dying.set()
            await asyncio.sleep(3600)

    dying = await DiesMidDelete.open(profile_for(s3_server))
    env.storages.append(dying)
    doomed = env.janitor(dying)
    run = asyncio.create_task(doomed.run_once(["expiry"]))
    await asyncio.wait_for(DiesMidDelete.dying.wait(), 10)
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    await doomed.lease.close()

    assert len(await env.keys_under(env.asset_prefix(asset))) == 2  # half done
    assert await env.pool.fetchval("SELECT purged_at FROM tracked_assets WHERE asset_id = $1", asset) is None
    assert await env.pool.fetchval("SELECT count(*) FROM outbox") == 0

    report = await env.janitor().run_once(["expiry"])
    await env.relay_once()
    [purged] = await wait_for(lambda: env.announced("asset", "purged"))
    assert await env.keys_under(env.asset_prefix(asset)) == []
    assert report is not None and (report.assets_purged, report.objects_deleted) == (1, 2)
    assert purged.data.asset_id == asset and purged.data.deleted_object_count == 2
    assert sum(dying.deleted.values()) + sum(env.storage.deleted.values()) == len(objects)


async def _at_least(found, count: int):
    events = await found
    return events if len(events) >= count else None


# -- the one-shot command -----------------------------------------------------------------------


async def test_the_dry_run_command_prints_what_would_go_and_removes_nothing(env: Env, nats_identities, s3_server):
    stale = env.session(uuid.uuid4().hex, expires_in=timedelta(seconds=-1))
    await dispatch(new_event(stale, source="/test"), Dependencies(UnitOfWork(env.pool), env.resolver()))
    await env.partial_upload(stale)
    orphan = uuid.uuid4().hex
    orphan_objects = await env.stored_asset(orphan)
    environ = {
        **os.environ,
        # As the janitor's own NATS user, as it runs in production (an anonymous client is refused).
        "RAWDRIVE_DATABASE_URL": env.dsn, **nats_identities.env("janitor"),
        "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint, "RAWDRIVE_S3_REGION": s3_server.region,
        "RAWDRIVE_S3_BUCKET": s3_server.bucket, "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
        "RAWDRIVE_JANITOR_EXPIRY_GRACE_S": "0", "RAWDRIVE_JANITOR_ORPHAN_MIN_AGE_HOURS": "0",
        "RAWDRIVE_JANITOR_DELETE_ORPHANS": "true",
    }
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "janitor", "sweep", "--dry-run"],
        env=environ, capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    report = msgspec.json.decode(result.stdout, type=RunReport)
    would_go = {r.key for r in report.removals}
    assert report.dry_run and report.sessions_expired == 1
    assert {stale.object_key, f"{env.asset_prefix(stale.asset_id)}tus/tail", *orphan_objects} <= would_go
    assert len(await env.keys_under(env.asset_prefix(stale.asset_id))) == 1
    assert len(await env.uploads_under(env.asset_prefix(stale.asset_id))) == 1
    assert await env.keys_under(env.asset_prefix(orphan)) == sorted(orphan_objects)
    assert (await env.tracked(stale.upload_id))["closed_by"] is None


async def test_the_lease_admits_one_janitor_and_is_free_again_once_its_holder_dies(env: Env):
    first, second = Lease(env.dsn), Lease(env.dsn)
    try:
        assert await first.try_acquire()
        assert not await second.try_acquire()
        assert await env.janitor(lease=second).run_once() is None  # skips: another janitor acts
        await first.close()  # the holder's session ends, as when its process is killed
        assert await second.try_acquire()
    finally:
        await first.close()
        await second.close()


async def test_a_deletion_seen_before_its_asset_purges_the_bucket_the_deletion_names(env: Env):
    asset = uuid.uuid4().hex
    objects = await env.stored_asset(asset)
    asked: list[str] = []

    async def storage_for(ref: str) -> Storage:
        asked.append(ref)
        return env.storage

    at = datetime.now(UTC) - timedelta(seconds=5)
    deletion = msgspec.structs.replace(env.deleted(asset, at), storage_profile_ref="byos-ws1")
    await dispatch(new_event(deletion, source="/test"), Dependencies(uow=UnitOfWork(env.pool), storage_for=storage_for))
    report = await env.janitor(storage_for=storage_for).run_once(["expiry"])
    assert report is not None and report.assets_purged == 1
    assert asked == ["byos-ws1"] and env.storage.deleted.keys() >= set(objects)


@contextlib.asynccontextmanager
async def silent_endpoint() -> AsyncIterator[str]:
    """A loopback 'S3 endpoint' that accepts connections and never answers (a hostile tenant's)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_silent_customer_endpoint_delays_only_its_own_tenant(env: Env):
    async with silent_endpoint() as endpoint:
        silent = await Storage.open(StorageProfile(
            profile_id="byos-silent", provider="byos", endpoint=endpoint, region="us-east-1", bucket="b",
            access_key_id="id", secret_access_key=Secret("secret"), endpoint_policy=loopback_endpoint_policy(endpoint),
        ))
        env.storages.append(silent)

        async def storage_for(ref: str) -> Storage:
            return silent if ref == "byos-silent" else env.storage

        hostile = msgspec.structs.replace(env.session(uuid.uuid4().hex, expires_in=-timedelta(hours=1)), storage_profile_ref="byos-silent")
        ordinary = env.session(uuid.uuid4().hex, expires_in=-timedelta(hours=1))
        deps = Dependencies(UnitOfWork(env.pool), storage_for)
        for session in (hostile, ordinary):
            await dispatch(new_event(session, source="/test"), deps)
        janitor = env.janitor(
            storage_for=storage_for, item_deadline_s=1.0, sweep_deadline_s=1.0,
            sweep_targets=_targets(SweepTarget(storage=silent, prefix=keys.workspace_prefix(env.workspace)),
                                   SweepTarget(storage=env.storage, prefix=keys.workspace_prefix(env.workspace))),
        )
        # Only a guard against hanging the suite: without deadlines this run takes minutes.
        report = await asyncio.wait_for(janitor.run_once(), 60)
    assert report is not None
    assert report.sessions_expired == 1 and report.errors == 3  # the silent expiry and its two sweeps
    assert (await env.tracked(ordinary.upload_id))["closed_by"] is not None
    assert (await env.tracked(hostile.upload_id))["closed_by"] is None  # still due: tried again next run


# -- retired storage profiles -------------------------------------------------------------------


async def test_a_retired_version_leaves_the_kv_once_no_session_and_no_asset_even_deleted_names_it(
    env: Env, s3_server: S3Connection
):
    kv = await profile_bucket(env.js, replicas=1)
    publisher = ProfileResolver(env.storage, None, kv, MasterKey(b"k" * 32))  # type: ignore[arg-type]
    now = datetime.now(UTC)
    names = ("unreferenced", "open_session", "live_asset", "deleted_asset", "current")
    refs = {name: new_profile_ref(env.workspace) for name in names}
    for ref in refs.values():
        await publisher.publish(profile_for(s3_server, ref, f"{env.workspace}/"), env.workspace, now)
    for name in names[:-1]:
        assert await publisher.retire(refs[name], now)
    session = msgspec.structs.replace(
        env.session(uuid.uuid4().hex, expires_in=timedelta(hours=1)), storage_profile_ref=refs["open_session"]
    )
    live, trashed = uuid.uuid4().hex, uuid.uuid4().hex
    async with env.consuming():
        await env.publish(session)
        await env.publish(env.verified(live, refs["live_asset"]))
        await env.publish(env.verified(trashed, refs["deleted_asset"]))
        # In the trash for 30 days: its purge will need the profile to reach the bucket.
        await env.publish(msgspec.structs.replace(env.deleted(trashed, now), purge_after=now + timedelta(days=30)))
        await wait_for(lambda: _tracked_all(env, session.upload_id, live, trashed))

    keeping = msgspec.structs.replace(SHORT, retention=timedelta(days=30))
    janitor = env.janitor(thresholds=keeping, profile_versions=ProfileVersions(env.js, kv))
    report = await janitor.run_once(("sweep",))
    assert report is not None and report.errors == 0 and report.profile_versions_deleted >= 1

    with pytest.raises(KeyNotFoundError):
        await kv.get(refs["unreferenced"])
    assert refs["unreferenced"] not in await kv.keys()
    for name in names[1:]:
        assert (await kv.get(refs[name])).value, name  # still named by something, or current

    # Once the session is gone and the assets are purged, a later pass deletes the rest retired.
    await env.pool.execute("UPDATE tracked_uploads SET closed_by = 'aborted', closed_at = now() WHERE upload_id = $1",
                           session.upload_id)
    await env.pool.execute("UPDATE tracked_assets SET purged_at = now() WHERE asset_id = ANY($1)", [live, trashed])
    assert (await janitor.run_once(("sweep",))).errors == 0
    for name in names[1:-1]:
        with pytest.raises(KeyNotFoundError):
            await kv.get(refs[name])
    assert (await kv.get(refs["current"])).value  # never retired, never deleted


async def _tracked_all(env: Env, upload_id: str, live: str, trashed: str) -> bool:
    return bool(await env.pool.fetchval(
        """SELECT EXISTS (SELECT 1 FROM tracked_uploads WHERE upload_id = $1)
              AND EXISTS (SELECT 1 FROM tracked_assets WHERE asset_id = $2)
              AND EXISTS (SELECT 1 FROM tracked_assets WHERE asset_id = $3 AND deleted_at IS NOT NULL)""",
        upload_id, live, trashed,
    ))
