"""Every event of the storage pipeline: the data carried inside the CloudEvents envelope.

Evolution rules (enforced by tests/test_evolution.py against the released schemas):
  1. Fields are only ever added, and every added field has a default.
  2. Consumers ignore fields they do not know (msgspec's default; never forbid unknown fields).
  3. Renaming, removing or retyping a field, or making one required (or a required one optional),
     is a breaking change: it ships as a new event type (`version` + 1) published beside the old one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import msgspec

# Always timezone-aware; serialized as RFC 3339.
Timestamp = Annotated[datetime, msgspec.Meta(tz=True, extra_json_schema={"format": "date-time"})]
# Cameras often record local time without an offset; such values stay naive rather than guessed.
CaptureTime = Annotated[
    datetime, msgspec.Meta(description="When the photo or video was taken; no offset when the camera recorded none")
]
Sha256Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
Kind = Literal["photo", "video", "document"]
Provider = Literal["r2", "byos"]
ResumableProtocol = Literal["tus", "s3_multipart"]
RejectionReason = Literal[
    "checksum_mismatch", "size_mismatch", "missing_object", "type_mismatch", "storage_error"
]
ProcessingFailureReason = Literal[
    "type_mismatch", "unsupported_content", "decode_failed", "timeout", "storage_error", "internal"
]
# Where taken_at's UTC offset came from (see MediaMetadata.taken_at_zone_source).
TakenAtZoneSource = Literal["exif_offset", "container", "container_utc", "gps_derived", "none"]


class EventSpec(msgspec.Struct, frozen=True):
    """Where an event lives: `rawdrive.<entity>.<action>.<workspace_id>`, type `com.rawdrive.<entity>.<action>.v<version>`."""

    entity: str
    action: str
    version: int = 1

    @property
    def type(self) -> str:
        return f"com.rawdrive.{self.entity}.{self.action}.v{self.version}"


class EventData(msgspec.Struct, kw_only=True):
    """Base of every event's data. Every event belongs to exactly one workspace."""

    spec: ClassVar[EventSpec]
    # The one service that publishes the event (the README's catalogue; on the bus, the NATS
    # identity rawdrive_platform.busauth lets publish it and no other).
    publisher: ClassVar[str]
    workspace_id: str

    def identity(self) -> tuple[str, ...]:
        """What makes two events 'the same decision'; the default event id derives from it."""
        raise NotImplementedError

    def ce_subject(self) -> str:
        """The CloudEvents `subject`: the resource the event is about."""
        raise NotImplementedError


class _UploadEvent(EventData, kw_only=True):
    upload_id: str
    asset_id: str

    def identity(self) -> tuple[str, ...]:
        return (self.upload_id,)

    def ce_subject(self) -> str:
        return f"uploads/{self.upload_id}"


class _UploadedFileEvent(_UploadEvent, kw_only=True):
    """An upload event that describes the file: where it is filed and what the client said it is.
    (Base-class fields encode first, so these stay where each event has always had them.)"""

    library_id: str
    folder_id: str | None = None
    file_name: str
    mime_type: str
    size_bytes: int


class _AssetEvent(EventData, kw_only=True):
    asset_id: str

    def identity(self) -> tuple[str, ...]:
        return (self.asset_id,)

    def ce_subject(self) -> str:
        return f"assets/{self.asset_id}"


# -- uploads ---------------------------------------------------------------------------------


class UploadSessionCreated(_UploadedFileEvent, kw_only=True):
    spec = EventSpec("upload", "session_created")
    publisher = "upload-gateway"
    sha256: Sha256Hex | None = None
    resumable_protocol: ResumableProtocol
    provider: Provider = "r2"
    storage_profile_ref: str
    object_key: str
    expires_at: Timestamp
    created_by: str


class PartRef(msgspec.Struct, kw_only=True):
    part_number: int
    etag: str


class CommitRequested(_UploadedFileEvent, kw_only=True):
    """The client says it has uploaded everything; the verifier decides."""

    spec = EventSpec("upload", "commit_requested")
    publisher = "upload-gateway"
    resumable_protocol: ResumableProtocol
    provider: Provider = "r2"
    storage_profile_ref: str
    object_key: str
    # The checksum the client declared, at session creation or commit; None when it gave none.
    expected_sha256: Sha256Hex | None = None
    # s3_multipart only: the multipart upload to complete, and the client's part list if given.
    multipart_upload_id: str | None = None
    parts: list[PartRef] | None = None
    requested_by: str
    # From the gateway's file type table, for the verifier's metrics; None from older gateways.
    kind: Kind | None = None
    # The client's n-th commit of this upload; each attempt is decided once.
    attempt: int = 1
    # Further commits the client may make if this one fails its checksum; 0 (also from older
    # gateways): a mismatch is final and the upload is rejected.
    attempts_left: int = 0

    def identity(self) -> tuple[str, ...]:
        # Attempt 1 keeps the id it always had; every later attempt is a request of its own.
        return (self.upload_id,) if self.attempt == 1 else (self.upload_id, f"attempt-{self.attempt}")


