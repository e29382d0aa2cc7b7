"""Bring-your-own-bucket storage profiles end to end: real PostgreSQL, NATS (profiles KV), the
managed SeaweedFS and a second SeaweedFS with its own credentials as the customer's bucket."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer

from rawdrive_contracts import UploadSessionCreated, decode
from rawdrive_devkit.devstack.servers import (
    LOOPBACK_NETWORK,
    S3Connection,
    S3Server,
    loopback_endpoint_policy,
    s3_client,
)
from rawdrive_platform import bus, db
from rawdrive_platform.config import Secret
from rawdrive_platform.profiles import (
    PROFILES_BUCKET,
    MasterKey,
    ProfileRecord,
    ProfileResolver,
    UnknownProfile,
    profile_bucket,
)
from rawdrive_platform.storage import StorageRegistry, managed_storage_profile
from upload_gateway.app import create_app, token_verifier
from upload_gateway.gateway import Gateway
from upload_gateway.storage_profiles.routes import mount_storage_profiles
from upload_gateway.uploads.tus_session import mount_tus

from .gatewaykit import GatewayUnderTest, session_request, settings_for

SECRET = "profiles-secret-" + "x" * 24
MIGRATIONS = files("upload_gateway") / "migrations"
TUS = {"Tus-Resumable": "1.0.0"}
# The customer buckets here are loopback SeaweedFS servers: allowed as the dev stack allows its own.
LOOPBACK_S3 = "http://127.0.0.1:*"
GENERIC_FAILURE = "failed: check the endpoint, region, bucket, credentials, the bucket policy"


@pytest.fixture(scope="session")
def byos(start_s3_server) -> Iterator[S3Server]:
    """The customer's bucket: another SeaweedFS, its own credentials, SSE-S3 enabled (a KEK)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WEED_S3_SSE_KEK", secrets.token_hex(32))  # read by weed at start only
        server = start_s3_server(bucket="byob")
    yield server


@dataclass
class Harness(GatewayUnderTest):
    master_key: str
    nc: Any
    responses: list[bytes]
    default_role: ClassVar[str] = "admin"

    @property
    def profile_path(self) -> str:
        return f"/v1/workspaces/{self.workspace}/storage-profile"

    async def call(self, method: str, path: str, *, role: str = "admin", **kwargs: Any) -> tuple[int, Any]:
        response = await self.client.request(method, path, headers=self.user(role), **kwargs)
        raw = await response.read()
        self.responses.append(raw)
        return response.status, (msgspec.json.decode(raw) if raw else None)

    async def put_profile(self, body: dict, role: str = "admin") -> tuple[int, Any]:
        return await self.call("PUT", self.profile_path, role=role, json=body)

    async def create_upload(self, **overrides: Any) -> dict:
        status, created = await self.call(
            "POST", f"/v1/workspaces/{self.workspace}/uploads", role="member", json=session_request(**overrides)
        )
        assert status == 201, created
        return created

    async def tus_upload(self, created: dict, body: bytes) -> None:
        url = f"/v1/workspaces/{self.workspace}/uploads/{created['upload_id']}/tus"
        headers = TUS | created["headers"]
        response = await self.client.post(url, headers=headers | {"Upload-Length": str(len(body))})
        assert response.status == 201, await response.text()
        patch = await self.client.patch(
            url, data=body, headers=headers | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}
        )
        assert patch.status == 204, await patch.text()

    async def events(self) -> list[bytes]:
        return [row["payload"] for row in await self.gw.pool.fetch("SELECT payload FROM outbox ORDER BY seq")]


def byos_body(conn: S3Connection, workspace: str, **overrides: Any) -> dict:
    return {
        "mode": "byos_s3",
        "bucket": conn.bucket,
        "endpoint": conn.endpoint,
        "region": conn.region,
        "key_prefix": f"rawdrive/{workspace}/",
        "credentials": {"access_key_id": conn.access_key_id, "secret_access_key": conn.secret_access_key},
    } | overrides


@pytest.fixture
async def harness(fresh_database_url, s3_server, nats_url) -> AsyncIterator[Harness]:
    await db.migrate(fresh_database_url, "gateway", MIGRATIONS)
    pool = await db.create_pool(fresh_database_url, "gateway")
    master_key = MasterKey.generate()
    settings = settings_for(
        fresh_database_url,
        s3_server,
        SECRET,
        nats_url=nats_url,
        storage_master_key=Secret(master_key),
        byos_allowed_endpoints=(LOOPBACK_S3,),
        byos_allowed_networks=(LOOPBACK_NETWORK,),
        byos_allow_http=True,
    )
    nc = await bus.connect(nats_url, name="test-profiles")
    storages = StorageRegistry()
    managed = await storages.get(managed_storage_profile(settings))
    kv = await profile_bucket(nc.jetstream(), replicas=1)
    profiles = ProfileResolver(
        managed, storages, kv, MasterKey.from_secret(Secret(master_key)), loopback_endpoint_policy(LOOPBACK_S3)
    )
    gw = Gateway(settings=settings, pool=pool, storage=managed, tokens=token_verifier(settings), profiles=profiles)
    client = TestClient(TestServer(create_app(gw, mounts=[mount_tus, mount_storage_profiles])))
    await client.start_server()
    try:
        yield Harness(client, gw, f"ws{uuid.uuid4().hex[:10]}", master_key, nc, [])
    finally:
        await client.close()
        await storages.aclose()
        await nc.close()
        await pool.close()


