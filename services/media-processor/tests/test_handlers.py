"""The processor against real NATS and S3: what other services see after an upload is verified."""

from __future__ import annotations

import asyncio
import hashlib
import struct
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from media_processor.handlers import HANDLERS, Dependencies, upload_verified
from media_processor.sandbox import Limits, Sandbox
from rawdrive_contracts import (
    AssetAnalysisRequested,
    AssetCreated,
    AssetProcessingFailed,
    CloudEvent,
    UploadVerified,
    new_event,
)
from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_devkit.testkit import consumer_for_test, consuming, jetstream, managed_profile, stored_events
from rawdrive_platform import bus, keys
from rawdrive_platform.storage import Storage

DATA = Path(__file__).parent / "data"


@dataclass
class Env:
    js: JetStreamContext
    storage: Storage
    sandbox: Sandbox
    workspace: str

    @property
    def deps(self) -> Dependencies:
        return Dependencies(js=self.js, storage_for=self.storage_for, sandbox=self.sandbox)

    async def storage_for(self, ref: str) -> Storage:
        return self.storage

    async def upload(self, content: bytes, file_name: str, mime_type: str) -> UploadVerified:
        asset_id = uuid.uuid4().hex
        key = keys.original_key(self.workspace, asset_id, file_name)
        await self.storage.put(key, content, mime_type)
        return UploadVerified(
            workspace_id=self.workspace,
            upload_id=uuid.uuid4().hex,
            asset_id=asset_id,
            library_id="lib1",
            file_name=file_name,
            mime_type=mime_type,
            size_bytes=len(content),
            sha256=hashlib.sha256(content).hexdigest(),
            storage_profile_ref="managed",
            object_key=key,
            verified_at=datetime.now(UTC),
        )

    async def process(self, *uploads: UploadVerified, announced: int) -> list[CloudEvent[Any]]:
        """The processor's consumer, running in this process on this workspace's subject, fed
        these uploads until the workspace has `announced` events."""
        spec = consumer_for_test(HANDLERS, self.workspace, ack_wait_s=10.0)
        async with consuming(self.js, HANDLERS, self.deps, spec, concurrency=2):
            for upload in uploads:
                await bus.publish(self.js, new_event(upload, source="test"))
            return await self.wait_announced(announced)

    async def announced(self) -> list[CloudEvent[Any]]:
        return await stored_events(self.js, f"rawdrive.asset.*.{self.workspace}")

    async def wait_announced(self, count: int, timeout: float = 60.0) -> list[CloudEvent[Any]]:
        async with asyncio.timeout(timeout):
            while len(found := await self.announced()) < count:
                await asyncio.sleep(0.2)
        return found


@pytest.fixture
async def env(nats_url: str, s3_server: S3Connection) -> AsyncIterator[Env]:
    storage = await Storage.open(managed_profile(s3_server))
    try:
        async with jetstream(nats_url, "test-media-processor") as js:
            sandbox = Sandbox(Limits(timeout_s=60))
            yield Env(js=js, storage=storage, sandbox=sandbox, workspace=f"ws{uuid.uuid4().hex[:12]}")
    finally:
        await storage.close()


async def object_bytes(storage: Storage, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.iter_chunks(key)])


async def test_a_verified_photo_is_announced_with_variants_stored_and_no_gps_in_them(env: Env) -> None:
    upload = await env.upload((DATA / "exiftool_GPS.jpg").read_bytes(), "beach.jpg", "image/jpeg")
    created, analysis = sorted(await env.process(upload, announced=2), key=lambda e: e.type, reverse=True)
    assert isinstance(created.data, AssetCreated) and isinstance(analysis.data, AssetAnalysisRequested)
    asset = created.data
    assert (asset.asset_id, asset.kind, asset.sha256, asset.object_key) == (
        upload.asset_id, "photo", upload.sha256, upload.object_key,
    )
    assert (asset.width, asset.height) == (120, 80)
    assert asset.taken_at == datetime(2002, 7, 13, 15, 58, 28)
    assert asset.metadata.gps is not None  # the announcement carries it; the pictures do not
    for name in ("large", "medium", "thumb"):
        variant = getattr(asset.variants, name)
        assert variant.key == keys.derived_key(env.workspace, upload.asset_id, name, "image.webp")
        body = await object_bytes(env.storage, variant.key)
        assert body[8:12] == b"WEBP" and len(body) == variant.size_bytes
        assert b"EXIF" not in body and b"XMP " not in body
    assert analysis.data.variants == asset.variants


