"""Google and Samsung motion photos: a JPEG or HEIC still with an MP4 appended, announced in XMP.

Two generations of XMP say where the video is, both counted from the end of the file:
- Motion Photo 1.0: `Camera:MotionPhoto="1"` and a `Container:Directory` whose items (the
  primary image first, then each appended file in order) give `Item:Length` and `Item:Padding`;
  the video is the item whose `Item:Semantic` is `MotionPhoto`. (In a HEIC the video sits in an
  `mpvd` box; its 8-byte header is padding after the primary item, so counting from the end
  lands on the MP4 itself.)
- Micro Video 1 (older Pixels, still written by some apps): `Camera:MicroVideo="1"` and
  `Camera:MicroVideoOffset`, the video's distance from the end of the file.
Samsung writes the same Google namespace (prefix `Camera` or `GCamera`: the URI is what counts).
An editor may keep the XMP after dropping the video, so a claimed video counts only when its
bytes start like an MP4. Pure functions, no I/O.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ElementTree

import msgspec

from media_processor.magic import sniff

_CAMERA = "{http://ns.google.com/photos/1.0/camera/}"
_CONTAINER = "{http://ns.google.com/photos/1.0/container/}"
_ITEM = "{http://ns.google.com/photos/1.0/container/item/}"
_RDF_LI = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}li"
_XMP_APP1 = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_START, _XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"
# An XMP packet is a few KB; a JPEG APP1 segment holds at most 64 KB anyway.
MAX_XMP_BYTES = 1024 * 1024


class EmbeddedVideo(msgspec.Struct, frozen=True, kw_only=True):
    """Where the appended video lies in the file: bytes [start, end)."""

    start: int
    end: int
    presentation_timestamp_us: int | None = None


def locate_video(data: bytes, family: str) -> EmbeddedVideo | None:
    """The motion photo's video in a JPEG or HEIC, or None when it is no (intact) motion photo."""
    xmp = find_xmp(data, family)
    return locate_in(data, xmp) if xmp is not None else None


def locate_in(data: bytes, xmp: bytes) -> EmbeddedVideo | None:
    properties, items = parse_xmp(xmp)
    span = _motion_photo_span(properties, items) or _micro_video_span(properties)
    if span is None:
        return None
    from_end, length = span
    start = len(data) - from_end
    end = start + length if length else len(data)
    if not (0 < start < end <= len(data)) or sniff(bytes(data[start : start + 64])) != "isobmff":
        return None
    timestamp = _int(
        properties.get("MotionPhotoPresentationTimestampUs", properties.get("MicroVideoPresentationTimestampUs"))
    )
    # -1 means "not given"; readers then take the middle of the video.
    return EmbeddedVideo(start=start, end=end, presentation_timestamp_us=timestamp if timestamp is not None and timestamp >= 0 else None)


def find_xmp(data: bytes, family: str) -> bytes | None:
    """The XMP packet: a JPEG's XMP APP1 segment, or (HEIC) the packet found by its framing."""
    if family == "jpeg":
        return _jpeg_xmp(data)
    if family == "heif":
        start = data.find(_XMP_START)
        end = data.find(_XMP_END, start) if start >= 0 else -1
        if start < 0 or end < 0 or end - start > MAX_XMP_BYTES:
            return None
        return data[start : end + len(_XMP_END)]
    return None


def parse_xmp(xmp: bytes) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Camera properties (by local name) and the Container directory's items, in order.

    XMP writes a property as an attribute or as an element; both are read. A packet with a
    DOCTYPE is refused outright: XMP never has one, and it is how entity bombs arrive.
    """
    if len(xmp) > MAX_XMP_BYTES or b"<!DOCTYPE" in xmp or b"<!ENTITY" in xmp:
        return {}, []
    start = xmp.find(_XMP_START)
    try:
        root = ElementTree.fromstring(xmp[start:] if start > 0 else xmp)
    except ElementTree.ParseError:
        return {}, []
    properties: dict[str, str] = {}
    items: list[dict[str, str]] = []
    for element in root.iter():
        for name, value in element.attrib.items():
            if name.startswith(_CAMERA):
                properties[name[len(_CAMERA) :]] = value.strip()
        if element.tag.startswith(_CAMERA) and element.text and len(element) == 0:
            properties[element.tag[len(_CAMERA) :]] = element.text.strip()
        if element.tag == f"{_CONTAINER}Directory":
            items = [_item(li) for li in element.iter(_RDF_LI)]
    return properties, items


def _item(li: ElementTree.Element) -> dict[str, str]:
    """One directory entry: `Item:*` attributes or elements on the rdf:li or its Container:Item."""
    found: dict[str, str] = {}
    for element in li.iter():
        for name, value in element.attrib.items():
            if name.startswith(_ITEM):
                found[name[len(_ITEM) :]] = value.strip()
        if element.tag.startswith(_ITEM) and element.text:
            found[element.tag[len(_ITEM) :]] = element.text.strip()
    return found


def _motion_photo_span(properties: dict[str, str], items: list[dict[str, str]]) -> tuple[int, int] | None:
    """(distance of the video's first byte from the end of the file, its length) per MP 1.0."""
    if _int(properties.get("MotionPhoto")) != 1:
        return None
    index = next((i for i, item in enumerate(items) if item.get("Semantic") == "MotionPhoto"), None)
    if index is None or index == 0:  # the first item is the primary image, never the video
        return None
    from_end = 0
    for item in items[index:]:  # the video and whatever follows it, each with its padding
        length, padding = _int(item.get("Length")), _int(item.get("Padding") or "0")
        if length is None or padding is None or length < 0 or padding < 0:
            return None
        from_end += length + padding
    video_length = _int(items[index].get("Length"))
    return (from_end, video_length) if video_length else None


def _micro_video_span(properties: dict[str, str]) -> tuple[int, int] | None:
    if _int(properties.get("MicroVideo")) != 1:
        return None
    offset = _int(properties.get("MicroVideoOffset"))
    return (offset, 0) if offset and offset > 0 else None


def _jpeg_xmp(data: bytes) -> bytes | None:
    at = 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker in (0xD9, 0xDA):  # metadata segments all come before the scan
            return None
        (length,) = struct.unpack_from(">H", data, at + 2)
        if length < 2:
            return None
        segment = data[at + 4 : at + 2 + length]
        if marker == 0xE1 and segment.startswith(_XMP_APP1):
            return bytes(segment[len(_XMP_APP1) :])
        at += 2 + length
    return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