class UploadVerified(_UploadedFileEvent, kw_only=True):
    """The stored object is complete, the declared size and checksum hold: the asset is committed."""

    spec = EventSpec("upload", "verified")
    publisher = "commit-verifier"
    sha256: Sha256Hex
    provider: Provider = "r2"
    storage_profile_ref: str
    object_key: str
    duplicate_of: str | None = None
    verified_at: Timestamp


class UploadRejected(_UploadEvent, kw_only=True):
    spec = EventSpec("upload", "rejected")
    publisher = "commit-verifier"
    reason: RejectionReason
    detail: str = ""
    storage_profile_ref: str
    object_key: str
    multipart_upload_id: str | None = None
    expected_size_bytes: int | None = None
    actual_size_bytes: int | None = None
    expected_sha256: Sha256Hex | None = None
    actual_sha256: Sha256Hex | None = None


class CommitRefused(_UploadEvent, kw_only=True):
    """One commit attempt failed its checksum, but the stored bytes are kept: the client may commit
    again (`attempts_left` more times) or abort. Unlike `upload.rejected`, nothing is deleted."""

    spec = EventSpec("upload", "commit_refused")
    publisher = "commit-verifier"
    attempt: int
    attempts_left: int
    reason: RejectionReason
    detail: str = ""
    storage_profile_ref: str
    object_key: str
    expected_size_bytes: int | None = None
    actual_size_bytes: int | None = None
    expected_sha256: Sha256Hex | None = None
    actual_sha256: Sha256Hex | None = None

    def identity(self) -> tuple[str, ...]:
        return (self.upload_id, f"attempt-{self.attempt}")


class UploadAborted(_UploadEvent, kw_only=True):
    spec = EventSpec("upload", "aborted")
    publisher = "upload-gateway"
    storage_profile_ref: str
    object_key: str
    multipart_upload_id: str | None = None
    aborted_by: str


class UploadExpired(_UploadEvent, kw_only=True):
    spec = EventSpec("upload", "expired")
    publisher = "janitor"
    storage_profile_ref: str
    object_key: str
    multipart_upload_id: str | None = None
    expired_at: Timestamp


# -- assets ----------------------------------------------------------------------------------


class GpsPosition(msgspec.Struct, kw_only=True):
    latitude: float
    longitude: float
    altitude_m: float | None = None


