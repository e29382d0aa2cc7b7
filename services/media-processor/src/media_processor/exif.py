"""A small, bounds-checked EXIF reader: the TIFF structure inside JPEG, PNG, WebP, HEIF and RAWs.

Only the tags the metadata record needs are read. Hostile input cannot make it loop (each IFD is
visited once, entry counts are capped) or read outside the buffer (every offset is checked), and
anything malformed is skipped rather than raised: a broken EXIF block leaves fields missing.
hachoir cannot serve here: it has no WebP or HEIF parser and reads the IFD0 modify date, not
DateTimeOriginal (see shared/NOTES-servers.md).
"""

from __future__ import annotations

import struct

import msgspec

_MAX_ENTRIES = 1024
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
_TIFF_HEADERS = (b"II*\x00", b"MM\x00*")

_IFD0 = {0x010F: "make", 0x0110: "model", 0x0112: "orientation", 0x0131: "software"}
_EXIF_IFD = {
    0x829A: "exposure_time",
    0x829D: "f_number",
    0x8827: "iso",
    0x9003: "date_time_original",
    0x9004: "date_time_digitized",
    0x9011: "offset_time_original",
    0x9012: "offset_time_digitized",
    0x920A: "focal_length",
    0xA434: "lens_model",
}
_GPS_IFD = {
    0x0001: "gps_latitude_ref",
    0x0002: "gps_latitude",
    0x0003: "gps_longitude_ref",
    0x0004: "gps_longitude",
    0x0005: "gps_altitude_ref",
    0x0006: "gps_altitude",
    0x0007: "gps_time_stamp",
    0x001D: "gps_date_stamp",
}
_EXIF_POINTER, _GPS_POINTER, _MAKER_NOTE = 0x8769, 0x8825, 0x927C
# Apple's MakerNote: this header, the byte order at 12, an IFD at 14, offsets from its start.
_APPLE_MAKER_NOTE = b"Apple iOS\x00"
_APPLE_CONTENT_IDENTIFIER = 0x0011

Value = str | int | float | bytes | tuple[float, ...] | None


