"""The verifier against real NATS, PostgreSQL and S3: the verdicts other services see."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.js import JetStreamContext

from commit_verifier.handlers import (
    HANDLERS,
    Dependencies,
)
from rawdrive_contracts import (
    CloudEvent,
    CommitRefused,
    CommitRequested,
    PartRef,
    UploadRejected,
    UploadVerified,
    encode,
    new_event,
)
from rawdrive_devkit.devstack.servers import NatsServer, S3Connection, free_port
from rawdrive_devkit.testkit import (
    consumer_for_test,
    consuming,
    jetstream,
    managed_profile,
    migrated_pool,
    stored_events,
)
from rawdrive_platform import bus, deadletter
from rawdrive_platform.outbox import Relay, UnitOfWork
from rawdrive_platform.profiles import StorageResolver, UnknownProfile
from rawdrive_platform.storage import Storage, StorageProfile

MiB = 1024 * 1024
MIGRATIONS = files("commit_verifier") / "migrations"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def only(storage: Storage) -> StorageResolver:
    async def storage_for(ref: str) -> Storage:
        return storage

    return storage_for


async def stored_verdicts(js: JetStreamContext, workspace: str) -> list[CloudEvent[Any]]:
    """Every verified / rejected / commit_refused event stored for this workspace so far."""
    subjects = (f"rawdrive.upload.{action}.{workspace}" for action in ("verified", "rejected", "commit_refused"))
    return await stored_events(js, *subjects, quiet_s=0.2)


@dataclass
class Env:
    """A fresh verifier schema, the bus, the managed bucket and one workspace for one test."""

    pool: asyncpg.Pool
    js: JetStreamContext
    storage: Storage
    workspace: str

    def key(self) -> str:
        return f"workspaces/{self.workspace}/assets/{uuid.uuid4().hex}/original/photo.jpg"

    def commit(self, key: str, size: int, **overrides: Any) -> CommitRequested:
        fields: dict[str, Any] = dict(
            workspace_id=self.workspace,
            upload_id=uuid.uuid4().hex,
            asset_id=uuid.uuid4().hex,
            library_id="lib1",
            file_name="photo.jpg",
            mime_type="image/jpeg",
            size_bytes=size,
            resumable_protocol="tus",
            storage_profile_ref="managed",
            object_key=key,
            requested_by="user1",
        )
        return CommitRequested(**(fields | overrides))

    async def request(self, commit: CommitRequested) -> CloudEvent[Any]:
        event = new_event(commit, source="test")
        await bus.publish(self.js, event)
        return event

    async def multipart(self, key: str, parts: list[bytes]) -> tuple[str, list[PartRef]]:
        upload_id = await self.storage.create_multipart(key, "image/jpeg")
        refs = []
        for number, body in enumerate(parts, start=1):
            uploaded = await self.storage.upload_part(key, upload_id, number, body)
            refs.append(PartRef(part_number=number, etag=uploaded.etag))
        return upload_id, refs

    def spec(self, **settings: Any) -> bus.ConsumerSpec:
        return consumer_for_test(HANDLERS, self.workspace, **({"ack_wait_s": 5.0, "max_deliver": 5} | settings))

    @contextlib.asynccontextmanager
    async def verifier(
        self, storage_for: StorageResolver | None = None, spec: bus.ConsumerSpec | None = None
    ) -> AsyncIterator[bus.ConsumerSpec]:
        """The verifier's consumer and outbox relay, running in this process."""
        deps = Dependencies(uow=UnitOfWork(self.pool), storage_for=storage_for or only(self.storage))
        stop = asyncio.Event()
        relay = asyncio.create_task(Relay(self.pool, self.js).run(stop))
        try:
            async with consuming(self.js, HANDLERS, deps, spec or self.spec(), concurrency=2) as consumer:
                yield consumer
        finally:
            stop.set()
            await asyncio.wait_for(relay, 10)

    async def verdicts(self) -> list[CloudEvent[Any]]:
        return await stored_verdicts(self.js, self.workspace)

    async def wait_verdicts(self, count: int = 1, timeout: float = 20.0) -> list[CloudEvent[Any]]:
        async with asyncio.timeout(timeout):
            while len(found := await self.verdicts()) < count:
                await asyncio.sleep(0.1)
        return found


@pytest.fixture
async def env(fresh_database_url: str, nats_url: str, s3_server: S3Connection) -> AsyncIterator[Env]:
    storage = await Storage.open(managed_profile(s3_server))
    try:
        async with (
            migrated_pool(fresh_database_url, "verifier", MIGRATIONS) as pool,
            jetstream(nats_url, "test-verifier") as js,
        ):
            yield Env(pool=pool, js=js, storage=storage, workspace=f"ws{uuid.uuid4().hex[:12]}")
    finally:
        await storage.close()


