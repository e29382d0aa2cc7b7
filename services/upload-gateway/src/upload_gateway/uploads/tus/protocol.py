"""tus 1.0 protocol rules as pure functions: header parsing, validation and the error table.

No I/O here: the routes hand in header values, these functions return small Structs or raise
a TusError whose status the routes send back unchanged (tus clients act on status codes).
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import ClassVar, Literal

import msgspec

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = (
    "creation", "creation-with-upload", "creation-defer-length", "termination", "checksum", "expiration", "concatenation",
)
CHECKSUM_ALGORITHMS = ("sha1", "sha256")
PATCH_CONTENT_TYPE = "application/offset+octet-stream"
_OVERRIDABLE = frozenset({"POST", "HEAD", "PATCH", "DELETE"})
_DECIMAL = re.compile(r"[0-9]{1,19}")
_MAX_INT64 = 2**63 - 1


# --- errors: the whole status table -----------------------------------------------------------


class TusError(Exception):
    status: ClassVar[int]


class BadRequest(TusError):
    status = 400


class Forbidden(TusError):
    status = 403  # a PATCH to a final upload of a concatenation


class UploadNotFound(TusError):
    status = 404


class OffsetMismatch(TusError):
    status = 409


class UploadExpired(TusError):
    status = 410


class UnsupportedVersion(TusError):
    status = 412


class PastLength(TusError):
    status = 413


class UnsupportedMediaType(TusError):
    status = 415


class UploadLocked(TusError):
    status = 423  # what tusd answers while another request holds the upload


class ChecksumMismatch(TusError):
    status = 460


# --- parsed requests --------------------------------------------------------------------------


class Checksum(msgspec.Struct, frozen=True):
    algorithm: Literal["sha1", "sha256"]
    digest: bytes

    def matches(self, body: bytes | bytearray) -> bool:
        return hashlib.new(self.algorithm, body).digest() == self.digest


class Creation(msgspec.Struct, frozen=True):
    length: int | None  # None: deferred (Upload-Defer-Length), brought by a later PATCH
    metadata: dict[str, str | None]
    raw_metadata: str | None  # echoed verbatim on HEAD, as the spec asks
    concat: str | None = None  # Upload-Concat of a partial or final upload, echoed on HEAD


class Patch(msgspec.Struct, frozen=True):
    offset: int
    content_length: int | None  # None for a chunked body
    checksum: Checksum | None
    length: int | None = None  # Upload-Length on a PATCH: how an upload created deferred learns it


# --- parsing ----------------------------------------------------------------------------------


def check_version(headers: Mapping[str, str]) -> None:
    value = headers.get("Tus-Resumable")
    if value != TUS_VERSION:
        raise UnsupportedVersion(f"Tus-Resumable must be {TUS_VERSION}, got {value!r}")


def effective_method(method: str, override: str | None) -> str:
    """X-HTTP-Method-Override lets clients behind restrictive proxies tunnel through POST."""
    if override is None:
        return method
    wanted = override.strip().upper()
    if method != "POST" or wanted not in _OVERRIDABLE:
        raise BadRequest(f"X-HTTP-Method-Override {override!r} is not allowed on {method}")
    return wanted


def parse_non_negative(name: str, value: str | None) -> int:
    if value is None:
        raise BadRequest(f"{name} is required")
    if not _DECIMAL.fullmatch(value) or int(value) > _MAX_INT64:
        raise BadRequest(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def parse_metadata(header: str | None) -> dict[str, str | None]:
    """`key b64,key2 b64,key3`: unique keys without spaces or commas; values base64 of UTF-8."""
    if header is None or header.strip() == "":
        return {}
    result: dict[str, str | None] = {}
    for element in header.split(","):
        key, space, value = element.lstrip().partition(" ")
        if key == "" or " " in value.strip():
            raise BadRequest(f"Upload-Metadata element {element!r} is not 'key base64value'")
        if not key.isascii() or not key.isprintable():
            raise BadRequest(f"Upload-Metadata key {key!r} must be printable ASCII")
        if key in result:
            raise BadRequest(f"Upload-Metadata key {key!r} appears twice")
        # "key" has no value; "key " (what tus-js-client sends for "") has an empty one.
        result[key] = _decode_metadata_value(key, value.strip()) if space else None
    return result


def _decode_metadata_value(key: str, value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError) as error:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"Upload-Metadata value of {key!r} is not base64 of UTF-8") from error


def parse_checksum(header: str | None) -> Checksum | None:
    if header is None:
        return None
    algorithm, space, encoded = header.strip().partition(" ")
    if not space:
        raise BadRequest("Upload-Checksum must be '<algorithm> <base64 digest>'")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise BadRequest(f"checksum algorithm {algorithm!r} is not one of {CHECKSUM_ALGORITHMS}")
    try:
        digest = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error as error:
        raise BadRequest("Upload-Checksum digest is not base64") from error
    if len(digest) != hashlib.new(algorithm).digest_size:
        # No body can match a digest of the wrong length: a mismatch, as the compliance suite expects.
        raise ChecksumMismatch(f"Upload-Checksum digest has the wrong length for {algorithm}")
    return Checksum(algorithm, digest)  # type: ignore[arg-type]  # checked against the tuple


def parse_creation(headers: Mapping[str, str], *, concat: str | None = None, deferrable: bool = False) -> Creation:
    """`deferrable`: whether `Upload-Defer-Length: 1` may stand for `Upload-Length` (the creation
    endpoint's whole files; an upload session's URL has its session's length)."""
    check_version(headers)
    length = None if parse_defer_length(headers, allowed=deferrable) else parse_non_negative(
        "Upload-Length", headers.get("Upload-Length")
    )
    raw = headers.get("Upload-Metadata")
    return Creation(length=length, metadata=parse_metadata(raw), raw_metadata=raw or None, concat=concat)


def parse_defer_length(headers: Mapping[str, str], *, allowed: bool) -> bool:
    """Whether the creation defers its length: `Upload-Defer-Length: 1` (no other value), never
    beside `Upload-Length`."""
    value = headers.get("Upload-Defer-Length")
    if value is None:
        return False
    if not allowed:
        raise BadRequest("Upload-Defer-Length is not accepted here: this upload's session fixes the length")
    if value.strip() != "1":
        raise BadRequest(f"Upload-Defer-Length must be 1, got {value!r}")
    if "Upload-Length" in headers:
        raise BadRequest("send Upload-Length or Upload-Defer-Length: 1, not both")
    return True


def settle_length(recorded: int | None, declared: int | None, known: int | None, offset: int) -> int | None:
    """The upload's length after a PATCH: `recorded` by the store (None: deferred so far),
    `declared` by this PATCH's Upload-Length (None: not sent), `known` to the session layer
    (None: no session yet). Once known it never changes: any two that differ are refused (400),
    as is a length short of the bytes already received."""
    stated = {value for value in (recorded, declared, known) if value is not None}
    if len(stated) > 1:
        first = recorded if recorded is not None else known
        raise BadRequest(f"Upload-Length is {first} already; it cannot change to {declared}")
    length = next(iter(stated), None)
    if length is not None and length < offset:
        raise BadRequest(f"Upload-Length {length} is less than the {offset} bytes already received")
    return length


def session_creation(length: int | None) -> Creation:
    """The creation a first PATCH implies when no POST came: the session's length (None: still
    deferred), no metadata."""
    return Creation(length=length, metadata={}, raw_metadata=None)


def parse_patch(headers: Mapping[str, str], *, creation: bool = False) -> Patch:
    """A PATCH, or the body of a creation-with-upload POST (offset 0, no Upload-Offset)."""
    check_version(headers)
    content_type = headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != PATCH_CONTENT_TYPE:
        raise UnsupportedMediaType(f"Content-Type must be {PATCH_CONTENT_TYPE}")
    offset = 0 if creation else parse_non_negative("Upload-Offset", headers.get("Upload-Offset"))
    raw_length = headers.get("Content-Length")
    content_length = None if raw_length is None else parse_non_negative("Content-Length", raw_length)
    length = None
    if not creation and "Upload-Length" in headers:
        length = parse_non_negative("Upload-Length", headers.get("Upload-Length"))
    return Patch(offset, content_length, parse_checksum(headers.get("Upload-Checksum")), length)


# --- checks -----------------------------------------------------------------------------------


def check_offset(requested: int, current: int) -> None:
    if requested != current:
        raise OffsetMismatch(f"Upload-Offset is {requested} but the upload is at {current}")


def check_fits(offset: int, content_length: int | None, length: int) -> None:
    if content_length is not None and offset + content_length > length:
        raise PastLength(f"{offset} + {content_length} bytes passes Upload-Length {length}")


def check_not_expired(expires_at: datetime, now: datetime) -> None:
    if now >= expires_at:
        raise UploadExpired("the upload expired")


# --- response headers -------------------------------------------------------------------------


def http_date(moment: datetime) -> str:
    """RFC 7231 IMF-fixdate, the Upload-Expires format."""
    return format_datetime(moment.astimezone(timezone.utc), usegmt=True)


def options_headers(max_size: int) -> dict[str, str]:
    return {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": ",".join(TUS_EXTENSIONS),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUM_ALGORITHMS),
        "Tus-Max-Size": str(max_size),
    }


def error_headers(error: TusError) -> dict[str, str]:
    headers = {"Tus-Resumable": TUS_VERSION, "Cache-Control": "no-store"}
    if isinstance(error, UnsupportedVersion):
        headers["Tus-Version"] = TUS_VERSION
    return headers


def upload_headers(offset: int, length: int | None, expires_at: datetime) -> dict[str, str]:
    """`length` None: not known yet (creation-defer-length), said by `Upload-Defer-Length: 1`."""
    return {
        "Tus-Resumable": TUS_VERSION,
        "Upload-Offset": str(offset),
        **({"Upload-Defer-Length": "1"} if length is None else {"Upload-Length": str(length)}),
        "Upload-Expires": http_date(expires_at),
        "Cache-Control": "no-store",
    }
