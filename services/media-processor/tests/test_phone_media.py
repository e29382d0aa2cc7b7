"""Phone media: video metadata, time zones, motion photos and Live Photo identifiers.

Samples are built here from the tests' own values (EXIF blocks and Apple MakerNotes by hand,
videos by ffmpeg: QuickTime keys with `-movflags use_metadata_tags`, the display matrix kept from
the corpus' rotated MOV by stream copy), beside the real Android MP4 of the test data.
"""

from __future__ import annotations

import struct
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media_processor.exif import ExifTags, find_tiff, read_exif
from media_processor.metadata import gps_offset, parse_probe, photo_metadata, photo_taken_at, video_metadata
from media_processor.motion import find_xmp, locate_in, locate_video, parse_xmp
from media_processor.sandbox import Sandbox

from .sandboxed import decode

DATA = Path(__file__).parent / "data"

ASCII, SHORT, LONG, RATIONAL, UNDEFINED = 2, 3, 4, 5, 7
Entry = tuple[int, int, object]  # tag, type, value


def _value(order: str, kind: int, value: object) -> tuple[int, bytes]:
    if kind == ASCII:
        raw = str(value).encode() + b"\x00"
        return len(raw), raw
    if kind == UNDEFINED:
        assert isinstance(value, bytes)
        return len(value), value
    if kind == RATIONAL:
        numbers = value if isinstance(value, tuple) else (value,)
        raw = b"".join(struct.pack(order + "II", round(n * 1000), 1000) for n in numbers)
        return len(numbers), raw
    code = {SHORT: "H", LONG: "I"}[kind]
    return 1, struct.pack(order + code, value)


def ifd(order: str, entries: list[Entry], at: int) -> bytes:
    """One IFD placed at offset `at` of its block, values that do not fit inline right after it."""
    entries = sorted(entries, key=lambda e: e[0])
    heap_at = at + 2 + 12 * len(entries) + 4
    table, heap = struct.pack(order + "H", len(entries)), b""
    for tag, kind, value in entries:
        count, raw = _value(order, kind, value)
        if len(raw) <= 4:
            table += struct.pack(order + "HHI", tag, kind, count) + raw.ljust(4, b"\x00")
        else:
            table += struct.pack(order + "HHII", tag, kind, count, heap_at + len(heap))
            heap += raw + b"\x00" * (len(raw) % 2)
    return table + struct.pack(order + "I", 0) + heap


def exif_tiff(
    ifd0: list[Entry], exif: list[Entry] = (), gps: list[Entry] = (), order: str = ">"  # type: ignore[assignment]
) -> bytes:
    """A TIFF block: IFD0 with pointers to an Exif IFD and a GPS IFD when they have entries."""
    header = (b"MM\x00*" if order == ">" else b"II*\x00") + struct.pack(order + "I", 8)
    pointers = [(0x8769, LONG, 0)] * bool(exif) + [(0x8825, LONG, 0)] * bool(gps)
    first = ifd(order, [*ifd0, *pointers], 8)  # sized with placeholder pointers
    exif_at = 8 + len(first)
    exif_block = ifd(order, list(exif), exif_at) if exif else b""
    gps_at = exif_at + len(exif_block)
    gps_block = ifd(order, list(gps), gps_at) if gps else b""
    pointers = [(0x8769, LONG, exif_at)] * bool(exif) + [(0x8825, LONG, gps_at)] * bool(gps)
    return header + ifd(order, [*ifd0, *pointers], 8) + exif_block + gps_block


def apple_maker_note(content_identifier: str) -> bytes:
    """Apple's MakerNote: `Apple iOS\\0`, version 1, `MM`, an IFD at 14 with offsets from its start."""
    return b"Apple iOS\x00\x00\x01MM" + ifd(">", [(0x0001, LONG, 14), (0x0011, ASCII, content_identifier)], 14)


