"""Request and response bodies of the storage-profile API (bring your own bucket).

Requests decode strictly and refuse unknown fields, as the uploads API's do (uploads/api.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from rawdrive_contracts import Provider
from rawdrive_platform.storage import Encryption

StorageMode = Literal["managed_r2", "byos_s3"]
# S3's bucket naming rules (lower case, digits, dots, hyphens; 3..63).
BucketName = Annotated[str, msgspec.Meta(pattern="^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]


class StorageCredentials(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Accepted once on PUT, sealed at rest, never returned."""

    access_key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    secret_access_key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

    def __repr__(self) -> str:  # a request logged by accident must not carry the secret
        return "StorageCredentials(***)"


class PutStorageProfile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    mode: StorageMode
    bucket: BucketName | None = None
    endpoint: Annotated[str, msgspec.Meta(pattern="^https?://[^\\s/?#]+/?$")] | None = None
    region: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] = "auto"
    key_prefix: Annotated[str, msgspec.Meta(max_length=512)] = ""
    credentials: StorageCredentials | None = None
    encryption: Encryption = "none"
    kms_key_id: Annotated[str, msgspec.Meta(min_length=1, max_length=2048)] | None = None


class StorageProfileView(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The workspace's profile as GET shows it: a credentials ref and a masked key id only."""

    mode: StorageMode
    provider: Provider
    encryption: Encryption
    credentials_ref: str | None = None  # the storage_profile_ref new sessions carry
    bucket: str | None = None
    endpoint: str | None = None
    region: str | None = None
    key_prefix: str | None = None
    kms_key_id: str | None = None
    access_key_id_masked: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None
