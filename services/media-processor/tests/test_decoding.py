"""Real files of every format through the sandboxed decoder, and hostile files that must not hurt."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import PIL.Image
import pytest
from wand.image import Image
from wand.resource import limits as magick_limits

from media_processor.magic import Family
from media_processor.sandbox import Limits, Outcome, Sandbox, Unprocessable

from .sandboxed import decode

DATA = Path(__file__).parent / "data"


def sizes(outcome: Outcome) -> dict[str, tuple[int, int]]:
    return {v.name: (v.width, v.height) for v in outcome.variants}


def assert_clean_webp(outcome: Outcome) -> None:
    """Every variant is a WebP of the announced size carrying no EXIF, XMP or ICC chunk."""
    for variant in outcome.variants:
        data = Path(variant.path).read_bytes()
        assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
        assert b"EXIF" not in data and b"XMP " not in data and b"ICCP" not in data
        with Image(filename=f"webp:{variant.path}") as img:
            assert (img.width, img.height) == (variant.width, variant.height)


# -- real files ---------------------------------------------------------------------------------


async def test_a_rotated_phone_jpeg_gives_portrait_variants_and_its_exif(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "mei_Samsung_SM-J327T1.jpg", tmp_path)
    assert sizes(outcome) == {"large": (1920, 2560), "medium": (960, 1280), "thumb": (240, 320)}
    meta = outcome.metadata
    assert (meta.camera_make, meta.camera_model, meta.orientation) == ("samsung", "SM-J327T1", 6)
    assert (meta.width, meta.height) == (1932, 2576)
    assert meta.taken_at == datetime(2019, 9, 26, 16, 38)
    assert meta.f_number == 1.9 and meta.iso == 40
    assert_clean_webp(outcome)


async def test_gps_in_a_photo_is_reported_but_never_copied_into_variants(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "exiftool_GPS.jpg", tmp_path)
    assert outcome.metadata.gps is not None
    assert outcome.metadata.gps.latitude == pytest.approx(54.989667, abs=1e-6)
    assert sizes(outcome)["thumb"] == (120, 80)  # never upscaled
    assert_clean_webp(outcome)


async def test_heic_decodes_through_the_heic_coder_with_its_exif(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "heic_generated.heic", tmp_path)
    assert sizes(outcome) == {"large": (1280, 960), "medium": (1280, 960), "thumb": (320, 240)}
    meta = outcome.metadata
    assert meta.camera_model == "Synthetic HEIC" and meta.taken_at == datetime(2024, 5, 17, 9, 15)
    assert meta.gps is not None and meta.gps.latitude == pytest.approx(35.658581, abs=1e-5)
    assert_clean_webp(outcome)


async def test_an_animated_webp_gives_its_first_frame_at_canvas_size(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "webp_animated.webp", tmp_path)
    assert sizes(outcome)["large"] == (320, 240)


async def test_webp_exif_is_read_although_imagemagick_ignores_it(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "mei_Nikon_D1X.webp", tmp_path)
    assert outcome.metadata.camera_model == "NIKON D1X"
    assert sizes(outcome) == {"large": (600, 391), "medium": (600, 391), "thumb": (320, 209)}


@pytest.mark.parametrize("name", ["png_rgba_alpha.png", "jpeg_cmyk.jpg"])
async def test_png_with_alpha_and_cmyk_jpeg_become_webp(sandbox: Sandbox, name: str, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / name, tmp_path)
    assert sizes(outcome)["thumb"][0] == 320
    assert_clean_webp(outcome)


async def test_a_rotated_video_gets_a_portrait_poster_and_its_metadata(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "video_rotated_90.mov", tmp_path)
    assert sizes(outcome) == {"large": (720, 1280), "medium": (720, 1280), "thumb": (180, 320)}
    meta = outcome.metadata
    assert (meta.width, meta.height, meta.orientation, meta.duration_s) == (720, 1280, 6, 2.0)
    assert meta.video_codec == "h264"


async def test_video_gps_and_creation_time_come_from_the_container(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "mei_with-gps.mp4", tmp_path)
    meta = outcome.metadata
    assert meta.gps is not None and (meta.gps.latitude, meta.gps.longitude) == (51.4169, -0.0806)
    assert meta.taken_at == datetime(2017, 2, 22, 8, 20, 28, tzinfo=timezone.utc)
    assert sizes(outcome)["large"] == (1920, 1080)


@pytest.mark.parametrize(("name", "codec"), [("video_vp9.mkv", "vp9"), ("video_mjpeg.avi", "mjpeg")])
async def test_matroska_and_avi_get_posters(sandbox: Sandbox, name: str, codec: str, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / name, tmp_path)
    assert outcome.metadata.video_codec == codec
    assert sizes(outcome)["thumb"][0] == 320


async def test_a_pdf_reports_its_pages_and_renders_page_one(sandbox: Sandbox, tmp_path: Path) -> None:
    outcome = await decode(sandbox, DATA / "pdf_3pages_vector.pdf", tmp_path)
    assert outcome.metadata.page_count == 3
    width, height = sizes(outcome)["large"]
    assert 2540 <= height <= 2560 and width < height  # A4 portrait, at the bounded resolution


@pytest.mark.parametrize(
    "name",
    ["exiftool_Nikon.nef", "synthetic_sony_tiff_container.arw", "exiftool_Matroska.mkv"],
)
async def test_files_with_no_decodable_picture_fail_with_a_reason(sandbox: Sandbox, name: str, tmp_path: Path) -> None:
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, DATA / name, tmp_path)
    assert failure.value.reason == "decode_failed"


# -- hostile files --------------------------------------------------------------------------------


def written(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


HOSTILE_AS_DECODER_INPUT: dict[str, tuple[Family, bytes]] = {
    # ImageTragick: an MVG that, decoded as MVG, would fetch a URL and run a delegate.
    "tragick.jpg": ("jpeg", b'push graphic-context\nviewbox 0 0 640 480\nfill \'url(https://example.com/x.jpg"|ls "-la)\'\npop graphic-context\n'),
    "external.png": ("png", b'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"><image xlink:href="http://127.0.0.1:9/x.png"/></svg>'),
    "hostile.mp4": ("isobmff", b"\x00\x00\x00\x18ftypisom" + b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\nhttp://127.0.0.1:9/x\n"),
    "hostile.pdf": ("pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog /OpenAction << /S /JavaScript /JS (app.alert(1)) >> >>\n%%EOF\n"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_AS_DECODER_INPUT))
async def test_hostile_content_handed_to_a_decoder_fails_cleanly(sandbox: Sandbox, name: str, tmp_path: Path) -> None:
    # The magic check stops these before any decoder; even past it, the decoders refuse them.
    family, content = HOSTILE_AS_DECODER_INPUT[name]
    source = written(tmp_path, name, content)
    with pytest.raises(Unprocessable) as failure:
        await decode(sandbox, source, tmp_path, family)
    assert failure.value.reason == "decode_failed"


async def test_corrupt_exif_offsets_leave_metadata_out_but_still_make_variants(sandbox: Sandbox, tmp_path: Path) -> None:
    original = (DATA / "jpeg_orientation_6.jpg").read_bytes()
    # An APP1 Exif segment whose IFD0 offset and entries point far outside the file.
    tiff = b"MM\x00*\x00\x00\x00\x08" + struct.pack(">H", 2)
    tiff += struct.pack(">HHII", 0x010F, 2, 0xFFFFFFF, 0x7FFFFFF0) + struct.pack(">HHII", 0x8769, 4, 1, 0xFFFFFFF0)
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + 6 + len(tiff)) + b"Exif\x00\x00" + tiff
    source = written(tmp_path, "corrupt-exif.jpg", original[:2] + app1 + original[2:])
    outcome = await decode(sandbox, source, tmp_path)
    assert outcome.metadata.camera_make is None
    assert sizes(outcome)["large"][0] > 0


async def test_a_jpeg_zip_polyglot_is_re_encoded_without_its_payload(sandbox: Sandbox, tmp_path: Path) -> None:
    payload = b"PK\x03\x04" + b"<?php system($_GET['c']); ?>" * 10
    source = written(tmp_path, "polyglot.jpg", (DATA / "exiftool_GPS.jpg").read_bytes() + payload)
    outcome = await decode(sandbox, source, tmp_path)
    for variant in outcome.variants:
        assert b"<?php" not in Path(variant.path).read_bytes()
    assert_clean_webp(outcome)


async def test_a_decode_past_its_deadline_is_killed_and_the_next_one_is_served(tmp_path: Path) -> None:
    # A 12 MP JPEG of colour noise: its decode alone (0.17 s CPU here) is past the deadline and
    # its variants take as long again (the 5 MP sample this used could finish within 0.3 s since
    # JPEG left ImageMagick).
    slow = tmp_path / "noise_12mp.jpg"
    PIL.Image.frombytes("RGB", (4000, 3000), random.Random(22).randbytes(4000 * 3000 * 3)).save(slow, quality=92)
    impatient = Sandbox(Limits(timeout_s=0.1))
    with pytest.raises(Unprocessable) as failure:
        await decode(impatient, slow, tmp_path)
    assert failure.value.reason == "timeout"
    outcome = await decode(Sandbox(Limits(timeout_s=60)), DATA / "exiftool_GPS.jpg", tmp_path)
    assert outcome.variants


async def test_imagemagick_in_a_decoding_child_never_ends_a_decode_before_the_sandbox_deadline() -> None:
    # ImageMagick's own `time` limit _exit(1)s the process when it runs out, so a slow asset past
    # it would fail as "the decoder died" instead of as a timeout: the sandbox's deadline
    # (Limits.timeout_s, RAWDRIVE_DECODE_TIMEOUT_S) must be the only one. Read in a child, where
    # the decoders' policy is loaded; a deadline longer than any limit a policy would set.
    patient = Sandbox(Limits(timeout_s=3600))
    assert await patient.call(magick_limits.__getitem__, "time") > patient.limits.timeout_s


async def test_a_decode_over_its_memory_cap_fails_and_the_next_one_is_served(sandbox: Sandbox, tmp_path: Path) -> None:
    starved = Sandbox(Limits(timeout_s=60, memory_bytes=160 * 1024**2))
    with pytest.raises(Unprocessable) as failure:
        await decode(starved, DATA / "mei_Samsung_SM-J327T1.jpg", tmp_path)
    assert failure.value.reason == "decode_failed"
    assert (await decode(sandbox, DATA / "exiftool_GPS.jpg", tmp_path)).variants


async def test_a_variant_that_cannot_be_written_fails_the_decode_with_a_reason(sandbox: Sandbox, tmp_path: Path) -> None:
    # Variants are encoded on other threads than the one scaling them: their errors must still
    # reach the caller, or the asset would be announced with variants that were never written.
    source = DATA / "mei_Samsung_SM-J327T1.jpg"
    with pytest.raises(Unprocessable) as failure:
        await sandbox.process(str(source), "jpeg", str(tmp_path / "missing"))  # no such work folder
    assert failure.value.reason == "decode_failed"
    assert "large.webp" in failure.value.detail


def test_start_leaves_a_forkserver_that_has_loaded_imagemagick() -> None:
    # In a fresh interpreter: in this one an earlier test may have started the forkserver already.
    script = (
        "from pathlib import Path\n"
        "from media_processor.sandbox import Sandbox\n"
        "Sandbox().start()\n"
        "children = [c for t in Path('/proc/self/task').iterdir() for c in (t / 'children').read_text().split()]\n"
        "print(any('MagickWand' in Path(f'/proc/{c}/maps').read_text() for c in children))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "True"
