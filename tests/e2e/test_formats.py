"""Every supported format, end to end, as a user and an outside consumer see it.

Each real sample of the media processor's test data is uploaded (tus by tuspy; the JPEG and the
MP4 also by S3 multipart with presigned part URLs and by tus-js-client under Node.js), committed,
announced by `asset.created` to a plain nats-py durable consumer that validates it against the
published JSON Schema, and shown by the catalogue as `available` with its metadata and three
variants that exist in storage. The four services run once for the module; every upload starts
at once and each test checks one.

RAW: no small real CR2/NEF/ARW with sensor data exists in the test data (`exiftool_Nikon.nef`
is ExifTool's 6 KB sample with the raw data stripped), so the NEF case proves the clean failure
the processor promises for it: `asset.processing_failed` with reason `decode_failed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

CREATED = "com.rawdrive.asset.created.v1"
FAILED = "com.rawdrive.asset.processing_failed.v1"


@dataclass(frozen=True)
class Case:
    sample: str
    file_name: str
    mime_type: str
    protocol: str
    kind: str
    size: tuple[int, int] | None = None  # display width x height
    duration_s: float | None = None
    pages: int | None = None


CASES = {
    "jpeg-tus": Case("exiftool_GPS.jpg", "GPS.jpg", "image/jpeg", "tus", "photo", (120, 80)),
    "jpeg-s3-multipart": Case("exiftool_GPS.jpg", "GPS.jpg", "image/jpeg", "s3_multipart", "photo", (120, 80)),
    "jpeg-tus-js": Case("exiftool_GPS.jpg", "GPS.jpg", "image/jpeg", "tus-js", "photo", (120, 80)),
    "png-tus": Case("png_rgba_alpha.png", "alpha.png", "image/png", "tus", "photo", (640, 480)),
    "webp-tus": Case("mei_Nikon_D1X.webp", "Nikon D1X.webp", "image/webp", "tus", "photo", (600, 391)),
    "heic-tus": Case("heic_generated.heic", "IMG_0001.HEIC", "image/heic", "tus", "photo", (1280, 960)),
    "mp4-tus": Case("mei_with-gps.mp4", "with-gps.mp4", "video/mp4", "tus", "video", (1920, 1080), 0.171),
    "mp4-s3-multipart": Case("mei_with-gps.mp4", "with-gps.mp4", "video/mp4", "s3_multipart", "video",
                             (1920, 1080), 0.171),
    "mp4-tus-js": Case("mei_with-gps.mp4", "with-gps.mp4", "video/mp4", "tus-js", "video", (1920, 1080), 0.171),
    "mov-tus": Case("video_rotated_90.mov", "rotated.mov", "video/quicktime", "tus", "video", (720, 1280), 2.0),
    "avi-tus": Case("video_mjpeg.avi", "clip.avi", "video/x-msvideo", "tus", "video", (640, 480), 2.0),
    "mkv-tus": Case("video_vp9.mkv", "clip.mkv", "video/x-matroska", "tus", "video", (640, 360), 2.0),
    "pdf-tus": Case("pdf_3pages_vector.pdf", "three pages.pdf", "application/pdf", "tus", "document", pages=3),
}
RAW_CASE = Case("exiftool_Nikon.nef", "DSC_0001.NEF", "application/octet-stream", "tus", "photo")


@pytest.fixture(scope="module")
async def world(module_service_env, tmp_path_factory, pipeline_opener, media_dir):
    async for pipeline, client in pipeline_opener(module_service_env, tmp_path_factory.mktemp("formats")):
        tmp = tmp_path_factory.mktemp("bodies")
        cases = {**CASES, "nef-tus": RAW_CASE}
        sessions = await asyncio.gather(*(
            client.upload((media_dir / case.sample).read_bytes(), case.file_name, case.mime_type, case.protocol, tmp=tmp)
            for case in cases.values()
        ))
        yield pipeline, client, media_dir, dict(zip(cases, sessions, strict=True))


@pytest.mark.parametrize("name", list(CASES))
async def test_each_format_becomes_an_available_asset_announced_to_outside_consumers(world, name):
    pipeline, client, media_dir, sessions = world
    case, session = CASES[name], sessions[name]
    asset_id = session["asset_id"]
    assert session["commit"] == (200, {"asset_id": asset_id, "status": "processing"})

    events = pipeline.events
    await events.wait(lambda: events.of(CREATED, asset_id) or events.of(FAILED, asset_id), timeout_s=90)
    assert not events.of(FAILED, asset_id), events.of(FAILED, asset_id)
    [created] = events.of(CREATED, asset_id)  # validated against the JSON Schema on receipt
    data = created["data"]
    assert (data["kind"], data["file_name"], data["upload_id"]) == (case.kind, case.file_name, session["upload_id"])
    assert data["size_bytes"] == (media_dir / case.sample).stat().st_size

    entry = await client.asset_when(asset_id, {"available", "failed"})
    assert entry["status"] == "available", entry
    assert entry["kind"] == case.kind and entry["metadata"]
    if case.size:
        assert (entry["width"], entry["height"]) == case.size
    if case.duration_s:
        assert entry["duration_s"] == pytest.approx(case.duration_s, abs=0.05)
    if case.pages:
        assert entry["metadata"]["page_count"] == case.pages
    assert set(entry["variants"]) == {"thumb", "medium", "large"}
    variant_keys = [data["variants"][name]["key"] for name in ("thumb", "medium", "large")]
    assert len(set(variant_keys)) == 3
    for key in variant_keys + [data["object_key"]]:
        assert key.startswith(pipeline.asset_prefix(asset_id))
        assert await asyncio.to_thread(pipeline.object_exists, key), key
    assert not events.invalid


async def test_a_raw_without_sensor_data_fails_cleanly_with_a_reason(world):
    pipeline, client, media_dir, sessions = world
    asset_id = sessions["nef-tus"]["asset_id"]
    events = pipeline.events
    await events.wait(lambda: events.of(CREATED, asset_id) or events.of(FAILED, asset_id), timeout_s=90)
    [failed] = events.of(FAILED, asset_id)
    assert failed["data"]["reason"] == "decode_failed" and failed["data"]["detail"]
    entry = await client.asset_when(asset_id, {"failed"})
    assert entry["failure"]["reason"] == "decode_failed"