async def test_a_tus_upload_whose_bytes_match_is_verified_with_everything_downstream_needs(env: Env):
    body = os.urandom(3 * MiB + 17)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    commit = env.commit(key, len(body), expected_sha256=sha256(body), folder_id="f1")
    async with env.verifier():
        await env.request(commit)
        [event] = await env.wait_verdicts()
    verified = event.data
    assert isinstance(verified, UploadVerified)
    assert (verified.upload_id, verified.asset_id, verified.object_key) == (commit.upload_id, commit.asset_id, key)
    assert (verified.size_bytes, verified.sha256, verified.duplicate_of) == (len(body), sha256(body), None)
    assert (verified.library_id, verified.folder_id, verified.file_name, verified.mime_type) == (
        "lib1", "f1", "photo.jpg", "image/jpeg",
    )
    assert verified.storage_profile_ref == "managed" and event.source == "commit-verifier"


async def test_a_commit_without_a_checksum_is_verified_and_its_sha256_recorded(env: Env):
    body = b"no checksum given"
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    async with env.verifier():
        await env.request(env.commit(key, len(body)))
        [event] = await env.wait_verdicts()
    assert isinstance(event.data, UploadVerified) and event.data.sha256 == sha256(body)


async def test_a_commit_with_the_wrong_sha256_is_rejected_as_a_checksum_mismatch(env: Env):
    body = os.urandom(1 * MiB)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    async with env.verifier():
        await env.request(env.commit(key, len(body), expected_sha256=sha256(b"something else")))
        [event] = await env.wait_verdicts()
    rejected = event.data
    assert isinstance(rejected, UploadRejected)
    assert (rejected.reason, rejected.actual_sha256, rejected.object_key) == ("checksum_mismatch", sha256(body), key)
    assert rejected.expected_sha256 == sha256(b"something else")


async def test_a_commit_declaring_the_wrong_size_is_rejected_as_a_size_mismatch(env: Env):
    key = env.key()
    await env.storage.put(key, b"12345", "image/jpeg")
    async with env.verifier():
        await env.request(env.commit(key, 6))
        [event] = await env.wait_verdicts()
    rejected = event.data
    assert isinstance(rejected, UploadRejected)
    assert (rejected.reason, rejected.expected_size_bytes, rejected.actual_size_bytes) == ("size_mismatch", 6, 5)


async def test_a_commit_for_an_object_that_was_never_stored_is_rejected_as_missing(env: Env):
    async with env.verifier():
        await env.request(env.commit(env.key(), 10))
        [event] = await env.wait_verdicts()
    assert isinstance(event.data, UploadRejected) and event.data.reason == "missing_object"


async def test_a_multipart_upload_is_completed_from_the_clients_part_list_and_verified(env: Env):
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1234)]
    key = env.key()
    upload_id, refs = await env.multipart(key, parts)
    body = b"".join(parts)
    commit = env.commit(
        key, len(body), resumable_protocol="s3_multipart", multipart_upload_id=upload_id,
        parts=refs, expected_sha256=sha256(body),
    )
    async with env.verifier():
        await env.request(commit)
        [event] = await env.wait_verdicts()
    assert isinstance(event.data, UploadVerified) and event.data.sha256 == sha256(body)
    stored = await env.storage.head(key)
    assert stored is not None and stored.size == len(body)


async def test_a_multipart_upload_with_a_part_the_client_never_sent_is_rejected(env: Env):
    parts = [os.urandom(5 * MiB), b"tail"]
    key = env.key()
    upload_id, refs = await env.multipart(key, parts)
    refs[1] = type(refs[1])(part_number=2, etag="0" * 32)  # the client's ETag for part 2 differs
    commit = env.commit(key, 5 * MiB + 4, resumable_protocol="s3_multipart", multipart_upload_id=upload_id, parts=refs)
    async with env.verifier():
        await env.request(commit)
        [event] = await env.wait_verdicts()
    rejected = event.data
    assert isinstance(rejected, UploadRejected)
    assert (rejected.reason, rejected.multipart_upload_id) == ("checksum_mismatch", upload_id)


