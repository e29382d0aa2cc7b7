"""Variant geometry: which sizes to make from a picture, what to ask the decoder for, and the
WebP settings every variant is written with.

Pure arithmetic. Long edges are fixed per variant, pictures are never upscaled, the aspect ratio
is kept (rounded to whole pixels, never below 1), and EXIF orientations 5-8 swap width and height.
"""

from __future__ import annotations

from typing import Literal

import msgspec

VariantName = Literal["large", "medium", "thumb"]
# A motion photo's embedded video and its poster (motion.py, imaging.with_motion_video).
ExtraVariantName = Literal["motion", "motion_poster"]

# Largest first: each variant is made from the one before it, which is cheaper than the original.
LONG_EDGES: tuple[tuple[VariantName, int], ...] = (("large", 2560), ("medium", 1280), ("thumb", 320))

# libwebp's effort (0 fast .. 6 small) and quality. The large encode is on the critical path of
# every photo: method 4 (the default) takes ~0.55 s CPU for a 2560 px variant, method 0 ~0.12 s.
# Method 0 does the least rate-distortion search, so it needs a higher quality for the same fidelity: at 83,
# measured with ffmpeg against the unencoded variant (large and medium of a real phone photo, a
# 12 MP and a 24 MP JPEG), SSIM and PSNR are equal or better than method 4 at 80 everywhere
# (at 82 the 12 MP large falls short). The price is bytes: +21-38% for those variants.
WEBP_QUALITY = 83
WEBP_METHOD = 0


class Size(msgspec.Struct, frozen=True):
    width: int
    height: int

    @property
    def long_edge(self) -> int:
        return max(self.width, self.height)


class PlannedVariant(msgspec.Struct, frozen=True):
    name: VariantName
    size: Size


def display_size(stored: Size, orientation: int | None) -> Size:
    """The size a viewer shows: orientations 5-8 are rotated a quarter turn."""
    if orientation in (5, 6, 7, 8):
        return Size(stored.height, stored.width)
    return stored


def fit(size: Size, long_edge: int) -> Size:
    """`size` scaled so its long edge is at most `long_edge`; unchanged if already within."""
    if size.long_edge <= long_edge:
        return size
    scale = long_edge / size.long_edge
    if size.width >= size.height:
        return Size(long_edge, max(1, round(size.height * scale)))
    return Size(max(1, round(size.width * scale)), long_edge)


def plan(display: Size) -> tuple[PlannedVariant, ...]:
    """Every variant for a picture of this (display) size, largest first."""
    return tuple(PlannedVariant(name, fit(display, edge)) for name, edge in LONG_EDGES)


def decode_hint(stored: Size) -> Size:
    """The `jpeg:size` hint: the largest variant in the stored orientation, same aspect ratio.

    libjpeg then decodes at the smallest 1/2, 1/4 or 1/8 scale still at least this large; pixels
    from libheif and LibRaw are reduced to exactly this before ImageMagick takes them. A hint
    with another aspect ratio (a square one) makes ImageMagick 6 ignore it and decode everything.
    """
    return fit(stored, LONG_EDGES[0][1])
