"""The assets API against real PostgreSQL, NATS and S3: the catalogue follows the events, pages
stay stable, URLs fetch the right bytes under the right names, and every route checks roles."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from nats.js import JetStreamContext

from rawdrive_contracts import (
    CloudEvent,
    EventData,
    MediaMetadata,
    Variant,
    Variants,
    events,
    new_event,
    subject_filter,
)
from rawdrive_contracts.facts import carry
from rawdrive_devkit.testkit import (
    consumer_for_test,
    consuming,
    jetstream,
    managed_profile,
    migrated_pool,
    stored_events,
)
from rawdrive_platform import bus, keys
from rawdrive_platform.health import Health
from rawdrive_platform.outbox import Relay, UnitOfWork
from rawdrive_platform.storage import Storage
from upload_gateway.app import create_app, token_verifier
from upload_gateway.catalogue import events as asset_events
from upload_gateway.catalogue import store as catalogue_store
from upload_gateway.catalogue.core import facts_of
from upload_gateway.gateway import Gateway
from upload_gateway.http.openapi import OPERATIONS
from upload_gateway.storage_profiles.routes import mount_storage_profiles
from upload_gateway.uploads import verdicts
from upload_gateway.uploads.tus_session import mount_tus

from .gatewaykit import GatewayUnderTest, settings_for

SECRET = "catalogue-secret-" + "x" * 20
MIGRATIONS = files("upload_gateway") / "migrations"
NON_ASCII_NAME = "Ünïcødé 写真 «1».jpg"


@dataclass
class Harness(GatewayUnderTest):
    js: JetStreamContext

    def path(self, suffix: str = "", workspace: str | None = None) -> str:
        return f"/v1/workspaces/{workspace or self.workspace}/assets{suffix}"

    async def get(self, asset_id: str, role: str = "viewer") -> aiohttp.ClientResponse:
        return await self.client.get(self.path(f"/{asset_id}"), headers=self.user(role))

    async def publish(self, data: EventData, *, time: datetime | None = None, id: str | None = None) -> CloudEvent[Any]:
        event = new_event(data, source="/test", time=time, id=id)
        await bus.publish(self.js, event)
        return event

    async def status(self, asset_id: str) -> str | None:
        response = await self.get(asset_id)
        return (await response.json())["status"] if response.status == 200 else None

    async def until_status(self, asset_id: str, wanted: str | None) -> None:
        async with asyncio.timeout(10):
            while await self.status(asset_id) != wanted:
                await asyncio.sleep(0.05)

    def verified(self, asset_id: str, **changes: Any) -> events.UploadVerified:
        fields = dict(
            workspace_id=self.workspace, upload_id=f"u-{asset_id}", asset_id=asset_id, library_id="lib1",
            file_name=NON_ASCII_NAME, mime_type="image/jpeg", size_bytes=11, sha256=hashlib.sha256(b"hello world").hexdigest(),
            storage_profile_ref="managed", object_key=keys.original_key(self.workspace, asset_id, NON_ASCII_NAME),
            verified_at=datetime.now(UTC),
        )
        return events.UploadVerified(**(fields | changes))

    def created(self, asset_id: str, variants: Variants | None = None) -> events.AssetCreated:
        """The processor's asset.created for the upload of `verified`: its facts carried over."""
        return carry(
            self.verified(asset_id), events.AssetCreated, kind="photo", width=4000, height=3000,
            taken_at=datetime(2024, 7, 1, 12, 30), variants=variants or Variants(),
        )

    async def announced(self, event_type: type[EventData]) -> list[Any]:
        """Every event of this type in its stream for this workspace."""
        return [event.data for event in await stored_events(self.js, subject_filter(event_type.spec, self.workspace))]