async def test_an_executable_named_jpg_fails_as_a_type_mismatch_and_the_next_upload_is_processed(env: Env) -> None:
    bad = await env.upload(b"MZ\x90\x00\x03" + bytes(2000), "cat.jpg", "image/jpeg")
    good = await env.upload((DATA / "video_rotated_90.mov").read_bytes(), "clip.mov", "video/quicktime")
    events = await env.process(bad, good, announced=3)
    by_asset = {(e.data.asset_id, type(e.data)): e.data for e in events}
    failed = by_asset[(bad.asset_id, AssetProcessingFailed)]
    assert failed.reason == "type_mismatch" and failed.upload_id == bad.upload_id
    video = by_asset[(good.asset_id, AssetCreated)]
    assert video.kind == "video" and (video.width, video.height) == (720, 1280)
    assert video.variants.thumb is not None and (video.variants.thumb.width, video.variants.thumb.height) == (180, 320)


async def test_an_undecodable_file_fails_with_a_reason_instead_of_retrying(env: Env) -> None:
    upload = await env.upload((DATA / "exiftool_Nikon.nef").read_bytes(), "DSC_0001.NEF", "application/octet-stream")
    [event] = await env.process(upload, announced=1)
    assert isinstance(event.data, AssetProcessingFailed) and event.data.reason == "decode_failed"
    assert event.data.cause == "corrupt_content"  # LibRaw: the sensor data was stripped