async def test_a_multipart_upload_completed_by_an_earlier_delivery_is_verified_from_the_object(env: Env):
    parts = [os.urandom(5 * MiB), b"tail"]
    key = env.key()
    upload_id, refs = await env.multipart(key, parts)
    await env.storage.complete_multipart(key, upload_id, await env.storage.list_parts(key, upload_id))
    body = b"".join(parts)
    commit = env.commit(key, len(body), resumable_protocol="s3_multipart", multipart_upload_id=upload_id, parts=refs)
    async with env.verifier():
        await env.request(commit)
        [event] = await env.wait_verdicts()
    assert isinstance(event.data, UploadVerified) and event.data.sha256 == sha256(body)


async def test_a_redelivered_commit_republishes_the_same_decision_without_reading_storage(env: Env):
    body = os.urandom(MiB)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    commit = env.commit(key, len(body), expected_sha256=sha256(body))
    verified_subject = f"rawdrive.upload.verified.{env.workspace}"
    seen: list[str] = []

    async def on_message(msg) -> None:
        seen.append(msg.headers[bus.MSG_ID_HEADER])

    # A plain subscriber sees every publish, including ones JetStream then drops as duplicates.
    watcher = await env.js._nc.subscribe(verified_subject, cb=on_message)
    async with env.verifier() as spec:
        request = await env.request(commit)
        [first] = await env.wait_verdicts()
        await env.storage.delete([key])  # re-hashing now could only reject
        # An operator's replay: the same request under a new message id.
        await env.js.publish(
            f"rawdrive.upload.commit_requested.{env.workspace}", encode(request),
            headers={bus.MSG_ID_HEADER: f"{request.id}:replay"},
        )
        async with asyncio.timeout(10):
            while len(seen) < 2:
                await asyncio.sleep(0.05)
        info = await env.js.consumer_info(spec.stream, spec.durable)
    await watcher.unsubscribe()
    assert seen == [first.id, first.id]
    assert [e.id for e in await env.verdicts()] == [first.id]  # stored once, no rejection
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_wrong_sha256_with_attempts_left_is_refused_keeping_the_bytes_and_the_next_attempt_verifies(env: Env):
    body = os.urandom(MiB)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    typo = env.commit(key, len(body), expected_sha256=sha256(b"typo"), attempts_left=2)
    right = CommitRequested(**(msgspec.structs.asdict(typo) | {
        "expected_sha256": sha256(body), "attempt": 2, "attempts_left": 1}))
    seen: list[str] = []

    async def on_message(msg) -> None:
        seen.append(msg.headers[bus.MSG_ID_HEADER])

    # A plain subscriber sees every publish, including ones JetStream then drops as duplicates.
    watcher = await env.js._nc.subscribe(f"rawdrive.upload.*.{env.workspace}", cb=on_message)
    async with env.verifier() as spec:
        first_request = await env.request(typo)
        [refused] = await env.wait_verdicts()
        assert isinstance(refused.data, CommitRefused)
        assert (refused.data.attempt, refused.data.attempts_left) == (1, 2)
        assert refused.data.actual_sha256 == sha256(body) and refused.data.expected_sha256 == sha256(b"typo")
        assert await env.storage.head(key) is not None  # nothing deleted: the bytes are still committable
        second_request = await env.request(right)
        assert second_request.id != first_request.id  # not deduplicated as a republish of attempt 1
        [_, verified] = sorted(await env.wait_verdicts(2), key=lambda e: isinstance(e.data, UploadVerified))
        assert isinstance(verified.data, UploadVerified) and verified.data.sha256 == sha256(body)
        await env.storage.delete([key])  # re-hashing now could only reject
        # An operator's replay of both attempts: the same requests under new message ids.
        for request in (first_request, second_request):
            await env.js.publish(
                f"rawdrive.upload.commit_requested.{env.workspace}", encode(request),
                headers={bus.MSG_ID_HEADER: f"{request.id}:replay"},
            )
        async with asyncio.timeout(10):
            while seen.count(refused.id) < 2 or seen.count(verified.id) < 2:
                await asyncio.sleep(0.05)
        info = await env.js.consumer_info(spec.stream, spec.durable)
    await watcher.unsubscribe()
    # Each attempt decided once and announced under one id; the replays only republished them.
    assert sorted(e.id for e in await env.verdicts()) == sorted([refused.id, verified.id])
    assert seen.count(refused.id) == seen.count(verified.id) == 2
    decided = await env.pool.fetch("SELECT attempt, outcome FROM decisions ORDER BY attempt")
    assert [(r["attempt"], r["outcome"]) for r in decided] == [(1, "refused"), (2, "verified")]
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_a_wrong_sha256_on_the_last_attempt_is_rejected_for_good(env: Env):
    body = os.urandom(64 * 1024)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    async with env.verifier():
        await env.request(env.commit(key, len(body), expected_sha256=sha256(b"typo"), attempt=3, attempts_left=0))
        [event] = await env.wait_verdicts()
    assert isinstance(event.data, UploadRejected) and event.data.reason == "checksum_mismatch"


