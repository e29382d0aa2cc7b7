"""Declared picture sizes, read from headers before any pixel is decoded, and the limits on them.

Pure parsing of the bytes of a file: JPEG's SOF, PNG's IHDR, WebP's VP8 / VP8L / VP8X header,
HEIF's `ispe` properties and MP4/MOV track headers (`tkhd`). A file whose declared size is above
the limits is refused whatever shrink-on-load would make of it: a few KB can declare a gigapixel
picture. RAW files (LibRaw reads their headers) and Matroska/AVI streams (ffprobe) are measured
by the decoding routes, against the same limits. None means "not found": the decoder then judges (and ImageMagick's policy has
its own, lower caps on what it decodes).

Also HEIF's embedded ICC profile (`colr` of type `prof`/`rICC`): ImageMagick 6's HEIC coder
ignores it, and an iPhone's Display P3 photo would otherwise pass as sRGB. And a JPEG's frame
(components) and ICC profile (APP2), which libjpeg-turbo's TurboJPEG API does not hand over.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import msgspec

from media_processor.variants import Size

# Above every current camera: 200 MP phone sensors (16320x12240), Phase One's 151 MP back,
# Sony's 240 MP pixel-shift composite. JPEG's own format maximum per edge (panoramas).
DEFAULT_MAX_PIXELS = 250_000_000
DEFAULT_MAX_EDGE = 65_535


class PixelLimits(msgspec.Struct, frozen=True, kw_only=True):
    max_width: int = DEFAULT_MAX_EDGE
    max_height: int = DEFAULT_MAX_EDGE
    max_pixels: int = DEFAULT_MAX_PIXELS


def excess(size: Size, limits: PixelLimits) -> str | None:
    """What is too large about a declared size, or None when it is within the limits."""
    if size.width > limits.max_width:
        return f"declared width {size.width} px is above the limit of {limits.max_width}"
    if size.height > limits.max_height:
        return f"declared height {size.height} px is above the limit of {limits.max_height}"
    if size.width * size.height > limits.max_pixels:
        return (f"declared {size.width}x{size.height} ({size.width * size.height:,} px) is above the limit "
                f"of {limits.max_pixels:,} px")
    return None


def declared_size(data: bytes | memoryview, family: str) -> Size | None:
    """The picture size a JPEG, PNG, WebP or HEIF header declares (stored orientation)."""
    view = memoryview(data)
    try:
        if family == "jpeg":
            return _jpeg(view)
        if family == "png":
            return _png(view)
        if family == "webp":
            return _webp(view)
        if family == "heif":
            return _heif(view)
        if family == "isobmff":
            return _tracks(view)
    except (struct.error, IndexError, ValueError):
        return None
    return None


# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic...), not DHT (C4),
# JPG (C8) or DAC (CC).
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})


def _jpeg_segments(data: memoryview) -> Iterator[tuple[int, int, int]]:
    """Every marker segment up to the first scan: (marker, body start, body end), skipped by length."""
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _STANDALONE:
            at += 2
            continue
        if marker in (0xDA, 0xD9):  # scan data or end of image
            return
        (length,) = struct.unpack_from(">H", data, at + 2)
        yield marker, at + 4, at + 2 + length
        at += 2 + length


def _jpeg(data: memoryview) -> Size | None:
    """The first frame header, skipping every segment (APP1's EXIF thumbnail included) by length."""
    for marker, body, _ in _jpeg_segments(data):
        if marker in _SOF:
            height, width = struct.unpack_from(">HH", data, body + 1)
            return Size(width, height) if width and height else None
    return None


class JpegFrame(msgspec.Struct, frozen=True):
    size: Size
    components: int  # 1 grey, 3 YCbCr (or RGB), 4 CMYK (or YCCK)
    icc_profile: bytes | None


_ICC_CHUNK = b"ICC_PROFILE\x00"


def jpeg_frame(data: bytes | memoryview) -> JpegFrame | None:
    """A JPEG's frame header and its ICC profile (APP2 chunks, joined in their sequence order)."""
    view = memoryview(data)
    chunks: dict[int, bytes] = {}
    frame: tuple[Size, int] | None = None
    try:
        for marker, body, end in _jpeg_segments(view):
            if marker == 0xE2 and bytes(view[body : body + 12]) == _ICC_CHUNK and end > body + 14:
                chunks.setdefault(view[body + 12], bytes(view[body + 14 : end]))
            elif marker in _SOF and frame is None:
                height, width, components = struct.unpack_from(">HHB", view, body + 1)
                frame = Size(width, height), components
    except (struct.error, IndexError, ValueError):
        return None
    if frame is None or not frame[0].width or not frame[0].height:
        return None
    profile = b"".join(chunks[n] for n in sorted(chunks)) if chunks else None
    return JpegFrame(size=frame[0], components=frame[1], icc_profile=profile)


def _png(data: memoryview) -> Size | None:
    if bytes(data[12:16]) != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    return Size(width, height)


def _webp(data: memoryview) -> Size | None:
    chunk = bytes(data[12:16])
    if chunk == b"VP8X":  # extended: the canvas, 24-bit sizes minus one
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return Size(width, height)
    if chunk == b"VP8 ":  # lossy key frame: tag (3 bytes), start code 9d 01 2a, 14-bit sizes
        if bytes(data[23:26]) != b"\x9d\x01\x2a":
            return None
        width, height = struct.unpack_from("<HH", data, 26)
        return Size(width & 0x3FFF, height & 0x3FFF)
    if chunk == b"VP8L":  # lossless: signature 0x2f, then two 14-bit sizes minus one
        if data[20] != 0x2F:
            return None
        (bits,) = struct.unpack_from("<I", data, 21)
        return Size((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
    return None


def _boxes(data: memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, body start, body end) of the ISO BMFF boxes between start and end."""
    at = start
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, at)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, at + 8)
            header = 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            return
        yield kind, at + header, at + size
        at += size


# The top-level boxes of a HEIF file (and of an MP4 appended to one, a motion photo).
_TOP_LEVEL_BOXES = frozenset({b"ftyp", b"meta", b"mdat", b"moov", b"free", b"skip", b"wide"})


def heif_cut_short(data: bytes | memoryview) -> bytes | None:
    """The type of a top-level box that ends past the end of the file (a HEIF cut short), if any.

    Boxes are followed from the start while they are ones a HEIF file has at its top level:
    data of another kind after them (a trailer some phones append) ends the walk, not the file.
    """
    view = memoryview(data)
    at, end = 0, len(view)
    while at + 8 <= end:
        size, kind = struct.unpack_from(">I4s", view, at)
        if kind not in _TOP_LEVEL_BOXES:
            return None
        header = 8
        if size == 1:
            if at + 16 > end:
                return kind
            (size,) = struct.unpack_from(">Q", view, at + 8)
            header = 16
        elif size == 0:  # to the end of the file, however long it is
            return None
        if size < header:
            return None
        if at + size > end:
            return kind
        at += size
    return None


def _heif_properties(data: memoryview) -> Iterator[tuple[bytes, int, int]]:
    """Every item property (meta > iprp > ipco > *) of a HEIF file: (type, body start, end)."""
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"meta":
            continue
        for child, body, child_end in _boxes(data, start + 4, end):  # meta is a full box
            if child != b"iprp":
                continue
            for container, inner, inner_end in _boxes(data, body, child_end):
                if container == b"ipco":
                    yield from _boxes(data, inner, inner_end)


def heif_icc_profile(data: bytes | memoryview) -> bytes | None:
    """The ICC profile a HEIF file carries for its pictures (the first `colr` holding one)."""
    view = memoryview(data)
    try:
        for prop, body, end in _heif_properties(view):
            if prop == b"colr" and bytes(view[body : body + 4]) in (b"prof", b"rICC") and end - body > 132:
                return bytes(view[body + 4 : end])
    except (struct.error, IndexError, ValueError):
        return None
    return None


def _heif(data: memoryview) -> Size | None:
    """The largest `ispe` (image spatial extents) of any item: the primary picture or its grid.

    Taking the largest is conservative: a file cannot hide a huge item behind a small primary one.
    """
    largest: Size | None = None
    for prop, body, _ in _heif_properties(data):
        if prop == b"ispe":
            width, height = struct.unpack_from(">II", data, body + 4)
            if largest is None or width * height > largest.width * largest.height:
                largest = Size(width, height)
    return largest


def _tracks(data: memoryview) -> Size | None:
    """The largest track size an MP4/MOV declares (tkhd width and height, 16.16 fixed point).

    Top-level boxes are walked by their headers, so a `moov` after a large `mdat` costs nothing.
    """
    largest: Size | None = None
    for kind, start, end in _boxes(data, 0, len(data)):
        if kind != b"moov":
            continue
        for trak, body, trak_end in _boxes(data, start, end):
            if trak != b"trak":
                continue
            for header, at, _ in _boxes(data, body, trak_end):
                if header != b"tkhd":
                    continue
                width, height = struct.unpack_from(">II", data, at + (88 if data[at] == 1 else 76))
                size = Size(width >> 16, height >> 16)
                if largest is None or size.width * size.height > largest.width * largest.height:
                    largest = size
    return largest