async def test_a_pixel_flood_is_refused_with_its_cause_and_a_damaged_photo_is_announced_with_warnings(
    env: Env,
) -> None:
    small = (DATA / "jpeg_orientation_6.jpg").read_bytes()
    sof = small.index(b"\xff\xc0")
    flood = small[: sof + 5] + struct.pack(">HH", 60000, 60000) + small[sof + 9 :]
    whole = (DATA / "mei_Samsung_SM-J327T1.jpg").read_bytes()
    refused = await env.upload(flood, "flood.jpg", "image/jpeg")
    damaged = await env.upload(whole[: len(whole) // 3], "cut.jpg", "image/jpeg")
    events = await env.process(refused, damaged, announced=3)
    by_asset = {(e.data.asset_id, type(e.data)): e.data for e in events}
    failed = by_asset[(refused.asset_id, AssetProcessingFailed)]
    assert (failed.reason, failed.cause) == ("unsupported_content", "too_many_pixels")
    assert "60000x60000" in failed.detail
    created = by_asset[(damaged.asset_id, AssetCreated)]
    assert [w.code for w in created.metadata.warnings] == ["truncated"]
    assert created.variants.thumb is not None


async def test_a_missing_original_fails_as_a_storage_error(env: Env) -> None:
    upload = await env.upload(b"\xff\xd8\xff", "gone.jpg", "image/jpeg")
    await env.storage.delete([upload.object_key])
    await upload_verified(new_event(upload, source="test"), env.deps)
    [event] = await env.announced()
    assert isinstance(event.data, AssetProcessingFailed) and event.data.reason == "storage_error"


async def test_processing_the_same_upload_twice_writes_the_same_keys_and_announces_once(env: Env) -> None:
    upload = await env.upload((DATA / "png_rgba_alpha.png").read_bytes(), "logo.png", "image/png")
    event = new_event(upload, source="test")
    await upload_verified(event, env.deps)
    first = await env.announced()
    await upload_verified(event, env.deps)  # a redelivery after a crash before the ack
    second = await env.announced()
    assert [e.id for e in second] == [e.id for e in first] and len(first) == 2
    keys_written = [k async for k in env.storage.list_keys(keys.asset_prefix(env.workspace, upload.asset_id))]
    assert len(keys_written) == 4  # the original and three variants


class CountingReads:
    """The storage, counting the GETs of originals and the bytes they delivered."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self.gets = 0
        self.bytes_read = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._storage, name)

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        self.gets += 1
        data = await self._storage.get_range(key, start, end)
        self.bytes_read += len(data)
        return data

    async def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> AsyncIterator[bytes]:
        self.gets += 1
        async for chunk in self._storage.iter_chunks(key, chunk_size):
            self.bytes_read += len(chunk)
            yield chunk


async def test_an_original_is_read_with_one_get_and_a_mislabelled_one_is_not_downloaded(env: Env) -> None:
    counting = CountingReads(env.storage)

    async def storage_for(ref: str) -> Storage:
        return counting  # type: ignore[return-value]

    deps = Dependencies(js=env.js, storage_for=storage_for, sandbox=env.sandbox)
    photo = await env.upload((DATA / "exiftool_GPS.jpg").read_bytes(), "IMG_0001.JPG", "image/jpeg")
    await upload_verified(new_event(photo, source="test"), deps)
    assert counting.gets == 1  # the magic bytes are judged from the download's own first bytes

    counting.gets = counting.bytes_read = 0
    disguised = await env.upload(b"MZ\x90\x00\x03" + bytes(8 * 1024 * 1024), "setup.jpg", "image/jpeg")
    await upload_verified(new_event(disguised, source="test"), deps)
    failed = [e.data for e in await env.announced() if isinstance(e.data, AssetProcessingFailed)]
    assert [f.reason for f in failed] == ["type_mismatch"]
    assert counting.bytes_read < 2 * 1024 * 1024  # its head and at most one more piece, not 8 MiB


async def test_a_motion_photos_video_is_stored_as_mp4_beside_the_pictures_and_announced(
    env: Env, tmp_path: Path
) -> None:
    still, clip = tmp_path / "still.jpg", tmp_path / "clip.mp4"
    for args in (
        ["-f", "lavfi", "-i", "testsrc=size=640x480:rate=1", "-frames:v", "1", str(still)],
        ["-f", "lavfi", "-i", "testsrc=size=320x240:rate=30", "-t", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)],
    ):
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)
    video = clip.read_bytes()
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" GCamera:MicroVideo="1" '
        f'GCamera:MicroVideoOffset="{len(video)}"/></rdf:RDF></x:xmpmeta>'
    ).encode()
    app1 = b"http://ns.adobe.com/xap/1.0/\x00" + xmp
    jpeg = still.read_bytes()
    content = jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:] + video
    upload = await env.upload(content, "MVIMG_20240517_123205.jpg", "image/jpeg")
    created = next(e for e in await env.process(upload, announced=2) if isinstance(e.data, AssetCreated))
    asset = created.data
    assert (asset.width, asset.height) == (640, 480)  # the still is the asset
    motion, poster = asset.variants.motion, asset.variants.motion_poster
    assert motion is not None and poster is not None
    assert motion.key == keys.derived_key(env.workspace, upload.asset_id, "motion", "video.mp4")
    assert (motion.mime_type, motion.width, motion.height, motion.size_bytes) == ("video/mp4", 320, 240, len(video))
    assert await object_bytes(env.storage, motion.key) == video
    assert poster.key == keys.derived_key(env.workspace, upload.asset_id, "motion_poster", "image.webp")
    assert (await object_bytes(env.storage, poster.key))[8:12] == b"WEBP"
    assert asset.metadata.motion_photo is not None and asset.metadata.motion_photo.video_codec == "h264"
