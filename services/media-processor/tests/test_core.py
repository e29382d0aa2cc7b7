"""The pure core: type families from magic bytes, variant geometry, EXIF and metadata."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media_processor.exif import ExifTags, find_tiff, read_exif
from media_processor.magic import TypeMismatch, check, declared_families, sniff
from media_processor.metadata import (
    HachoirFacts,
    container_metadata,
    dms_to_degrees,
    exif_datetime,
    iso6709,
    parse_probe,
    photo_metadata,
    poster_time,
    video_metadata,
)
from media_processor.variants import Size, decode_hint, display_size, fit, plan

DATA = Path(__file__).parent / "data"


def head(name: str) -> bytes:
    return (DATA / name).read_bytes()[: 64 * 1024]


def tiff(order: str, entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A TIFF with one IFD at offset 8; values longer than 4 bytes go in `extra` after it."""
    marker = b"II*\x00" if order == "<" else b"MM\x00*"
    body = struct.pack(order + "H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack(order + "HHI", tag, kind, count) + value.ljust(4, b"\x00")
    return marker + struct.pack(order + "I", 8) + body + struct.pack(order + "I", 0) + extra


# -- magic --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("exiftool_GPS.jpg", "jpeg"),
        ("png_rgba_alpha.png", "png"),
        ("mei_Nikon_D1X.webp", "webp"),
        ("heic_generated.heic", "heif"),
        ("exiftool_Nikon.nef", "nef"),
        ("synthetic_sony_tiff_container.arw", "arw"),
        ("mei_with-gps.mp4", "isobmff"),
        ("video_rotated_90.mov", "isobmff"),
        ("video_mjpeg.avi", "avi"),
        ("video_vp9.mkv", "mkv"),
        ("pdf_3pages_vector.pdf", "pdf"),
    ],
)
def test_real_files_are_recognised_by_their_first_bytes(name: str, family: str) -> None:
    assert sniff(head(name)) == family


def test_a_canon_cr2_header_is_told_apart_from_other_tiff_raws() -> None:
    assert sniff(b"II*\x00\x10\x00\x00\x00CR\x02\x00" + bytes(64)) == "cr2"


def test_a_dng_is_recognised_by_its_dng_version_whoever_made_it() -> None:
    make = b"Apple\x00"
    data = tiff(
        "<", [(0x010F, 2, len(make), struct.pack("<I", 38)), (0xC612, 1, 4, bytes((1, 4, 0, 0)))], make
    )
    assert sniff(data) == "dng"
    assert check(data, "application/octet-stream", "IMG_0001.DNG") == "dng"
    assert check(data, "image/x-adobe-dng", "IMG_0001.dng") == "dng"
    assert check(data, "image/x-raw", "IMG_0001.raw") == "dng"


def test_a_canon_cr3_is_told_apart_from_iso_bmff_video() -> None:
    data = struct.pack(">I", 24) + b"ftypcrx \x00\x00\x00\x01crx isom" + bytes(64)
    assert sniff(data) == "cr3"
    assert check(data, "application/octet-stream", "IMG_0001.CR3") == "cr3"
    with pytest.raises(TypeMismatch):
        check(data, "video/mp4", "IMG_0001.mp4")


def test_a_tiff_from_an_unknown_maker_is_not_a_supported_raw() -> None:
    make = b"Kodak\x00"
    data = tiff("<", [(0x010F, 2, len(make), struct.pack("<I", 26))], make)
    assert sniff(data) is None


@pytest.mark.parametrize(
    ("content", "mime", "name"),
    [
        (b"MZ\x90\x00" + bytes(60), "image/jpeg", "holiday.jpg"),  # Windows executable
        (b"\x7fELF" + bytes(60), "image/jpeg", "holiday.jpg"),
        (b"PK\x03\x04" + bytes(60), "video/mp4", "clip.mp4"),  # ZIP archive
        (b"push graphic-context\nviewbox 0 0 640 480\n", "image/jpeg", "tragick.jpg"),  # MVG
        (b"<?xml version='1.0'?><svg xmlns='http://www.w3.org/2000/svg'/>", "image/png", "x.png"),
        (b"\xff\xd8\xff\xe0" + bytes(60), "application/pdf", "report.pdf"),  # JPEG declared PDF
        (b"%PDF-1.4\n", "image/jpeg", "photo.jpg"),
        (b"\xff\xd8\xff\xe0" + bytes(60), "application/octet-stream", "photo.jpg"),
    ],
)
def test_content_that_is_not_what_was_declared_is_a_type_mismatch(content: bytes, mime: str, name: str) -> None:
    with pytest.raises(TypeMismatch):
        check(content, mime, name)