@pytest.fixture
async def harness(fresh_database_url, s3_server, nats_url) -> AsyncIterator[Harness]:
    settings = settings_for(fresh_database_url, s3_server, SECRET, nats_url=nats_url, asset_url_ttl_s=120)
    storage = await Storage.open(managed_profile(s3_server))
    workspace = f"ws{uuid.uuid4().hex[:10]}"
    try:
        async with contextlib.AsyncExitStack() as stack:
            pool = await stack.enter_async_context(migrated_pool(fresh_database_url, "gateway", MIGRATIONS))
            js = await stack.enter_async_context(jetstream(nats_url, "test-catalogue"))
            for table in (asset_events.HANDLERS, verdicts.HANDLERS):
                spec = consumer_for_test(table, workspace)
                await stack.enter_async_context(consuming(js, table, UnitOfWork(pool), spec))
            gw = Gateway(settings=settings, pool=pool, storage=storage, tokens=token_verifier(settings))
            app = create_app(gw, mounts=[mount_tus, mount_storage_profiles])  # what __main__ mounts
            Health().mount(app)  # as Runtime.serve_health does in __main__
            client = await stack.enter_async_context(TestClient(TestServer(app)))
            yield Harness(client=client, gw=gw, js=js, workspace=workspace)
    finally:
        await storage.close()


async def problem(response: aiohttp.ClientResponse) -> dict:
    assert response.content_type == "application/problem+json", await response.text()
    return await response.json()


# -- the catalogue follows the events --------------------------------------------------------------


async def test_an_asset_goes_processing_available_deleted_restored_and_purged_as_the_events_say(harness):
    asset = str(uuid.uuid4())
    await harness.publish(harness.verified(asset))
    await harness.until_status(asset, "processing")
    shown = await (await harness.get(asset)).json()
    assert (shown["file_name"], shown["size_bytes"], shown["library_id"]) == (NON_ASCII_NAME, 11, "lib1")
    assert "kind" not in shown and "variants" not in shown

    await harness.publish(harness.created(asset))
    await harness.until_status(asset, "available")
    shown = await (await harness.get(asset)).json()
    assert (shown["kind"], shown["width"], shown["height"], shown["taken_at"]) == ("photo", 4000, 3000, "2024-07-01T12:30:00")

    t = datetime.now(UTC)
    deletion = events.AssetDeleted(workspace_id=harness.workspace, asset_id=asset, deleted_by="bob", deleted_at=t,
                                   purge_after=t + timedelta(days=1))
    await harness.publish(deletion)
    await harness.until_status(asset, "deleted")
    assert (await (await harness.get(asset)).json())["purge_after"] == (t + timedelta(days=1)).isoformat().replace("+00:00", "Z")

    await harness.publish(events.AssetRestored(workspace_id=harness.workspace, asset_id=asset, restored_by="bob",
                                               restored_at=t + timedelta(seconds=1)))
    await harness.until_status(asset, "available")
    await harness.publish(events.AssetPurged(workspace_id=harness.workspace, asset_id=asset,
                                             purged_at=t + timedelta(seconds=2)))
    await harness.until_status(asset, None)
    assert (await harness.get(asset)).status == 404
    listed = await (await harness.client.get(harness.path("?status=available"), headers=harness.user("viewer"))).json()
    assert listed["items"] == []