def jpeg_with_segments(jpeg: bytes, *segments: tuple[int, bytes]) -> bytes:
    """`jpeg` with APPn segments (marker, payload) inserted right after its SOI."""
    assert jpeg[:2] == b"\xff\xd8"
    inserted = b"".join(bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload for marker, payload in segments)
    return jpeg[:2] + inserted + jpeg[2:]


def exif_segment(tiff: bytes) -> tuple[int, bytes]:
    return 0xE1, b"Exif\x00\x00" + tiff


def xmp_segment(xmp: str) -> tuple[int, bytes]:
    return 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp.encode()


def plain_jpeg(tmp: Path, size: str = "320x240") -> bytes:
    out = tmp / "plain.jpg"
    ffmpeg("-f", "lavfi", "-i", f"testsrc=size={size}:rate=1", "-frames:v", "1", str(out))
    return out.read_bytes()


def small_mp4(tmp: Path, name: str = "clip.mp4", size: str = "320x240", seconds: float = 1.5, *extra: str) -> bytes:
    out = tmp / name
    ffmpeg(
        "-f", "lavfi", "-i", f"testsrc=size={size}:rate=30", "-t", str(seconds),
        "-c:v", "libx264", "-pix_fmt", "yuv420p", *extra, str(out),
    )
    return out.read_bytes()


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True, timeout=60)


MOTION_PHOTO_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 5.1.0-jc003">
  <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
    <rdf:Description rdf:about=""
        xmlns:GCamera="http://ns.google.com/photos/1.0/camera/"
        xmlns:Container="http://ns.google.com/photos/1.0/container/"
        xmlns:Item="http://ns.google.com/photos/1.0/container/item/"
      GCamera:MotionPhoto="1"
      GCamera:MotionPhotoVersion="1"
      GCamera:MotionPhotoPresentationTimestampUs="{timestamp}">
      <Container:Directory>
        <rdf:Seq>
          <rdf:li rdf:parseType="Resource">
            <Container:Item Item:Mime="image/jpeg" Item:Semantic="Primary" Item:Length="0" Item:Padding="0"/>
          </rdf:li>
          <rdf:li rdf:parseType="Resource">
            <Container:Item Item:Mime="video/mp4" Item:Semantic="MotionPhoto" Item:Length="{length}" Item:Padding="0"/>
          </rdf:li>
        </rdf:Seq>
      </Container:Directory>
    </rdf:Description>
  </rdf:RDF>
</x:xmpmeta>"""

# Samsung's way: element-form properties, the `Camera` prefix for the same namespace.
SAMSUNG_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description xmlns:Camera="http://ns.google.com/photos/1.0/camera/"
      xmlns:Container="http://ns.google.com/photos/1.0/container/"
      xmlns:Item="http://ns.google.com/photos/1.0/container/item/">
   <Camera:MotionPhoto>1</Camera:MotionPhoto>
   <Camera:MotionPhotoPresentationTimestampUs>-1</Camera:MotionPhotoPresentationTimestampUs>
   <Container:Directory><rdf:Seq>
    <rdf:li rdf:parseType="Resource"><Item:Mime>image/jpeg</Item:Mime><Item:Semantic>Primary</Item:Semantic></rdf:li>
    <rdf:li rdf:parseType="Resource"><Item:Mime>video/mp4</Item:Mime><Item:Semantic>MotionPhoto</Item:Semantic>
     <Item:Length>{length}</Item:Length></rdf:li>
    <rdf:li rdf:parseType="Resource"><Item:Mime>application/octet-stream</Item:Mime><Item:Semantic>Extra</Item:Semantic>
     <Item:Length>{extra}</Item:Length></rdf:li>
   </rdf:Seq></Container:Directory>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>"""

MICRO_VIDEO_XMP = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description xmlns:GCamera="http://ns.google.com/photos/1.0/camera/" GCamera:MicroVideo="1"
 GCamera:MicroVideoVersion="1" GCamera:MicroVideoOffset="{offset}" GCamera:MicroVideoPresentationTimestampUs="500000"/>
