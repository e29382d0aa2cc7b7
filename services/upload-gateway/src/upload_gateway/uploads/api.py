"""Request and response bodies of the uploads API.

Requests decode strictly (no string-for-number coercion) and refuse unknown fields
(`forbid_unknown_fields`, `additionalProperties: false` in the OpenAPI document): a misspelt
optional field such as `sha_256` would otherwise be dropped in silence, and with it the check it
asked for. Responses may gain fields; clients ignore what they do not know.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from rawdrive_contracts import Provider, RejectionReason, ResumableProtocol
from upload_gateway.http.requests import Id
from upload_gateway.uploads.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from upload_gateway.uploads.sessions import State

Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-fA-F]{64}$")]
PartNumber = Annotated[int, msgspec.Meta(ge=1, le=MAX_PARTS)]


class CreateUpload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    file_name: Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
    mime_type: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    size_bytes: Annotated[int, msgspec.Meta(ge=1)]
    library_id: Id
    resumable_protocol: ResumableProtocol
    sha256: Sha256 | None = None
    folder_id: Id | None = None
    # skip: when an available asset of the workspace already has these bytes (`sha256`), answer
    # with it (DuplicateFound) instead of opening a session. upload: always open one.
    on_duplicate: Literal["upload", "skip"] = "upload"
    # s3_multipart only: the client's part size (a browser uploader cuts its parts before it opens
    # the session: Uppy's getChunkSize). Every part but the last has it; default: the gateway's plan.
    part_size: Annotated[int, msgspec.Meta(ge=MIN_PART_SIZE, le=MAX_PART_SIZE)] | None = None


class DuplicateFound(msgspec.Struct, frozen=True):
    """on_duplicate=skip and an available asset has the declared sha256: nothing to send."""

    duplicate_of: str  # that asset's id


class UploadCreated(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upload_id: str
    asset_id: str
    provider: Provider
    upload_url: str
    headers: dict[str, str]  # send these with every request to upload_url
    expires_at: datetime
    part_size: int | None = None  # s3_multipart only
    part_count: int | None = None


class Rejection(msgspec.Struct, frozen=True):
    reason: RejectionReason
    detail: str


class UploadStatus(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    upload_id: str
    asset_id: str
    state: State
    file_name: str
    mime_type: str
    size_bytes: int
    bytes_received: int
    resumable_protocol: ResumableProtocol
    provider: Provider
    created_at: datetime
    expires_at: datetime
    sha256: str | None = None
    part_size: int | None = None
    part_count: int | None = None
    rejection: Rejection | None = None


class PartsRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    part_numbers: Annotated[list[PartNumber], msgspec.Meta(min_length=1, max_length=1000)]


class PresignedPart(msgspec.Struct, frozen=True):
    part_number: int
    method: Literal["PUT"]
    url: str
    headers: dict[str, str]  # part of the signature: the PUT must carry exactly these
    size: int  # the body's length, signed too: storage refuses any other (HTTP clients send it)


class PresignedParts(msgspec.Struct, frozen=True):
    parts: list[PresignedPart]
    expires_at: datetime


class UploadedPart(msgspec.Struct, frozen=True):
    part_number: int
    etag: str
    size: int | None


class PartList(msgspec.Struct, frozen=True):
    part_size: int
    part_count: int
    parts: list[UploadedPart]


class PartEtag(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    part_number: PartNumber
    etag: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class CommitRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sha256: Sha256 | None = None
    # Accepted for clients that send it; the verifier checks the stored object itself.
    etag: str | None = None
    parts: Annotated[list[PartEtag], msgspec.Meta(max_length=MAX_PARTS)] | None = None


class CommitResult(msgspec.Struct, frozen=True):
    asset_id: str
    status: Literal["processing", "verifying"]