async def test_redelivered_and_out_of_order_events_end_in_the_state_their_times_say(harness):
    early_created, stale_failure, trash = (str(uuid.uuid4()) for _ in range(3))
    t = datetime.now(UTC)
    # asset.created overtakes upload.verified; both delivered twice (new ids: JetStream would
    # drop the same id, a consumer's redelivery would not).
    for _ in range(2):
        await harness.publish(harness.created(early_created), id=str(uuid.uuid4()))
        await harness.publish(harness.verified(early_created), id=str(uuid.uuid4()))
    # A failure from an earlier attempt arrives after the success.
    await harness.publish(harness.verified(stale_failure))
    await harness.publish(harness.created(stale_failure), time=t)
    failure = events.AssetProcessingFailed(workspace_id=harness.workspace, asset_id=stale_failure, upload_id="u",
                                           reason="timeout", object_key="k", storage_profile_ref="managed")
    await harness.publish(failure, time=t - timedelta(seconds=5))
    # The restore arrives before the deletion it undoes, then a later deletion arrives.
    await harness.publish(harness.verified(trash))
    await harness.publish(events.AssetRestored(workspace_id=harness.workspace, asset_id=trash, restored_by="b",
                                               restored_at=t + timedelta(seconds=2)))
    for deleted_at in (t + timedelta(seconds=1), t + timedelta(seconds=3), t + timedelta(seconds=1)):
        await harness.publish(events.AssetDeleted(workspace_id=harness.workspace, asset_id=trash, deleted_by="b",
                                                  deleted_at=deleted_at, purge_after=deleted_at + timedelta(days=1)))
    await harness.until_status(early_created, "available")
    await harness.until_status(stale_failure, "available")
    await harness.until_status(trash, "deleted")
    shown = await (await harness.get(trash)).json()
    assert shown["deleted_at"].startswith((t + timedelta(seconds=3)).isoformat()[:19])
    [row] = await harness.gw.pool.fetch("SELECT count(*) FROM assets WHERE asset_id = $1", early_created)
    assert row[0] == 1


# -- listing ---------------------------------------------------------------------------------------


async def _record(harness: Harness, data: EventData) -> None:
    async with harness.gw.pool.acquire() as conn, conn.transaction():
        await catalogue_store.record(conn, facts_of(new_event(data, source="/test")))


async def test_pages_neither_repeat_nor_skip_while_new_assets_arrive(harness):
    before = [str(uuid.uuid4()) for _ in range(23)]
    for asset in before:
        await _record(harness, harness.verified(asset))
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        query = f"?limit=5{'&cursor=' + cursor if cursor else ''}"
        page = await (await harness.client.get(harness.path(query), headers=harness.user("viewer"))).json()
        seen += [item["asset_id"] for item in page["items"]]
        # Others keep uploading while we page: two new assets per page, and one of ours changes.
        for _ in range(2):
            await _record(harness, harness.verified(str(uuid.uuid4())))
            added += 1
        await _record(harness, harness.created(before[len(seen) % len(before)]))
        if not (cursor := page["next_cursor"]):
            break
    assert len(seen) == len(set(seen)), "an asset was listed twice"
    assert seen == [a for a in reversed(before)], "every asset older than the first page, newest first"
    everything = await (await harness.client.get(harness.path("?limit=100"), headers=harness.user())).json()
    assert len(everything["items"]) == len(before) + added and everything["next_cursor"] is None


async def test_listings_filter_by_library_folder_and_status_and_hide_deleted_by_default(harness):
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    await _record(harness, harness.verified(a, library_id="holiday", folder_id="beach"))
    await _record(harness, harness.verified(b, library_id="holiday"))
    await _record(harness, harness.verified(c))
    await _record(harness, harness.created(c))
    t = datetime.now(UTC)
    await _record(harness, events.AssetDeleted(workspace_id=harness.workspace, asset_id=b, deleted_by="x",
                                               deleted_at=t, purge_after=t + timedelta(days=1)))

    async def ids(query: str) -> set[str]:
        response = await harness.client.get(harness.path(query), headers=harness.user("viewer"))
        assert response.status == 200, await response.text()
        return {item["asset_id"] for item in (await response.json())["items"]}

    assert await ids("") == {a, c}
    assert await ids("?library_id=holiday") == {a}
    assert await ids("?library_id=holiday&status=deleted") == {b}
    assert await ids("?folder_id=beach") == {a}
    assert await ids("?status=available") == {c}
    for bad, path in (("?limit=0", "$.limit"), ("?limit=101", "$.limit"), ("?status=gone", "$.status"),
                      ("?cursor=not-ours", "$.cursor"), ("?limit=ten", "$.limit")):
        response = await harness.client.get(harness.path(bad), headers=harness.user("viewer"))
        assert response.status == 422, bad
        assert (await problem(response))["errors"][0]["path"] == path


# -- URLs --------------------------------------------------------------------------------------------


