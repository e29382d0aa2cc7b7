"""Metadata normalisation: what the readers found -> the contracts' one MediaMetadata record.

Sources, by trust: EXIF (our own reader: DateTimeOriginal, GPS, exposure), the decoder's pixel
size (after orientation), ffprobe for video, Ghostscript's page count for PDFs, and hachoir as the
fallback for container headers ffprobe cannot open (a header-only Matroska). hachoir's photo
`creation_date` is the IFD0 *modify* date, so it never becomes a photo's taken_at.

taken_at keeps the local clock with the offset the file recorded, and `taken_at_zone_source`
says where that offset came from; with none recorded the value stays naive ("none") rather
than being passed off as UTC. Phone videos fill the same fields as photos from their QuickTime
keys (iPhone) or `com.android.*` / `location` tags (Android), as ffprobe reports them.
A decoder's complaint about a damaged file (libjpeg, ffmpeg) becomes one of `warnings`.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta, timezone

import msgspec

from media_processor.exif import ExifTags
from media_processor.variants import Size
from rawdrive_contracts import DecodeWarning, GpsPosition, MediaMetadata, TakenAtZoneSource

_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")
_ISO6709 = re.compile(r"^([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)([+-]\d+(?:\.\d+)?)?")
# Clockwise rotation a viewer applies -> the EXIF orientation that says the same.
_ROTATION_TO_ORIENTATION = {0: 1, 90: 6, 180: 3, 270: 8}
# A GPS-derived offset: local clock minus the fix's UTC time, a whole quarter hour (every zone
# is one) give or take this much, since the fix may be a little older than the shutter.
_GPS_FIX_SLACK = timedelta(minutes=3)
_QUARTER_HOUR = timedelta(minutes=15)
_MAX_OFFSET = timedelta(hours=14)
# QuickTime keys of an iPhone, then Android's, then the classic ©mak/©mod/©xyz atoms.
_MAKE_KEYS = ("com.apple.quicktime.make", "com.android.manufacturer", "make")
_MODEL_KEYS = ("com.apple.quicktime.model", "com.android.model", "model")
_LOCATION_KEYS = ("com.apple.quicktime.location.ISO6709", "location")
_LOCAL_CREATION_KEY = "com.apple.quicktime.creationdate"  # local time with its offset
_CONTENT_IDENTIFIER_KEY = "com.apple.quicktime.content.identifier"


class HachoirFacts(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What hachoir's extractMetadata reported (only the fields we use)."""

    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    frame_rate: float | None = None
    creation_date: datetime | None = None


# -- ffprobe's JSON (-show_format -show_streams), the parts we read ----------------------------


class ProbeSideData(msgspec.Struct, frozen=True):
    rotation: float | None = None


class ProbeStream(msgspec.Struct, frozen=True):
    codec_type: str | None = None
    codec_name: str | None = None
    width: int | None = None
    height: int | None = None
    avg_frame_rate: str | None = None
    r_frame_rate: str | None = None
    duration: str | None = None
    bit_rate: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)
    side_data_list: tuple[ProbeSideData, ...] = ()


class ProbeFormat(msgspec.Struct, frozen=True):
    duration: str | None = None
    bit_rate: str | None = None
    tags: dict[str, str] = msgspec.field(default_factory=dict)


class Probe(msgspec.Struct, frozen=True):
    streams: tuple[ProbeStream, ...] = ()
    format: ProbeFormat = ProbeFormat()


def parse_probe(raw: bytes) -> Probe:
    return msgspec.json.decode(raw, type=Probe)


# -- photos -------------------------------------------------------------------------------------


def photo_metadata(exif: ExifTags, size: Size | None) -> MediaMetadata:
    taken_at, zone_source = photo_taken_at(exif)
    return MediaMetadata(
        camera_make=exif.make,
        camera_model=exif.model,
        lens_model=exif.lens_model,
        software=exif.software,
        taken_at=taken_at,
        taken_at_zone_source=zone_source,
        gps=gps_position(exif),
        orientation=exif.orientation if exif.orientation in range(1, 9) else None,
        width=size.width if size else None,
        height=size.height if size else None,
        exposure_time_s=_positive(exif.exposure_time),
        f_number=_positive(exif.f_number),
        iso=exif.iso if exif.iso else None,
        focal_length_mm=_positive(exif.focal_length),
        content_identifier=exif.content_identifier,
    )


