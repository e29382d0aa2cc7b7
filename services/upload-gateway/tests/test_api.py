"""The uploads API end to end against real PostgreSQL, NATS and S3, through aiohttp's test client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from importlib.resources import files

import aiohttp
import asyncpg
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rawdrive_contracts import (
    CommitRefused,
    CommitRequested,
    UploadAborted,
    UploadExpired,
    UploadRejected,
    UploadSessionCreated,
    UploadVerified,
    decode,
    new_event,
)
from rawdrive_devkit.testkit import consumer_for_test, consuming, jetstream, managed_profile, migrated_pool
from rawdrive_platform import bus
from rawdrive_platform.outbox import OutboxRow, UnitOfWork, outbox_row
from rawdrive_platform.storage import Storage
from upload_gateway.app import create_app, token_verifier
from upload_gateway.gateway import Gateway
from upload_gateway.storage_profiles import store as profile_store
from upload_gateway.storage_profiles.store import ActiveProfile
from upload_gateway.uploads import api, core, repository, verdicts
from upload_gateway.uploads.patch_limits import PATCH_LIMIT
from upload_gateway.uploads.quotas import QuotaLimits
from upload_gateway.uploads.sessions import UploadSession
from upload_gateway.uploads.tus_session import mount_tus

from .gatewaykit import GatewayUnderTest, session_request, settings_for

SECRET = "integration-secret-" + "x" * 20
MIGRATIONS = files("upload_gateway") / "migrations"
MIB = 1024 * 1024


class Harness(GatewayUnderTest):
    def path(self, suffix: str = "", workspace: str | None = None) -> str:
        return f"/v1/workspaces/{workspace or self.workspace}/uploads{suffix}"

    async def create(self, **overrides: object) -> dict:
        response = await self.client.post(self.path(), json=session_request(**overrides), headers=self.user())
        assert response.status == 201, await response.text()
        return await response.json()

    async def send_tus(self, created: dict, body: bytes, offset: int = 0, length: int | None = None) -> None:
        """Send `body` at `offset` over tus (creating the tus upload first at offset 0)."""
        tus = {"Tus-Resumable": "1.0.0"} | created["headers"]
        url = self.path(f"/{created['upload_id']}/tus")
        if offset == 0:
            response = await self.client.post(url, headers=tus | {"Upload-Length": str(length or len(body))})
            assert response.status == 201, await response.text()
        patch = tus | {"Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        response = await self.client.patch(url, data=body, headers=patch)
        assert response.status == 204, await response.text()

    async def send_parts(self, created: dict, body: bytes, numbers: list[int]) -> dict[int, str]:
        """PUT these parts of `body` to their presigned URLs; their ETags."""
        path = self.path(f"/{created['upload_id']}/parts")
        signed = await self.client.post(path, json={"part_numbers": numbers}, headers=created["headers"])
        assert signed.status == 200, await signed.text()
        etags = {}
        async with aiohttp.ClientSession() as http:
            for part in (await signed.json())["parts"]:
                start = (part["part_number"] - 1) * created["part_size"]
                async with http.put(part["url"], data=body[start : start + created["part_size"]],
                                    headers=part["headers"]) as response:
                    assert response.status == 200, await response.text()
                    etags[part["part_number"]] = response.headers["ETag"]
        return etags

    async def outbox(self, data_type: type) -> list:
        rows = await self.gw.pool.fetch("SELECT payload FROM outbox ORDER BY seq")
        return [event.data for event in map(decode, (r["payload"] for r in rows)) if isinstance(event.data, data_type)]


@pytest.fixture
async def harness(fresh_database_url, s3_server, nats_url) -> AsyncIterator[Harness]:
    settings = settings_for(
        fresh_database_url, s3_server, SECRET, nats_url=nats_url, commit_wait_s=1.5, cors_origins=("https://app.example",)
    )
    storage = await Storage.open(managed_profile(s3_server))
    try:
        async with migrated_pool(fresh_database_url, "gateway", MIGRATIONS) as pool:
            gw = Gateway(settings=settings, pool=pool, storage=storage, tokens=token_verifier(settings))
            async with TestClient(TestServer(create_app(gw, mounts=[mount_tus]))) as client:
                yield Harness(client=client, gw=gw, workspace=f"ws{uuid.uuid4().hex[:10]}")
    finally:
        await storage.close()


@pytest.fixture
async def verdict_consumer(harness, nats_url) -> AsyncIterator[bus.JetStreamContext]:
    """The gateway's verdict consumer running, and a JetStream handle to publish verdicts with."""
    async with jetstream(nats_url, "test-gateway") as js:
        async with consuming(js, verdicts.HANDLERS, UnitOfWork(harness.gw.pool), consumer_for_test(verdicts.HANDLERS)):
            yield js


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    body = await response.json()
    assert body["status"] == response.status and body["type"].endswith(body["code"])
    return body


# -- sessions --------------------------------------------------------------------------------


