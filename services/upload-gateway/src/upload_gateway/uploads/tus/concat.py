"""tus concatenation, the pure part: the Upload-Concat header, and how the objects of partial
uploads join into the final upload's object on the storage side. No I/O here.

The final object is one S3 multipart upload whose parts are copied (UploadPartCopy, a byte
range of another object) from the partials' objects, so the bytes never come back through the
gateway. R2 wants every part but the last to be the same size, at least 5 MiB; partials have
any sizes (tus-js-client's `parallelUploads: N` sends N of floor(size / N) bytes, the last one
the remainder). `plan_join` therefore picks the part size P as the smallest partial but the
last: then a part of the final object crosses at most one boundary between partials, and with
tus-js-client's partials no part crosses any (every boundary falls on a multiple of P).

A part that does cross a boundary cannot be copied from one object, so it is copied from a
"seam": a small object of two copied parts, the end of the partial before the boundary (at
least 5 MiB, and at least as long as the second part, as R2 wants) and the start of the one
after it. Storage copies those bytes too.

When a partial but the last is shorter than S3's 5 MiB part minimum no such layout exists:
a final object of at most JOIN_IN_GATEWAY_MAX bytes (small files, for which a client split
into parts of under 5 MiB) is then joined by the gateway reading the partials and uploading
the parts itself; a larger one is refused, saying why.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from itertools import accumulate
from urllib.parse import urlsplit

import msgspec

from upload_gateway.uploads.parts import MAX_PART_SIZE, MAX_PARTS, MIB, MIN_PART_SIZE
from upload_gateway.uploads.tus.protocol import BadRequest

# The largest final object joined by reading its partials through the gateway (see above).
JOIN_IN_GATEWAY_MAX = 64 * MIB
PARTIAL = "partial"
_FINAL = "final;"


class Concat(msgspec.Struct, frozen=True):
    """A parsed Upload-Concat: `partial`, or `final` with the partial uploads' URLs in order."""

    partial_urls: tuple[str, ...] | None  # None: a partial upload
    raw: str  # echoed on the creation's answer and on HEAD, as the spec asks

    @property
    def is_final(self) -> bool:
        return self.partial_urls is not None


def parse_concat(header: str | None) -> Concat | None:
    """`partial`, or `final;<url> <url> ...` (absolute URLs or paths); None without the header."""
    if header is None:
        return None
    value = header.strip()
    if value == PARTIAL:
        return Concat(None, value)
    if not value.startswith(_FINAL):
        raise BadRequest(f"Upload-Concat must be 'partial' or 'final;<url> ...', got {header!r}")
    urls = tuple(value[len(_FINAL) :].split())
    if not urls:
        raise BadRequest("Upload-Concat: final names no partial upload")
    return Concat(urls, value)


def is_final(concat: str | None) -> bool:
    """Whether a stored Upload-Concat is a final upload's."""
    return concat is not None and concat.startswith(_FINAL)


def url_path(url: str) -> str:
    """The path of a partial upload's URL as the client wrote it (absolute or a path)."""
    return urlsplit(url).path


class Piece(msgspec.Struct, frozen=True):
    """Bytes `start` up to but excluding `end` of a source: partial `source` when it is below
    the number of partials, else seam `source - partials`."""

    source: int
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


class Seam(msgspec.Struct, frozen=True):
    """An object of two copied parts, `left` (the end of a partial) then `right` (the start of
    the next)."""

    left: Piece
    right: Piece


class CopyPlan(msgspec.Struct, frozen=True):
    """Build the seams, then part n (1-based) of the final object is copied from parts[n - 1]."""

    part_size: int
    seams: tuple[Seam, ...]
    parts: tuple[Piece, ...]


class ThroughGateway(msgspec.Struct, frozen=True):
    """Read the partials in order and upload them again as parts of `part_size` bytes."""

    part_size: int


class NotJoinable(BadRequest):
    """The partial uploads cannot make one object (400, saying why)."""


def plan_join(lengths: Sequence[int]) -> CopyPlan | ThroughGateway:
    """How the partials of these lengths (in the final's order) become the final object."""
    total = sum(lengths)
    if total == 0:
        raise NotJoinable("the partial uploads hold no bytes")
    # Empty partials add nothing (tus-js-client sends some for files smaller than N bytes).
    sources = [index for index, length in enumerate(lengths) if length > 0]
    sizes = [lengths[index] for index in sources]
    heads = sizes[:-1]  # every partial but the last must fill whole parts
    part_size = min(min(heads, default=total), MAX_PART_SIZE)
    if part_size < MIN_PART_SIZE and heads:
        if total <= JOIN_IN_GATEWAY_MAX:
            return ThroughGateway(part_size=MIN_PART_SIZE)
        raise NotJoinable(
            f"every partial upload but the last must hold at least {MIN_PART_SIZE} bytes "
            f"(S3's smallest part) when the file is larger than {JOIN_IN_GATEWAY_MAX} bytes"
        )
    count = -(-total // part_size)
    if count > MAX_PARTS:
        raise NotJoinable(
            f"these partial uploads would join in {count} parts, more than S3's {MAX_PARTS}: use larger partials"
        )
    starts = [0, *accumulate(sizes)][:-1]
    seams: list[Seam] = []
    parts: list[Piece] = []
    for number in range(count):
        low, high = number * part_size, min((number + 1) * part_size, total)
        at = bisect.bisect_right(starts, low) - 1  # the partial holding the part's first byte
        start, size = starts[at], sizes[at]
        if high <= start + size:
            parts.append(Piece(sources[at], low - start, high - start))
            continue
        # The part crosses one boundary (the next partial, not the last or the last, is at
        # least a part long): copy it from a seam around that boundary.
        boundary = start + size
        right = high - boundary
        left = max(boundary - low, MIN_PART_SIZE, right)  # <= size: size >= part_size >= each
        seams.append(Seam(Piece(sources[at], size - left, size), Piece(sources[at + 1], 0, right)))
        parts.append(Piece(len(lengths) + len(seams) - 1, left - (boundary - low), left + right))
    return CopyPlan(part_size=part_size, seams=tuple(seams), parts=tuple(parts))
