"""What may be uploaded: the one table of extensions, their mime types, kinds and size limits.

A file is accepted when its extension is in the table, its mime type is one the table allows for
that extension, and its size is within the kind's limit. Browsers know no mime type for camera
RAW files and send `application/octet-stream` (or nothing, which clients turn into that), so
the RAW extensions also accept it; every other extension needs its own type.
"""

from __future__ import annotations

import msgspec

from rawdrive_contracts import Kind
from upload_gateway.problems import FileTooLarge, UnsupportedType

MIB = 1024 * 1024

SIZE_LIMITS: dict[Kind, int] = {"photo": 100 * MIB, "video": 500 * MIB, "document": 50 * MIB}


class FileType(msgspec.Struct, frozen=True):
    kind: Kind
    mime_types: frozenset[str]


def _photo(*mime_types: str) -> FileType:
    return FileType("photo", frozenset(mime_types))


def _video(*mime_types: str) -> FileType:
    return FileType("video", frozenset(mime_types))


_RAW = ("image/x-raw", "application/octet-stream")

FILE_TYPES: dict[str, FileType] = {
    "jpg": _photo("image/jpeg", "image/pjpeg"),
    "jpeg": _photo("image/jpeg", "image/pjpeg"),
    "png": _photo("image/png"),
    "webp": _photo("image/webp"),
    "heic": _photo("image/heic", "image/heif", "image/heic-sequence"),
    "heif": _photo("image/heif", "image/heic", "image/heif-sequence"),
    "raw": _photo(*_RAW),
    "cr2": _photo("image/x-canon-cr2", *_RAW),
    "cr3": _photo("image/x-canon-cr3", *_RAW),
    "dng": _photo("image/x-adobe-dng", "image/dng", *_RAW),
    "nef": _photo("image/x-nikon-nef", *_RAW),
    "arw": _photo("image/x-sony-arw", *_RAW),
    "mp4": _video("video/mp4"),
    "mov": _video("video/quicktime"),
    "avi": _video("video/x-msvideo", "video/avi", "video/msvideo"),
    "mkv": _video("video/x-matroska", "video/matroska"),
    "pdf": FileType("document", frozenset({"application/pdf"})),
}


def extension_of(file_name: str) -> str:
    """The lower-cased text after the last dot; '' when there is none (or only a leading one)."""
    stem, dot, extension = file_name.strip().rpartition(".")
    return extension.lower() if dot and stem else ""


def essence(mime_type: str) -> str:
    """`Image/JPEG; charset=x` -> `image/jpeg`: parameters and case do not change the type."""
    return mime_type.split(";", 1)[0].strip().lower()


def check_file(file_name: str, mime_type: str, size_bytes: int) -> Kind:
    """The file's kind, or UnsupportedType / FileTooLarge saying exactly what is wrong."""
    extension = extension_of(file_name)
    file_type = FILE_TYPES.get(extension)
    if file_type is None:
        allowed = ", ".join(sorted(FILE_TYPES))
        shown = f".{extension} files are" if extension else "files without an extension are"
        raise UnsupportedType(f"{shown} not accepted; allowed: {allowed}")
    if essence(mime_type) not in file_type.mime_types:
        allowed = ", ".join(sorted(file_type.mime_types))
        raise UnsupportedType(
            f"mime type {mime_type!r} does not match a .{extension} file; expected {allowed}"
        )
    limit = SIZE_LIMITS[file_type.kind]
    if size_bytes > limit:
        raise FileTooLarge(
            f"a {file_type.kind} may be at most {limit // MIB} MiB; this file is {size_bytes} bytes"
        )
    return file_type.kind
