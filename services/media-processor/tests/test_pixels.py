"""Issue 22's pixel side: limits before decoding, damaged files, colour management.

Every file is generated here (or is a committed sample altered here): gigapixel declarations in
a few hundred bytes, JPEGs and HEICs cut short, PNGs with broken image data, videos with corrupt frames and
wide-gamut pictures tagged with colord's Adobe RGB profile (CC0, `data/colord_AdobeRGB1998.icc`).
"""

from __future__ import annotations

import io
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pillow_heif
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wand.color import Color
from wand.image import Image

from media_processor.dimensions import (
    JpegFrame,
    PixelLimits,
    declared_size,
    excess,
    heif_cut_short,
    heif_icc_profile,
    jpeg_frame,
)
from media_processor.magic import Family
from media_processor.metadata import decode_warning
from media_processor.sandbox import DECLARED_SIZE_WITHIN, Limits, Sandbox, Unprocessable
from media_processor.variants import Size

from .sandboxed import decode

DATA = Path(__file__).parent / "data"
ADOBE_RGB = (DATA / "colord_AdobeRGB1998.icc").read_bytes()


def written(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def blob(img: Image, fmt: str, **options: str) -> bytes:
    for key, value in options.items():
        img.options[key] = value
    img.format = fmt
    return img.make_blob()


# -- generated headers --------------------------------------------------------------------------


def small_jpeg() -> bytes:
    with Image(width=64, height=48, background=Color("#336699")) as img:
        return blob(img, "jpeg")


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real 64x48 JPEG whose frame header (SOF0) declares another size."""
    data = bytearray(small_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png(width: int, height: int, idat: bytes | None = None) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if idat is None:
        idat = zlib.compress(b"".join(b"\x00" + bytes((x * 7 + y) % 256 for x in range(3 * width)) for y in range(height)))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def webp(kind: str) -> bytes:
    """A 64x48 WebP of each header kind: lossy (VP8), lossless (VP8L), extended (VP8X, alpha)."""
    with Image(width=64, height=48, background=Color("#33669980" if kind == "VP8X" else "#336699")) as img:
        data = blob(img, "webp", **({"webp:lossless": "true"} if kind == "VP8L" else {}))
    assert data[12:16] == kind.ljust(4).encode()
    return data


def webp_declaring(kind: str, width: int, height: int) -> bytes:
    data = bytearray(webp(kind))
    if kind == "VP8X":
        data[24:30] = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    elif kind == "VP8 ":
        data[26:30] = struct.pack("<HH", width, height)
    else:
        data[21:25] = struct.pack("<I", (width - 1) | (height - 1) << 14)
    return bytes(data)


def heic_declaring(width: int, height: int) -> bytes:
    """The committed 1280x960 HEIC with every `ispe` (its picture's and its tiles') made larger."""
    data = bytearray((DATA / "heic_generated.heic").read_bytes())
    at = data.find(b"ispe")
    assert at > 0
    while at > 0:
        data[at + 8 : at + 16] = struct.pack(">II", width, height)
        at = data.find(b"ispe", at + 4)
    return bytes(data)


def mov_declaring(width: int, height: int) -> bytes:
    """The committed 2 s MOV (1280x720 stored) with its video track header declaring another size."""
    data = bytearray((DATA / "video_rotated_90.mov").read_bytes())
    at = data.find(b"tkhd") + 4  # the box body; version 0: width and height at 76 and 80
    assert data[at] == 0
    data[at + 76 : at + 84] = struct.pack(">II", width << 16, height << 16)
    return bytes(data)


@pytest.mark.parametrize(
    ("family", "data", "size"),
    [
        ("jpeg", small_jpeg(), Size(64, 48)),
        ("jpeg", jpeg_declaring(60000, 50000), Size(60000, 50000)),
        ("png", png(65000, 65000, b""), Size(65000, 65000)),
        ("webp", webp("VP8 "), Size(64, 48)),
        ("webp", webp("VP8L"), Size(64, 48)),
        ("webp", webp("VP8X"), Size(64, 48)),
        ("webp", webp_declaring("VP8X", 100000, 90000), Size(100000, 90000)),
        ("heif", (DATA / "heic_generated.heic").read_bytes(), Size(1280, 960)),
        ("heif", heic_declaring(70000, 60000), Size(70000, 60000)),
        ("isobmff", (DATA / "mei_with-gps.mp4").read_bytes(), Size(1920, 1080)),
        ("isobmff", mov_declaring(30000, 30000), Size(30000, 30000)),
    ],
)
def test_headers_declare_their_picture_size(family: str, data: bytes, size: Size) -> None:
    assert declared_size(data, family) == size


def test_a_jpeg_frame_header_after_large_app_segments_is_found() -> None:
    # EXIF with a thumbnail (which has its own SOF) and an ICC segment come before the frame.
    data = (DATA / "mei_Samsung_SM-J327T1.jpg").read_bytes()
    assert declared_size(data, "jpeg") == Size(2576, 1932)


def test_a_jpeg_frame_names_its_components_and_joins_its_icc_chunks_in_sequence_order() -> None:
    # Profiles above 64 KB span several APP2 segments, each numbered; join them by number.
    def app2(number: int, count: int, body: bytes) -> bytes:
        segment = b"ICC_PROFILE\x00" + bytes((number, count)) + body
        return b"\xff\xe2" + struct.pack(">H", len(segment) + 2) + segment

    data = small_jpeg()
    tagged = data[:2] + app2(2, 2, ADOBE_RGB[100:]) + app2(1, 2, ADOBE_RGB[:100]) + data[2:]
    frame = jpeg_frame(tagged)
    assert frame is not None
    assert (frame.size, frame.components, frame.icc_profile) == (Size(64, 48), 3, ADOBE_RGB)
    assert jpeg_frame(data) == JpegFrame(size=Size(64, 48), components=3, icc_profile=None)
    cmyk = jpeg_frame((DATA / "jpeg_cmyk.jpg").read_bytes())
    assert cmyk is not None and cmyk.components == 4
    assert jpeg_frame(data[:20]) is None


@given(st.binary(max_size=300), st.sampled_from(["jpeg", "png", "webp", "heif", "isobmff"]))
def test_reading_a_declared_size_from_arbitrary_bytes_never_raises(data: bytes, family: str) -> None:
    for prefix in (b"", b"\xff\xd8", b"RIFF\x00\x00\x00\x00WEBPVP8X", b"\x00\x00\x00\x10meta", b"\x00\x00\x00\x10moov"):
        declared_size(prefix + data, family)
        if family == "jpeg":
            jpeg_frame(prefix + data)


def test_limits_name_what_is_too_large() -> None:
    limits = PixelLimits(max_width=1000, max_height=800, max_pixels=500_000)
    assert excess(Size(1000, 500), limits) is None
    assert "width 1001" in (excess(Size(1001, 10), limits) or "")
    assert "height 801" in (excess(Size(10, 801), limits) or "")
    assert "700x800" in (excess(Size(700, 800), limits) or "")


def test_the_default_limits_let_every_current_camera_through() -> None:
    # Samsung's 200 MP phone sensor, Phase One IQ4 150 MP, Sony's 240 MP pixel-shift composite,
    # a 360-degree phone panorama.
    for size in (Size(16320, 12240), Size(14204, 10652), Size(19008, 12672), Size(40000, 5000)):
        assert excess(size, PixelLimits()) is None


# -- limits before decoding, through the sandbox -----------------------------------------------

GIGAPIXEL_FILES: dict[str, tuple[Family, bytes]] = {
    "jpeg_60000x50000.jpg": ("jpeg", jpeg_declaring(60000, 50000)),
    "png_65000x65000.png": ("png", png(65000, 65000, b"")),
    "webp_vp8_16383x16383.webp": ("webp", webp_declaring("VP8 ", 16383, 16383)),
    "webp_vp8l_16384x16384.webp": ("webp", webp_declaring("VP8L", 16384, 16384)),
    "webp_vp8x_100000x90000.webp": ("webp", webp_declaring("VP8X", 100000, 90000)),
    "heic_70000x60000.heic": ("heif", heic_declaring(70000, 60000)),
    "mov_30000x30000.mov": ("isobmff", mov_declaring(30000, 30000)),
}


@pytest.mark.parametrize("name", sorted(GIGAPIXEL_FILES))
async def test_a_small_file_declaring_a_gigapixel_picture_is_refused_before_decoding(
    sandbox: Sandbox, name: str, tmp_path: Path
) -> None:
    family, content = GIGAPIXEL_FILES[name]
    assert len(content) < 25_000
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, written(tmp_path, name, content), tmp_path, family)
    assert (failure.value.reason, failure.value.cause) == ("unsupported_content", "too_many_pixels")
    assert "above the limit" in failure.value.detail
    assert not list((tmp_path / "work").iterdir())  # nothing was decoded or written


# Each file through a fresh interpreter's Sandbox, as the processor hands it an upload: the
# verdict, and how many processes that interpreter has started by then (a decoder comes from the
# forkserver, which stays its child).
THROUGH_A_FRESH_SANDBOX = """
import asyncio, sys
from pathlib import Path
from media_processor.sandbox import Sandbox, Unprocessable

async def main(work, *files):
    for path, family in zip(files[::2], files[1::2]):
        try:
            await Sandbox().process(path, family, work)
            verdict = "decoded"
        except Unprocessable as refused:
            verdict = refused.cause or refused.reason
        print(verdict, sum(len((t / "children").read_text().split()) for t in Path("/proc/self/task").iterdir()))

asyncio.run(main(*sys.argv[1:]))
"""


def through_a_fresh_sandbox(tmp_path: Path, files: dict[str, tuple[Family, bytes]]) -> list[tuple[str, int]]:
    arguments = [str(tmp_path)]
    for name, (family, content) in files.items():
        arguments += [str(written(tmp_path, name, content)), family]
    result = subprocess.run([sys.executable, "-c", THROUGH_A_FRESH_SANDBOX, *arguments],
                            capture_output=True, text=True, timeout=120, check=True)
    return [(verdict, int(processes)) for verdict, processes in (line.split() for line in result.stdout.splitlines())]


def test_a_declared_gigapixel_picture_is_refused_without_forking_a_decoder(tmp_path: Path) -> None:
    # The header decides: forking a decoder to read it cost 20-50 ms a refusal on a busy machine.
    assert through_a_fresh_sandbox(tmp_path, GIGAPIXEL_FILES) == [("too_many_pixels", 0)] * len(GIGAPIXEL_FILES)


def test_a_frame_header_past_the_head_the_service_reads_is_refused_by_the_decoder(tmp_path: Path) -> None:
    # The service reads only the head of a file for it; the decoder reads the whole file.
    flood = jpeg_declaring(60000, 50000)
    comments = b"".join(b"\xff\xfe" + struct.pack(">H", 65535) + bytes(65533) for _ in range(3))
    late = flood[:2] + comments + flood[2:]
    assert late.index(b"\xff\xc0") > DECLARED_SIZE_WITHIN
    assert declared_size(late, "jpeg") == Size(60000, 50000)
    [(verdict, processes)] = through_a_fresh_sandbox(tmp_path, {"late_frame.jpg": ("jpeg", late)})
    assert verdict == "too_many_pixels"
    assert processes > 0  # the forkserver, which forked the decoder that refused it


@pytest.mark.parametrize(
    ("name", "limits", "what"),
    [
        ("mei_Samsung_SM-J327T1.jpg", PixelLimits(max_width=2000), "declared width 2576"),
        ("mei_with-gps.mp4", PixelLimits(max_pixels=1_000_000), "video frame"),
        ("pdf_3pages_vector.pdf", PixelLimits(max_pixels=1_000_000), "PDF page"),
    ],
)
async def test_every_route_compares_the_declared_size_with_the_configured_limits(
    name: str, limits: PixelLimits, what: str, tmp_path: Path
) -> None:
    strict = Sandbox(Limits(timeout_s=60, pixels=limits))
    with pytest.raises(Unprocessable) as failure:
        await decode(strict, DATA / name, tmp_path)
    assert failure.value.cause == "too_many_pixels"
    assert what in failure.value.detail
    # The same file within the default limits is processed.
    assert (await decode(Sandbox(Limits(timeout_s=60)), DATA / name, tmp_path)).variants


# -- damaged files ------------------------------------------------------------------------------


def test_decoder_complaints_become_warnings_by_kind() -> None:
    assert decode_warning("Premature end of JPEG file").code == "truncated"
    assert decode_warning("ffmpeg: stream 0, offset 0x2e34: partial file").code == "truncated"
    assert decode_warning("Corrupt JPEG data: premature end of data segment").code == "corrupt_data"
    assert decode_warning("Corrupt JPEG data: 403 extraneous bytes before marker 0xd9").code == "corrupt_data"
    assert decode_warning("ffmpeg: error while decoding MB 14 9, bytestream 3445").code == "corrupt_data"


async def test_a_jpeg_cut_short_is_available_with_a_truncated_warning(sandbox: Sandbox, tmp_path: Path) -> None:
    whole = (DATA / "mei_Samsung_SM-J327T1.jpg").read_bytes()
    outcome = await decode(sandbox, written(tmp_path, "cut.jpg", whole[: len(whole) // 3]), tmp_path)
    assert [w.code for w in outcome.metadata.warnings] == ["truncated"]
    assert "Premature end of JPEG file" in outcome.metadata.warnings[0].detail
    assert {v.name: (v.width, v.height) for v in outcome.variants}["thumb"] == (240, 320)


async def test_a_jpeg_with_corrupt_scan_data_is_available_with_a_corrupt_data_warning(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    data = bytearray((DATA / "mei_Samsung_SM-J327T1.jpg").read_bytes())
    noise = random.Random(22)
    for at in range(len(data) // 2, len(data) // 2 + 4000, 13):
        data[at] = noise.randrange(0xFF)  # never 0xFF: no markers, only damaged entropy-coded data
    outcome = await decode(sandbox, written(tmp_path, "corrupt.jpg", bytes(data)), tmp_path)
    assert [w.code for w in outcome.metadata.warnings] == ["corrupt_data"]
    assert "Corrupt JPEG data" in outcome.metadata.warnings[0].detail


async def test_a_grey_jpeg_is_decoded_as_one_channel_and_written_grey(sandbox: Sandbox, tmp_path: Path) -> None:
    with Image(width=3000, height=2000, pseudo="gradient:black-white") as img:
        img.type = "grayscale"
        data = blob(img, "jpeg")
    assert data[data.index(b"\xff\xc0") + 9] == 1  # the frame has one component
    outcome = await decode(sandbox, written(tmp_path, "grey.jpg", data), tmp_path)
    assert {v.name: (v.width, v.height) for v in outcome.variants}["large"] == (2560, 1707)
    with Image(filename=next(v.path for v in outcome.variants if v.name == "medium")) as medium:
        red, green, blue = (medium[640, 426].red, medium[640, 426].green, medium[640, 426].blue)
    assert red == green == blue and 0.3 < red < 0.7  # grey, halfway down the gradient


async def test_a_jpeg_libjpeg_cannot_decode_fails_as_corrupt_content(sandbox: Sandbox, tmp_path: Path) -> None:
    # Its scan names a component the frame does not have: libjpeg-turbo's TurboJPEG API refuses
    # it, and so does ImageMagick's coder, which then has the last word.
    data = bytearray(small_jpeg())
    sos = data.index(b"\xff\xda")
    data[sos + 5] = 9  # the first scan component's selector
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, written(tmp_path, "broken.jpg", bytes(data)), tmp_path)
    assert (failure.value.reason, failure.value.cause) == ("decode_failed", "corrupt_content")


def grid_heic(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A 1024x768 HEIC in 256 px tiles, as phones write them (an iPhone's are 512 px)."""
    monkeypatch.setattr(pillow_heif.options, "GRID_TILE_SIZE", 256)
    rows = bytes(random.Random(22).randrange(256) for _ in range(1024 * 3)) * 768
    out = io.BytesIO()
    pillow_heif.from_bytes("RGB", (1024, 768), rows).save(out, quality=60)
    return out.getvalue()


async def test_a_tiled_heic_cut_short_is_available_with_a_truncated_warning(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # libheif decodes it without complaint, leaving the tiles it lacks blank: the container says it.
    whole = grid_heic(monkeypatch)
    outcome = await decode(sandbox, written(tmp_path, "cut.heic", whole[: len(whole) * 2 // 3]), tmp_path)
    assert [w.code for w in outcome.metadata.warnings] == ["truncated"]
    assert "mdat box ends past the end of the file" in outcome.metadata.warnings[0].detail
    assert {v.name: (v.width, v.height) for v in outcome.variants}["large"] == (1024, 768)
    assert (await decode(sandbox, written(tmp_path, "whole.heic", whole), tmp_path)).metadata.warnings == ()


async def test_a_single_image_heic_cut_short_fails_as_corrupt_content(sandbox: Sandbox, tmp_path: Path) -> None:
    whole = (DATA / "heic_generated.heic").read_bytes()
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, written(tmp_path, "cut.heic", whole[: len(whole) * 2 // 3]), tmp_path)
    assert (failure.value.reason, failure.value.cause) == ("decode_failed", "corrupt_content")
    assert "outside of file bounds" in failure.value.detail


def test_a_heif_cut_short_is_told_from_one_with_a_trailer() -> None:
    whole = (DATA / "heic_generated.heic").read_bytes()
    assert heif_cut_short(whole) is None
    assert heif_cut_short(whole[:-1]) == b"mdat"
    assert heif_cut_short(whole[:20]) == b"ftyp"
    assert heif_cut_short(whole + b"SEFH\x00\x00\x00\x07 phone trailer, not a box") is None


def broken_idat(width: int, height: int) -> bytes:
    whole = png(width, height)
    (length,) = struct.unpack(">I", whole[33:37])  # the IDAT after the signature and IHDR
    stream = bytearray(whole[41 : 41 + length])
    for at in range(len(stream) // 3, len(stream) // 3 + 50):
        stream[at] ^= 0x5A  # the deflate stream is broken; the chunk's CRC is right
    return png(width, height, bytes(stream))


@pytest.mark.parametrize(
    "content",
    [broken_idat(400, 300), png(400, 300)[:-40]],
    ids=["bad-idat", "cut-short"],
)
async def test_a_png_with_damaged_image_data_fails_as_corrupt_content(
    sandbox: Sandbox, content: bytes, tmp_path: Path
) -> None:
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, written(tmp_path, "damaged.png", content), tmp_path)
    assert (failure.value.reason, failure.value.cause) == ("decode_failed", "corrupt_content")


async def test_a_video_with_corrupt_frames_gets_a_poster_and_a_warning(sandbox: Sandbox, tmp_path: Path) -> None:
    data = bytearray((DATA / "video_rotated_90.mov").read_bytes())
    noise = random.Random(22)
    for at in range(data.index(b"mdat") + 2000, len(data) - 1000, 97):
        data[at] = noise.randrange(256)
    outcome = await decode(sandbox, written(tmp_path, "corrupt.mov", bytes(data)), tmp_path)
    assert outcome.variants
    assert "corrupt_data" in [w.code for w in outcome.metadata.warnings]


async def test_a_video_cut_short_gets_a_poster_and_a_truncated_warning(sandbox: Sandbox, tmp_path: Path) -> None:
    data = (DATA / "video_rotated_90.mov").read_bytes()
    outcome = await decode(sandbox, written(tmp_path, "cut.mov", data[: len(data) // 2]), tmp_path)
    assert outcome.variants
    assert "truncated" in [w.code for w in outcome.metadata.warnings]


@pytest.mark.parametrize(
    "name", ["mei_Samsung_SM-J327T1.jpg", "png_rgba_alpha.png", "heic_generated.heic", "video_rotated_90.mov"]
)
async def test_healthy_files_carry_no_warnings(sandbox: Sandbox, name: str, tmp_path: Path) -> None:
    assert (await decode(sandbox, DATA / name, tmp_path)).metadata.warnings == ()


# -- colour -------------------------------------------------------------------------------------

# Adobe RGB (1998) -> sRGB by the book: Adobe's gamma 563/256 and RGB -> XYZ matrix, then sRGB's
# XYZ -> RGB matrix and transfer curve (both D65). An independent reference for LittleCMS.
_ADOBE_TO_XYZ = ((0.5767309, 0.1855540, 0.1881852), (0.2973769, 0.6273491, 0.0752741), (0.0270343, 0.0706872, 0.9911085))
_XYZ_TO_SRGB = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560), (0.0556434, -0.2040259, 1.0572252))


def adobe_to_srgb(colour: tuple[int, int, int]) -> tuple[int, int, int]:
    linear = [(c / 255) ** (563 / 256) for c in colour]
    xyz = [sum(m * v for m, v in zip(row, linear)) for row in _ADOBE_TO_XYZ]
    srgb = [min(1.0, max(0.0, sum(m * v for m, v in zip(row, xyz)))) for row in _XYZ_TO_SRGB]
    encoded = [12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055 for v in srgb]
    return (round(255 * encoded[0]), round(255 * encoded[1]), round(255 * encoded[2]))


# A red and a green an sRGB screen can show, both of which Adobe RGB encodes with other numbers.
PATCHES = ((200, 30, 40), (120, 200, 80))


def patches(fmt: str, profile: bytes | None) -> bytes:
    """Side-by-side flat patches, 3000x1000, tagged with `profile` (the numbers are not converted)."""
    with Image(width=3000, height=1000, background=Color("white")) as img:
        for index, (r, g, b) in enumerate(PATCHES):
            with Image(width=1500, height=1000, background=Color(f"rgb({r},{g},{b})")) as patch:
                img.composite(patch, 1500 * index, 0)
        if profile is not None:
            img.profiles["icc"] = profile  # attach only: the pixels keep their Adobe RGB numbers
        img.compression_quality = 95
        return blob(img, fmt)


def colours(path: str) -> list[tuple[int, int, int]]:
    """The colour at the middle of each patch of a WebP variant, 0..255."""
    with Image(filename=f"webp:{path}") as img:
        assert img.profiles["icc"] is None
        found = []
        for index in range(len(PATCHES)):
            pixel = img[int((index + 0.5) * img.width / len(PATCHES)), img.height // 2]
            found.append((round(pixel.red * 255), round(pixel.green * 255), round(pixel.blue * 255)))
        return found


def close(a: tuple[int, int, int], b: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
async def test_a_wide_gamut_picture_is_converted_to_srgb_before_its_profile_is_stripped(
    sandbox: Sandbox, fmt: str, tmp_path: Path
) -> None:
    source = written(tmp_path, f"adobe.{fmt}", patches(fmt, ADOBE_RGB))
    outcome = await decode(sandbox, source, tmp_path)
    expected = [adobe_to_srgb(c) for c in PATCHES]
    assert expected[0] == pytest.approx((233, 24, 36), abs=1)  # the reference itself: not the same numbers
    for variant in outcome.variants:
        found = colours(variant.path)
        assert all(close(f, e) for f, e in zip(found, expected)), (variant.name, found, expected)
        assert not any(close(f, p, 15) for f, p in zip(found, PATCHES))


async def test_a_wide_gamut_heic_is_converted_although_imagemagick_reads_no_profile_from_heic(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # The same patches, 1200x400, encoded by heif-enc with the Adobe RGB profile in a `colr`
    # box, as iPhones carry Display P3. ImageMagick 6 ignores that box; the processor reads it.
    source = DATA / "heic_adobergb_patches.heic"
    outcome = await decode(sandbox, source, tmp_path)
    expected = [adobe_to_srgb(c) for c in PATCHES]
    for variant in outcome.variants:
        found = colours(variant.path)
        assert all(close(f, e) for f, e in zip(found, expected)), (variant.name, found, expected)


def test_the_icc_profile_of_a_heic_is_found_in_its_container() -> None:
    assert heif_icc_profile((DATA / "heic_adobergb_patches.heic").read_bytes()) == ADOBE_RGB
    assert heif_icc_profile((DATA / "heic_generated.heic").read_bytes()) is None


async def test_an_untagged_picture_keeps_its_numbers(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, written(tmp_path, "untagged.jpg", patches("jpeg", None)), tmp_path)
    for variant in outcome.variants:
        found = colours(variant.path)
        assert all(close(f, p) for f, p in zip(found, PATCHES)), (variant.name, found)


async def test_a_cmyk_jpeg_becomes_srgb_with_its_colours(sandbox: Sandbox, tmp_path: Path) -> None:
    # Untagged CMYK: ImageMagick's own formula, as before. Pure cyan ink is a blue-green.
    with Image(width=600, height=400, background=Color("cmyk(255,0,0,0)")) as img:
        img.type = "colorseparation"
        img.compression_quality = 95
        content = blob(img, "jpeg")
    outcome = await decode(sandbox, written(tmp_path, "cmyk.jpg", content), tmp_path)
    thumb = next(v for v in outcome.variants if v.name == "thumb")
    with Image(filename=f"webp:{thumb.path}") as img:
        pixel = img[img.width // 2, img.height // 2]
        assert pixel.red < 0.1 and pixel.green > 0.9 and pixel.blue > 0.9