async def test_a_tus_session_gets_an_upload_url_and_upload_token_and_announces_itself(harness):
    created = await harness.create(file_name="Ho/li\u0000day.JPG", sha256="AB" * 32)
    assert created["provider"] == "r2"
    assert created["upload_url"] == f"http://gateway.test{harness.path('/' + created['upload_id'] + '/tus')}"
    assert created["headers"]["Authorization"].startswith("Bearer ")
    assert "part_size" not in created and datetime.fromisoformat(created["expires_at"]) > datetime.now(UTC)
    [event] = await harness.outbox(UploadSessionCreated)
    assert (event.upload_id, event.asset_id, event.sha256) == (created["upload_id"], created["asset_id"], "ab" * 32)
    assert event.object_key == f"workspaces/{harness.workspace}/assets/{created['asset_id']}/original/Ho_liday.JPG"
    assert (event.file_name, event.storage_profile_ref, event.created_by) == ("Ho/liday.JPG", "managed", "alice")
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user("viewer"))).json()
    assert (shown["state"], shown["bytes_received"], shown["resumable_protocol"]) == ("created", 0, "tus")


async def test_an_s3_multipart_session_starts_the_multipart_upload_and_plans_equal_parts(harness):
    created = await harness.create(resumable_protocol="s3_multipart", file_name="clip.mp4", mime_type="video/mp4", size_bytes=100 * MIB)
    assert (created["part_size"], created["part_count"]) == (8 * MIB, 13)
    assert created["upload_url"].endswith(f"/{created['upload_id']}/parts")
    [event] = await harness.outbox(UploadSessionCreated)
    uploads = [u async for u in harness.gw.storage.list_multipart_uploads(event.object_key)]
    assert len(uploads) == 1


def new_session(harness: Harness, **changes: object) -> tuple[UploadSession, OutboxRow]:
    """A session and its created event as create_session makes them, with `changes` applied."""
    request = api.CreateUpload(
        file_name="a.jpg", mime_type="image/jpeg", size_bytes=10, library_id="lib1", resumable_protocol="tus"
    )
    asset_id = str(uuid.uuid4())
    session, event = core.new_session(
        "alice", harness.workspace, request, core.check_new_file(request), storage=harness.gw.storage,
        profile_ref="managed", asset_id=asset_id, object_key=f"workspaces/{harness.workspace}/{asset_id}/a.jpg",
        multipart_upload_id=None, now=datetime.now(UTC), ttl_s=3600, trace_context="{}",
    )  # fmt: skip
    return msgspec.structs.replace(session, **changes), outbox_row(new_event(event, source="test"), "{}")


async def stored_ids(harness: Harness) -> tuple[set[str], set[str]]:
    """Upload ids of the session rows, and of the UploadSessionCreated events in the outbox."""
    rows = await harness.gw.pool.fetch("SELECT upload_id FROM upload_sessions")
    return {r["upload_id"] for r in rows}, {e.upload_id for e in await harness.outbox(UploadSessionCreated)}


async def test_concurrent_creations_each_commit_their_row_and_exactly_one_event(harness):
    created = await asyncio.gather(*(harness.create() for _ in range(30)))
    ids = {c["upload_id"] for c in created}
    assert len(ids) == 30
    assert await stored_ids(harness) == (ids, ids)


async def test_a_row_the_database_refuses_fails_only_its_own_creation_not_the_others_written_with_it(harness):
    writer = repository.SessionWriter(harness.gw.pool, max_in_flight=1)
    good, bad = new_session(harness), new_session(harness, sha256="not-hex")  # breaks the table's CHECK
    # Both wait together for the one statement in flight, so they share one statement first.
    results = await asyncio.gather(writer.insert(*good), writer.insert(*bad), return_exceptions=True)
    assert results[0] is True and isinstance(results[1], asyncpg.CheckViolationError)
    assert await stored_ids(harness) == ({good[0].upload_id}, {good[0].upload_id})


class GatedPool:
    """The real pool, except that giving a connection back waits for `gate` (after saying so)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.releasing, self.gate = pool, asyncio.Event(), asyncio.Event()

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            yield conn
            self.releasing.set()
            await self.gate.wait()


async def test_a_creation_arriving_while_the_writer_gives_its_connection_back_is_still_written(harness):
    pool = GatedPool(harness.gw.pool)
    writer = repository.SessionWriter(pool, max_in_flight=1)  # type: ignore[arg-type]
    first, second = new_session(harness), new_session(harness)
    writing_first = asyncio.create_task(writer.insert(*first))
    await pool.releasing.wait()  # the first is committed; its batch is over
    writing_second = asyncio.create_task(writer.insert(*second))
    await asyncio.sleep(0)
    assert len(writer._pending) == 1  # queued behind the flusher that is finishing
    pool.gate.set()
    # The bound only turns a stranded insert (it would wait forever) into a failure.
    assert await asyncio.wait_for(asyncio.gather(writing_first, writing_second), 60) == [True, True]
    ids = {first[0].upload_id, second[0].upload_id}
    assert await stored_ids(harness) == (ids, ids)


class CountingPool:
    """The real pool, counting the connections held at once."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.held, self.most_held = pool, 0, 0

    @contextlib.asynccontextmanager
    async def acquire(self):
        async with self.pool.acquire() as conn:
            self.held += 1
            self.most_held = max(self.most_held, self.held)
            try:
                yield conn
            finally:
                self.held -= 1