def photo_taken_at(exif: ExifTags) -> tuple[datetime | None, TakenAtZoneSource | None]:
    """DateTimeOriginal with OffsetTimeOriginal (else DateTimeDigitized with its own offset).

    Never OffsetTime (0x9010, the modify date's offset) nor the modify date itself. Without a
    recorded offset, the GPS time stamp may tell it; otherwise the clock stays naive.
    """
    for text, offset in (
        (exif.date_time_original, exif.offset_time_original),
        (exif.date_time_digitized, exif.offset_time_digitized),
    ):
        value = exif_datetime(text, offset)
        if value is None:
            continue
        if value.tzinfo is not None:
            return value, "exif_offset"
        zone = gps_offset(value, exif.gps_date_stamp, exif.gps_time_stamp)
        if zone is not None:
            return value.replace(tzinfo=zone), "gps_derived"
        return value, "none"
    return None, None


def gps_offset(local: datetime, date_stamp: str | None, time_stamp: tuple[float, ...] | None) -> timezone | None:
    """The UTC offset that turns the GPS fix's UTC time into the camera's local clock, if any."""
    if not date_stamp or time_stamp is None or len(time_stamp) != 3:
        return None
    hours, minutes, seconds = time_stamp
    if not (0 <= hours < 24 and 0 <= minutes < 60 and 0 <= seconds < 61):
        return None
    try:
        day = datetime.strptime(date_stamp.strip()[:10], "%Y:%m:%d")
    except ValueError:
        return None
    utc = day + timedelta(hours=hours, minutes=minutes, seconds=seconds)
    difference = local - utc
    quarters = round(difference / _QUARTER_HOUR)
    offset = quarters * _QUARTER_HOUR
    if abs(difference - offset) > _GPS_FIX_SLACK or abs(offset) > _MAX_OFFSET:
        return None
    return timezone(offset)


