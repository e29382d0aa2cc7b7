"""The upload console against a real gateway app, NATS JetStream and S3: the page and its bundled
files, the dev-only token, and the live feed (SSE): the workspace's asset events from the moment
it opens, nobody else's, resumed after Last-Event-ID, authenticated, bounded, ended at shutdown."""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js import JetStreamContext

from rawdrive_contracts import (
    ASSETS_STREAM,
    AssetCreated,
    AssetDeleted,
    AssetProcessingFailed,
    AssetRestored,
    EventData,
    UploadVerified,
    Variant,
    Variants,
    new_event,
)
from rawdrive_devkit.testkit import jetstream, managed_profile
from rawdrive_platform import bus, keys
from rawdrive_platform.config import Secret, load_settings
from rawdrive_platform.storage import Storage
from upload_gateway.app import create_app, token_verifier
from upload_gateway.console import feed, routes
from upload_gateway.errors import InvalidRequest
from upload_gateway.gateway import Gateway
from upload_gateway.settings import Settings

from .gatewaykit import GatewayUnderTest

SECRET = "console-secret-" + "x" * 24


@dataclass
class Console(GatewayUnderTest):
    js: JetStreamContext
    storage: Storage
    default_role: ClassVar[str] = "viewer"

    def events_path(self, workspace: str | None = None) -> str:
        return f"/console/workspaces/{workspace or self.workspace}/events"

    async def publish(self, data: EventData) -> None:
        await bus.publish(self.js, new_event(data, source="/test"))

    def created(self, asset_id: str, thumb_key: str | None = None, workspace: str | None = None) -> AssetCreated:
        ws = workspace or self.workspace
        thumb = Variant(key=thumb_key, width=320, height=240, size_bytes=4) if thumb_key else None
        return AssetCreated(
            workspace_id=ws, asset_id=asset_id, upload_id=f"u-{asset_id}", library_id="lib1",
            file_name="IMG_0001.jpg", mime_type="image/jpeg", size_bytes=11, sha256="0" * 64, kind="photo",
            object_key=keys.original_key(ws, asset_id, "IMG_0001.jpg"), storage_profile_ref="managed",
            variants=Variants(thumb=thumb),
        )  # fmt: skip


def console_settings(**overrides: Any) -> dict[str, Any]:
    return dict(
        database_url="postgresql://unused@127.0.0.1/unused", s3_bucket="b", s3_access_key_id="a",
        s3_secret_access_key=Secret("s"), jwt_secret=Secret(SECRET), console=True,
    ) | overrides  # fmt: skip


@pytest.fixture
async def console(s3_server, nats_url) -> AsyncIterator[Console]:
    storage = await Storage.open(managed_profile(s3_server))
    settings = Settings(**console_settings(
        s3_bucket=s3_server.bucket, s3_access_key_id=s3_server.access_key_id,
        s3_secret_access_key=Secret(s3_server.secret_access_key), s3_endpoint=s3_server.endpoint, nats_url=nats_url,
        console_dev_token=True, asset_url_ttl_s=120,
    ))  # fmt: skip
    # The feed needs no database: a pool is never touched by the console's routes.
    gw = Gateway(settings=settings, pool=None, storage=storage, tokens=token_verifier(settings))  # type: ignore[arg-type]
    try:
        async with jetstream(nats_url, "test-console") as js:
            client = TestClient(TestServer(create_app(gw, mounts=[routes.console_mount(settings, js)])))
            await client.start_server()
            try:
                yield Console(client=client, gw=gw, js=js, storage=storage, workspace=f"ws{uuid.uuid4().hex[:10]}")
            finally:
                await client.close()
    finally:
        await storage.close()


class Frame(msgspec.Struct):
    id: int
    item: dict[str, Any]


async def next_frame(response: aiohttp.ClientResponse, timeout_s: float = 10.0) -> Frame:
    """The next `event: asset` message; comments (open, keep-alive) are skipped."""
    async with asyncio.timeout(timeout_s):
        while True:
            block = (await response.content.readuntil(b"\n\n")).decode()
            fields = dict(line.split(": ", 1) for line in block.strip().splitlines() if not line.startswith(":"))
            if fields:
                assert fields["event"] == "asset", block
                return Frame(id=int(fields["id"]), item=msgspec.json.decode(fields["data"]))


async def opened(response: aiohttp.ClientResponse) -> aiohttp.ClientResponse:
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"] == "text/event-stream"
    assert await response.content.readuntil(b"\n\n") == feed.SSE_OPEN  # the consumer exists from here on
    return response


# -- the page ---------------------------------------------------------------------------------------