class MotionPhoto(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A still photo carrying a short video (Google / Samsung motion photo): `variants.motion`."""

    # Where in the video the still was taken (XMP MotionPhotoPresentationTimestampUs).
    presentation_timestamp_us: int | None = None
    duration_s: float | None = None
    video_codec: str | None = None


class DecodeWarning(msgspec.Struct, frozen=True, kw_only=True):
    """Damage a decoder met and worked around: the asset is usable, but not what was shot."""

    # An open set, so a new code is not a breaking change; consumers treat unknown codes alike.
    # truncated: the data ends before the picture does (the rest is filled in grey);
    # corrupt_data: damaged data the decoder skipped or concealed.
    code: str
    detail: str = ""  # the decoder's own words


class MediaMetadata(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One normalized metadata record for every kind; absent values are simply missing."""

    camera_make: str | None = None
    camera_model: str | None = None
    lens_model: str | None = None
    # The firmware or OS that wrote the file (EXIF Software, QuickTime software, Android version).
    software: str | None = None
    taken_at: CaptureTime | None = None
    taken_at_zone_source: Annotated[
        TakenAtZoneSource,
        msgspec.Meta(
            description="Where taken_at's offset came from: exif_offset (OffsetTimeOriginal), container "
            "(the video's local creation date with its offset), container_utc (only the UTC moment is "
            "recorded: taken_at is in UTC, the local offset is unknown), gps_derived (local clock "
            "compared with the GPS UTC time stamp), none (no offset: taken_at is the camera's clock)"
        ),
    ] | None = None
    gps: GpsPosition | None = None
    orientation: int | None = None
    # Videos: the clockwise turn a player applies (display matrix), 0, 90, 180 or 270.
    rotation_deg: int | None = None
    width: int | None = None
    height: int | None = None
    exposure_time_s: float | None = None
    f_number: float | None = None
    iso: int | None = None
    focal_length_mm: float | None = None
    # Present only on damaged files that still gave a picture (see DecodeWarning).
    warnings: tuple[DecodeWarning, ...] = ()
    duration_s: float | None = None
    frame_rate: float | None = None
    video_codec: str | None = None
    audio_codec: str | None = None
    bit_rate_bps: int | None = None
    page_count: int | None = None
    # Apple Live Photo: the HEIC/JPEG and its MOV carry the same identifier (MakerNote tag 17,
    # QuickTime com.apple.quicktime.content.identifier); link the two assets by it.
    content_identifier: str | None = None
    motion_photo: MotionPhoto | None = None


class Variant(msgspec.Struct, kw_only=True):
    key: str
    width: int
    height: int
    mime_type: str = "image/webp"
    size_bytes: int


class Variants(msgspec.Struct, kw_only=True, omit_defaults=True):
    thumb: Variant | None = None
    medium: Variant | None = None
    large: Variant | None = None
    # A motion photo's embedded video as it was stored (video/mp4), and a WebP poster of it.
    motion: Variant | None = None
    motion_poster: Variant | None = None


class AssetCreated(_AssetEvent, kw_only=True):
    """The external contract: a verified, processed asset other systems may now use."""

    spec = EventSpec("asset", "created")
    publisher = "media-processor"
    upload_id: str
    library_id: str
    folder_id: str | None = None
    file_name: str
    mime_type: str
    size_bytes: int
    sha256: Sha256Hex
    kind: Kind
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    taken_at: CaptureTime | None = None
    metadata: MediaMetadata = msgspec.field(default_factory=MediaMetadata)
    object_key: str
    variants: Variants = msgspec.field(default_factory=Variants)
    provider: Provider = "r2"
    storage_profile_ref: str
    duplicate_of: str | None = None


class AssetAnalysisRequested(_AssetEvent, kw_only=True):
    """Hands a processed asset to the AI analysis system."""

    spec = EventSpec("asset", "analysis_requested")
    publisher = "media-processor"
    kind: Kind
    mime_type: str
    object_key: str
    variants: Variants = msgspec.field(default_factory=Variants)
    storage_profile_ref: str


class AssetProcessingFailed(_AssetEvent, kw_only=True):
    spec = EventSpec("asset", "processing_failed")
    publisher = "media-processor"
    upload_id: str
    reason: ProcessingFailureReason
    detail: str = ""
    object_key: str
    storage_profile_ref: str
    # A finer cause within `reason`, an open set (a new one is not a breaking change, unlike a
    # new `reason`): too_many_pixels (reason unsupported_content: declared dimensions above the
    # processor's limits, refused before decoding), corrupt_content (reason decode_failed: the
    # data is damaged beyond what the decoder can work around).
    cause: str | None = None


class AssetDeleted(_AssetEvent, kw_only=True):
    """Soft delete: the asset disappears from listings and is purged after `purge_after`."""

    spec = EventSpec("asset", "deleted")
    publisher = "upload-gateway"
    deleted_by: str
    deleted_at: Timestamp
    purge_after: Timestamp
    # Which bucket the purge empties; events released before this field meant the managed one.
    storage_profile_ref: str = "managed"

    def identity(self) -> tuple[str, ...]:
        # An asset may be deleted, restored and deleted again: each deletion is its own event.
        return (self.asset_id, self.deleted_at.isoformat())


class AssetRestored(_AssetEvent, kw_only=True):
    spec = EventSpec("asset", "restored")
    publisher = "upload-gateway"
    restored_by: str
    restored_at: Timestamp

    def identity(self) -> tuple[str, ...]:
        return (self.asset_id, self.restored_at.isoformat())


class AssetPurged(_AssetEvent, kw_only=True):
    spec = EventSpec("asset", "purged")
    publisher = "janitor"
    purged_at: Timestamp
    deleted_object_count: int = 0
    deleted_bytes: int = 0


EVENT_TYPES: dict[type[EventData], EventSpec] = {
    cls: cls.spec
    for cls in (
        UploadSessionCreated,
        CommitRequested,
        UploadVerified,
        UploadRejected,
        CommitRefused,
        UploadAborted,
        UploadExpired,
        AssetCreated,
        AssetAnalysisRequested,
        AssetProcessingFailed,
        AssetDeleted,
        AssetRestored,
        AssetPurged,
    )
}