async def test_up_to_max_in_flight_statements_run_at_once_and_every_creation_is_written(harness):
    # The pool opens connections on demand (min_size 1): open a second one first, or the second
    # flusher may still be connecting when the first has written all eight rows alone.
    async with harness.gw.pool.acquire(), harness.gw.pool.acquire():
        pass
    pool = CountingPool(harness.gw.pool)
    # One row per statement: every insert needs a statement of its own, so both flushers stay busy.
    writer = repository.SessionWriter(pool, max_batch=1, max_in_flight=2)  # type: ignore[arg-type]
    sessions = [new_session(harness) for _ in range(8)]
    assert await asyncio.gather(*(writer.insert(*session) for session in sessions)) == [True] * 8
    assert pool.most_held == 2
    ids = {session.upload_id for session, _ in sessions}
    assert await stored_ids(harness) == (ids, ids)
    # None left behind once nothing waits. A flusher answers its waiters before it releases its
    # connection (the pool's reset is a round trip), so it may still be ending here: wait for it.
    # A flusher left idling would never end and fail the wait.
    if writer._flushers:
        await asyncio.wait_for(asyncio.gather(*writer._flushers), timeout=30)
    assert not writer._flushers


@pytest.mark.parametrize("workspaces", [1, 2])
async def test_under_quotas_one_statement_runs_per_workspace_at_once_and_every_creation_is_written(
    harness, workspaces
):
    """Issue 21: a second statement on a workspace would only wait for its quota lock, holding a
    connection; so with 3 allowed in flight, one workspace's creations use one connection, and
    two workspaces' two."""
    async with harness.gw.pool.acquire(), harness.gw.pool.acquire():  # two connections open (as above)
        pass
    pool = CountingPool(harness.gw.pool)
    limits = QuotaLimits(max_open_uploads=100, max_bytes_in_flight=10**9)
    writer = repository.SessionWriter(pool, max_batch=1, max_in_flight=3, limits=limits)  # type: ignore[arg-type]
    sessions = [new_session(harness, workspace_id=f"{harness.workspace}-{i % workspaces}") for i in range(8)]
    assert await asyncio.gather(*(writer.insert(*session) for session in sessions)) == [True] * 8
    assert pool.most_held == workspaces
    ids = {session.upload_id for session, _ in sessions}
    assert await stored_ids(harness) == (ids, ids)
    if writer._flushers:
        await asyncio.wait_for(asyncio.gather(*writer._flushers), timeout=30)
    assert not writer._flushers and not writer._writing


async def test_a_session_under_a_profile_no_longer_active_writes_neither_row_nor_event(harness):
    # Another replica made a BYOS profile active; this session still names the managed bucket.
    await profile_store.activate(harness.gw.pool, ActiveProfile(
        workspace_id=harness.workspace, ref="byos-ref", mode="byos_s3", bucket="b", endpoint=None, region="r",
        key_prefix=f"p/{harness.workspace}/", encryption="none", kms_key_id=None, masked_key_id="AK…YZ",
        created_by="bob", created_at=datetime.now(UTC),
    ))  # fmt: skip
    stale, current = new_session(harness), new_session(harness, storage_profile_ref="byos-ref")
    writer = repository.SessionWriter(harness.gw.pool)
    assert await asyncio.gather(writer.insert(*stale), writer.insert(*current)) == [False, True]
    assert await stored_ids(harness) == ({current[0].upload_id}, {current[0].upload_id})


BAD_REQUESTS = [
    (b"{not json", 400, "invalid_request"),
    (b"[]", 422, "invalid_request"),
    (b"", 422, "invalid_request"),
    (b'{"file_name": "a.jpg"}', 422, "invalid_request"),
]
BASE = {"file_name": "a.jpg", "mime_type": "image/jpeg", "size_bytes": 10, "library_id": "lib", "resumable_protocol": "tus"}
BAD_FIELDS = [
    ({"size_bytes": 0}, 422, "invalid_request"),
    ({"size_bytes": -1}, 422, "invalid_request"),
    ({"size_bytes": "10"}, 422, "invalid_request"),
    ({"size_bytes": 10.5}, 422, "invalid_request"),
    ({"size_bytes": True}, 422, "invalid_request"),
    ({"size_bytes": 2**80}, 413, "file_too_large"),
    ({"size_bytes": 100 * MIB + 1}, 413, "file_too_large"),
    ({"sha256": "zz" * 32}, 422, "invalid_request"),
    ({"sha256": "ab"}, 422, "invalid_request"),
    ({"resumable_protocol": "ftp"}, 422, "invalid_request"),
    ({"library_id": "../etc"}, 422, "invalid_request"),
    ({"library_id": ""}, 422, "invalid_request"),
    ({"folder_id": "a b"}, 422, "invalid_request"),
    ({"file_name": ""}, 422, "invalid_request"),
    ({"file_name": "\u0000\u0001"}, 422, "invalid_request"),
    ({"file_name": "x" * 2000}, 422, "invalid_request"),
    ({"file_name": "anim.gif", "mime_type": "image/gif"}, 422, "unsupported_type"),
    ({"file_name": "a.jpg", "mime_type": "video/mp4"}, 422, "unsupported_type"),
    ({"file_name": "..", "mime_type": "image/jpeg"}, 422, "unsupported_type"),
    ({"mime_type": "\ud800"}, 400, "invalid_request"),  # a lone surrogate is not JSON text
]