</rdf:RDF></x:xmpmeta>"""


UTC = timezone.utc
PARIS_SUMMER = timezone(timedelta(hours=2))
LIVE_PHOTO_ID = "5A7C1E2B-3D4F-4A6B-8C9D-0E1F2A3B4C5D"


# -- phone videos: ffprobe's JSON -> the photo fields (pure) ----------------------------------

# ffprobe -show_format -show_streams of an iPhone MOV (the fields we read, as ffprobe 5.1 prints them).
IPHONE_PROBE = b"""{"streams":[{"codec_type":"video","codec_name":"hevc","width":1920,"height":1080,
 "avg_frame_rate":"30/1","r_frame_rate":"30/1","duration":"3.000000","bit_rate":"9876543",
 "side_data_list":[{"side_data_type":"Display Matrix","rotation":-90}],
 "tags":{"creation_time":"2024-05-17T12:32:05.000000Z","handler_name":"Core Media Video"}},
 {"codec_type":"audio","codec_name":"aac","tags":{"creation_time":"2024-05-17T12:32:05.000000Z"}}],
 "format":{"duration":"3.010000","bit_rate":"10043210","tags":{"major_brand":"qt  ",
 "creation_time":"2024-05-17T12:32:05.000000Z",
 "com.apple.quicktime.make":"Apple","com.apple.quicktime.model":"iPhone 15 Pro",
 "com.apple.quicktime.software":"17.4.1","com.apple.quicktime.creationdate":"2024-05-17T14:32:05+0200",
 "com.apple.quicktime.location.ISO6709":"+48.8584+002.2945+035.000/",
 "com.apple.quicktime.content.identifier":"5A7C1E2B-3D4F-4A6B-8C9D-0E1F2A3B4C5D"}}}"""


def test_an_iphone_movs_quicktime_keys_fill_the_same_fields_as_a_photo() -> None:
    meta = video_metadata(parse_probe(IPHONE_PROBE))
    assert (meta.camera_make, meta.camera_model, meta.software) == ("Apple", "iPhone 15 Pro", "17.4.1")
    # The local creation date with its offset, not mvhd's UTC creation_time.
    assert meta.taken_at == datetime(2024, 5, 17, 14, 32, 5, tzinfo=PARIS_SUMMER)
    assert meta.taken_at.utcoffset() == timedelta(hours=2)
    assert meta.taken_at_zone_source == "container"
    assert meta.gps is not None and (meta.gps.latitude, meta.gps.longitude, meta.gps.altitude_m) == (48.8584, 2.2945, 35.0)
    assert (meta.rotation_deg, meta.orientation, meta.width, meta.height) == (90, 6, 1080, 1920)
    assert (meta.frame_rate, meta.video_codec, meta.audio_codec) == (30.0, "hevc", "aac")
    assert meta.bit_rate_bps == 10043210
    assert meta.content_identifier == LIVE_PHOTO_ID


def test_the_real_android_mp4_gives_its_version_location_and_utc_creation_time() -> None:
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(DATA / "mei_with-gps.mp4")],
        check=True, capture_output=True, timeout=30,
    ).stdout
    meta = video_metadata(parse_probe(probe))
    assert meta.software == "Android 6.0.1"
    assert meta.gps is not None and (meta.gps.latitude, meta.gps.longitude) == (51.4169, -0.0806)
    # Android records only the UTC moment: reported in UTC and said so, never as local time.
    assert meta.taken_at == datetime(2017, 2, 22, 8, 20, 28, tzinfo=UTC)
    assert meta.taken_at_zone_source == "container_utc"
    assert (meta.video_codec, meta.rotation_deg, meta.bit_rate_bps) == ("h264", 0, 11356818)


def test_android_manufacturer_and_model_keys_and_an_unset_creation_time() -> None:
    probe = parse_probe(
        b'{"streams":[{"codec_type":"video","codec_name":"h264","width":640,"height":480}],'
        b'"format":{"tags":{"com.android.manufacturer":"Google","com.android.model":"Pixel 8",'
        b'"com.android.version":"14","creation_time":"1970-01-01T00:00:00.000000Z","location":"-33.8568+151.2153/"}}}'
    )
    meta = video_metadata(probe)
    assert (meta.camera_make, meta.camera_model, meta.software) == ("Google", "Pixel 8", "Android 14")
    assert meta.taken_at is None and meta.taken_at_zone_source is None
    assert meta.gps is not None and meta.gps.latitude == -33.8568


# -- when it was taken: DateTimeOriginal + OffsetTimeOriginal, else GPS, else none (pure) -------


def photo_exif(exif: list[Entry], gps: list[Entry] = ()) -> ExifTags:  # type: ignore[assignment]
    return read_exif(exif_tiff([(0x010F, ASCII, "Phone"), (0x0110, ASCII, "Model X")], exif, gps))


GPS_PARIS = [(0x0001, ASCII, "N"), (0x0002, RATIONAL, (48.0, 51.0, 30.0)), (0x0003, ASCII, "E"), (0x0004, RATIONAL, (2.0, 17.0, 40.0))]


@pytest.mark.parametrize(
    ("exif", "gps", "taken_at", "source"),
    [
        pytest.param(
            [(0x9003, ASCII, "2024:05:17 14:32:05"), (0x9011, ASCII, "+02:00")], [],
            datetime(2024, 5, 17, 14, 32, 5, tzinfo=PARIS_SUMMER), "exif_offset", id="offset-time-original",
        ),
        pytest.param(
            # OffsetTime (0x9010) belongs to the modify date: never applied to DateTimeOriginal.
            [(0x9003, ASCII, "2024:05:17 14:32:05"), (0x9010, ASCII, "-07:00")], [],
            datetime(2024, 5, 17, 14, 32, 5), "none", id="only-offset-time-is-no-zone",
        ),
        pytest.param(
            [(0x9003, ASCII, "2024:05:17 14:32:05")],
            [*GPS_PARIS, (0x0007, RATIONAL, (12.0, 31.0, 58.0)), (0x001D, ASCII, "2024:05:17")],
            datetime(2024, 5, 17, 14, 32, 5, tzinfo=PARIS_SUMMER), "gps_derived", id="gps-time-stamp",
        ),
        pytest.param(
            # India, +05:30, across midnight UTC.
            [(0x9003, ASCII, "2024:01:01 04:10:00")],
            [(0x0007, RATIONAL, (22.0, 40.0, 0.0)), (0x001D, ASCII, "2023:12:31")],
            datetime(2024, 1, 1, 4, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))), "gps_derived", id="gps-half-hour",
        ),
        pytest.param(
            # A fix 40 minutes older than the shutter says nothing trustworthy about the zone.
            [(0x9003, ASCII, "2024:05:17 14:32:05")],
            [(0x0007, RATIONAL, (11.0, 52.0, 0.0)), (0x001D, ASCII, "2024:05:17")],
            datetime(2024, 5, 17, 14, 32, 5), "none", id="stale-gps-fix",
        ),
        pytest.param(
            [(0x9004, ASCII, "2024:05:17 14:32:05"), (0x9012, ASCII, "-03:00")], [],
            datetime(2024, 5, 17, 14, 32, 5, tzinfo=timezone(timedelta(hours=-3))), "exif_offset", id="digitized",
        ),
        pytest.param([(0x9011, ASCII, "+02:00")], [], None, None, id="no-date"),
    ],
)
def test_taken_at_and_where_its_zone_came_from(exif: list[Entry], gps: list[Entry], taken_at: datetime | None, source: str | None) -> None:
    tags = photo_exif(exif, gps)
    assert photo_taken_at(tags) == (taken_at, source)
    meta = photo_metadata(tags, None)
    assert (meta.taken_at, meta.taken_at_zone_source) == (taken_at, source)
    if taken_at is not None:
        assert (taken_at.tzinfo is None) == (source == "none")


@given(st.floats(-1e6, 1e6), st.floats(-100, 100), st.floats(-100, 100), st.text(max_size=12))
def test_gps_offset_never_raises_and_stays_within_fourteen_hours(h: float, m: float, s: float, date: str) -> None:
    zone = gps_offset(datetime(2024, 5, 17, 14, 32, 5), date, (h, m, s))
    assert zone is None or abs(zone.utcoffset(None)) <= timedelta(hours=14)


# -- Live Photos: the content identifier on the still and on the video ----------------------


def test_the_apple_maker_note_content_identifier_is_read_from_the_exif() -> None:
    tiff = exif_tiff([(0x010F, ASCII, "Apple")], [(0x9003, ASCII, "2024:05:17 14:32:05"), (0x927C, UNDEFINED, apple_maker_note(LIVE_PHOTO_ID))])
    assert read_exif(tiff).content_identifier == LIVE_PHOTO_ID
    # Another maker's note, or a truncated one, is no identifier and no error.
    other = exif_tiff([(0x010F, ASCII, "X")], [(0x927C, UNDEFINED, b"Nikon\x00\x02\x10\x00\x00MM\x00*")])
    assert read_exif(other).content_identifier is None
    cut = exif_tiff([(0x010F, ASCII, "Apple")], [(0x927C, UNDEFINED, apple_maker_note(LIVE_PHOTO_ID)[:20])])
    assert read_exif(cut).content_identifier is None


def test_a_real_iphone_photo_that_is_no_live_photo_has_an_apple_maker_note_but_no_identifier() -> None:
    data = (DATA / "exiftool_Apple.jpg").read_bytes()  # iPhone 7, iOS 10.0.2: MakerNote without tag 17
    assert b"Apple iOS\x00" in data
    tags = read_exif(find_tiff(data, "jpeg"))  # type: ignore[arg-type]
    assert (tags.model, tags.software, tags.content_identifier) == ("iPhone 7", "10.0.2", None)
    # No OffsetTimeOriginal (iOS 10 wrote none), but a GPS fix: Sheffield in September, BST.
    bst = timezone(timedelta(hours=1))
    assert photo_taken_at(tags) == (datetime(2016, 9, 28, 18, 18, 5, tzinfo=bst), "gps_derived")


# -- motion photos: the XMP and the offset (pure) ------------------------------------------------


def motion_file(still: bytes, video: bytes, xmp: str) -> bytes:
    return jpeg_with_segments(still, xmp_segment(xmp)) + video


FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00isommp42" + b"\x00" * 64
STILL = b"\xff\xd8\xff\xdb\x00\x04\x00\x00\xff\xd9"  # enough JPEG for the parser


def test_a_motion_photo_1_0_directory_locates_the_appended_video() -> None:
    data = motion_file(STILL, FAKE_MP4, MOTION_PHOTO_XMP.format(timestamp=733000, length=len(FAKE_MP4)))
    found = locate_video(data, "jpeg")
    assert found is not None and data[found.start : found.end] == FAKE_MP4
    assert found.presentation_timestamp_us == 733000


def test_samsung_element_form_with_an_item_after_the_video() -> None:
    extra = b"SEFT-trailer-bytes"
    data = motion_file(STILL, FAKE_MP4 + extra, SAMSUNG_XMP.format(length=len(FAKE_MP4), extra=len(extra)))
    found = locate_video(data, "jpeg")
    assert found is not None and data[found.start : found.end] == FAKE_MP4
    assert found.presentation_timestamp_us is None  # -1: not given


def test_a_micro_video_offset_counts_from_the_end() -> None:
    data = motion_file(STILL, FAKE_MP4, MICRO_VIDEO_XMP.format(offset=len(FAKE_MP4)))
    found = locate_video(data, "jpeg")
    assert found is not None and data[found.start :] == FAKE_MP4 and found.presentation_timestamp_us == 500000


@pytest.mark.parametrize(
    "xmp",
    [
        MOTION_PHOTO_XMP.format(timestamp=0, length=len(FAKE_MP4)).replace('MotionPhoto="1"', 'MotionPhoto="0"'),
        MOTION_PHOTO_XMP.format(timestamp=0, length=10**9),  # longer than the file
        MICRO_VIDEO_XMP.format(offset=len(FAKE_MP4) - 8),  # lands inside the video: not an MP4 start
        '<!DOCTYPE x [<!ENTITY a "aaaa">]><x:xmpmeta xmlns:x="adobe:ns:meta/">&a;</x:xmpmeta>',
        "<x:xmpmeta not even xml",
    ],
)
def test_a_claim_the_bytes_do_not_back_is_no_motion_photo(xmp: str) -> None:
    assert locate_in(motion_file(STILL, FAKE_MP4, xmp), xmp.encode()) is None


def test_an_edited_photo_whose_video_was_cut_off_is_no_motion_photo() -> None:
    data = jpeg_with_segments(STILL, xmp_segment(MOTION_PHOTO_XMP.format(timestamp=0, length=len(FAKE_MP4))))
    assert locate_video(data, "jpeg") is None


@given(st.binary(max_size=2048))
def test_parsing_arbitrary_xmp_and_files_never_raises(data: bytes) -> None:
    parse_xmp(data)
    locate_video(b"\xff\xd8" + data, "jpeg")
    locate_video(data, "heif")
    assert find_xmp(data, "png") is None


# -- through the sandbox: real decoding of generated phone files --------------------------------


async def test_an_iphone_style_mov_through_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    mov = tmp_path / "IMG_0001.MOV"
    ffmpeg(
        "-i", str(DATA / "video_rotated_90.mov"), "-c", "copy", "-map_metadata", "0", "-movflags", "use_metadata_tags",
        "-metadata", "com.apple.quicktime.make=Apple", "-metadata", "com.apple.quicktime.model=iPhone 15 Pro",
        "-metadata", "com.apple.quicktime.software=17.4.1",
        "-metadata", "com.apple.quicktime.creationdate=2024-05-17T14:32:05+0200",
        "-metadata", "com.apple.quicktime.location.ISO6709=+48.8584+002.2945+035.000/",
        "-metadata", f"com.apple.quicktime.content.identifier={LIVE_PHOTO_ID}", str(mov),
    )
    outcome = await decode(sandbox, mov, tmp_path)
    meta = outcome.metadata
    assert (meta.camera_make, meta.camera_model, meta.software) == ("Apple", "iPhone 15 Pro", "17.4.1")
    assert (meta.taken_at, meta.taken_at_zone_source) == (datetime(2024, 5, 17, 14, 32, 5, tzinfo=PARIS_SUMMER), "container")
    assert meta.gps is not None and (meta.gps.latitude, meta.gps.longitude) == (48.8584, 2.2945)
    assert (meta.rotation_deg, meta.width, meta.height, meta.frame_rate, meta.video_codec) == (90, 720, 1280, 30.0, "h264")
    assert meta.bit_rate_bps is not None and meta.bit_rate_bps > 10_000
    assert meta.content_identifier == LIVE_PHOTO_ID
    assert {v.name: (v.width, v.height) for v in outcome.variants}["large"] == (720, 1280)


async def test_a_live_photo_still_as_jpeg_carries_the_same_identifier(sandbox: Sandbox, tmp_path: Path) -> None:
    tiff = exif_tiff(
        [(0x010F, ASCII, "Apple"), (0x0110, ASCII, "iPhone 15 Pro"), (0x0131, ASCII, "17.4.1")],
        [(0x9003, ASCII, "2024:05:17 14:32:05"), (0x9011, ASCII, "+02:00"), (0x927C, UNDEFINED, apple_maker_note(LIVE_PHOTO_ID))],
    )
    still = tmp_path / "IMG_0001.JPG"
    still.write_bytes(jpeg_with_segments(plain_jpeg(tmp_path), exif_segment(tiff)))
    meta = (await decode(sandbox, still, tmp_path)).metadata
    assert (meta.content_identifier, meta.software, meta.taken_at_zone_source) == (LIVE_PHOTO_ID, "17.4.1", "exif_offset")
    assert meta.motion_photo is None


async def test_a_live_photo_still_as_heic_carries_the_same_identifier(sandbox: Sandbox, tmp_path: Path) -> None:
    # ImageMagick 6 writes HEIC without EXIF and no HEIF writer ships here, so the generated HEIC
    # of the test data gets a new Exif item in place of its own (the item is the file's last
    # bytes; the new TIFF is padded to the same length, so iloc's extent still holds).
    heic = bytearray((DATA / "heic_generated.heic").read_bytes())
    old = find_tiff(bytes(heic), "heif")
    assert old is not None
    tiff = exif_tiff(
        [(0x010F, ASCII, "Apple"), (0x0110, ASCII, "iPhone 15 Pro")],
        [(0x9003, ASCII, "2024:05:17 14:32:05"), (0x9011, ASCII, "+02:00"), (0x927C, UNDEFINED, apple_maker_note(LIVE_PHOTO_ID))],
    )
    assert len(tiff) <= len(old)
    heic[len(heic) - len(old) :] = tiff.ljust(len(old), b"\x00")
    path = tmp_path / "IMG_0001.HEIC"
    path.write_bytes(heic)
    outcome = await decode(sandbox, path, tmp_path)
    assert outcome.metadata.content_identifier == LIVE_PHOTO_ID
    assert outcome.metadata.camera_model == "iPhone 15 Pro"
    assert {v.name for v in outcome.variants} == {"large", "medium", "thumb"}


async def test_a_motion_photo_stores_its_video_and_a_poster(sandbox: Sandbox, tmp_path: Path) -> None:
    video = small_mp4(tmp_path, "clip.mp4", "640x360", 1.5)
    still = plain_jpeg(tmp_path, "1280x720")
    path = tmp_path / "PXL_20240517_123205000.MP.jpg"
    path.write_bytes(motion_file(still, video, MOTION_PHOTO_XMP.format(timestamp=733000, length=len(video))))
    outcome = await decode(sandbox, path, tmp_path)
    produced = {v.name: v for v in outcome.variants}
    assert set(produced) == {"large", "medium", "thumb", "motion", "motion_poster"}
    motion, poster = produced["motion"], produced["motion_poster"]
    assert Path(motion.path).read_bytes() == video
    assert (motion.mime_type, motion.width, motion.height) == ("video/mp4", 640, 360)
    assert (poster.mime_type, poster.width, poster.height) == ("image/webp", 640, 360)
    assert Path(poster.path).read_bytes()[8:12] == b"WEBP"
    assert produced["large"].width == 1280  # the still, not the video, makes the picture variants
    about = outcome.metadata.motion_photo
    assert about is not None and about.presentation_timestamp_us == 733000 and about.video_codec == "h264"
    assert about.duration_s == pytest.approx(1.5, abs=0.05)


async def test_a_motion_photo_whose_video_is_garbage_is_an_ordinary_photo(sandbox: Sandbox, tmp_path: Path) -> None:
    still = plain_jpeg(tmp_path)
    path = tmp_path / "broken.MP.jpg"
    path.write_bytes(motion_file(still, FAKE_MP4, MOTION_PHOTO_XMP.format(timestamp=0, length=len(FAKE_MP4))))
    outcome = await decode(sandbox, path, tmp_path)
    assert {v.name for v in outcome.variants} == {"large", "medium", "thumb"}
    assert outcome.metadata.motion_photo is None
