"""One realistic instance of every event type, as the pipeline would publish it."""

from datetime import UTC, datetime, timedelta

import pytest

from rawdrive_contracts import EVENT_TYPES, EventData, events

NOW = datetime(2025, 3, 14, 9, 26, 53, 589000, tzinfo=UTC)
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
IDS = dict(workspace_id="ws_7f3a", upload_id="up_01JQ8Z", asset_id="as_01JQ8Z")
OBJECT = dict(storage_profile_ref="sp_r2_default", object_key="ws_7f3a/as_01JQ8Z/original")
FILE = dict(library_id="lib_main", folder_id="fo_2025", file_name="DSC01234.ARW", mime_type="image/x-sony-arw")
VARIANTS = events.Variants(
    thumb=events.Variant(key="ws_7f3a/as_01JQ8Z/thumb.webp", width=320, height=213, size_bytes=14_212),
    medium=events.Variant(key="ws_7f3a/as_01JQ8Z/medium.webp", width=1280, height=853, size_bytes=181_774),
    large=events.Variant(key="ws_7f3a/as_01JQ8Z/large.webp", width=2560, height=1707, size_bytes=622_090),
)

EXAMPLES: dict[type[EventData], EventData] = {
    type(example): example
    for example in (
        events.UploadSessionCreated(
            **IDS, **FILE, **OBJECT, size_bytes=48_213_504, sha256=SHA, resumable_protocol="tus",
            expires_at=NOW + timedelta(days=1), created_by="usr_ana",
        ),
        events.CommitRequested(
            **IDS, **FILE, **OBJECT, size_bytes=48_213_504, resumable_protocol="s3_multipart",
            expected_sha256=SHA, multipart_upload_id="mpu_2~abc",
            parts=[events.PartRef(part_number=1, etag='"a1"'), events.PartRef(part_number=2, etag='"b2"')],
            requested_by="usr_ana",
        ),
        events.UploadVerified(
            **IDS, **FILE, **OBJECT, size_bytes=48_213_504, sha256=SHA, verified_at=NOW,
        ),
        events.UploadRejected(
            **IDS, **OBJECT, reason="checksum_mismatch", detail="stored object hashes differently",
            expected_size_bytes=48_213_504, actual_size_bytes=48_213_504,
            expected_sha256=SHA, actual_sha256="0" * 64,
        ),
        events.CommitRefused(
            **IDS, **OBJECT, attempt=1, attempts_left=2, reason="checksum_mismatch",
            detail="the stored bytes' SHA-256 differs from the client's",
            expected_size_bytes=48_213_504, actual_size_bytes=48_213_504, expected_sha256=SHA, actual_sha256="0" * 64,
        ),
        events.UploadAborted(**IDS, **OBJECT, multipart_upload_id="mpu_2~abc", aborted_by="usr_ana"),
        events.UploadExpired(**IDS, **OBJECT, expired_at=NOW),
        events.AssetCreated(
            **IDS, **FILE, **OBJECT, size_bytes=48_213_504, sha256=SHA, kind="photo",
            width=6000, height=4000, taken_at=datetime(2025, 3, 1, 17, 4, 11),  # camera local time
            metadata=events.MediaMetadata(
                camera_make="SONY", camera_model="ILCE-7M4", lens_model="FE 35mm F1.8",
                taken_at=datetime(2025, 3, 1, 17, 4, 11), gps=events.GpsPosition(latitude=38.7223, longitude=-9.1393),
                orientation=1, width=6000, height=4000, exposure_time_s=1 / 250, f_number=2.8, iso=200,
                focal_length_mm=35.0,
            ),
            variants=VARIANTS,
        ),
        events.AssetAnalysisRequested(
            workspace_id="ws_7f3a", asset_id="as_01JQ8Z", kind="photo", mime_type="image/x-sony-arw",
            variants=VARIANTS, **OBJECT,
        ),
        events.AssetProcessingFailed(
            **IDS, **OBJECT, reason="decode_failed", detail="dcraw: unsupported file format",
        ),
        events.AssetDeleted(
            workspace_id="ws_7f3a", asset_id="as_01JQ8Z", deleted_by="usr_ana", deleted_at=NOW,
            purge_after=NOW + timedelta(days=30),
        ),
        events.AssetRestored(workspace_id="ws_7f3a", asset_id="as_01JQ8Z", restored_by="usr_ana", restored_at=NOW),
        events.AssetPurged(
            workspace_id="ws_7f3a", asset_id="as_01JQ8Z", purged_at=NOW,
            deleted_object_count=4, deleted_bytes=48_431_580,
        ),
    )
}
assert EXAMPLES.keys() == EVENT_TYPES.keys(), "add an example for every event type"


@pytest.fixture(params=list(EVENT_TYPES), ids=lambda cls: cls.spec.type)
def example(request) -> EventData:
    """Each event type in turn, one realistic instance."""
    return EXAMPLES[request.param]
