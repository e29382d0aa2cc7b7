"""File names as shown to users; the name inside object keys is rawdrive_platform.keys.safe_filename."""

import unicodedata

from upload_gateway.problems import InvalidRequest

# Control characters cannot be shown and NUL cannot be stored in PostgreSQL text; format
# characters (Cf: U+202E RIGHT-TO-LEFT OVERRIDE, zero-width joiners, ...) make a name read
# otherwise than it is ("invoice\u202Efdp.exe"), in lists and in the download's
# Content-Disposition; the key builder drops the same two categories. (Lone surrogates never
# get here: the JSON decoder refuses them as malformed.)
_UNPRINTABLE = frozenset({"Cc", "Cf"})


def display_name(file_name: str) -> str:
    """The name as given, NFC, without unprintable characters; refused when nothing remains."""
    cleaned = "".join(ch for ch in file_name if unicodedata.category(ch) not in _UNPRINTABLE)
    cleaned = unicodedata.normalize("NFC", cleaned).strip()
    if not cleaned:
        raise InvalidRequest("file_name has no printable characters")
    return cleaned

