"""The accepted files and size limits, as the README and the OpenAPI document show them, are the
limits table itself (upload_gateway.limits), so neither can drift from what is enforced."""

import re
from pathlib import Path

from upload_gateway.limits import FILE_TYPES, MIB, SIZE_LIMITS
from upload_gateway.openapi import build

README = Path(__file__).parents[3] / "README.md"


def _readme_table() -> dict[str, tuple[frozenset[str], str, int]]:
    """README's "What may be uploaded" table: extension -> (mime types, kind, limit in bytes)."""
    section = README.read_text().split("### What may be uploaded", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `.")]
    table: dict[str, tuple[frozenset[str], str, int]] = {}
    for row in rows:
        extensions, mime_types, kind, limit = (cell.strip() for cell in row.strip("|").split("|"))
        for extension in re.findall(r"`\.(\w+)`", extensions):
            table[extension] = (frozenset(re.findall(r"`([^`]+)`", mime_types)), kind, int(limit.removesuffix(" MiB")) * MIB)
    return table


def test_readme_lists_exactly_the_accepted_extensions_types_and_limits():
    assert _readme_table() == {
        extension: (file_type.mime_types, file_type.kind, SIZE_LIMITS[file_type.kind])
        for extension, file_type in FILE_TYPES.items()
    }


def test_openapi_document_lists_every_accepted_extension_type_and_limit():
    description = build([])["info"]["description"]
    for extension, file_type in FILE_TYPES.items():
        [line] = [line for line in description.splitlines() if f".{extension} (" in line]
        assert line.startswith(f"- {file_type.kind}, at most {SIZE_LIMITS[file_type.kind] // MIB} MiB")
        listed = re.search(rf"\.{extension} \(([^)]*)\)", line).group(1)
        assert set(listed.split(", ")) == file_type.mime_types