async def test_every_bad_create_request_is_a_problem_with_its_code_and_never_a_500(harness):
    cases = BAD_REQUESTS + [
        (__import__("json").dumps(BASE | change).encode(), status, code) for change, status, code in BAD_FIELDS
    ]
    for body, status, code in cases:
        response = await harness.client.post(
            harness.path(), data=body, headers=harness.user() | {"Content-Type": "application/json"}
        )
        assert response.status == status, (body, await response.text())
        assert (await problem(response))["code"] == code, body
    assert await harness.outbox(UploadSessionCreated) == []


async def test_a_field_error_names_the_field(harness):
    response = await harness.client.post(harness.path(), json=BASE | {"size_bytes": "ten"}, headers=harness.user())
    assert (await problem(response))["errors"][0]["path"] == "$.size_bytes"


async def test_unknown_routes_wrong_methods_and_unknown_uploads_are_problems(harness):
    assert (await problem(await harness.client.get("/v1/nothing", headers=harness.user())))["code"] == "not_found"
    response = await harness.client.put(harness.path(), headers=harness.user())
    assert response.status == 405 and (await problem(response))["code"] == "method_not_allowed"
    unknown = await harness.client.get(harness.path(f"/{uuid.uuid4()}"), headers=harness.user())
    assert unknown.status == 404 and (await problem(unknown))["code"] == "not_found"
    odd = await harness.client.get(harness.path("/a.b"), headers=harness.user())
    assert odd.status == 404


# -- access ----------------------------------------------------------------------------------


async def test_missing_expired_and_tampered_tokens_are_401(harness):
    token = harness.user()["Authorization"]
    head, payload, signature = token.removeprefix("Bearer ").split(".")
    tampered = f"Bearer {head}.{payload}.{signature[:-4]}AAAA"
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": tampered}, harness.user(ttl_s=-300)):
        response = await harness.client.post(harness.path(), json=BASE, headers=headers)
        assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
        assert (await problem(response))["code"] == "unauthorized"


async def test_another_workspace_is_404_and_a_viewer_cannot_upload_or_abort(harness):
    created = await harness.create()
    outsider = harness.user("admin", workspace="elsewhere")
    for method, suffix in (("GET", f"/{created['upload_id']}"), ("POST", ""), ("DELETE", f"/{created['upload_id']}")):
        response = await harness.client.request(method, harness.path(suffix), json=BASE, headers=outsider)
        assert response.status == 404, (method, suffix)
    viewer = harness.user("viewer")
    assert (await harness.client.post(harness.path(), json=BASE, headers=viewer)).status == 403
    assert (await harness.client.delete(harness.path(f"/{created['upload_id']}"), headers=viewer)).status == 403
    assert (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=viewer)).status == 200


async def test_an_upload_token_opens_only_its_own_uploads_data_routes(harness):
    mine = await harness.create(resumable_protocol="s3_multipart", size_bytes=10 * MIB)
    other = await harness.create(resumable_protocol="s3_multipart", size_bytes=10 * MIB)
    token = mine["headers"]
    assert (await harness.client.get(harness.path(f"/{mine['upload_id']}/parts"), headers=token)).status == 200
    assert (await harness.client.get(harness.path(f"/{other['upload_id']}/parts"), headers=token)).status == 404
    # User routes refuse it, including this upload's own status, abort and commit.
    for method, suffix in (("POST", ""), ("GET", f"/{mine['upload_id']}"), ("DELETE", f"/{mine['upload_id']}"),
                           ("POST", f"/{mine['upload_id']}/commit")):
        response = await harness.client.request(method, harness.path(suffix), json=BASE, headers=token)
        assert response.status == 401, (method, suffix)
    # A user token still works on the data routes for a member.
    assert (await harness.client.get(harness.path(f"/{other['upload_id']}/parts"), headers=harness.user())).status == 200


# -- multipart -------------------------------------------------------------------------------