async def test_variant_and_download_urls_fetch_the_stored_bytes_under_the_original_name(harness):
    asset = str(uuid.uuid4())
    original = b"original bytes \xff\x00"
    thumb_key = keys.derived_key(harness.workspace, asset, "thumb", "thumb.webp")
    large_key = keys.derived_key(harness.workspace, asset, "large", "large.webp")
    verified_event = harness.verified(asset, size_bytes=len(original))
    await harness.gw.storage.put(verified_event.object_key, original, "image/jpeg")
    await harness.gw.storage.put(thumb_key, b"thumb", "image/webp")
    await harness.gw.storage.put(large_key, b"large!", "image/webp")
    variants = Variants(thumb=Variant(key=thumb_key, width=320, height=240, size_bytes=5),
                        large=Variant(key=large_key, width=2560, height=1920, size_bytes=6))
    await _record(harness, verified_event)
    await _record(harness, harness.created(asset, variants))

    shown = await (await harness.get(asset)).json()
    assert set(shown["variants"]) == {"thumb", "large"} and shown["urls_expire_at"]
    async with aiohttp.ClientSession() as http:
        for name, body in (("thumb", b"thumb"), ("large", b"large!")):
            async with http.get(shown["variants"][name]["url"]) as response:
                assert (response.status, await response.read()) == (200, body)
        redirect = await harness.client.get(harness.path(f"/{asset}/download"), headers=harness.user("viewer"),
                                            allow_redirects=False)
        assert redirect.status == 302 and redirect.headers["Cache-Control"] == "no-store"
        async with http.get(redirect.headers["Location"]) as response:
            assert (response.status, await response.read()) == (200, original)
            disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    encoded = re.search(r"filename\*=UTF-8''(\S+)", disposition)
    assert encoded and urllib.parse.unquote(encoded[1]) == NON_ASCII_NAME
    assert disposition.split('filename="')[1].split('"')[0].isascii()


# -- delete and restore ------------------------------------------------------------------------------


async def test_delete_announces_the_deletion_and_restore_undoes_it_within_retention(harness):
    asset = str(uuid.uuid4())
    await _record(harness, harness.verified(asset))
    await _record(harness, harness.created(asset))
    path = harness.path(f"/{asset}")
    assert (await harness.client.delete(path, headers=harness.user("member"))).status == 204
    assert (await harness.client.delete(path, headers=harness.user("member"))).status == 204  # idempotent
    shown = await (await harness.get(asset)).json()
    assert shown["status"] == "deleted"
    purge_after = datetime.fromisoformat(shown["purge_after"])
    assert timedelta(days=29.9) < purge_after - datetime.fromisoformat(shown["deleted_at"]) <= timedelta(days=30)

    restored = await harness.client.post(path + "/restore", headers=harness.user("member"))
    assert restored.status == 200 and (await restored.json())["status"] == "available"
    again = await harness.client.post(path + "/restore", headers=harness.user("member"))
    assert again.status == 200  # nothing to undo: still fine

    await Relay(harness.gw.pool, harness.js).publish_pending()
    [deleted] = await harness.announced(events.AssetDeleted)
    assert (deleted.asset_id, deleted.deleted_by, deleted.storage_profile_ref) == (asset, "alice", "managed")
    assert deleted.purge_after == purge_after
    [restore] = await harness.announced(events.AssetRestored)
    assert restore.asset_id == asset and restore.restored_at > deleted.deleted_at
    # The consumer sees the gateway's own events and lands where the API already is.
    await asyncio.sleep(0.5)
    assert await harness.status(asset) == "available"


async def test_restoring_after_the_retention_period_is_refused_with_410(harness):
    asset = str(uuid.uuid4())
    await _record(harness, harness.verified(asset))
    t = datetime.now(UTC) - timedelta(days=31)
    await _record(harness, events.AssetDeleted(workspace_id=harness.workspace, asset_id=asset, deleted_by="x",
                                               deleted_at=t, purge_after=t + timedelta(days=30)))
    response = await harness.client.post(harness.path(f"/{asset}/restore"), headers=harness.user("admin"))
    assert response.status == 410 and (await problem(response))["code"] == "retention_over"
    assert await harness.status(asset) == "deleted"


