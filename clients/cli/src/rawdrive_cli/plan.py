"""How a file's bytes are cut up and sent: protocol choice, tus chunks, multipart parts, rate.

Pure functions; upload.py performs them.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from rawdrive_cli.state import Protocol

MIB = 1024 * 1024
# Files from this size go by S3 multipart (parallel parts straight to storage) under --protocol auto.
DEFAULT_S3_THRESHOLD = 64 * MIB
# The gateway stores tus bytes in parts of 5 MiB (more only past 10,000 parts); a PATCH that fills
# whole parts streams on to storage, one that ends inside a part is kept aside and re-read, so
# every PATCH but the last is a whole number of parts, as tus-js-client's chunkSize is for the gateway's front end.
TUS_PART_SIZE = 5 * MIB
TUS_MAX_PARTS = 10_000
# Presigned part URLs asked for at once (the gateway accepts up to 1000 per request).
PRESIGN_BATCH = 100

ProtocolChoice = Literal["auto", "tus", "s3"]


class ByteRange(msgspec.Struct, frozen=True, array_like=True):
    start: int
    length: int


def choose_protocol(choice: ProtocolChoice, size: int, s3_threshold: int = DEFAULT_S3_THRESHOLD) -> Protocol:
    if choice == "tus":
        return "tus"
    if choice == "s3":
        return "s3_multipart"
    return "s3_multipart" if size >= s3_threshold else "tus"


def tus_chunk_size(size: int) -> int:
    """The gateway's tus part size for a file of `size` bytes (5 MiB, in whole MiB beyond 10,000 parts)."""
    needed = -(-size // TUS_MAX_PARTS)
    return max(TUS_PART_SIZE, -(-needed // MIB) * MIB)


def tus_chunks(offset: int, size: int) -> list[ByteRange]:
    """PATCH bodies from `offset` to the end: each ends on a part boundary (or at the end)."""
    chunk = tus_chunk_size(size)
    ranges = []
    position = offset
    while position < size:
        end = min((position // chunk + 1) * chunk, size)
        ranges.append(ByteRange(position, end - position))
        position = end
    return ranges


def part_range(part_number: int, part_size: int, size: int) -> ByteRange:
    """Part n (from 1) covers part_size bytes from (n-1)*part_size; the last holds the remainder."""
    start = (part_number - 1) * part_size
    if part_number < 1 or start >= size:
        raise ValueError(f"part {part_number} lies outside a {size}-byte file in {part_size}-byte parts")
    return ByteRange(start, min(part_size, size - start))


def missing_parts(part_count: int, stored: set[int]) -> list[int]:
    return [n for n in range(1, part_count + 1) if n not in stored]


def batches(numbers: list[int], size: int = PRESIGN_BATCH) -> list[list[int]]:
    return [numbers[i : i + size] for i in range(0, len(numbers), size)]


def throttle_delay(rate_bytes_s: float | None, sent: int, elapsed_s: float) -> float:
    """How long to pause so that `sent` bytes in `elapsed_s` seconds stay within the rate."""
    if not rate_bytes_s:
        return 0.0
    return max(0.0, sent / rate_bytes_s - elapsed_s)


_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": MIB, "mb": MIB, "mib": MIB, "g": 1024 * MIB,
          "gb": 1024 * MIB, "gib": 1024 * MIB}


def parse_size(text: str) -> int:
    """`512k`, `8M`, `1.5GiB`, `1000` -> bytes (binary units, as curl's --limit-rate)."""
    stripped = text.strip().lower()
    number = stripped.rstrip("bgikm")
    unit = stripped[len(number):]
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size; write e.g. 512k, 8M or 1G") from None
    if unit not in _UNITS or value <= 0:
        raise ValueError(f"{text!r} is not a size; write e.g. 512k, 8M or 1G")
    return int(value * _UNITS[unit])