async def test_parts_uploaded_through_presigned_urls_are_listed_and_counted(harness):
    size = 8 * MIB + 1234
    created = await harness.create(resumable_protocol="s3_multipart", size_bytes=size, file_name="big.png", mime_type="image/png")
    token = created["headers"]
    path = harness.path(f"/{created['upload_id']}/parts")
    bad = await harness.client.post(path, json={"part_numbers": [1, 3]}, headers=token)
    assert bad.status == 422 and (await problem(bad))["errors"][0]["path"] == "$.part_numbers[1]"
    signed = await (await harness.client.post(path, json={"part_numbers": [1, 2]}, headers=token)).json()
    body = os.urandom(size)
    async with aiohttp.ClientSession() as http:
        for part in signed["parts"]:
            start = (part["part_number"] - 1) * created["part_size"]
            chunk = body[start : start + created["part_size"]]
            async with http.put(part["url"], data=chunk, headers=part["headers"]) as response:
                assert response.status == 200, await response.text()
    listed = await (await harness.client.get(path, headers=token)).json()
    assert [(p["part_number"], p["size"]) for p in listed["parts"]] == [(1, 8 * MIB), (2, 1234)]
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert (shown["state"], shown["bytes_received"]) == ("uploading", size)


async def test_aborting_ends_the_multipart_upload_announces_it_and_is_idempotent(harness):
    created = await harness.create(resumable_protocol="s3_multipart", size_bytes=6 * MIB)
    path = harness.path(f"/{created['upload_id']}")
    assert (await harness.client.delete(path, headers=harness.user())).status == 204
    assert (await harness.client.delete(path, headers=harness.user())).status == 204
    [event] = await harness.outbox(UploadAborted)
    assert (event.upload_id, event.aborted_by) == (created["upload_id"], "alice")
    assert [u async for u in harness.gw.storage.list_multipart_uploads(event.object_key)] == []
    assert (await (await harness.client.get(path, headers=harness.user())).json())["state"] == "aborted"
    late = await harness.client.post(path + "/parts", json={"part_numbers": [1]}, headers=created["headers"])
    assert late.status == 409 and (await problem(late))["code"] == "invalid_state"


async def test_a_tus_termination_aborts_the_session_and_announces_it(harness):
    created = await harness.create(size_bytes=6 * MIB)
    tus = {"Tus-Resumable": "1.0.0"} | created["headers"]
    url = harness.path(f"/{created['upload_id']}/tus")
    assert (await harness.client.post(url, headers=tus | {"Upload-Length": str(6 * MIB)})).status == 201
    assert (await harness.client.delete(url, headers=tus)).status == 204
    [event] = await harness.outbox(UploadAborted)
    assert (event.upload_id, event.aborted_by) == (created["upload_id"], "alice")
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert shown["state"] == "aborted"
    gone = await harness.client.head(url, headers=tus)
    assert gone.status == 410
    patched = await harness.client.patch(url, data=b"x", headers=tus | {
        "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"})
    aborted = await problem(patched)
    assert (aborted["status"], aborted["code"], aborted["title"]) == (410, "upload_aborted", "Upload aborted")


# -- commit ----------------------------------------------------------------------------------


async def test_two_concurrent_commits_request_verification_exactly_once(harness):
    created = await harness.create()
    await harness.send_tus(created, os.urandom(1000))
    path = harness.path(f"/{created['upload_id']}/commit")
    first, second = await asyncio.gather(
        harness.client.post(path, json={}, headers=harness.user()),
        harness.client.post(path, json={}, headers=harness.user()),
    )
    assert (first.status, second.status) == (202, 202)
    assert (await first.json()) == {"asset_id": created["asset_id"], "status": "verifying"}
    [event] = await harness.outbox(CommitRequested)
    assert (event.upload_id, event.requested_by, event.multipart_upload_id) == (created["upload_id"], "alice", None)
    aborting = await harness.client.delete(harness.path(f"/{created['upload_id']}"), headers=harness.user())
    assert aborting.status == 409


async def test_a_multipart_commit_carries_the_upload_id_parts_and_declared_checksum(harness):
    created = await harness.create(resumable_protocol="s3_multipart", size_bytes=10 * MIB, sha256="cd" * 32)
    await harness.send_parts(created, os.urandom(10 * MIB), [1, 2])
    path = harness.path(f"/{created['upload_id']}/commit")
    wrong = await harness.client.post(path, json={"sha256": "ef" * 32}, headers=harness.user())
    assert wrong.status == 422 and (await problem(wrong))["code"] == "checksum_mismatch"
    too_many = await harness.client.post(path, json={"parts": [{"part_number": 3, "etag": "x"}]}, headers=harness.user())
    assert too_many.status == 422
    parts = [{"part_number": 1, "etag": "e1"}, {"part_number": 2, "etag": "e2"}]
    assert (await harness.client.post(path, json={"sha256": "CD" * 32, "parts": parts}, headers=harness.user())).status == 202
    [event] = await harness.outbox(CommitRequested)
    assert event.expected_sha256 == "cd" * 32 and [p.etag for p in event.parts] == ["e1", "e2"]
    [session] = await harness.outbox(UploadSessionCreated)
    assert event.multipart_upload_id is not None and event.object_key == session.object_key