async def test_the_same_content_twice_in_a_workspace_is_verified_as_a_duplicate_of_the_first(env: Env):
    body = os.urandom(64 * 1024)
    first_key, second_key = env.key(), env.key()
    for key in (first_key, second_key):
        await env.storage.put(key, body, "image/jpeg")
    first = env.commit(first_key, len(body))
    second = env.commit(second_key, len(body))
    async with env.verifier():
        await env.request(first)
        await env.wait_verdicts(1)
        await env.request(second)
        events = await env.wait_verdicts(2)
    by_upload = {e.data.upload_id: e.data for e in events}
    assert by_upload[first.upload_id].duplicate_of is None
    assert by_upload[second.upload_id].duplicate_of == first.asset_id
    assert isinstance(by_upload[second.upload_id], UploadVerified)  # a duplicate is not rejected


async def test_a_profile_the_verifier_cannot_resolve_is_rejected_as_a_storage_error(env: Env):
    async def nothing_resolves(ref: str) -> Storage:
        raise UnknownProfile(f"storage profile {ref!r} cannot be resolved by this verifier")

    async with env.verifier(storage_for=nothing_resolves):
        await env.request(env.commit(env.key(), 10, storage_profile_ref="byos-42"))
        [event] = await env.wait_verdicts()
    rejected = event.data
    assert isinstance(rejected, UploadRejected) and rejected.reason == "storage_error"
    assert "byos-42" in rejected.detail


async def test_a_storage_outage_is_retried_and_the_commit_completes_once_storage_is_back(env: Env, start_s3_server):
    server = await asyncio.to_thread(start_s3_server, "outage")
    storage = await Storage.open(managed_profile(server.connection))
    attempts = 0

    async def counting(ref: str) -> Storage:
        nonlocal attempts
        attempts += 1
        return storage

    try:
        body = os.urandom(MiB)
        key = env.key()
        await storage.put(key, body, "image/jpeg")
        await asyncio.to_thread(server.stop)
        async with env.verifier(storage_for=counting, spec=env.spec(backoff_s=(0.5,), max_deliver=200)):
            await env.request(env.commit(key, len(body), expected_sha256=sha256(body)))
            async with asyncio.timeout(20):
                while attempts < 2:
                    await asyncio.sleep(0.1)
            assert await env.verdicts() == []  # nothing decided while storage is down
            await asyncio.to_thread(server.start)
            [event] = await env.wait_verdicts(timeout=30)
    finally:
        await storage.close()
        await asyncio.to_thread(server.stop)
    assert isinstance(event.data, UploadVerified) and event.data.sha256 == sha256(body)


async def test_storage_down_through_every_retry_is_rejected_as_a_storage_error_and_dead_lettered(env: Env):
    # Nothing listens on this port: every attempt fails to connect.
    dead = StorageProfile(
        profile_id="managed", provider="r2", endpoint=f"http://127.0.0.1:{free_port()}", region="us-east-1",
        bucket="gone", access_key_id="k", secret_access_key=env.storage.profile.secret_access_key,
    )
    storage = await Storage.open(dead)
    try:
        async with env.verifier(storage_for=only(storage), spec=env.spec(backoff_s=(0.1,), max_deliver=2)) as spec:
            request = await env.request(env.commit(env.key(), 10))
            [event] = await env.wait_verdicts()
            async with asyncio.timeout(10):
                while not (letters := [d for d in await deadletter.list_dead_letters(env.js) if d.consumer == spec.durable]):
                    await asyncio.sleep(0.1)
    finally:
        await storage.close()
    rejected = event.data
    assert isinstance(rejected, UploadRejected) and rejected.reason == "storage_error"
    assert "storage unavailable" in rejected.detail
    assert env.storage.profile.secret_access_key.reveal() not in encode(event).decode()
    [letter] = letters
    assert (letter.kind, letter.event_id) == ("terminated", request.id)