def test_a_raw_sent_as_octet_stream_is_accepted_by_its_extension() -> None:
    assert check(head("exiftool_Nikon.nef"), "application/octet-stream", "DSC_0001.NEF") == "nef"
    assert check(head("exiftool_Nikon.nef"), "image/x-raw", "DSC_0001.raw") == "nef"
    with pytest.raises(TypeMismatch):
        check(head("exiftool_Nikon.nef"), "application/octet-stream", "DSC_0001.arw")


def test_declared_mime_type_parameters_and_case_do_not_matter() -> None:
    assert declared_families("Image/JPEG; charset=binary", "a.jpg") == {"jpeg"}
    assert declared_families("video/quicktime", "a.mov") == {"isobmff"}


@given(st.binary(max_size=256))
def test_sniffing_arbitrary_bytes_never_raises(data: bytes) -> None:
    sniff(data)


# -- variants -----------------------------------------------------------------------------------

sizes = st.builds(Size, st.integers(1, 30000), st.integers(1, 30000))


@given(sizes)
def test_variants_keep_the_aspect_ratio_and_never_upscale(size: Size) -> None:
    planned = plan(size)
    assert [v.name for v in planned] == ["large", "medium", "thumb"]
    for variant, edge in zip(planned, (2560, 1280, 320)):
        assert variant.size.long_edge == min(edge, size.long_edge)
        assert variant.size.width <= size.width and variant.size.height <= size.height
        # Rounded to whole pixels: the ratio is off by at most one pixel on the short edge.
        if size.width >= size.height:
            assert abs(variant.size.height - size.height * variant.size.width / size.width) <= 1
        else:
            assert abs(variant.size.width - size.width * variant.size.height / size.height) <= 1


@given(sizes, st.integers(0, 9))
def test_orientations_five_to_eight_swap_width_and_height(size: Size, orientation: int) -> None:
    shown = display_size(size, orientation)
    assert shown == (Size(size.height, size.width) if orientation in (5, 6, 7, 8) else size)


def test_the_decode_hint_has_the_pictures_own_aspect_ratio() -> None:
    assert decode_hint(Size(6000, 4000)) == Size(2560, 1707)
    assert decode_hint(Size(4000, 6000)) == Size(1707, 2560)
    assert decode_hint(Size(800, 600)) == Size(800, 600)


def test_a_one_pixel_line_stays_one_pixel_high() -> None:
    assert fit(Size(30000, 1), 320) == Size(320, 1)


# -- EXIF and metadata --------------------------------------------------------------------------


def test_exif_of_a_real_photo_becomes_normalised_metadata() -> None:
    data = (DATA / "exiftool_GPS.jpg").read_bytes()
    tiff_block = find_tiff(data, "jpeg")
    assert tiff_block is not None
    metadata = photo_metadata(read_exif(tiff_block), Size(120, 80))
    assert (metadata.camera_make, metadata.camera_model) == ("FUJIFILM", "FinePixS1Pro")
    # DateTimeOriginal, not the IFD0 modify date (2002-07-19 13:28:10) hachoir would report.
    assert metadata.taken_at == datetime(2002, 7, 13, 15, 58, 28)
    assert metadata.gps is not None
    assert metadata.gps.latitude == pytest.approx(54.989667, abs=1e-6)
    assert metadata.gps.longitude == pytest.approx(-1.914167, abs=1e-6)
    assert (metadata.width, metadata.height, metadata.orientation) == (120, 80, 1)


def test_exif_in_webp_heif_and_nef_is_read_too() -> None:
    webp = read_exif(find_tiff((DATA / "mei_Nikon_D1X.webp").read_bytes(), "webp"))  # type: ignore[arg-type]
    assert (webp.model, webp.date_time_original) == ("NIKON D1X", "2003:08:06 18:04:34")
    heif = read_exif(find_tiff((DATA / "heic_generated.heic").read_bytes(), "heif"))  # type: ignore[arg-type]
    assert heif.model == "Synthetic HEIC" and heif.gps_latitude is not None
    nef = read_exif(find_tiff((DATA / "exiftool_Nikon.nef").read_bytes(), "nef"))  # type: ignore[arg-type]
    assert (nef.model, nef.date_time_original, nef.iso) == ("NIKON D70", "2004:06:09 16:02:35", 200)