def verified(event: CommitRequested) -> UploadVerified:
    return UploadVerified(
        workspace_id=event.workspace_id, upload_id=event.upload_id, asset_id=event.asset_id,
        library_id=event.library_id, file_name=event.file_name, mime_type=event.mime_type,
        size_bytes=event.size_bytes, sha256="ab" * 32, storage_profile_ref=event.storage_profile_ref,
        object_key=event.object_key, verified_at=datetime.now(UTC),
    )


async def commit_and_answer(harness: Harness, js, answer) -> tuple[dict, aiohttp.ClientResponse]:
    """Commit, and when the CommitRequested appears, publish the verifier's answer to NATS."""
    created = await harness.create()
    await harness.send_tus(created, os.urandom(1000))
    return created, await answer_commit(harness, js, created, {}, answer)


async def answer_commit(harness: Harness, js, created: dict, body: dict, answer) -> aiohttp.ClientResponse:
    """Commit with `body`; when its CommitRequested appears, publish `answer(request)` to NATS."""
    path = harness.path(f"/{created['upload_id']}/commit")
    before = len(await harness.outbox(CommitRequested))
    pending = asyncio.ensure_future(harness.client.post(path, json=body, headers=harness.user()))
    while len(requests := await harness.outbox(CommitRequested)) == before:
        await asyncio.sleep(0.05)
    await bus.publish(js, new_event(answer(requests[-1]), source="/test/verifier"))
    return await pending


async def test_a_verified_commit_answers_200_processing_and_so_does_its_repeat(harness, verdict_consumer):
    created, response = await commit_and_answer(harness, verdict_consumer, verified)
    assert response.status == 200
    assert await response.json() == {"asset_id": created["asset_id"], "status": "processing"}
    again = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), headers=harness.user())
    assert again.status == 200
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert shown["state"] == "committed"


@pytest.mark.parametrize("reason", ["checksum_mismatch", "size_mismatch"])
async def test_a_rejected_commit_answers_422_with_the_reason_and_so_does_its_repeat(harness, verdict_consumer, reason):
    def rejected(event: CommitRequested) -> UploadRejected:
        return UploadRejected(
            workspace_id=event.workspace_id, upload_id=event.upload_id, asset_id=event.asset_id,
            reason=reason, detail="the stored object differs", storage_profile_ref="managed", object_key=event.object_key,
        )

    created, response = await commit_and_answer(harness, verdict_consumer, rejected)
    assert response.status == 422 and (await problem(response))["code"] == reason
    again = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), headers=harness.user())
    assert again.status == 422 and (await problem(again))["code"] == reason
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert shown["state"] == "aborted" and shown["rejection"]["reason"] == reason
    tus = {"Tus-Resumable": "1.0.0", "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    late = await harness.client.patch(harness.path(f"/{created['upload_id']}/tus"), data=b"x",
                                      headers=tus | created["headers"])
    gone = await problem(late)
    assert (gone["status"], gone["code"], gone["title"]) == (410, "upload_rejected", "Upload rejected")
    assert reason in gone["detail"]


async def test_a_tus_commit_before_every_byte_arrived_is_409_and_the_upload_simply_continues(harness):
    body = os.urandom(2133)
    created = await harness.create(size_bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    await harness.send_tus(created, body[:1000], length=len(body))
    early = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), json={}, headers=harness.user())
    assert early.status == 409
    refused = await problem(early)
    assert (refused["code"], refused["title"]) == ("upload_incomplete", "Upload incomplete")
    assert (refused["bytes_received"], refused["size_bytes"]) == (1000, 2133)
    assert await harness.outbox(CommitRequested) == []  # nothing asked of the verifier
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert (shown["state"], shown["bytes_received"]) == ("uploading", 1000)

    await harness.send_tus(created, body[1000:], offset=1000)  # the next PATCH continues where it was
    done = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), json={}, headers=harness.user())
    assert done.status == 202, await done.text()
    [request] = await harness.outbox(CommitRequested)
    assert (request.attempt, request.attempts_left) == (1, 2)


async def test_a_multipart_commit_with_one_of_three_parts_is_409_and_the_rest_can_still_be_sent(harness):
    size = 2 * 8 * MIB + 1234
    body = os.urandom(size)
    created = await harness.create(resumable_protocol="s3_multipart", size_bytes=size, file_name="big.png",
                                   mime_type="image/png")
    assert created["part_count"] == 3
    etags = await harness.send_parts(created, body, [1])
    commit = harness.path(f"/{created['upload_id']}/commit")
    early = await harness.client.post(commit, json={}, headers=harness.user())
    assert early.status == 409
    refused = await problem(early)
    assert (refused["code"], refused["bytes_received"], refused["size_bytes"]) == ("upload_incomplete", 8 * MIB, size)
    etags |= await harness.send_parts(created, body, [2, 3])
    # A part list naming a part never sent is just as incomplete.
    listed = [{"part_number": n, "etag": etags[n]} for n in (1, 2)]
    partial = await harness.client.post(commit, json={"parts": listed}, headers=harness.user())
    assert partial.status == 409 and (await problem(partial))["bytes_received"] == 16 * MIB
    parts = [{"part_number": n, "etag": etag} for n, etag in sorted(etags.items())]
    done = await harness.client.post(commit, json={"parts": parts}, headers=harness.user())
    assert done.status == 202, await done.text()
    [request] = await harness.outbox(CommitRequested)
    assert [p.part_number for p in request.parts] == [1, 2, 3]


