"""S3 multipart parts: the limits (Cloudflare R2's rules are the strictest we serve) and the part
plan. The one place for them: the multipart sessions, their API bodies and the tus store
all import these. No I/O.
"""

from __future__ import annotations

from collections.abc import Collection

import msgspec

MIB = 1024 * 1024
# R2 (and S3) refuse parts below 5 MiB except the last, above 5 GiB, and more than 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * 1024 * MIB
MAX_PARTS = 10_000
DEFAULT_PART_SIZE = 8 * MIB


class PartPlan(msgspec.Struct, frozen=True):
    """Every part is `part_size` bytes except the last, which holds the remainder."""

    part_size: int
    part_count: int


def parts_received(sizes: dict[int, int | None], listed: Collection[int] | None) -> int | None:
    """Bytes in the stored parts (part number -> size) a commit would join: those the client
    lists, or all without a list; None when storage did not report a size."""
    chosen = [size for number, size in sizes.items() if listed is None or number in listed]
    return None if None in chosen else sum(size or 0 for size in chosen)


def plan_parts(size_bytes: int, preferred: int = DEFAULT_PART_SIZE) -> PartPlan:
    """The preferred size, grown in whole MiB when the file would otherwise need >10,000 parts."""
    if size_bytes < 1:
        raise ValueError("a multipart upload needs at least one byte")
    needed = -(-size_bytes // MAX_PARTS)
    part_size = max(preferred, MIN_PART_SIZE, -(-needed // MIB) * MIB)
    if part_size > MAX_PART_SIZE:
        raise ValueError(f"{size_bytes} bytes cannot fit in {MAX_PARTS} parts of at most 5 GiB")
    return PartPlan(part_size=part_size, part_count=-(-size_bytes // part_size))