async def test_the_page_and_every_file_it_loads_come_from_the_gateway(console):
    page = await console.client.get("/console")
    assert page.status == 200 and page.content_type == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    html = await page.text()
    loaded = [url for url in re.findall(r'(?:src|href)="([^"]+)"', html) if url != "data:,"]  # the empty icon
    assert sorted(loaded) == ["/console/console.css", "/console/console.js", "/console/uppy.css", "/console/uppy.js"]
    for path in loaded:  # nothing from a CDN: every file is ours, Uppy included
        response = await console.client.get(path)
        body = await response.text()
        assert response.status == 200 and body, path
        assert response.content_type == ("text/css" if path.endswith(".css") else "text/javascript"), path
    bundle = await (await console.client.get("/console/uppy.js")).text()
    assert "RawDriveUppy" in bundle and "tus" in bundle.lower()
    assert (await console.client.get("/console/../settings.py")).status == 404
    spec = await (await console.client.get("/openapi.json")).json()
    assert {"/console", "/console/uppy.js", "/console/workspaces/{workspace_id}/events"} <= set(spec["paths"])


def test_the_console_is_off_unless_asked_for():
    base = {"RAWDRIVE_DATABASE_URL": "postgresql://x@h/x", "RAWDRIVE_S3_BUCKET": "b",
            "RAWDRIVE_S3_ACCESS_KEY_ID": "a", "RAWDRIVE_S3_SECRET_ACCESS_KEY": "s"}  # fmt: skip
    off = load_settings(Settings, base)
    assert (off.console, off.console_dev_token) == (False, False)
    on = load_settings(Settings, base | {"RAWDRIVE_CONSOLE": "1"})
    assert (on.console, on.console_dev_token) == (True, False)


async def test_the_dev_token_is_an_admin_token_for_workspace_dev_and_only_in_development(console):
    response = await console.client.get("/console/dev-token")
    assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
    body = await response.json()
    principal = await console.gw.tokens.principal(f"Bearer {body['token']}")
    assert (body["workspace_id"], principal.workspaces) == ("dev", {"dev": "admin"})
    dev_meta = '<meta name="rawdrive-dev-token" content="/console/dev-token">'
    assert dev_meta in await (await console.client.get("/console")).text()  # the page asks only when told

    without = create_app(console.gw, mounts=[routes.console_mount(Settings(**console_settings()), console.js)])
    async with TestClient(TestServer(without)) as client:
        page = await client.get("/console")
        assert page.status == 200 and '<meta name="rawdrive-dev-token" content="">' in await page.text()
        assert (await client.get("/console/dev-token")).status == 404
    with pytest.raises(ValueError, match="RAWDRIVE_CONSOLE_DEV_TOKEN is for development"):
        routes.console_mount(
            Settings(**console_settings(console_dev_token=True, jwt_jwks_url="https://idp.example/jwks")), console.js
        )


def test_a_console_without_its_built_bundle_refuses_to_start(monkeypatch, tmp_path):
    monkeypatch.setitem(routes.FILES, "uppy.js", ("uppyScript", tmp_path / "uppy.js"))
    with pytest.raises(ValueError, match="make bootstrap"):
        routes.console_mount(Settings(**console_settings()), None)  # type: ignore[arg-type]


# -- the live feed ----------------------------------------------------------------------------------


async def test_the_feed_sends_the_workspaces_asset_events_from_now_on_and_nobody_elses(console):
    before = str(uuid.uuid4())
    await console.publish(console.created(before))  # already in the stream: not news
    thumb_key = keys.derived_key(console.workspace, "a1", "thumb", "thumb.webp")
    await console.storage.put(thumb_key, b"webp", "image/webp")
    async with console.client.get(console.events_path(), headers=console.user("viewer")) as response:
        await opened(response)
        other = f"ws{uuid.uuid4().hex[:10]}"
        await console.publish(console.created(str(uuid.uuid4()), workspace=other))
        verified = UploadVerified(
            workspace_id=console.workspace, upload_id="u-a0", asset_id="a0", library_id="lib1", file_name="x.jpg",
            mime_type="image/jpeg", size_bytes=1, sha256="0" * 64, storage_profile_ref="managed",
            object_key=keys.original_key(console.workspace, "a0", "x.jpg"), verified_at=datetime.now(UTC),
        )  # fmt: skip
        await console.publish(verified)  # an upload event: not an asset's, not followed
        await console.publish(console.created("a1", thumb_key))
        failed = AssetProcessingFailed(
            workspace_id=console.workspace, asset_id="a2", upload_id="u-a2", reason="decode_failed",
            detail="not a JPEG after all", object_key="k", storage_profile_ref="managed",
        )  # fmt: skip
        await console.publish(failed)
        now = datetime.now(UTC)
        await console.publish(AssetDeleted(workspace_id=console.workspace, asset_id="a1", deleted_by="bob",
                                           deleted_at=now, purge_after=now + timedelta(days=30)))  # fmt: skip
        await console.publish(AssetRestored(workspace_id=console.workspace, asset_id="a1", restored_by="bob",
                                            restored_at=now))  # fmt: skip

        created = await next_frame(response)
        assert {k: v for k, v in created.item.items() if k != "thumb_url"} == {
            "change": "created", "asset_id": "a1", "file_name": "IMG_0001.jpg", "library_id": "lib1", "kind": "photo",
        }  # fmt: skip
        async with aiohttp.ClientSession() as browser:  # the presigned thumbnail, as an <img> loads it
            async with browser.get(created.item["thumb_url"]) as thumb:
                assert (thumb.status, await thumb.read()) == (200, b"webp")
        frames = [await next_frame(response) for _ in range(3)]
        assert [f.item["change"] for f in frames] == ["failed", "deleted", "restored"]
        assert (frames[0].item["reason"], frames[0].item["detail"]) == ("decode_failed", "not a JPEG after all")
        assert frames[1].item["purge_after"] == (now + timedelta(days=30)).isoformat().replace("+00:00", "Z")
        ids = [created.id, *(f.id for f in frames)]
        assert ids == sorted(ids) and len(set(ids)) == 4  # stream sequences, the resume points