class ExifTags(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The EXIF values as stored (rationals as floats, dates as EXIF text)."""

    make: str | None = None
    model: str | None = None
    software: str | None = None
    lens_model: str | None = None
    orientation: int | None = None
    date_time_original: str | None = None
    date_time_digitized: str | None = None
    offset_time_original: str | None = None
    offset_time_digitized: str | None = None
    exposure_time: float | None = None
    f_number: float | None = None
    iso: int | None = None
    focal_length: float | None = None
    gps_latitude_ref: str | None = None
    gps_latitude: tuple[float, ...] | None = None
    gps_longitude_ref: str | None = None
    gps_longitude: tuple[float, ...] | None = None
    gps_altitude_ref: int | None = None
    gps_altitude: float | None = None
    gps_time_stamp: tuple[float, ...] | None = None  # UTC hours, minutes, seconds of the fix
    gps_date_stamp: str | None = None  # UTC date of the fix, `YYYY:MM:DD`
    content_identifier: str | None = None  # Apple MakerNote tag 17: the Live Photo's pairing id


_FIELD_TYPES: dict[str, type] = {
    "make": str, "model": str, "software": str, "lens_model": str, "orientation": int,
    "date_time_original": str, "date_time_digitized": str, "offset_time_original": str,
    "offset_time_digitized": str, "exposure_time": float,
    "f_number": float, "iso": int, "focal_length": float, "gps_latitude_ref": str,
    "gps_latitude": tuple, "gps_longitude_ref": str, "gps_longitude": tuple,
    "gps_altitude_ref": int, "gps_altitude": float, "gps_time_stamp": tuple, "gps_date_stamp": str,
    "content_identifier": str,
}


def find_tiff(data: bytes | memoryview, family: str) -> memoryview | None:
    """The TIFF block holding the EXIF of a file of this family, if it has one."""
    view = memoryview(data)
    if family in ("cr2", "nef", "arw", "dng"):
        return view if bytes(view[:4]) in _TIFF_HEADERS else None
    if family == "jpeg":
        return _jpeg_exif(view)
    if family == "png":
        return _chunk(view, 8, b"eXIf", big_endian=True, header=8)
    if family == "webp":
        block = _chunk(view, 12, b"EXIF", big_endian=False, header=8)
        return _after_exif_marker(block) if block is not None else None
    if family == "heif":
        return _heif_exif(bytes(view))
    return None


def read_exif(tiff: memoryview | bytes) -> ExifTags:
    """The tags we use from a TIFF block; malformed parts are skipped."""
    buf = bytes(tiff)
    if buf[:4] not in _TIFF_HEADERS:
        return ExifTags()
    order = "<" if buf[:2] == b"II" else ">"
    found: dict[str, Value] = {}
    visited: set[int] = set()
    ifd0 = _read_ifd(buf, order, _u32(buf, order, 4), visited)
    pointers = {_EXIF_POINTER: _EXIF_IFD, _GPS_POINTER: _GPS_IFD}
    for tag, value in ifd0.items():
        if tag in _IFD0:
            found[_IFD0[tag]] = value
        elif tag in pointers and isinstance(value, int):
            names = pointers[tag]
            for sub_tag, sub_value in _read_ifd(buf, order, value, visited).items():
                if sub_tag in names:
                    found[names[sub_tag]] = sub_value
                elif sub_tag == _MAKER_NOTE and isinstance(sub_value, bytes):
                    found["content_identifier"] = apple_content_identifier(sub_value)
    return _typed(found)


def apple_content_identifier(maker_note: bytes) -> str | None:
    """Tag 17 of an Apple MakerNote (its IFD is a TIFF IFD whose offsets start at the note)."""
    if not maker_note.startswith(_APPLE_MAKER_NOTE) or maker_note[12:14] not in (b"MM", b"II"):
        return None
    order = ">" if maker_note[12:14] == b"MM" else "<"
    value = _read_ifd(maker_note, order, 14, set()).get(_APPLE_CONTENT_IDENTIFIER)
    return value if isinstance(value, str) else None


def _typed(found: dict[str, Value]) -> ExifTags:
    """Keep only values of the type each field expects; a wrong-typed tag is as good as absent."""
    fields: dict[str, Value] = {}
    for name, value in found.items():
        wanted = _FIELD_TYPES[name]
        if wanted is float and isinstance(value, int):
            value = float(value)
        if wanted is tuple and not (isinstance(value, tuple) and len(value) == 3):
            continue
        if isinstance(value, wanted):
            fields[name] = value
    return ExifTags(**fields)


def _read_ifd(buf: bytes, order: str, offset: int | None, visited: set[int]) -> dict[int, Value]:
    if offset is None or offset in visited or not 8 <= offset <= len(buf) - 2:
        return {}
    visited.add(offset)
    count = min(_u16(buf, order, offset) or 0, _MAX_ENTRIES)
    entries: dict[int, Value] = {}
    for index in range(count):
        at = offset + 2 + 12 * index
        if at + 12 > len(buf):
            break
        tag, kind, n = struct.unpack_from(order + "HHI", buf, at)
        size = _TYPE_SIZES.get(kind)
        if size is None or n == 0 or n > len(buf):
            continue
        total = size * n
        start = at + 8 if total <= 4 else _u32(buf, order, at + 8)
        if start is None or start + total > len(buf):
            continue
        entries[tag] = _decode(buf[start : start + total], order, kind, n)
    return entries


def _decode(raw: bytes, order: str, kind: int, n: int) -> Value:
    if kind == 2:
        text = raw.split(b"\x00", 1)[0].decode("utf-8", "replace").strip()
        return text or None
    if kind in (5, 10):
        code = "I" if kind == 5 else "i"
        pairs = struct.unpack(f"{order}{2 * n}{code}", raw)
        values = tuple(num / den if den else float("nan") for num, den in zip(pairs[::2], pairs[1::2]))
        if any(v != v for v in values):  # a zero denominator: the value is unknown
            return None
        return values[0] if n == 1 else values
    if kind == 7:  # UNDEFINED: opaque bytes (a MakerNote)
        return raw
    codes = {1: "B", 3: "H", 4: "I", 6: "b", 8: "h", 9: "i"}
    if kind not in codes:
        return None
    ints = struct.unpack(f"{order}{n}{codes[kind]}", raw)
    return ints[0] if n == 1 else tuple(float(i) for i in ints)


def _u16(buf: bytes, order: str, at: int) -> int | None:
    return struct.unpack_from(order + "H", buf, at)[0] if 0 <= at <= len(buf) - 2 else None


def _u32(buf: bytes, order: str, at: int) -> int | None:
    return struct.unpack_from(order + "I", buf, at)[0] if 0 <= at <= len(buf) - 4 else None


def _jpeg_exif(view: memoryview) -> memoryview | None:
    at = 2
    while at + 4 <= len(view) and view[at] == 0xFF:
        marker = view[at + 1]
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no metadata after this
            return None
        (length,) = struct.unpack_from(">H", view, at + 2)
        segment = view[at + 4 : at + 2 + length]
        if marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
            return segment[6:]
        if length < 2:
            return None
        at += 2 + length
    return None


def _chunk(view: memoryview, start: int, name: bytes, *, big_endian: bool, header: int) -> memoryview | None:
    """A PNG (length, type) or RIFF (type, length) chunk's payload."""
    at = start
    while at + header <= len(view):
        if big_endian:
            (length,) = struct.unpack_from(">I", view, at)
            kind = bytes(view[at + 4 : at + 8])
        else:
            kind = bytes(view[at : at + 4])
            (length,) = struct.unpack_from("<I", view, at + 4)
        if kind == name:
            return view[at + header : at + header + length]
        # PNG chunks end with a CRC; RIFF chunks are padded to even sizes.
        at += header + length + (4 if big_endian else length % 2)
    return None


def _heif_exif(data: bytes) -> memoryview | None:
    """The Exif item's TIFF block, found by its framing rather than through the iinf/iloc boxes.

    The item is a 4-byte offset to the TIFF header, then either "Exif\\0\\0" + TIFF (offset 6) or
    the TIFF header itself (offset 0); a TIFF header framed like that does not occur by chance.
    """
    for header in _TIFF_HEADERS:
        at = data.find(header)
        while at >= 0:
            if data[at - 10 : at] == b"\x00\x00\x00\x06Exif\x00\x00" or data[at - 4 : at] == b"\x00" * 4:
                return memoryview(data)[at:]
            at = data.find(header, at + 1)
    return None


def _after_exif_marker(block: memoryview) -> memoryview:
    return block[6:] if bytes(block[:6]) == b"Exif\x00\x00" else block
