"""Hostile files end to end: each ends `failed` with a reason an outside consumer sees in
`asset.processing_failed`, or `available` with sane variants, and the pipeline keeps serving the
next upload (a normal JPEG sent after all of them becomes available)."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import pytest

CREATED = "com.rawdrive.asset.created.v1"
FAILED = "com.rawdrive.asset.processing_failed.v1"


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    # A few rows of real deflate data: a decoder that trusts the header would allocate 12.7 GB.
    rows = zlib.compress(b"\x00" + b"\x00" * 3 * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("video.mp4", b"\x00" * 4096)
        archive.writestr("readme.txt", "not a video")
    return buffer.getvalue()


def executable() -> bytes:
    return Path(shutil.which("true") or "/bin/true").read_bytes()


SVG = b"""<?xml version="1.0"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="100" height="100">
  <image xlink:href="file:///etc/passwd" width="100" height="100"/>
</svg>"""
MVG = b"""push graphic-context
viewbox 0 0 640 480
image over 0,0 0,0 'text:/etc/passwd'
pop graphic-context"""


def hostile_files(media_dir: Path) -> dict[str, tuple[bytes, str, str]]:
    jpeg = (media_dir / "mei_Samsung_SM-J327T1.jpg").read_bytes()
    return {
        "executable-named-jpg": (executable(), "holiday.jpg", "image/jpeg"),
        "zip-named-mp4": (zip_archive(), "clip.mp4", "video/mp4"),
        "svg-named-jpg": (SVG, "drawing.jpg", "image/jpeg"),
        "mvg-named-jpg": (MVG, "drawing2.jpg", "image/jpeg"),
        "png-declaring-65000x65000": (png(65000, 65000), "huge.png", "image/png"),
        "truncated-jpeg": (jpeg[: len(jpeg) // 3], "truncated.jpg", "image/jpeg"),
    }


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener, media_dir):
    async for pipeline, client in pipeline_opener(module_service_env, tmp_path_factory.mktemp("hostile")):
        files = hostile_files(media_dir)
        sessions = {}
        for name, (body, file_name, mime_type) in files.items():
            sessions[name] = await client.upload(body, file_name, mime_type)
        normal = await client.upload((media_dir / "exiftool_GPS.jpg").read_bytes(), "after.jpg", "image/jpeg")
        yield pipeline, client, sessions, normal


@pytest.mark.parametrize(
    "name",
    ["executable-named-jpg", "zip-named-mp4", "svg-named-jpg", "mvg-named-jpg", "png-declaring-65000x65000",
     "truncated-jpeg"],
)
async def test_a_hostile_file_fails_with_a_reason_or_is_available_and_safe(world, name):
    pipeline, client, sessions, _ = world
    session = sessions[name]
    asset_id = session["asset_id"]
    assert session["commit"][0] == 200, session["commit"]  # the bytes are what was declared in size and hash
    events = pipeline.events
    await events.wait(lambda: events.of(CREATED, asset_id) or events.of(FAILED, asset_id), timeout_s=120)
    entry = await client.asset_when(asset_id, {"available", "failed"})
    print(f"{name}: {entry['status']} {entry.get('failure', '')}")
    if events.of(FAILED, asset_id):
        [failed] = events.of(FAILED, asset_id)
        assert failed["data"]["reason"] and failed["data"]["detail"]
        assert entry["status"] == "failed" and entry["failure"]["reason"] == failed["data"]["reason"]
        assert not events.of(CREATED, asset_id)
    else:
        # Decoded after all (a truncated JPEG has a top part): bounded, real variants only.
        assert name == "truncated-jpeg", f"{name} was accepted: {entry}"
        assert entry["status"] == "available" and entry["width"] * entry["height"] <= 50_000_000
        [created] = events.of(CREATED, asset_id)
        for variant in created["data"]["variants"].values():
            assert variant["width"] <= 4096 and variant["height"] <= 4096
            assert await asyncio.to_thread(pipeline.object_exists, variant["key"])
    assert not events.invalid


async def test_the_pipeline_keeps_serving_the_upload_after_the_hostile_ones(world):
    pipeline, client, _, normal = world
    events = pipeline.events
    asset_id = normal["asset_id"]
    await events.wait(lambda: events.of(CREATED, asset_id) or events.of(FAILED, asset_id), timeout_s=120)
    entry = await client.asset_when(asset_id, {"available", "failed"})
    assert entry["status"] == "available" and (entry["width"], entry["height"]) == (120, 80)
    for service in (s for replicas in pipeline.services.values() for s in replicas):
        assert service.process.poll() is None, f"{service.module} died:\n{service.log_tail()}"
