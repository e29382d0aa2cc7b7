"""What crosses the sandbox's pipe: the job a decoding child is given, what it produces, and the
verdict when an asset cannot be processed. Its own module so that the sandbox (which sends jobs)
and imaging (which runs them in the child) both import it and neither imports the other.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from media_processor.dimensions import PixelLimits, excess
from media_processor.variants import ExtraVariantName, Size, VariantName
from rawdrive_contracts import MediaMetadata, ProcessingFailureReason
from rawdrive_contracts.formats import Family

# processing_failed's `cause` (an open set in the contract): which released `reason` each refines
# is fixed by the two constructors below.
FailureCause = Literal["too_many_pixels", "corrupt_content"]


class Job(msgspec.Struct, frozen=True, kw_only=True):
    path: str  # the downloaded original
    family: Family
    workdir: str  # where the child writes frames and variants
    timeout_s: float  # the child's own deadline for the programs it runs
    pixels: PixelLimits = PixelLimits()


class Produced(msgspec.Struct, frozen=True, kw_only=True):
    name: VariantName | ExtraVariantName
    path: str
    width: int
    height: int
    mime_type: str = "image/webp"


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """Metadata (with `warnings` when the file is damaged but decodable) and the variants."""

    metadata: MediaMetadata
    variants: tuple[Produced, ...]


class Unprocessable(Exception):
    """This asset cannot be processed, for good; the reason goes into processing_failed."""

    def __init__(self, reason: ProcessingFailureReason, detail: str, cause: FailureCause | None = None) -> None:
        super().__init__(f"{cause or reason}: {detail}")
        self.reason: ProcessingFailureReason = reason
        self.detail = detail[:1000]
        self.cause: FailureCause | None = cause

    def __reduce__(self) -> tuple[type[Unprocessable], tuple[str, str, FailureCause | None]]:
        # Crosses the pipe from the child: rebuild from every field, not from the message.
        return (Unprocessable, (self.reason, self.detail, self.cause))


def too_many_pixels(detail: str) -> Unprocessable:
    return Unprocessable("unsupported_content", detail, "too_many_pixels")


def refuse_oversized(size: Size | None, limits: PixelLimits, what: str) -> None:
    """Raise too_many_pixels when a declared size is above the limits (None: nothing declared)."""
    problem = excess(size, limits) if size is not None else None
    if problem is not None:
        raise too_many_pixels(f"{what}: {problem}")


def corrupt_content(detail: str) -> Unprocessable:
    return Unprocessable("decode_failed", detail, "corrupt_content")
