"""What may be uploaded and what it may be: the one table of formats every service reads.

Each accepted extension has its kind, the mime types that may declare it, and the content
families (what the first bytes say) a file of that name may really be. The gateway refuses a name
or type outside the table and a size above the kind's limit; the media processor decodes only a
file whose bytes are a family its declaration allows. Browsers know no mime type for camera RAW
files and send `application/octet-stream` (or nothing, which clients turn into that), so the RAW
extensions also accept the generic types, and for those the extension says which family is meant.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from rawdrive_contracts.events import Kind

# What a file's first bytes say it is. `isobmff` is MP4 and QuickTime; `heif` also HEIC.
Family = Literal["jpeg", "png", "webp", "heif", "cr2", "cr3", "nef", "arw", "dng", "isobmff", "avi", "mkv", "pdf"]

MIB = 1024 * 1024

SIZE_LIMITS: dict[Kind, int] = {"photo": 100 * MIB, "video": 500 * MIB, "document": 50 * MIB}


class FileType(msgspec.Struct, frozen=True):
    kind: Kind
    mime_types: frozenset[str]
    # The content families a file with this extension may be.
    families: tuple[Family, ...]

    @property
    def max_bytes(self) -> int:
        return SIZE_LIMITS[self.kind]


# Declare no particular format: a RAW file's extension says which camera family is meant.
GENERIC_RAW_TYPES = frozenset({"application/octet-stream", "image/x-raw"})
RAW_FAMILIES: tuple[Family, ...] = ("cr2", "cr3", "nef", "arw", "dng")


def _photo(family: Family, *mime_types: str) -> FileType:
    return FileType("photo", frozenset(mime_types), (family,))


def _raw(family: Family, *mime_types: str) -> FileType:
    return FileType("photo", frozenset(mime_types) | GENERIC_RAW_TYPES, (family,))


def _video(family: Family, *mime_types: str) -> FileType:
    return FileType("video", frozenset(mime_types), (family,))


FILE_TYPES: dict[str, FileType] = {
    "jpg": _photo("jpeg", "image/jpeg", "image/pjpeg"),
    "jpeg": _photo("jpeg", "image/jpeg", "image/pjpeg"),
    "png": _photo("png", "image/png"),
    "webp": _photo("webp", "image/webp"),
    "heic": _photo("heif", "image/heic", "image/heif", "image/heic-sequence"),
    "heif": _photo("heif", "image/heif", "image/heic", "image/heif-sequence"),
    "raw": FileType("photo", GENERIC_RAW_TYPES, RAW_FAMILIES),
    "cr2": _raw("cr2", "image/x-canon-cr2"),
    "cr3": _raw("cr3", "image/x-canon-cr3"),
    "dng": _raw("dng", "image/x-adobe-dng", "image/dng"),
    "nef": _raw("nef", "image/x-nikon-nef"),
    "arw": _raw("arw", "image/x-sony-arw"),
    "mp4": _video("isobmff", "video/mp4"),
    "mov": _video("isobmff", "video/quicktime"),
    "avi": _video("avi", "video/x-msvideo", "video/avi", "video/msvideo"),
    "mkv": _video("mkv", "video/x-matroska", "video/matroska"),
    "pdf": FileType("document", frozenset({"application/pdf"}), ("pdf",)),
}

FAMILY_KINDS: dict[Family, Kind] = {
    family: file_type.kind for file_type in FILE_TYPES.values() for family in file_type.families
}


def extension_of(file_name: str) -> str:
    """The lower-cased text after the last dot; '' when there is none (or only a leading one)."""
    stem, dot, extension = file_name.strip().rpartition(".")
    return extension.lower() if dot and stem else ""


def essence(mime_type: str) -> str:
    """`Image/JPEG; charset=x` -> `image/jpeg`: parameters and case do not change the type."""
    return mime_type.split(";", 1)[0].strip().lower()


def declared_families(mime_type: str, file_name: str) -> frozenset[Family]:
    """The families an upload's declaration allows: those of every extension whose types name this
    one, or, for a generic type, those of the file's own extension when it accepts the type."""
    mime = essence(mime_type)
    if mime in GENERIC_RAW_TYPES:
        file_type = FILE_TYPES.get(extension_of(file_name))
        return frozenset(file_type.families if file_type and mime in file_type.mime_types else ())
    return frozenset(
        family for file_type in FILE_TYPES.values() if mime in file_type.mime_types for family in file_type.families
    )