# -- access ------------------------------------------------------------------------------------------

ROUTES: list[tuple[str, str, str]] = [
    ("GET", "", "viewer"),
    ("GET", "/{asset}", "viewer"),
    ("GET", "/{asset}/download", "viewer"),
    ("DELETE", "/{asset}", "member"),
    ("POST", "/{asset}/restore", "member"),
]
RANK = {"viewer": 0, "member": 1, "admin": 2}


@pytest.mark.parametrize(("method", "suffix", "needed"), ROUTES)
async def test_every_assets_route_checks_the_token_the_role_and_the_workspace(harness, method, suffix, needed):
    asset = str(uuid.uuid4())
    await _record(harness, harness.verified(asset))
    await harness.gw.storage.put(harness.verified(asset).object_key, b"x", "image/jpeg")
    path = harness.path(suffix.format(asset=asset))

    async def call(headers: dict[str, str]) -> aiohttp.ClientResponse:
        return await harness.client.request(method, path, headers=headers, allow_redirects=False)

    assert (await call({})).status == 401
    assert (await call({"Authorization": "Bearer nope"})).status == 401
    other = await call(harness.user("admin", workspace="elsewhere"))
    assert other.status == 404 and (await problem(other))["code"] == "not_found"
    for role in ("viewer", "member", "admin"):
        response = await call(harness.user(role))
        if RANK[role] < RANK[needed]:
            assert response.status == 403 and (await problem(response))["code"] == "forbidden", role
        else:
            assert response.status in (200, 204, 302), (role, await response.text())


async def test_an_unknown_or_malformed_asset_id_is_404(harness):
    for asset in (str(uuid.uuid4()), "a.b", "x" * 65):
        response = await harness.get(asset)
        assert response.status == 404 and (await problem(response))["code"] == "not_found"


# -- the OpenAPI document ----------------------------------------------------------------------------


