"""Request and response bodies of the assets API (the catalogue)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

from rawdrive_contracts import Kind, MediaMetadata, ProcessingFailureReason, Provider
from rawdrive_contracts.events import CaptureTime
from upload_gateway.catalogue.core import Status
from upload_gateway.http.requests import Id

MAX_PAGE = 100


class AssetQuery(msgspec.Struct, frozen=True, kw_only=True):
    """The listing's query parameters."""

    cursor: Annotated[str, msgspec.Meta(max_length=512, description="next_cursor of the previous page")] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=MAX_PAGE)] = 50
    library_id: Id | None = None
    folder_id: Id | None = None
    status: Annotated[Status, msgspec.Meta(description="default: every status but deleted")] | None = None


class VariantLink(msgspec.Struct, frozen=True, kw_only=True):
    url: str  # presigned GET, valid until the asset's urls_expire_at
    width: int
    height: int
    mime_type: str
    size_bytes: int


class VariantLinks(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    thumb: VariantLink | None = None
    medium: VariantLink | None = None
    large: VariantLink | None = None
    motion: VariantLink | None = None  # a motion photo's video (video/mp4)
    motion_poster: VariantLink | None = None


class ProcessingFailure(msgspec.Struct, frozen=True, omit_defaults=True):
    reason: ProcessingFailureReason
    detail: str
    # A finer cause within `reason`: too_many_pixels, corrupt_content (an open set).
    cause: str | None = None


class Asset(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    asset_id: str
    status: Status
    file_name: str
    mime_type: str
    size_bytes: int
    sha256: str
    library_id: str
    provider: Provider
    created_at: datetime
    folder_id: str | None = None
    # Known once processed (status available):
    kind: Kind | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    taken_at: CaptureTime | None = None
    metadata: MediaMetadata | None = None
    variants: VariantLinks | None = None
    urls_expire_at: datetime | None = None
    failure: ProcessingFailure | None = None  # status failed
    paired_with: Annotated[
        str, msgspec.Meta(description="the other half of an Apple Live Photo (same metadata.content_identifier)")
    ] | None = None
    duplicate_of: Annotated[
        str, msgspec.Meta(description="the earliest earlier available asset with the same bytes (sha256)")
    ] | None = None
    deleted_at: datetime | None = None  # status deleted: restorable until purge_after
    purge_after: datetime | None = None


class AssetPage(msgspec.Struct, frozen=True):
    items: list[Asset]
    next_cursor: str | None  # None on the last page
