"""What a file really is, from its first bytes, and whether that is what the uploader declared.

Which families each declaration allows, and their kinds, come from the formats table of
rawdrive_contracts; here is how each family is recognised and decoded. Content decides the family;
the declaration only has to agree with it. A file whose bytes match no family, or another family
than declared, is never decoded.
"""

from __future__ import annotations

import struct
from typing import Literal

import msgspec

from rawdrive_contracts.formats import Family, declared_families

# How a family is turned into pixels: ImageMagick, libheif, LibRaw, ffmpeg, Ghostscript.
Route = Literal["image", "heif", "raw", "video", "pdf"]

# Enough for every signature below, including a TIFF's IFD0 and its Make string.
HEAD_BYTES = 64 * 1024


class Decoding(msgspec.Struct, frozen=True):
    route: Route
    # The ImageMagick coder named on every read (image route only): never let it guess.
    coder: str | None = None
    # ffmpeg's demuxer named on every read (video route only).
    demuxer: str | None = None


DECODING: dict[Family, Decoding] = {
    "jpeg": Decoding("image", coder="jpeg"),
    "png": Decoding("image", coder="png"),
    "webp": Decoding("image", coder="webp"),
    "heif": Decoding("heif"),
    "cr2": Decoding("raw"),
    "nef": Decoding("raw"),
    "arw": Decoding("raw"),
    "cr3": Decoding("raw"),
    "dng": Decoding("raw"),
    "isobmff": Decoding("video", demuxer="mov"),
    "avi": Decoding("video", demuxer="avi"),
    "mkv": Decoding("video", demuxer="matroska"),
    "pdf": Decoding("pdf"),
}

_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
_VIDEO_BRANDS = frozenset(
    {b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"qt  ", b"M4V ",
     b"M4A ", b"MSNV", b"dash", b"3gp4", b"3gp5", b"3gp6", b"3g2a", b"mmp4", b"XAVC", b"f4v "}
)
# Old QuickTime files start with one of these atoms instead of `ftyp`.
_QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})


class TypeMismatch(Exception):
    """The bytes are not a format we handle, or not the one the upload declared."""


def sniff(head: bytes) -> Family | None:
    """The family the first bytes belong to, or None for anything else (ZIP, ELF, SVG, MVG...)."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "mkv"
    if head.startswith(b"RIFF") and len(head) >= 12:
        return {b"WEBP": "webp", b"AVI ": "avi"}.get(head[8:12])
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return _tiff_raw(head)
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _ftyp_family(head)
    if len(head) >= 8 and head[4:8] in _QUICKTIME_ATOMS:
        return "isobmff"
    return None


def check(head: bytes, mime_type: str, file_name: str) -> Family:
    """The family to decode as; TypeMismatch unless content and declaration agree."""
    family = sniff(head)
    if family is None:
        raise TypeMismatch(f"content is none of the supported formats (starts {head[:8].hex()})")
    allowed = declared_families(mime_type, file_name)
    if family not in allowed:
        declared = ", ".join(sorted(allowed)) or "nothing we process"
        raise TypeMismatch(f"content is {family} but {mime_type!r} ({file_name!r}) declares {declared}")
    return family


def _ftyp_family(head: bytes) -> Family | None:
    if head[8:12] == b"crx ":  # Canon CR3: ISO BMFF with Canon's own major brand
        return "cr3"
    (size,) = struct.unpack(">I", head[:4])
    end = min(len(head), size if size >= 16 else 16)
    # The major brand, then the compatible brands; HEIF wins if any brand names it.
    brands = {head[8:12], *(head[i : i + 4] for i in range(16, end - 3, 4))}
    if brands & _HEIF_BRANDS and head[8:12] not in _VIDEO_BRANDS:
        return "heif"
    if brands & _VIDEO_BRANDS:
        return "isobmff"
    return None


def _tiff_raw(head: bytes) -> Family | None:
    """TIFF-based RAWs: Canon marks CR2 in the header, DNG has a DNGVersion tag in IFD0 (whoever
    made it: Leica, Pentax, phones), Nikon and Sony only say so in IFD0 Make."""
    if head.startswith(b"II*\x00") and head[8:11] == b"CR\x02":
        return "cr2"
    if _ifd0_entry(head, _DNG_VERSION) is not None:
        return "dng"
    make = tiff_make(head)
    if make is None:
        return None
    make = make.upper()
    if make.startswith("NIKON"):
        return "nef"
    if make.startswith("SONY"):
        return "arw"
    return None


_MAKE, _DNG_VERSION = 0x010F, 0xC612


def tiff_make(head: bytes) -> str | None:
    """IFD0's Make (0x010F) from a TIFF header, when it lies within `head`."""
    entry = _ifd0_entry(head, _MAKE)
    if entry is None or entry[0] != 2:
        return None
    _, n, value = entry
    order = "<" if head[:2] == b"II" else ">"
    raw = value[:n] if n <= 4 else head[struct.unpack(order + "I", value)[0] :][:n]
    return raw.split(b"\x00", 1)[0].decode("ascii", "replace").strip() or None


def _ifd0_entry(head: bytes, wanted: int) -> tuple[int, int, bytes] | None:
    """(type, count, value or offset field) of one IFD0 tag of a TIFF header within `head`."""
    order = "<" if head[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack_from(order + "I", head, 4)
        (count,) = struct.unpack_from(order + "H", head, ifd)
        for index in range(min(count, 512)):
            tag, kind, n, value = struct.unpack_from(order + "HHI4s", head, ifd + 2 + 12 * index)
            if tag == wanted:
                return kind, n, value
    except struct.error:
        return None
    return None