def exif_datetime(text: str | None, offset: str | None = None) -> datetime | None:
    """`2024:05:17 14:32:05` (+ OffsetTime `+02:00`) -> datetime; naive when no offset was stored."""
    if not text:
        return None
    try:
        value = datetime.strptime(text.strip()[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    match = _OFFSET.match(offset.strip()) if offset else None
    if match:
        sign = 1 if match[1] == "+" else -1
        delta = timedelta(hours=int(match[2]), minutes=int(match[3]))
        if delta <= timedelta(hours=14):
            value = value.replace(tzinfo=timezone(sign * delta))
    return value


def gps_position(exif: ExifTags) -> GpsPosition | None:
    latitude = dms_to_degrees(exif.gps_latitude, exif.gps_latitude_ref, "S", 90)
    longitude = dms_to_degrees(exif.gps_longitude, exif.gps_longitude_ref, "W", 180)
    if latitude is None or longitude is None:
        return None
    altitude = exif.gps_altitude
    if altitude is not None and math.isfinite(altitude):
        altitude = -altitude if exif.gps_altitude_ref == 1 else altitude
    else:
        altitude = None
    return GpsPosition(latitude=latitude, longitude=longitude, altitude_m=altitude)


def dms_to_degrees(dms: tuple[float, ...] | None, ref: str | None, negative: str, limit: float) -> float | None:
    """EXIF degrees/minutes/seconds and its N/S/E/W reference -> signed decimal degrees."""
    if dms is None or len(dms) != 3 or not all(math.isfinite(v) and v >= 0 for v in dms):
        return None
    degrees = dms[0] + dms[1] / 60 + dms[2] / 3600
    if degrees > limit:
        return None
    return round(-degrees if (ref or "").strip().upper() == negative else degrees, 7)


# -- videos -------------------------------------------------------------------------------------


def container_metadata(facts: HachoirFacts | None) -> MediaMetadata:
    """A video's metadata where ffprobe gave up: what hachoir read of its container headers."""
    if facts is None:
        return MediaMetadata()
    return MediaMetadata(
        width=facts.width,
        height=facts.height,
        duration_s=facts.duration_s,
        frame_rate=facts.frame_rate,
        taken_at=facts.creation_date,
        # hachoir hands over a naive date whatever the container meant by it.
        taken_at_zone_source="none" if facts.creation_date else None,
    )


def video_metadata(probe: Probe) -> MediaMetadata:
    video = next((s for s in probe.streams if s.codec_type == "video"), None)
    audio = next((s for s in probe.streams if s.codec_type == "audio"), None)
    rotation = video_rotation(video) if video else None
    orientation = _ROTATION_TO_ORIENTATION.get(rotation) if rotation is not None else None
    size = _size(video.width, video.height) if video else None
    if size is not None and orientation in (6, 8):
        size = Size(size.height, size.width)
    # Container-level keys first; a stream's own tags only where the container has none.
    tags = {**(video.tags if video else {}), **probe.format.tags}
    taken_at, zone_source = video_taken_at(tags)
    return MediaMetadata(
        camera_make=_first(tags, _MAKE_KEYS),
        camera_model=_first(tags, _MODEL_KEYS),
        software=video_software(tags),
        taken_at=taken_at,
        taken_at_zone_source=zone_source,
        gps=iso6709(_first(tags, _LOCATION_KEYS)),
        orientation=orientation,
        rotation_deg=rotation,
        width=size.width if size else None,
        height=size.height if size else None,
        duration_s=_duration(probe, video),
        frame_rate=_rate(video.avg_frame_rate) or _rate(video.r_frame_rate) if video else None,
        video_codec=video.codec_name if video else None,
        audio_codec=audio.codec_name if audio else None,
        bit_rate_bps=_bit_rate(probe.format.bit_rate) or (_bit_rate(video.bit_rate) if video else None),
        content_identifier=_first(tags, (_CONTENT_IDENTIFIER_KEY,)),
    )


def video_taken_at(tags: dict[str, str]) -> tuple[datetime | None, TakenAtZoneSource | None]:
    """The iPhone's local creation date with its offset, else the container's UTC creation time.

    QuickTime's `creation_time` (mvhd) is the UTC moment with no word on the local offset, so it
    is reported in UTC as `container_utc`, never as the local clock.
    """
    local = iso_datetime(tags.get(_LOCAL_CREATION_KEY))
    if local is not None:
        return local, "container" if local.tzinfo is not None else "none"
    moment = iso_datetime(tags.get("creation_time"))
    if moment is None or moment.year < 1971:  # an unset mvhd date (0: 1904, or the Unix epoch)
        return None, None
    if moment.tzinfo is None:
        return moment, "none"
    return moment.astimezone(timezone.utc), "container_utc"


def video_software(tags: dict[str, str]) -> str | None:
    apple = _first(tags, ("com.apple.quicktime.software",))
    if apple:
        return apple
    android = _first(tags, ("com.android.version",))
    return f"Android {android}" if android else None


def video_rotation(stream: ProbeStream) -> int:
    """Clockwise-positive rotation in {0, 90, 180, 270} from the display matrix or `rotate` tag."""
    for side in stream.side_data_list:
        if side.rotation is not None and math.isfinite(side.rotation):
            # The display matrix counts counter-clockwise; the legacy `rotate` tag clockwise.
            return round(-side.rotation / 90) * 90 % 360
    try:
        return round(float(stream.tags.get("rotate", "0")) / 90) * 90 % 360
    except ValueError:
        return 0


def iso_datetime(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def iso6709(text: str | None) -> GpsPosition | None:
    """`+51.4169-000.0806/` or `+35.6586+139.7454+035.000/` -> a position."""
    match = _ISO6709.match(text.strip()) if text else None
    if not match:
        return None
    latitude, longitude = float(match[1]), float(match[2])
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        return None
    altitude = float(match[3]) if match[3] else None
    return GpsPosition(latitude=latitude, longitude=longitude, altitude_m=altitude)


def poster_time(duration_s: float | None) -> float:
    """Where the poster frame is taken: 10% in, or 1 s (at most the middle) for short clips."""
    if not duration_s or not math.isfinite(duration_s) or duration_s <= 0:
        return 0.0
    if duration_s >= 10:
        return duration_s / 10
    return min(1.0, duration_s / 2)


def decode_warning(message: str) -> DecodeWarning:
    """A decoder's complaint as a warning: `truncated` when the data ends early, else corrupt_data."""
    lowered = message.lower()
    ended_early = ("premature end of" in lowered and "data segment" not in lowered) or any(
        marker in lowered for marker in ("truncat", "partial file", "end of file")
    )
    return DecodeWarning(code="truncated" if ended_early else "corrupt_data", detail=message[:300])


def _first(tags: dict[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = tags.get(key, "").strip()
        if value:
            return value[:200]
    return None


def _bit_rate(text: str | None) -> int | None:
    value = _float(text)
    return round(value) if value else None


def _duration(probe: Probe, video: ProbeStream | None) -> float | None:
    for text in (probe.format.duration, video.duration if video else None):
        value = _float(text)
        if value:
            return value
    return None


def _rate(text: str | None) -> float | None:
    if not text or "/" not in text:
        return None
    num, _, den = text.partition("/")
    value = _float(num)
    denominator = _float(den)
    return round(value / denominator, 3) if value and denominator else None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _positive(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _size(width: int | None, height: int | None) -> Size | None:
    return Size(width, height) if width and height and width > 0 and height > 0 else None