async def test_every_served_route_is_in_the_openapi_document_with_its_schemas(harness):
    response = await harness.client.get("/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    served = set()
    for route in harness.client.app.router.routes():
        path = route.resource.canonical if route.resource else ""
        served.add((route.method, path))
    # aiohttp answers HEAD for a GET route on its own (add_get); the GET's entry covers it.
    implied = {("HEAD", path) for method, path in served if method == "GET"} - documented
    assert served - implied - documented == set()
    assert documented - served == set(), "documented routes that are not served"
    listing = document["paths"]["/v1/workspaces/{workspace_id}/assets"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"workspace_id", "cursor", "limit", "library_id",
                                                          "folder_id", "status"}
    assert listing["responses"]["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/AssetPage"}
    assert document["components"]["securitySchemes"]["userToken"]["scheme"] == "bearer"
    assert "Problem" in document["components"]["schemas"]
    tus_patch = document["paths"]["/v1/workspaces/{workspace_id}/uploads/{upload_id}/tus"]["patch"]
    assert {"Upload-Offset", "Tus-Resumable", "Upload-Checksum"} <= {p["name"] for p in tus_patch["parameters"]}
    assert len(harness.client.app[OPERATIONS]) == len({(o.method, o.path) for o in harness.client.app[OPERATIONS]})



# -- Live Photos and motion photos -----------------------------------------------------------------


async def test_a_live_photos_still_and_video_show_each_other_whichever_arrived_first(harness):
    video, still, copy = (str(uuid.uuid4()) for _ in range(3))
    live = MediaMetadata(content_identifier="5A7C1E2B-3D4F-4A6B-8C9D-0E1F2A3B4C5D")

    async def arrive(asset_id: str, kind: str) -> None:
        await harness.publish(harness.verified(asset_id))
        created = msgspec.structs.replace(harness.created(asset_id), kind=kind, metadata=live)
        await harness.publish(created)
        await harness.until_status(asset_id, "available")

    async def paired(asset_id: str) -> str | None:
        return (await (await harness.get(asset_id)).json()).get("paired_with")

    await arrive(video, "video")  # the MOV first: nothing to pair with yet
    assert await paired(video) is None
    await arrive(still, "photo")
    assert (await paired(still), await paired(video)) == (video, still)
    listed = await (await harness.client.get(harness.path(), headers=harness.user("viewer"))).json()
    assert {item["asset_id"]: item.get("paired_with") for item in listed["items"]} == {video: still, still: video}

    await arrive(copy, "photo")  # the still uploaded again: the video keeps its first partner
    assert (await paired(copy), await paired(video)) == (video, still)

    deleted = await harness.client.delete(harness.path(f"/{still}"), headers=harness.user("member"))
    assert deleted.status == 204
    assert await paired(video) == copy  # a still in the trash is no partner


async def test_a_motion_photos_video_and_poster_get_links_like_the_other_variants(harness):
    asset = str(uuid.uuid4())
    motion_key = keys.derived_key(harness.workspace, asset, "motion", "video.mp4")
    poster_key = keys.derived_key(harness.workspace, asset, "motion_poster", "image.webp")
    variants = Variants(
        motion=Variant(key=motion_key, width=1440, height=1080, mime_type="video/mp4", size_bytes=2_000_000),
        motion_poster=Variant(key=poster_key, width=1280, height=960, size_bytes=90_000),
    )
    await harness.publish(harness.verified(asset))
    await harness.publish(harness.created(asset, variants))
    await harness.until_status(asset, "available")
    shown = (await (await harness.get(asset)).json())["variants"]
    assert (shown["motion"]["mime_type"], shown["motion"]["width"]) == ("video/mp4", 1440)
    assert urllib.parse.urlsplit(shown["motion"]["url"]).path.endswith("/derived/motion/video.mp4")
    assert shown["motion_poster"]["mime_type"] == "image/webp"
async def test_a_failed_asset_shows_a_fixed_text_not_the_workers_detail(harness):
    asset = str(uuid.uuid4())
    key = f"workspaces/{harness.workspace}/assets/{asset}/original/secret-plans.pdf"
    await harness.publish(harness.verified(asset))
    await harness.publish(events.AssetProcessingFailed(
        workspace_id=harness.workspace, asset_id=asset, upload_id="u", reason="decode_failed", object_key=key,
        storage_profile_ref="managed",
        detail=f"gs exited with 1: GPL Ghostscript 10.0: Unrecoverable error in /tmp/scratch/{key} %PDF-1.7 \x89PNG",
    ))
    await harness.until_status(asset, "failed")
    shown = await (await harness.get(asset)).json()
    assert shown["failure"] == {"reason": "decode_failed", "detail": "the file could not be decoded"}


# -- duplicates: the same bytes again --------------------------------------------------------------


async def _arrive(harness: Harness, asset_id: str, sha256: str) -> None:
    await harness.publish(harness.verified(asset_id, sha256=sha256))
    created = msgspec.structs.replace(harness.created(asset_id), sha256=sha256)
    await harness.publish(created)
    await harness.until_status(asset_id, "available")


async def test_with_on_duplicate_skip_a_session_for_an_available_assets_bytes_answers_with_that_asset(harness):
    content = uuid.uuid4().bytes * 1000
    sha = hashlib.sha256(content).hexdigest()
    uploads = f"/v1/workspaces/{harness.workspace}/uploads"
    body = {"file_name": "again.jpg", "mime_type": "image/jpeg", "size_bytes": len(content), "library_id": "lib1",
            "resumable_protocol": "tus", "sha256": sha.upper()}
    skip = body | {"on_duplicate": "skip"}

    async def create(request: dict, workspace: str | None = None) -> tuple[int, dict]:
        path = f"/v1/workspaces/{workspace}/uploads" if workspace else uploads
        response = await harness.client.post(path, json=request, headers=harness.user(workspace=workspace))
        return response.status, await response.json()

    async def written() -> tuple[int, int]:
        sessions = await harness.gw.pool.fetchval(
            "SELECT count(*) FROM upload_sessions WHERE workspace_id = $1", harness.workspace
        )
        return sessions, await harness.gw.pool.fetchval("SELECT count(*) FROM outbox")

    status, created = await create(skip)  # nothing has these bytes yet: an ordinary session
    assert status == 201 and created["upload_url"] and "duplicate_of" not in created

    processing, original, failed = (str(uuid.uuid4()) for _ in range(3))
    await harness.publish(harness.verified(processing, sha256=sha))  # verified, not processed yet
    await harness.until_status(processing, "processing")
    status, created = await create(skip)
    assert status == 201 and "duplicate_of" not in created

    await harness.publish(harness.verified(failed, sha256=sha))
    await harness.publish(events.AssetProcessingFailed(
        workspace_id=harness.workspace, asset_id=failed, upload_id="u", reason="decode_failed",
        object_key=keys.original_key(harness.workspace, failed, "x.jpg"), storage_profile_ref="managed",
    ))
    await harness.until_status(failed, "failed")
    status, created = await create(skip)
    assert status == 201 and "duplicate_of" not in created

    await _arrive(harness, original, sha)
    before = await written()
    status, created = await create(skip)
    assert (status, created) == (200, {"duplicate_of": original})
    assert await written() == before  # no session row, no event
    # Today's behaviour unless the client asks: a session for the same bytes.
    status, created = await create(body)
    assert status == 201 and created["upload_url"] and "duplicate_of" not in created
    status, created = await create(body | {"on_duplicate": "upload"})
    assert status == 201 and "duplicate_of" not in created
    # Another workspace's asset is no duplicate.
    status, created = await create(skip, workspace=f"ws{uuid.uuid4().hex[:10]}")
    assert status == 201 and "duplicate_of" not in created
    # The file is checked first: a type the gateway refuses is refused, duplicate or not.
    status, refused = await create(skip | {"file_name": "again.exe", "mime_type": "application/x-msdownload"})
    assert (status, refused["code"]) == (422, "unsupported_type")
    status, refused = await create(skip | {"on_duplicate": "always"})
    assert status == 422

    deleted = await harness.client.delete(harness.path(f"/{original}"), headers=harness.user("member"))
    assert deleted.status == 204
    status, created = await create(skip)  # an asset in the trash is no duplicate
    assert status == 201 and "duplicate_of" not in created
    restored = await harness.client.post(harness.path(f"/{original}/restore"), headers=harness.user("member"))
    assert restored.status == 200
    assert await create(skip) == (200, {"duplicate_of": original})


async def test_an_asset_with_an_earlier_available_assets_bytes_shows_it_as_duplicate_of(harness):
    first, second, third, other = (str(uuid.uuid4()) for _ in range(4))
    sha = hashlib.sha256(uuid.uuid4().bytes).hexdigest()

    async def duplicate_of(asset_id: str) -> str | None:
        return (await (await harness.get(asset_id)).json()).get("duplicate_of")

    await _arrive(harness, first, sha)
    await _arrive(harness, second, sha)
    await _arrive(harness, third, sha)
    await _arrive(harness, other, hashlib.sha256(uuid.uuid4().bytes).hexdigest())
    assert [await duplicate_of(a) for a in (first, second, third, other)] == [None, first, first, None]
    listed = await (await harness.client.get(harness.path(), headers=harness.user("viewer"))).json()
    assert {item["asset_id"]: item.get("duplicate_of") for item in listed["items"]} == {
        first: None, second: first, third: first, other: None
    }

    deleted = await harness.client.delete(harness.path(f"/{first}"), headers=harness.user("member"))
    assert deleted.status == 204
    # The earliest *available* one: the first is in the trash, the second stands in for it.
    assert [await duplicate_of(a) for a in (second, third)] == [None, second]