async def test_a_multipart_upload_storage_lost_is_replaced_by_an_empty_one_the_client_fills_again(harness):
    size = 8 * MIB + 1234
    body = os.urandom(size)
    created = await harness.create(resumable_protocol="s3_multipart", size_bytes=size, file_name="big.png",
                                   mime_type="image/png")
    await harness.send_parts(created, body, [1])
    [session] = await harness.outbox(UploadSessionCreated)
    lost = (await repository.get(harness.gw.pool, harness.workspace, created["upload_id"])).multipart_upload_id
    await harness.gw.storage.abort_multipart(session.object_key, lost)  # behind the gateway's back

    path = harness.path(f"/{created['upload_id']}/parts")
    listed = await harness.client.get(path, headers=created["headers"])
    assert listed.status == 200, await listed.text()
    assert (await listed.json())["parts"] == []
    fresh = (await repository.get(harness.gw.pool, harness.workspace, created["upload_id"])).multipart_upload_id
    assert fresh != lost
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert (shown["state"], shown["bytes_received"]) == ("uploading", 0)
    await harness.send_parts(created, body, [1, 2])
    done = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), json={}, headers=harness.user())
    assert done.status == 202, await done.text()
    [request] = await harness.outbox(CommitRequested)
    assert request.multipart_upload_id == fresh


def refusal(attempts_left: int):
    def answer(event: CommitRequested) -> CommitRefused:
        return CommitRefused(
            workspace_id=event.workspace_id, upload_id=event.upload_id, asset_id=event.asset_id,
            attempt=event.attempt, attempts_left=attempts_left, reason="checksum_mismatch",
            detail="the stored bytes' SHA-256 differs from the client's", storage_profile_ref="managed",
            object_key=event.object_key, expected_sha256=event.expected_sha256, actual_sha256="ab" * 32,
        )

    return answer


async def test_a_wrong_sha256_at_commit_keeps_the_upload_committable_with_the_right_one(harness, verdict_consumer):
    created = await harness.create()
    await harness.send_tus(created, os.urandom(1000))
    typo = await answer_commit(harness, verdict_consumer, created, {"sha256": "ee" * 32}, refusal(2))
    assert typo.status == 422
    refused = await problem(typo)
    assert (refused["code"], refused["attempts_left"], refused["given_sha256"]) == ("checksum_mismatch", 2, "ee" * 32)
    assert "given at commit" in refused["detail"] and "2 attempts left" in refused["detail"]
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert shown["state"] == "uploading" and shown["rejection"]["reason"] == "checksum_mismatch"
    assert await harness.outbox(UploadRejected) == [] and await harness.outbox(UploadAborted) == []

    right = await answer_commit(harness, verdict_consumer, created, {"sha256": "ab" * 32}, verified)
    assert right.status == 200, await right.text()
    first, second = await harness.outbox(CommitRequested)
    assert (second.attempt, second.attempts_left, second.expected_sha256) == (2, 1, "ab" * 32)
    assert new_event(first, source="x").id != new_event(second, source="x").id  # not deduplicated away
    # A late redelivery of attempt 1's refusal moves nothing.
    await bus.publish(verdict_consumer, new_event(refusal(2)(first), source="/test/verifier", id=str(uuid.uuid4())))
    await asyncio.sleep(0.5)
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert shown["state"] == "committed"


async def test_commits_are_bounded_the_last_one_tells_the_verifier_no_attempt_is_left(harness, verdict_consumer):
    created = await harness.create()
    await harness.send_tus(created, os.urandom(1000))
    for left in (2, 1):
        answered = await answer_commit(harness, verdict_consumer, created, {"sha256": "ee" * 32}, refusal(left))
        assert answered.status == 422 and (await problem(answered))["attempts_left"] == left
    last = await harness.client.post(harness.path(f"/{created['upload_id']}/commit"), json={"sha256": "ee" * 32},
                                     headers=harness.user())
    assert last.status == 202
    requests = await harness.outbox(CommitRequested)
    assert [(r.attempt, r.attempts_left) for r in requests] == [(1, 2), (2, 1), (3, 0)]


