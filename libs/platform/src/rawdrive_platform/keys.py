"""The storage key builder: the only place object keys are made and read back.

Layout (under an optional per-profile ``key_prefix``):

    workspaces/{workspace_id}/assets/{asset_id}/original/{filename}
    workspaces/{workspace_id}/assets/{asset_id}/derived/{variant}/{filename}
    workspaces/{workspace_id}/avatars/{user_id}/{filename}
    workspaces/{workspace_id}/invitations/{invitation_id}/{filename}
    workspaces/{workspace_id}/assets/{upload_id}/tus/{piece}

Identifiers (workspace, asset, user, invitation ids and variant names) must match
``[A-Za-z0-9][A-Za-z0-9_-]{0,63}``: UUIDs, ULIDs and names like ``webp-2560`` pass, and
nothing that could act as a path (separators, dots, whitespace, controls) can.

Filenames are user-facing, so they allow any Unicode except what could escape or deceive:
``/`` and ``\\``, the names ``.`` and ``..``, control and format characters (C0, C1, DEL, bidi
overrides, zero-width characters), more than 255 UTF-8 bytes, and text that is not NFC (two
spellings of one name must give one key). ``safe_filename`` turns any display name into such
a filename; the builders refuse anything else with ``InvalidKeyPart`` rather than repair it.
"""

import re
import unicodedata
from typing import Literal

import msgspec

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MAX_FILENAME_BYTES = 255
FALLBACK_FILENAME = "file"
# A trailing ".xyz" longer than this is not treated as an extension worth keeping on truncation.
_MAX_EXTENSION_BYTES = 32
# Cc: C0, DEL, C1. Cf: bidi overrides, zero-width joiners, BOM, soft hyphen.
# Cs: lone surrogates (from surrogateescape), which cannot be encoded as UTF-8 at all.
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


class InvalidKeyPart(ValueError):
    """An identifier, filename or prefix that must not become part of an object key."""


class AssetKey(msgspec.Struct, frozen=True, kw_only=True):
    """What ``parse_asset_key`` reads back from an asset object key."""

    workspace_id: str
    asset_id: str
    part: Literal["original", "derived"]
    filename: str
    variant: str | None = None  # set only for derived objects


class AssetRef(msgspec.Struct, frozen=True):
    """The asset an object belongs to (``asset_of_key``)."""

    workspace_id: str
    asset_id: str


def check_id(value: str, what: str = "id") -> str:
    if not isinstance(value, str) or ID_PATTERN.fullmatch(value) is None:
        raise InvalidKeyPart(f"{what} {value!r} must match {ID_PATTERN.pattern}")
    return value


def check_filename(value: str) -> str:
    if not isinstance(value, str) or value == "":
        raise InvalidKeyPart("filename must not be empty")
    if value in (".", ".."):
        raise InvalidKeyPart(f"filename {value!r} is a path step, not a name")
    if "/" in value or "\\" in value:
        raise InvalidKeyPart(f"filename {value!r} contains a path separator")
    if any(unicodedata.category(ch) in _STRIPPED_CATEGORIES for ch in value):
        raise InvalidKeyPart(f"filename {value!r} contains a control or format character")
    if len(value.encode("utf-8")) > MAX_FILENAME_BYTES:
        raise InvalidKeyPart(f"filename is longer than {MAX_FILENAME_BYTES} bytes of UTF-8")
    if unicodedata.normalize("NFC", value) != value:
        raise InvalidKeyPart(f"filename {value!r} is not NFC; pass it through safe_filename")
    return value


def check_key_prefix(key_prefix: str, workspace_id: str) -> str:
    """A bring-your-own-bucket prefix: id-like segments ending in '/', one being the workspace id.

    Requiring the workspace id keeps one workspace's objects from landing under another
    customer's prefix when a profile is attached to the wrong workspace.
    """
    if key_prefix == "":
        return key_prefix
    if not key_prefix.endswith("/"):
        raise InvalidKeyPart(f"key prefix {key_prefix!r} must end with '/'")
    segments = key_prefix[:-1].split("/")
    for segment in segments:
        check_id(segment, "key prefix segment")
    if workspace_id not in segments:
        raise InvalidKeyPart(
            f"key prefix {key_prefix!r} must contain the workspace id {workspace_id!r}"
        )
    return key_prefix


def workspace_prefix(workspace_id: str, key_prefix: str = "") -> str:
    check_id(workspace_id, "workspace id")
    return f"{check_key_prefix(key_prefix, workspace_id)}workspaces/{workspace_id}/"


def asset_prefix(workspace_id: str, asset_id: str, key_prefix: str = "") -> str:
    check_id(asset_id, "asset id")
    return f"{workspace_prefix(workspace_id, key_prefix)}assets/{asset_id}/"