async def test_a_reconnecting_feed_resumes_right_after_its_last_event_id(console):
    async with console.client.get(console.events_path(), headers=console.user()) as response:
        await opened(response)
        for asset_id in ("r1", "r2", "r3"):
            await console.publish(console.created(asset_id))
        first, second, _ = [await next_frame(response) for _ in range(3)]
    await console.publish(console.created("r4"))  # while the browser was away
    resumed = console.user() | {"Last-Event-ID": str(first.id)}
    async with console.client.get(console.events_path(), headers=resumed) as response:
        await opened(response)
        assert [(await next_frame(response)).item["asset_id"] for _ in range(3)] == ["r2", "r3", "r4"]
    assert second.id > first.id


async def feed_consumers(console: Console) -> list[str]:
    """The names of the consumers following this workspace's feed, as the server lists them."""
    infos = await console.js.consumers_info(ASSETS_STREAM.name)
    return [i.name for i in infos if any(console.workspace in s for s in i.config.filter_subjects or ())]


async def the_feed_consumer(console: Console) -> str:
    """The one consumer of the feed, once there is exactly one: a heartbeat late on a loaded
    machine may have the feed replace its consumer, leaving none for a moment."""
    async with asyncio.timeout(10):
        while len(names := await feed_consumers(console)) != 1:
            await asyncio.sleep(0.05)
    return names[0]


async def test_a_feed_whose_consumer_vanishes_replaces_it_and_loses_or_repeats_nothing(console, monkeypatch):
    monkeypatch.setattr(feed, "HEARTBEAT_S", 1.0)  # found missing in 4 s rather than 15
    monkeypatch.setattr(feed, "HEARTBEAT_MISSED_S", 4.0)
    await console.publish(console.created("g0"))  # before the feed opened: never sent
    async with console.client.get(console.events_path(), headers=console.user()) as response:
        await opened(response)
        frames, names = [], []
        for published in (["g1"], ["g2", "g3"]):
            name = await the_feed_consumer(console)
            names.append(name)
            # Deleted as an operator or a lost server would: first before it delivered anything
            # (the replacement starts after what the first one started after), then after g1.
            await console.js.delete_consumer(ASSETS_STREAM.name, name)
            for asset_id in published:  # while the feed has no consumer
                await console.publish(console.created(asset_id))
            frames += [await next_frame(response) for _ in published]
        await console.publish(console.created("g4"))
        frames.append(await next_frame(response))
        assert [f.item["asset_id"] for f in frames] == ["g1", "g2", "g3", "g4"]
        ids = [f.id for f in frames]
        assert ids == sorted(set(ids))
        names.append(await the_feed_consumer(console))
        assert len(set(names)) == 3 and all(n.startswith("feed-") for n in names)
    async with asyncio.timeout(10):  # a closed feed deletes its consumer
        await console.publish(console.created("wake"))
        while await feed_consumers(console):
            await asyncio.sleep(0.1)


async def test_the_feed_needs_a_users_token_for_the_workspace_and_a_valid_last_event_id(console):
    path = console.events_path()
    response = await console.client.get(path)
    assert response.status == 401 and response.content_type == "application/problem+json"
    response = await console.client.get(path, headers=console.user(workspace="someone-else"))
    assert response.status == 404  # another workspace's feed does not exist for this token
    for bad in ("abc", "-1", "0", "1.5", str(2**64)):
        response = await console.client.get(path, headers=console.user() | {"Last-Event-ID": bad})
        assert response.status == 422, bad
        assert "Last-Event-ID" in (await response.json())["detail"]