async def test_a_sha256_at_commit_that_differs_from_the_declared_one_says_which_is_which(harness):
    body = os.urandom(1000)
    declared = hashlib.sha256(body).hexdigest()
    created = await harness.create(sha256=declared)
    await harness.send_tus(created, body)
    path = harness.path(f"/{created['upload_id']}/commit")
    wrong = await harness.client.post(path, json={"sha256": "ee" * 32}, headers=harness.user())
    assert wrong.status == 422
    refused = await problem(wrong)
    assert (refused["declared_sha256"], refused["given_sha256"]) == (declared, "ee" * 32)
    assert f"given at commit ({'ee' * 32})" in refused["detail"] and f"created ({declared})" in refused["detail"]
    assert await harness.outbox(CommitRequested) == []
    again = await harness.client.post(path, json={"sha256": declared.upper()}, headers=harness.user())
    assert again.status == 202, await again.text()


async def test_an_expiry_from_the_janitor_closes_an_open_session(harness, verdict_consumer):
    created = await harness.create()
    [session] = await harness.outbox(UploadSessionCreated)
    expired = UploadExpired(
        workspace_id=harness.workspace, upload_id=created["upload_id"], asset_id=created["asset_id"],
        storage_profile_ref="managed", object_key=session.object_key, expired_at=datetime.now(UTC),
    )
    await bus.publish(verdict_consumer, new_event(expired, source="/test/janitor"))
    path = harness.path(f"/{created['upload_id']}")
    async with asyncio.timeout(5):
        while (await (await harness.client.get(path, headers=harness.user())).json())["state"] != "expired":
            await asyncio.sleep(0.05)
    late = await harness.client.post(path + "/commit", headers=harness.user())
    assert late.status == 410 and (await problem(late))["code"] == "gone"


# -- tus and browsers ------------------------------------------------------------------------


async def test_bytes_sent_over_tus_show_as_received_on_the_session(harness):
    body = os.urandom(1000)
    created = await harness.create(sha256=hashlib.sha256(body).hexdigest())
    tus = {"Tus-Resumable": "1.0.0"} | created["headers"]
    url = harness.path(f"/{created['upload_id']}/tus")
    response = await harness.client.post(url, headers=tus | {"Upload-Length": "1000"})
    assert response.status == 201, await response.text()
    patch = await harness.client.patch(
        url, data=body[:400], headers=tus | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
    )
    assert patch.status == 204, await patch.text()
    shown = await (await harness.client.get(harness.path(f"/{created['upload_id']}"), headers=harness.user())).json()
    assert (shown["state"], shown["bytes_received"]) == ("uploading", 400)
    other = await harness.create()
    stranger = await harness.client.head(harness.path(f"/{other['upload_id']}/tus"), headers=tus)
    assert stranger.status == 404


async def test_more_concurrent_tus_uploads_than_pool_connections_all_complete(harness):
    # More uploads at once than the pool has connections: a tus request holds none while its
    # body streams (a lease, uploads/tus/lease.py); when it held one for its lock and asked for a
    # second, a full pool deadlocked (seen at 50 concurrent uploads).
    size = 6 * MIB  # one 5 MiB part and a tail: progress is recorded mid-body
    uploads = [await harness.create(size_bytes=size) for _ in range(40)]  # the pool holds 10
    # One user sends them all: lift that user's limit on concurrent PATCHes (test_quotas.py).
    harness.client.app[PATCH_LIMIT].limit = 14

    def tus(created: dict) -> tuple[dict, str]:
        return {"Tus-Resumable": "1.0.0"} | created["headers"], harness.path(f"/{created['upload_id']}/tus")

    async def create(created: dict) -> int:
        headers, url = tus(created)
        return (await harness.client.post(url, headers=headers | {"Upload-Length": str(size)})).status

    async def send(created: dict) -> int:
        headers, url = tus(created)

        async def slow_body():
            for _ in range(6):
                yield os.urandom(MIB)
                await asyncio.sleep(0.2)  # keep every upload's body streaming at the same time

        headers |= {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                    "Content-Length": str(size)}
        return (await harness.client.patch(url, data=slow_body(), headers=headers)).status

    created = await asyncio.wait_for(asyncio.gather(*(create(u) for u in uploads)), 60)
    assert created == [201] * len(uploads)
    sent = await asyncio.wait_for(asyncio.gather(*(send(u) for u in uploads[:14])), 90)
    assert sent == [204] * 14
    shown = await (await harness.client.get(harness.path(f"/{uploads[0]['upload_id']}"), headers=harness.user())).json()
    assert shown["bytes_received"] == size


async def test_a_browser_preflight_from_an_allowed_origin_may_send_tus_headers_and_read_location(harness):
    preflight = await harness.client.options(
        harness.path("/x/tus"),
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "PATCH"},
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Upload-Offset" in preflight.headers["Access-Control-Allow-Headers"]
    created = await harness.client.post(harness.path(), json=BASE, headers=harness.user() | {"Origin": "https://app.example"})
    assert "Location" in created.headers["Access-Control-Expose-Headers"]
    foreign = await harness.client.post(harness.path(), json=BASE, headers=harness.user() | {"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in foreign.headers