def original_key(workspace_id: str, asset_id: str, filename: str, key_prefix: str = "") -> str:
    prefix = asset_prefix(workspace_id, asset_id, key_prefix)
    return f"{prefix}original/{check_filename(filename)}"


def derived_key(
    workspace_id: str, asset_id: str, variant: str, filename: str, key_prefix: str = ""
) -> str:
    prefix = asset_prefix(workspace_id, asset_id, key_prefix)
    return f"{prefix}derived/{check_id(variant, 'variant')}/{check_filename(filename)}"


def avatar_key(workspace_id: str, user_id: str, filename: str, key_prefix: str = "") -> str:
    prefix = workspace_prefix(workspace_id, key_prefix)
    return f"{prefix}avatars/{check_id(user_id, 'user id')}/{check_filename(filename)}"


def invitation_key(
    workspace_id: str, invitation_id: str, filename: str, key_prefix: str = ""
) -> str:
    prefix = workspace_prefix(workspace_id, key_prefix)
    invitation = check_id(invitation_id, "invitation id")
    return f"{prefix}invitations/{invitation}/{check_filename(filename)}"


def tus_piece_key(workspace_id: str, upload_id: str, piece: str, key_prefix: str = "") -> str:
    """A tus partial upload's bytes (piece ``partial``) or a piece a concatenation copies
    together (``seam-1``, ...): under an asset prefix of the tus upload's own id, which no asset
    has, so the janitor's sweeps (stale multipart uploads, orphans) treat them as they treat
    any abandoned upload's objects."""
    return f"{asset_prefix(workspace_id, upload_id, key_prefix)}tus/{check_id(piece, 'piece')}"


def parse_asset_key(key: str, key_prefix: str = "") -> AssetKey | None:
    """Read an asset key back; None for anything the builders could not have produced."""
    if not key.startswith(key_prefix):
        return None
    segments = key[len(key_prefix) :].split("/")
    try:
        match segments:
            case ["workspaces", ws, "assets", asset, "original", filename]:
                parsed = AssetKey(
                    workspace_id=ws, asset_id=asset, part="original", filename=filename
                )
                rebuilt = original_key(ws, asset, filename, key_prefix)
            case ["workspaces", ws, "assets", asset, "derived", variant, filename]:
                parsed = AssetKey(
                    workspace_id=ws,
                    asset_id=asset,
                    part="derived",
                    variant=variant,
                    filename=filename,
                )
                rebuilt = derived_key(ws, asset, variant, filename, key_prefix)
            case _:
                return None
    except InvalidKeyPart:
        return None
    return parsed if rebuilt == key else None


def asset_of_key(key: str, key_prefix: str = "") -> AssetRef | None:
    """The asset an object belongs to: anything under ``asset_prefix(ws, asset)``, the original
    and derived objects as well as a tus tail or any other partial object; None otherwise."""
    if not key.startswith(key_prefix):
        return None
    match key[len(key_prefix) :].split("/"):
        case ["workspaces", workspace_id, "assets", asset_id, first, *_] if first:
            try:
                prefix = asset_prefix(workspace_id, asset_id, key_prefix)
            except InvalidKeyPart:
                return None
            return AssetRef(workspace_id, asset_id) if key.startswith(prefix) else None
        case _:
            return None


def safe_filename(display_name: str) -> str:
    """Any display name -> a filename every builder accepts (idempotent, NFC, <= 255 bytes)."""
    name = unicodedata.normalize("NFC", _without_unsafe_characters(display_name)).strip()
    name = _truncate_keeping_extension(name, MAX_FILENAME_BYTES).strip()
    if name in ("", ".", ".."):
        return FALLBACK_FILENAME
    return name


def _without_unsafe_characters(text: str) -> str:
    # Separators become "_" so "a/b.jpg" stays readable; controls vanish without a trace.
    text = text.replace("/", "_").replace("\\", "_")
    return "".join(ch for ch in text if unicodedata.category(ch) not in _STRIPPED_CATEGORIES)


def _truncate_keeping_extension(name: str, max_bytes: int) -> str:
    if len(name.encode("utf-8")) <= max_bytes:
        return name
    dot = name.rfind(".")
    extension = name[dot:] if dot > 0 else ""
    if len(extension.encode("utf-8")) > _MAX_EXTENSION_BYTES:
        extension = ""
    stem = name[: len(name) - len(extension)]
    budget = max_bytes - len(extension.encode("utf-8"))
    # Cut whole code points, then renormalise: a cut can leave a sequence NFC would recompose.
    stem = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")
    while len((candidate := unicodedata.normalize("NFC", stem) + extension).encode()) > max_bytes:
        stem = stem[:-1]
    return candidate