async def test_the_feed_token_never_reaches_the_access_log(console, caplog):
    headers = console.user()
    with caplog.at_level(logging.INFO, logger="upload_gateway.access"):
        async with console.client.get(console.events_path(), headers=headers) as response:
            await opened(response)
        await console.client.get(console.events_path() + "?token=not-logged-either")
    token = headers["Authorization"].removeprefix("Bearer ")
    lines = [r for r in caplog.records if r.name == "upload_gateway.access"]
    assert lines, "the access log wrote nothing"
    for record in lines:
        assert token not in repr(record.__dict__) and "not-logged-either" not in repr(record.__dict__)


async def test_a_replica_holds_at_most_max_feeds_and_frees_a_place_when_one_closes(console):
    state = console.client.app[routes.CONSOLE]
    state.max_feeds = 1
    async with console.client.get(console.events_path(), headers=console.user()) as response:
        await opened(response)
        refused = await console.client.get(console.events_path(), headers=console.user())
        assert (refused.status, refused.headers["Retry-After"]) == (503, "5")
        assert (await refused.json())["code"] == "unavailable"
    async with asyncio.timeout(10):  # the handler sees the browser gone at its next write
        await console.publish(console.created("wake"))
        while state.open_feeds:
            await asyncio.sleep(0.05)
    async with console.client.get(console.events_path(), headers=console.user()) as response:
        await opened(response)


async def test_shutting_down_ends_every_open_feed(console):
    response = await console.client.get(console.events_path(), headers=console.user())
    await opened(response)
    state = console.client.app[routes.CONSOLE]
    assert state.open_feeds == 1
    # Without the shutdown hook the server would wait its whole shutdown timeout (60 s) for the feed.
    async with asyncio.timeout(10):
        await console.client.server.close()
        assert await response.content.read() == b""  # the stream ended, not cut mid-message
    assert state.open_feeds == 0
    response.release()


# -- the pure part ----------------------------------------------------------------------------------


def test_a_delivery_that_does_not_follow_the_last_one_is_a_gap():
    start = feed.Position(stream=41)  # a consumer created to start after stream sequence 41
    assert start.next_start() == 42
    first = feed.delivered(start, stream_sequence=45, consumer_sequence=1)  # filtered: stream seqs skip
    assert first == feed.Position(stream=45, consumer=1)
    assert feed.delivered(first, 46, 2) == feed.Position(stream=46, consumer=2)
    assert feed.delivered(first, 50, 3) is None  # consumer sequence 2 never arrived
    assert feed.delivered(first, 45, 1) is None  # the same delivery twice
    assert first.next_start() == 46  # a replacement: right after the last event sent, once


def test_a_heartbeat_naming_a_later_delivery_than_ours_is_a_gap():
    position = feed.Position(stream=45, consumer=3)
    assert feed.heartbeat_in_order(position, 3)
    assert not feed.heartbeat_in_order(position, 4)  # the server sent one we never got
    assert feed.heartbeat_in_order(feed.Position(stream=0), 0)  # a new consumer, nothing yet


def test_each_consumer_a_feed_creates_has_a_new_name_of_ours():
    names = {feed.consumer_name() for _ in range(3)}
    assert len(names) == 3 and all(re.fullmatch(r"feed-[0-9a-f]{32}", n) for n in names)


def test_a_last_event_id_is_a_stream_sequence_or_nothing():
    assert feed.resume_after(None) is None and feed.resume_after(" ") is None
    assert feed.resume_after("42") == 42 and feed.resume_after(str(feed.MAX_SEQUENCE)) == feed.MAX_SEQUENCE
    for bad in ("x", "0", "-3", "٣", "1e3", str(feed.MAX_SEQUENCE + 1)):
        with pytest.raises(InvalidRequest):
            feed.resume_after(bad)


def test_an_sse_message_is_one_event_with_its_sequence_as_id():
    item = feed.FeedItem(change="failed", asset_id="a1", reason="timeout", detail="line one\nline two")
    message = feed.sse_message(7, item)
    assert message.endswith(b"\n\n") and message.count(b"\n") == 4  # id, event, one data line, blank
    assert message.startswith(b"id: 7\nevent: asset\ndata: ")
    assert msgspec.json.decode(message.split(b"data: ", 1)[1]) == msgspec.to_builtins(item)


def test_the_feed_follows_only_the_workspaces_asset_subjects():
    assert feed.subjects("ws1") == [
        "rawdrive.asset.created.ws1", "rawdrive.asset.processing_failed.ws1", "rawdrive.asset.deleted.ws1",
        "rawdrive.asset.restored.ws1", "rawdrive.asset.purged.ws1",
    ]  # fmt: skip
    with pytest.raises(ValueError):
        feed.subjects("ws.>")