def keys_under(conn: S3Connection, prefix: str) -> list[str]:
    listed = s3_client(conn).list_objects_v2(Bucket=conn.bucket, Prefix=prefix)
    return [item["Key"] for item in listed.get("Contents", [])]


# -- refusals -----------------------------------------------------------------------------------


async def test_a_prefix_without_the_workspace_id_is_refused_before_any_io(harness, byos):
    # The endpoint is unreachable: had any I/O happened, the reason would be the endpoint.
    body = byos_body(byos.connection, harness.workspace, key_prefix="rawdrive/other-ws/", endpoint="http://127.0.0.1:9")
    status, problem = await harness.put_profile(body)
    assert (status, problem["code"]) == (422, "invalid_request")
    assert [e["path"] for e in problem["errors"]] == ["$.key_prefix"]
    assert "must contain the workspace id" in problem["errors"][0]["message"]


@pytest.fixture
async def chatty_port() -> AsyncIterator[int]:
    """A loopback port that is open but no S3: it answers every request with a text of its own."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: 22\r\n\r\nredis_version:7.2.4 ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_every_failed_head_bucket_reads_the_same_whatever_the_endpoint_did(harness, byos, chatty_port):
    # A wrong secret, a missing bucket, a closed port and an open port that is no S3 server give
    # one answer: the check tells nothing about the endpoint's network or its replies.
    conn = byos.connection
    bodies = [
        byos_body(conn, harness.workspace, credentials={"access_key_id": conn.access_key_id, "secret_access_key": "wrong" * 8}),
        byos_body(conn, harness.workspace, bucket="no-such-bucket"),
        byos_body(conn, harness.workspace, endpoint="http://127.0.0.1:9"),
        byos_body(conn, harness.workspace, endpoint=f"http://127.0.0.1:{chatty_port}"),
    ]
    answers = [await harness.put_profile(body) for body in bodies]
    assert all(answer == answers[0] for answer in answers), answers
    status, problem = answers[0]
    assert (status, problem["code"]) == (422, "storage_profile_rejected")
    assert problem["errors"] == [{"path": "$", "message": problem["errors"][0]["message"]}]
    assert problem["errors"][0]["message"].startswith("head bucket " + GENERIC_FAILURE)
    assert "redis" not in str(answers) and "teapot" not in str(answers).lower()


@pytest.mark.parametrize(
    "endpoint",
    ["https://169.254.169.254", "https://10.0.0.1", "https://[::ffff:127.0.0.1]", "http://localhost:9000", "https://evil.example"],
)
async def test_an_internal_or_unlisted_endpoint_is_refused_before_any_connection(harness, byos, endpoint):
    status, problem = await harness.put_profile(byos_body(byos.connection, harness.workspace, endpoint=endpoint))
    assert (status, problem["code"]) == (422, "invalid_request")
    assert [e["path"] for e in problem["errors"]] == ["$.endpoint"]
    status, shown = await harness.call("GET", harness.profile_path)
    assert shown["mode"] == "managed_r2"


async def test_profile_writes_are_rate_limited_per_workspace(harness, byos):
    managed = {"mode": "managed_r2"}
    for _ in range(5):
        status, _ = await harness.put_profile(managed)
        assert status == 200
    response = await harness.client.put(harness.profile_path, json=managed, headers=harness.user())
    problem = await response.json()
    assert (response.status, problem["code"]) == (429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    other = f"ws{uuid.uuid4().hex[:10]}"
    response = await harness.client.delete(f"/v1/workspaces/{other}/storage-profile", headers=harness.user(workspace=other))
    assert response.status == 204  # another workspace is not held back


async def test_a_refused_profile_changes_nothing(harness, byos):
    await harness.put_profile(byos_body(byos.connection, harness.workspace, bucket="no-such-bucket"))
    status, shown = await harness.call("GET", harness.profile_path)
    assert (status, shown["mode"], shown["provider"]) == (200, "managed_r2", "r2")
    assert (await harness.create_upload())["provider"] == "r2"


async def test_only_admins_manage_the_storage_profile(harness, byos):
    body = byos_body(byos.connection, harness.workspace)
    for role in ("viewer", "member"):
        for method in ("PUT", "GET", "DELETE"):
            status, problem = await harness.call(method, harness.profile_path, role=role, json=body)
            assert (status, problem["code"]) == (403, "forbidden"), (role, method)
    other = "/v1/workspaces/ws-not-mine/storage-profile"
    status, _ = await harness.call("GET", other)
    assert status == 404


# -- an accepted profile ----------------------------------------------------------------------


async def test_an_accepted_profile_receives_new_uploads_under_its_prefix_and_other_services_resolve_it(
    harness, byos, s3_server, nats_url
):
    conn = byos.connection
    status, saved = await harness.put_profile(byos_body(conn, harness.workspace))
    assert status == 200, saved
    ref = saved["credentials_ref"]
    assert saved["mode"] == "byos_s3" and saved["provider"] == "byos"
    assert saved["access_key_id_masked"] == f"{conn.access_key_id[:4]}…{conn.access_key_id[-4:]}"
    assert "credentials" not in saved
    status, shown = await harness.call("GET", harness.profile_path)
    assert shown == saved

    created = await harness.create_upload()
    assert created["provider"] == "byos"
    body = os.urandom(1000)
    await harness.tus_upload(created, body)

    prefix = f"rawdrive/{harness.workspace}/workspaces/{harness.workspace}/assets/{created['asset_id']}/original/"
    assert keys_under(conn, prefix) == [prefix + "IMG_0001.jpg"]
    assert s3_client(conn).get_object(Bucket=conn.bucket, Key=prefix + "IMG_0001.jpg")["Body"].read() == body
    assert keys_under(s3_server, f"workspaces/{harness.workspace}/") == []
    assert keys_under(conn, f"rawdrive/{harness.workspace}/rawdrive-profile-check") == []  # probe cleaned up
    event = next(e.data for e in map(decode, await harness.events()) if isinstance(e.data, UploadSessionCreated))
    assert (event.provider, event.storage_profile_ref, event.object_key) == ("byos", ref, prefix + "IMG_0001.jpg")

    # The verifier's side: another process, the same KV bucket and master key, nothing cached.
    other_nc = await bus.connect(nats_url, name="test-verifier")
    try:
        kv = await other_nc.jetstream().key_value(PROFILES_BUCKET)
        async with StorageRegistry() as storages:
            resolver = ProfileResolver(
                harness.gw.storage, storages, kv, MasterKey.from_secret(Secret(harness.master_key)), loopback_endpoint_policy(LOOPBACK_S3)
            )
            storage = await resolver(ref)
            assert (storage.bucket, storage.profile.provider, storage.profile.key_prefix) == (
                "byob", "byos", f"rawdrive/{harness.workspace}/"
            )
            assert (await storage.head(event.object_key)).size == 1000
            wrong = ProfileResolver(harness.gw.storage, storages, kv, MasterKey.from_secret(Secret(MasterKey.generate())))
            with pytest.raises(UnknownProfile, match="does not open"):
                await wrong(ref)
            with pytest.raises(UnknownProfile, match="never published"):
                await resolver(f"byos-{harness.workspace}-{uuid.uuid4().hex}")
    finally:
        await other_nc.close()


async def test_removing_the_profile_returns_new_uploads_to_the_managed_bucket_while_old_ones_keep_theirs(harness, byos):
    conn = byos.connection
    await harness.put_profile(byos_body(conn, harness.workspace))
    before = await harness.create_upload()
    status, _ = await harness.call("DELETE", harness.profile_path)
    assert status == 204
    status, shown = await harness.call("GET", harness.profile_path)
    assert shown == {"mode": "managed_r2", "provider": "r2", "encryption": "none"}
    after = await harness.create_upload()
    assert (before["provider"], after["provider"]) == ("byos", "r2")
    await harness.tus_upload(before, b"x" * 1000)  # still lands in the customer's bucket
    assert keys_under(conn, f"rawdrive/{harness.workspace}/workspaces/{harness.workspace}/assets/{before['asset_id']}/")


async def test_a_replaced_or_removed_version_is_marked_retired_and_the_current_one_is_not(harness, byos):
    kv = await profile_bucket(harness.nc.jetstream(), replicas=1)

    async def retired_at(ref: str):
        return msgspec.json.decode((await kv.get(ref)).value, type=ProfileRecord).retired_at

    _, first = await harness.put_profile(byos_body(byos.connection, harness.workspace))
    _, second = await harness.put_profile(byos_body(byos.connection, harness.workspace))
    assert await retired_at(first["credentials_ref"]) is not None  # replaced
    assert await retired_at(second["credentials_ref"]) is None  # current
    async with StorageRegistry() as storages:  # a retired version still resolves, for its uploads
        key = MasterKey.from_secret(Secret(harness.master_key))
        resolver = ProfileResolver(harness.gw.storage, storages, kv, key, loopback_endpoint_policy(LOOPBACK_S3))
        assert (await resolver(first["credentials_ref"])).bucket == byos.connection.bucket

    status, _ = await harness.call("DELETE", harness.profile_path)
    assert status == 204
    assert await retired_at(second["credentials_ref"]) is not None  # removed
    status, _ = await harness.call("DELETE", harness.profile_path)  # nothing left to retire
    assert status == 204


async def test_a_multipart_session_under_byos_signs_part_urls_for_the_customers_bucket(harness, byos):
    conn = byos.connection
    await harness.put_profile(byos_body(conn, harness.workspace))
    created = await harness.create_upload(resumable_protocol="s3_multipart", size_bytes=6 * 1024 * 1024)
    path = f"/v1/workspaces/{harness.workspace}/uploads/{created['upload_id']}/parts"
    response = await harness.client.post(path, json={"part_numbers": [1]}, headers=created["headers"])
    part = (await response.json())["parts"][0]
    assert part["url"].startswith(f"{conn.endpoint}/{conn.bucket}/rawdrive/{harness.workspace}/")
    async with aiohttp.ClientSession() as http:
        # The whole planned part: its URL signs that length (a 5 MiB body on this 6 MiB plan is refused).
        async with http.put(part["url"], data=b"p" * part["size"], headers=part["headers"]) as put:
            assert put.status == 200, await put.text()
    listed = await (await harness.client.get(path, headers=created["headers"])).json()
    assert [p["part_number"] for p in listed["parts"]] == [1]


async def test_an_sse_s3_profile_is_checked_with_encryption_and_its_objects_are_encrypted(harness, byos):
    conn = byos.connection
    status, saved = await harness.put_profile(byos_body(conn, harness.workspace, encryption="sse_s3"))
    assert (status, saved["encryption"]) == (200, "sse_s3"), saved
    created = await harness.create_upload(size_bytes=10)
    await harness.tus_upload(created, b"0123456789")
    [key] = keys_under(conn, f"rawdrive/{harness.workspace}/workspaces/")
    assert s3_client(conn).head_object(Bucket=conn.bucket, Key=key).get("ServerSideEncryption") == "AES256"


async def test_an_sse_kms_profile_against_a_store_without_kms_is_refused_at_the_put_step(harness, byos):
    body = byos_body(byos.connection, harness.workspace, encryption="sse_kms", kms_key_id="alias/rawdrive")
    status, problem = await harness.put_profile(body)
    assert (status, problem["code"]) == (422, "storage_profile_rejected")
    assert problem["detail"].startswith("the storage profile was not saved: put probe object")


# -- secrets ------------------------------------------------------------------------------------


async def test_credentials_never_appear_in_responses_logs_events_or_the_stored_record(harness, byos, caplog):
    caplog.set_level(logging.DEBUG)
    conn = byos.connection
    await harness.put_profile(byos_body(conn, harness.workspace, bucket="no-such-bucket"))  # a failure path
    wrong = {"access_key_id": conn.access_key_id, "secret_access_key": "bad-" + conn.secret_access_key}
    await harness.put_profile(byos_body(conn, harness.workspace, credentials=wrong))
    status, saved = await harness.put_profile(byos_body(conn, harness.workspace))
    assert status == 200
    await harness.call("GET", harness.profile_path)
    created = await harness.create_upload()
    await harness.tus_upload(created, b"y" * 1000)

    secret = conn.secret_access_key.encode()
    record = await (await harness.nc.jetstream().key_value(PROFILES_BUCKET)).get(saved["credentials_ref"])
    for blob in [*harness.responses, *await harness.events(), record.value]:
        assert secret not in blob and b"bad-" not in blob
        assert conn.access_key_id.encode() not in blob
    for entry in caplog.records:
        text = str(entry.__dict__)
        assert conn.secret_access_key not in text and "bad-" + conn.secret_access_key not in text
        if not entry.name.startswith(("botocore", "aiobotocore", "urllib3")):  # SDK debug shows Credential=<key id>
            assert conn.access_key_id not in text, entry.name


async def test_without_a_master_key_a_byos_profile_is_refused_and_sessions_stay_managed(harness, byos):
    gw = dataclasses.replace(harness.gw, profiles=None)
    client = TestClient(TestServer(create_app(gw, mounts=[mount_tus, mount_storage_profiles])))
    await client.start_server()
    try:
        response = await client.put(harness.profile_path, json=byos_body(byos.connection, harness.workspace), headers=harness.user())
        problem = await response.json()
        assert (response.status, problem["code"]) == (503, "storage_error")
        assert "no storage master key" in problem["detail"]
    finally:
        await client.close()
