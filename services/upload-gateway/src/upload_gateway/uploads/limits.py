"""What may be uploaded: the gateway's checks against the formats table of rawdrive_contracts.

A file is accepted when its extension is in the table, its mime type is one the table allows for
that extension, and its size is within the kind's limit.
"""

from __future__ import annotations

from rawdrive_contracts import Kind
from rawdrive_contracts.formats import FILE_TYPES, MIB, SIZE_LIMITS, essence, extension_of
from upload_gateway.errors import FileTooLarge, UnsupportedType

__all__ = ["FILE_TYPES", "MIB", "SIZE_LIMITS", "check_file", "essence", "extension_of"]


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


def accepted_files() -> str:
    """What createUpload accepts, rendered from this table for the OpenAPI document's description."""
    lines = [
        "Accepted files: the extension of `file_name` picks the kind and the allowed `mime_type`s; "
        "another extension or type is 422 `unsupported_type`, a file over its kind's limit is 413 "
        "`file_too_large`.",
        "",
    ]
    for kind, limit in SIZE_LIMITS.items():
        types = "; ".join(
            f".{extension} ({', '.join(sorted(file_type.mime_types))})"
            for extension, file_type in FILE_TYPES.items()
            if file_type.kind == kind
        )
        lines.append(f"- {kind}, at most {limit // MIB} MiB ({limit} bytes): {types}")
    return "\n".join(lines)