def test_exif_offsets_pointing_outside_the_block_are_skipped() -> None:
    broken = tiff(">", [(0x010F, 2, 100, struct.pack(">I", 0xFFFFFF00)), (0x8769, 4, 1, struct.pack(">I", 8))])
    assert read_exif(broken) == ExifTags()


@given(st.binary(max_size=512))
def test_reading_arbitrary_exif_bytes_never_raises(data: bytes) -> None:
    read_exif(b"II*\x00\x08\x00\x00\x00" + data)
    read_exif(b"MM\x00*\x00\x00\x00\x08" + data)


def test_exif_dates_keep_their_offset_only_when_one_was_recorded() -> None:
    assert exif_datetime("2024:05:17 14:32:05", "+02:00") == datetime(
        2024, 5, 17, 14, 32, 5, tzinfo=timezone(timedelta(hours=2))
    )
    assert exif_datetime("2024:05:17 14:32:05") == datetime(2024, 5, 17, 14, 32, 5)
    assert exif_datetime("0000:00:00 00:00:00") is None


@given(st.floats(0, 89), st.floats(0, 59), st.floats(0, 59.99), st.sampled_from(["N", "S"]))
def test_gps_degrees_minutes_seconds_become_signed_decimal_degrees(d: float, m: float, s: float, ref: str) -> None:
    value = dms_to_degrees((d, m, s), ref, "S", 90)
    assert value is not None
    assert abs(value) == pytest.approx(d + m / 60 + s / 3600, abs=1e-6)
    assert (value < 0) == (ref == "S" and value != 0)


def test_video_metadata_comes_from_ffprobe_with_rotation_and_location() -> None:
    probe = parse_probe(
        b'{"streams":[{"codec_type":"video","codec_name":"h264","width":1280,"height":720,'
        b'"avg_frame_rate":"30000/1001","side_data_list":[{"rotation":-90}]},'
        b'{"codec_type":"audio","codec_name":"aac"}],'
        b'"format":{"duration":"12.5","tags":{"creation_time":"2024-05-17T12:32:05.000000Z",'
        b'"location":"+51.4169-000.0806/"}}}'
    )
    metadata = video_metadata(probe)
    assert (metadata.width, metadata.height, metadata.orientation) == (720, 1280, 6)
    assert metadata.duration_s == 12.5 and metadata.frame_rate == 29.97
    assert (metadata.video_codec, metadata.audio_codec) == ("h264", "aac")
    assert metadata.taken_at == datetime(2024, 5, 17, 12, 32, 5, tzinfo=timezone.utc)
    assert metadata.gps is not None and (metadata.gps.latitude, metadata.gps.longitude) == (51.4169, -0.0806)


def test_a_video_ffprobe_cannot_open_gets_what_hachoir_read_with_its_date_left_naive() -> None:
    facts = HachoirFacts(width=640, height=360, duration_s=4.0, frame_rate=25.0, creation_date=datetime(2021, 3, 4, 5, 6, 7))
    metadata = container_metadata(facts)
    assert (metadata.width, metadata.height, metadata.duration_s, metadata.frame_rate) == (640, 360, 4.0, 25.0)
    assert (metadata.taken_at, metadata.taken_at_zone_source) == (datetime(2021, 3, 4, 5, 6, 7), "none")
    assert container_metadata(HachoirFacts(width=640, height=360)).taken_at_zone_source is None
    assert container_metadata(None) == container_metadata(HachoirFacts())


def test_iso6709_outside_the_globe_is_ignored() -> None:
    assert iso6709("+95.0000+010.0000/") is None
    assert iso6709("garbage") is None


@pytest.mark.parametrize(("duration", "at"), [(None, 0.0), (0.171, 0.0855), (3.0, 1.0), (120.0, 12.0)])
def test_the_poster_is_taken_ten_percent_in_or_at_one_second_for_short_clips(duration: float | None, at: float) -> None:
    assert poster_time(duration) == pytest.approx(at)