async def test_a_second_delivery_racing_the_first_announces_one_decision(env: Env):
    body = os.urandom(2 * MiB)
    key = env.key()
    await env.storage.put(key, body, "image/jpeg")
    commit = env.commit(key, len(body))
    deps = Dependencies(uow=UnitOfWork(env.pool), storage_for=only(env.storage))
    event = new_event(commit, source="test")
    await asyncio.gather(HANDLERS.dispatch(event, deps), HANDLERS.dispatch(event, deps))
    rows = await env.pool.fetch("SELECT event_id FROM outbox")
    decisions = await env.pool.fetch("SELECT event_id FROM decisions")
    assert len(decisions) == 1 and [r["event_id"] for r in rows] == [decisions[0]["event_id"]]



async def _wait_for_line(log_file: Path, needle: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while needle not in (log_file.read_text() if log_file.exists() else ""):
            await asyncio.sleep(0.01)


async def test_a_verifier_killed_mid_hash_leaves_the_commit_to_another_replica_which_announces_it_once(
    fresh_database_url: str, s3_server: S3Connection, tmp_path: Path
):
    # Its own NATS: the real durable "commit-verifier" then sees only this test's request.
    nats = NatsServer(tmp_path / "nats")
    await asyncio.to_thread(nats.start)
    nc = await bus.connect(nats.url, name="test-crash")
    js = nc.jetstream()
    storage = await Storage.open(managed_profile(s3_server))
    processes: list[asyncio.subprocess.Process] = []

    async def replica(name: str) -> tuple[asyncio.subprocess.Process, Path]:
        log_file = tmp_path / f"{name}.log"
        environment = os.environ | {
            "RAWDRIVE_DATABASE_URL": fresh_database_url,
            "RAWDRIVE_NATS_URL": nats.url,
            "RAWDRIVE_S3_ENDPOINT": s3_server.endpoint,
            "RAWDRIVE_S3_REGION": s3_server.region,
            "RAWDRIVE_S3_BUCKET": s3_server.bucket,
            "RAWDRIVE_S3_ACCESS_KEY_ID": s3_server.access_key_id,
            "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3_server.secret_access_key,
            "RAWDRIVE_HEALTH_PORT": str(free_port()),
            "RAWDRIVE_CONSUMER_ACK_WAIT_S": "2",  # a dead replica's message comes back after 2 s
        }
        with open(log_file, "wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "commit_verifier", env=environment, stdout=log, stderr=log
            )
        processes.append(process)
        return process, log_file

    try:
        await bus.provision(js, bus.StreamSettings())
        workspace = f"ws{uuid.uuid4().hex[:12]}"
        key = f"workspaces/{workspace}/assets/{uuid.uuid4().hex}/original/clip.mp4"
        # 300 MiB, generated and uploaded part by part: the test never holds the whole object.
        upload_id = await storage.create_multipart(key, "video/mp4")
        digest, refs = hashlib.sha256(), []
        for number in range(1, 31):
            part = os.urandom(10 * MiB)
            digest.update(part)
            uploaded = await storage.upload_part(key, upload_id, number, part)
            refs.append(PartRef(part_number=number, etag=uploaded.etag))
        commit = CommitRequested(
            workspace_id=workspace, upload_id=uuid.uuid4().hex, asset_id=uuid.uuid4().hex, library_id="lib1",
            file_name="clip.mp4", mime_type="video/mp4", size_bytes=300 * MiB, resumable_protocol="s3_multipart",
            storage_profile_ref="managed", object_key=key, multipart_upload_id=upload_id, parts=refs,
            expected_sha256=digest.hexdigest(), requested_by="user1",
        )

        first, first_log = await replica("first")
        await bus.publish(js, new_event(commit, source="test"))
        await _wait_for_line(first_log, '"message":"hashing"', timeout=30)
        first.kill()  # SIGKILL, mid-hash
        await first.wait()
        conn = await asyncpg.connect(fresh_database_url)
        try:
            decided = await conn.fetchval("SELECT count(*) FROM verifier.decisions")
        finally:
            await conn.close()
        assert decided == 0, "the first replica finished before it was killed; the test proved nothing"

        await replica("second")
        async with asyncio.timeout(40):
            while not await stored_verdicts(js, workspace):
                await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # room for a second announcement, if there were one
        verdicts = await stored_verdicts(js, workspace)
    finally:
        for process in processes:
            if process.returncode is None:
                process.terminate()
                await asyncio.wait_for(process.wait(), 30)
        await storage.close()
        await nc.close()
        await asyncio.to_thread(nats.stop)
    assert len({v.id for v in verdicts}) == len(verdicts) == 1
    [verified] = verdicts
    assert isinstance(verified.data, UploadVerified)
    assert (verified.data.sha256, verified.data.size_bytes) == (digest.hexdigest(), 300 * MiB)
