"""Child-process side: turn one downloaded original into metadata and WebP variants.

Imported only in decoding children (through the sandbox's forkserver), never by the service
process or a test run: importing it points ImageMagick at the project's policy before Wand loads
it, for the whole process (coder rights and resource limits meant for one decode). A decode's
deadline is the sandbox's alone: the policy sets no ImageMagick `time` limit, which would
_exit(1) the child instead of letting it fail as a timeout. The pure parts (metadata.py,
variants.py...) are tested without it. Every
ImageMagick read names its coder and frame (`jpeg:/path[0]`), so content is never guessed and
animations give their first frame. Video frames come from ffmpeg, PDF pages from Ghostscript
(-dSAFER), JPEG pictures from libjpeg-turbo (simplejpeg), HEIC/HEIF pictures from libheif
(pillow-heif) and RAW pictures from LibRaw (rawpy), the last three in this process, handed to
ImageMagick as pixels; ImageMagick only ever reads CMYK JPEG, PNG, WebP or PPM.

Every route first compares the picture size the file declares (dimensions.py for images, LibRaw
for RAW, ffprobe for video, the page box for PDF) with the limits, before decoding a pixel. (The
sandbox has already refused, without forking, what the head of an image or MP4 declares too large.)

Damaged files (decided per case; consumers read it in libs/contracts/README.md): damage a decoder works around (a JPEG
cut short or with corrupt data, which libjpeg fills in grey; a HEIC cut short, whose missing
tiles libheif leaves blank; a video frame ffmpeg decoded with errors) leaves the asset available with `metadata.warnings` naming it, because the file is the
user's own, stored intact, and most of the picture is there; damage no decoder works around (a
PNG whose image data is broken: libpng gives no picture at all, a RAW whose sensor data LibRaw
calls corrupt) fails with cause corrupt_content.

Colour: a picture with an embedded ICC profile (Display P3 from phones, Adobe RGB from cameras,
a CMYK press profile) is converted to sRGB with the sRGB profile shipped here (colord's, CC0)
before its profiles are stripped; an untagged picture is taken as sRGB and left as it is.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import re
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from importlib.resources import files
from pathlib import Path

os.environ["MAGICK_CONFIGURE_PATH"] = str(files("media_processor") / "magick")

import hachoir.core.config  # noqa: E402
import msgspec  # noqa: E402
import numpy  # noqa: E402
import PIL.Image  # noqa: E402
import pillow_heif  # noqa: E402
import rawpy  # noqa: E402
import simplejpeg  # noqa: E402
from hachoir.metadata import extractMetadata  # noqa: E402
from hachoir.parser import createParser  # noqa: E402
from PIL import ImageCms, WebPImagePlugin  # noqa: E402, F401
from wand.api import libmagick, library  # noqa: E402
from wand.exceptions import CorruptImageError, WandException  # noqa: E402
from wand.image import Image  # noqa: E402

from media_processor.dimensions import declared_size, heif_cut_short, heif_icc_profile, jpeg_frame  # noqa: E402
from media_processor.exif import ExifTags, find_tiff, read_exif  # noqa: E402
from media_processor.jobs import (  # noqa: E402
    Job,
    Outcome,
    Produced,
    Unprocessable,
    corrupt_content,
    refuse_oversized,
    too_many_pixels,
)
from media_processor.magic import DECODING, Family  # noqa: E402
from media_processor.metadata import (  # noqa: E402
    HachoirFacts,
    Probe,
    container_metadata,
    decode_warning,
    parse_probe,
    photo_metadata,
    poster_time,
    video_metadata,
)
from media_processor.motion import locate_video  # noqa: E402
from media_processor.variants import (  # noqa: E402
    LONG_EDGES,
    WEBP_METHOD,
    WEBP_QUALITY,
    Size,
    decode_hint,
    display_size,
    fit,
    plan,
)
from rawdrive_contracts import DecodeWarning, MediaMetadata, MotionPhoto  # noqa: E402

hachoir.core.config.quiet = True
# Pillow registers its formats and loads libwebp on its first save: here, in the forkserver,
# once, instead of in every decoding child forked from it (45 ms CPU a child). Importing
# WebPImagePlugin (above, unused by name) is what registers WebP and loads libwebp.
PIL.Image.preinit()

# On ImageMagick's route (the files it decodes: PNG, WebP, CMYK JPEG, video and PDF frames) the big
# reductions (decoded picture -> large, large -> medium) use ImageMagick's ScaleImage, an
# exact area average (a box integral, so no aliasing when reducing): a single row-order pass, about
# half the time of a Triangle resize here, and for the exact 2x large -> medium step a plain 2x2
# average, sharper than Triangle's 4-pixel support. The last, small step (medium -> thumb) is
# cheap, so it gets Lanczos. Measured against a Lanczos resize of the full decode (SSIM after WebP
# encoding): equal to Triangle for `large`, better for `medium` and `thumb`.
FINAL_FILTER = "lanczos"
# Pillow's reductions of pixels decoded in this process (render_decoded, _reduced): its BOX
# averages whole pixels only, so below 2x it is no area average (at 3000 -> 2560 px it mostly
# picks pixels: 34.4 dB against a Lanczos reduction of the full decode, 24 MP camera JPEG); there
# its triangle filter, whose support widens with the reduction, gives 42.2 dB, ImageMagick's
# ScaleImage 42.0. From 2x on (2560 -> 1280), BOX is the block average ScaleImage makes.
# Between variants Pillow first averages whole blocks (Image.reduce), leaving the filter this
# much of the reduction: for BOX (2560 -> 1280) the block average is the filter, 16 -> 8 ms CPU;
# Lanczos (1280 -> 320) still does the last 2x, 11 -> 5 ms, and thumb's PSNR moves 0.06 dB.
REDUCING_GAP = {PIL.Image.Resampling.BOX: 1.0, PIL.Image.Resampling.LANCZOS: 2.0}


def _reduction_filter(source: tuple[int, int], target: tuple[int, int]) -> PIL.Image.Resampling:
    return PIL.Image.Resampling.BOX if max(source) >= 2 * max(target) else PIL.Image.Resampling.BILINEAR


# Threads encoding variants beside the one that scales them: one per core of the target machine.
ENCODE_THREADS = 2
# An embedded RAW preview at least this large is good enough for every variant but `large`.
PREVIEW_MIN_LONG_EDGE = 1280
# PDF pages render so that their long edge is about the largest variant, within these bounds.
PDF_MIN_DPI, PDF_MAX_DPI = 18, 300
# colord's sRGB profile (CC0-1.0, Debian colord-data): every tagged picture is converted to it.
SRGB_PROFILE = (files("media_processor") / "icc" / "sRGB.icc").read_bytes()
_SRGB_CMS = ImageCms.ImageCmsProfile(io.BytesIO(SRGB_PROFILE))
# LibRaw's Orientation (sizes.flip) -> EXIF orientation, for RAWs whose EXIF we cannot read (CR3).
_FLIP_TO_ORIENTATION = {0: 1, 3: 3, 5: 8, 6: 6}


class Rendered(msgspec.Struct, frozen=True, kw_only=True):
    variants: tuple[Produced, ...]
    display: Size  # the picture's size as shown (after orientation)
    warnings: tuple[DecodeWarning, ...] = ()


def process(job: Job) -> Outcome:
    deadline = time.monotonic() + job.timeout_s
    route = DECODING[job.family].route
    if route == "image":
        return with_motion_video(_photo(job), job, deadline)
    if route == "heif":
        return with_motion_video(_heif(job), job, deadline)
    if route == "raw":
        return _raw(job)
    if route == "video":
        return _video(job, deadline)
    return _pdf(job, deadline)


# -- routes -------------------------------------------------------------------------------------


def _photo(job: Job) -> Outcome:
    coder = DECODING[job.family].coder
    assert coder is not None
    stored = _declared_size(job.path, job.family)
    refuse_oversized(stored, job.pixels, job.family)
    exif = _exif(job.path, job.family)
    decoded = _jpeg(Path(job.path).read_bytes()) if job.family == "jpeg" else None
    if decoded is not None:
        rendered = render_decoded(decoded, job.workdir, orientation=exif.orientation)
        warnings = rendered.warnings
    else:  # PNG, WebP, and the JPEGs _jpeg leaves to ImageMagick (CMYK, undecodable)
        hint = stored if job.family == "jpeg" else None
        rendered = render(job.path, job.workdir, coder=coder, stored=hint)
        warnings = rendered.warnings
    return Outcome(metadata=_warned(photo_metadata(exif, rendered.display), warnings), variants=rendered.variants)


def _heif(job: Job) -> Outcome:
    """HEIC/HEIF through libheif (pillow-heif's build), not ImageMagick 6's HEIC coder.

    That coder asks libheif for YCbCr planes and converts them to RGB itself in 16-bit floating
    point, and reads no ICC profile: 0.94 s CPU for a 12 MP iPhone photo here, against 0.30 s
    for pillow-heif's libheif 1.23 decoding straight to 8-bit RGB (0.52 s for Debian's libheif
    1.15, as libvips uses it). libheif applies the container's rotation and mirroring (irot,
    imir), as the coder did; the picture carries no other orientation.
    """
    stored = _declared_size(job.path, job.family)
    refuse_oversized(stored, job.pixels, job.family)
    exif = _exif(job.path, job.family)
    try:
        heif = pillow_heif.open_heif(job.path, convert_hdr_to_8bit=True)
        pixels = Pixels(heif.data, heif.size[0], heif.size[1], _HEIF_CHANNELS.get(heif.mode, ""), heif.stride)
    except (ValueError, RuntimeError, OSError) as exc:  # pillow-heif's errors carry libheif's message
        if str(exc).startswith("Invalid input"):  # the file's own data: cut short, broken boxes
            raise corrupt_content(f"libheif: {exc}") from None
        raise Unprocessable("decode_failed", f"libheif: {exc}") from None
    if not pixels.channels:
        raise Unprocessable("decode_failed", f"libheif gave pixels of an unexpected kind ({heif.mode})")
    data = Path(job.path).read_bytes()
    # From the container's `colr` box: Display P3 on iPhones (heif_icc_profile is tested alone).
    profile = heif_icc_profile(data)
    # libheif decodes a file cut short without a word, leaving the tiles it lacks blank.
    cut = heif_cut_short(data)
    del heif, data
    rendered = render_decoded(Decoded(pixels, profile=profile), job.workdir)
    warnings = rendered.warnings
    if cut is not None:
        warnings += (decode_warning(f"libheif: file truncated, its {cut.decode('latin-1')} box ends past the end of the file"),)
    return Outcome(metadata=_warned(photo_metadata(exif, rendered.display), warnings), variants=rendered.variants)


def _raw(job: Job) -> Outcome:
    """LibRaw: the embedded preview when it is large enough, else a half-size demosaic.

    Half size is still at least as large as every variant for cameras above 10 MP, at a quarter
    of the work; white balance as shot; no rotation by LibRaw (render_decoded() orients by the EXIF).
    """
    try:
        with rawpy.imread(job.path) as raw:
            sizes = raw.sizes  # from the headers: nothing is unpacked yet
            refuse_oversized(Size(sizes.raw_width, sizes.raw_height), job.pixels, f"{job.family} sensor")
            exif = _exif(job.path, job.family)
            sensor = Size(sizes.width, sizes.height)
            orientation = exif.orientation if exif.orientation in range(1, 9) else _FLIP_TO_ORIENTATION.get(sizes.flip)
            picture = _raw_preview(raw, job)
            if picture is None:
                picture = Decoded(_rgb_array(raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)))
    except rawpy.LibRawDataError as exc:
        raise corrupt_content(f"LibRaw: {exc}") from None
    except rawpy.LibRawTooBigError as exc:
        raise too_many_pixels(f"LibRaw: {exc}") from None
    except rawpy.LibRawError as exc:
        raise Unprocessable("decode_failed", f"LibRaw: {type(exc).__name__}: {exc}") from None
    # Previews and LibRaw's output carry no orientation of their own: the RAW's says it.
    rendered = render_decoded(picture, job.workdir, orientation=orientation)
    metadata = photo_metadata(exif, display_size(sensor, orientation))
    return Outcome(metadata=_warned(metadata, rendered.warnings), variants=rendered.variants)


def _video(job: Job, deadline: float) -> Outcome:
    demuxer = DECODING[job.family].demuxer
    assert demuxer is not None
    # MP4/MOV: from the track headers, without starting ffprobe (~0.1 s); the others after it.
    refuse_oversized(_declared_size(job.path, job.family), job.pixels, "video frame")
    probe = _ffprobe(job.path, demuxer, deadline)
    metadata = video_metadata(probe) if probe is not None else container_metadata(_hachoir(job.path))
    stream = next((s for s in probe.streams if s.codec_type == "video"), None) if probe is not None else None
    if stream is not None and stream.width and stream.height:
        refuse_oversized(Size(stream.width, stream.height), job.pixels, "video frame")
    elif metadata.width and metadata.height:
        refuse_oversized(Size(metadata.width, metadata.height), job.pixels, "video frame")
    frame = Path(job.workdir, "poster.ppm")
    complaints: list[str] = []  # every attempt's: the first one's "partial file" says truncated
    for at in dict.fromkeys((poster_time(metadata.duration_s), 0.0)):
        # -ss before -i: seek in the container, then decode one frame; ffmpeg applies rotation.
        result = _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-threads", "2", "-protocol_whitelist", "file",
             "-ss", f"{at:.3f}", "-f", demuxer, "-i", job.path,
             "-frames:v", "1", "-an", "-sn", "-dn", "-f", "image2", "-c:v", "ppm", "-y", str(frame)],
            deadline,
            check=False,
        )
        complaints += result.stderr.decode("utf-8", "replace").splitlines()
        if frame.exists() and frame.stat().st_size > 0:
            break
    else:
        raise corrupt_content("ffmpeg could not decode a single video frame: " + "; ".join(complaints)[-300:])
    rendered = render(str(frame), job.workdir, coder="ppm")
    warnings = _ffmpeg_warnings(complaints) + rendered.warnings
    return Outcome(metadata=_warned(metadata, warnings), variants=rendered.variants)


def _pdf(job: Job, deadline: float) -> Outcome:
    pages, box = _pdf_pages(job.path, deadline)
    dpi: float = PDF_MIN_DPI
    if box is not None and box.long_edge > 0:
        dpi = min(PDF_MAX_DPI, max(PDF_MIN_DPI, LONG_EDGES[0][1] * 72 / box.long_edge))
        refuse_oversized(Size(round(box.width * dpi / 72), round(box.height * dpi / 72)), job.pixels, "PDF page")
    page = Path(job.workdir, "page1.ppm")
    _run(
        ["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dNOPROMPT", "-dNOINTERPOLATE",
         "-sDEVICE=ppmraw", f"-r{dpi:.2f}", "-dFirstPage=1", "-dLastPage=1",
         "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", f"-sOutputFile={page}", "-f", job.path],
        deadline,
    )
    if not page.exists() or page.stat().st_size == 0:
        raise Unprocessable("decode_failed", "Ghostscript rendered no page")
    rendered = render(str(page), job.workdir, coder="ppm")
    return Outcome(metadata=MediaMetadata(page_count=pages), variants=rendered.variants)


# -- motion photos: motion.py finds the appended video; stored as it is, with a poster -----------

# The poster's long edge: the motion video is a preview, a medium-sized poster is enough.
MOTION_POSTER_LONG_EDGE = LONG_EDGES[1][1]


def with_motion_video(outcome: Outcome, job: Job, deadline: float) -> Outcome:
    """Add a motion photo's video (`motion`, video/mp4) and its poster, and say so in the metadata.

    A video the XMP claims but ffprobe cannot read or ffmpeg cannot decode leaves the photo as
    an ordinary one: the still is what the user took.
    """
    if job.family not in ("jpeg", "heif"):
        return outcome
    data = Path(job.path).read_bytes()
    embedded = locate_video(data, job.family)
    if embedded is None:
        return outcome
    video = Path(job.workdir, "motion.mp4")
    video.write_bytes(data[embedded.start : embedded.end])
    del data
    probe = _ffprobe(str(video), "mov", deadline)
    facts = video_metadata(probe) if probe is not None else None
    if facts is None or facts.width is None or facts.height is None:
        return outcome
    timestamp = embedded.presentation_timestamp_us
    poster = _motion_poster(video, timestamp / 1e6 if timestamp is not None else poster_time(facts.duration_s), deadline)
    if poster is None:
        return outcome
    motion = Produced(name="motion", path=str(video), width=facts.width, height=facts.height, mime_type="video/mp4")
    about = MotionPhoto(presentation_timestamp_us=timestamp, duration_s=facts.duration_s, video_codec=facts.video_codec)
    metadata = msgspec.structs.replace(outcome.metadata, motion_photo=about)
    return msgspec.structs.replace(outcome, metadata=metadata, variants=(*outcome.variants, motion, poster))


def _motion_poster(video: Path, at: float, deadline: float) -> Produced | None:
    frame = video.with_name("motion-poster.ppm")
    for seek in dict.fromkeys((at, 0.0)):  # a timestamp past the end: the first frame instead
        _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-threads", "2", "-protocol_whitelist", "file",
             "-ss", f"{seek:.3f}", "-f", "mov", "-i", str(video),
             "-frames:v", "1", "-an", "-sn", "-dn", "-f", "image2", "-c:v", "ppm", "-y", str(frame)],
            deadline,
            check=False,
        )
        if frame.exists() and frame.stat().st_size > 0:
            break
    else:
        return None
    out = video.with_name("motion-poster.webp")
    try:
        with Image(filename=f"ppm:{frame}[0]") as img:
            size = fit(Size(img.width, img.height), MOTION_POSTER_LONG_EDGE)
            img.scale(size.width, size.height)
            img.strip()
            _encode(img.clone(), out)
    except WandException:
        return None
    return Produced(name="motion_poster", path=str(out), width=size.width, height=size.height)


# -- ImageMagick -------------------------------------------------------------------------------


class Pixels(msgspec.Struct, frozen=True):
    """A decoded 8-bit picture another library handed over (libheif, LibRaw): rows of `stride`
    bytes, each `width` pixels of the `channels` ImageMagick names ("RGB", "RGBA", "I")."""

    data: object  # a buffer: memoryview, numpy array
    width: int
    height: int
    channels: str
    stride: int


_HEIF_CHANNELS = {"RGB": "RGB", "RGBA": "RGBA", "L": "I"}


class Decoded(msgspec.Struct, frozen=True):
    """A picture decoded in this process: its pixels, the size its file declares (when the
    pixels are smaller: shrink-on-load), its ICC profile and what the decoder complained of."""

    pixels: Pixels
    stored: Size | None = None
    profile: bytes | None = None
    warnings: tuple[DecodeWarning, ...] = ()


def _jpeg(data: bytes) -> Decoded | None:
    """A grey or YCbCr/RGB JPEG decoded by libjpeg-turbo (simplejpeg's build), else None.

    libjpeg-turbo scales in the DCT on the way (to the smallest of its scales still at least as
    large as the largest variant) and hands over 8-bit RGB: 0.14 s CPU for a 24 MP camera JPEG
    here, where ImageMagick 6 takes 0.19 s to decode it at the same scale into its 16-bit pixels
    and 0.10 s more to shrink those to 2560 px (Pillow, in render_decoded: 0.05 s). Its warnings
    (libjpeg's "Premature end of JPEG file", "Corrupt JPEG data: ...") raise in the strict
    decode; then a lenient one gives the pixels libjpeg made of the damaged file, as
    ImageMagick's coder did. A JPEG the TurboJPEG API cannot decode at all (broken, or of a kind
    it does not take) is ImageMagick's to decode or refuse, as before; so are CMYK and YCCK JPEGs
    (press files), which it converts through their profile.
    """
    frame = jpeg_frame(data)
    if frame is None or frame.components not in (1, 3):
        return None
    hint = decode_hint(frame.size)
    colorspace, channels = ("GRAY", "I") if frame.components == 1 else ("RGB", "RGB")
    warnings: tuple[DecodeWarning, ...] = ()
    try:
        array = simplejpeg.decode_jpeg(data, colorspace, min_width=hint.width, min_height=hint.height)
    except ValueError as complaint:
        try:
            array = simplejpeg.decode_jpeg(data, colorspace, min_width=hint.width, min_height=hint.height, strict=False)
        except ValueError:
            return None  # ImageMagick's coder decodes it or says what is wrong with it
        warnings = (decode_warning(f"libjpeg: {complaint}"),)
    height, width = array.shape[:2]
    pixels = Pixels(array, width, height, channels, width * len(channels))
    return Decoded(pixels, stored=frame.size, profile=frame.icc_profile, warnings=warnings)


def render_decoded(decoded: Decoded, workdir: str, *, orientation: int | None = None) -> Rendered:
    """Every variant of a picture decoded in this process, by Pillow: reduced, oriented,
    converted to sRGB, scaled and written as stripped WebP, in 8 bits throughout.

    ImageMagick 6 would first copy the pixels into its 16-bit ones (0.03 s for 2560 px), then
    scale 2560 -> 1280 (0.04 s CPU) and 1280 -> 320 with Lanczos (0.05 s), where Pillow takes
    0.02 s and 0.01 s; libwebp is the same library either way (the bytes Pillow writes with
    these settings are ImageMagick's), and Pillow hands it the 8-bit pixels as they are. The
    filters: area averages to `large` and `medium` (see _reduction_filter), Lanczos to `thumb`,
    as on ImageMagick's route. A profile LittleCMS cannot take as RGB -> sRGB here (grey, CMYK, a broken one) goes
    through ImageMagick's route instead, which converts or says what is wrong with it.
    """
    pixels = decoded.pixels
    transform = None
    if decoded.profile is not None:
        transform = _rgb_transform(decoded.profile, pixels.channels) if pixels.channels in ("RGB", "RGBA") else None
        if transform is None:
            return render(pixels, workdir, stored=decoded.stored, orientation=orientation, profile=decoded.profile)
    stored = decoded.stored or Size(pixels.width, pixels.height)
    display = display_size(stored, orientation)
    variants = plan(display)
    mode = _PILLOW_MODES[pixels.channels]
    picture = PIL.Image.frombuffer(mode, (pixels.width, pixels.height), pixels.data, "raw", mode, pixels.stride, 1)  # type: ignore[arg-type]
    del pixels
    produced: list[Produced] = []
    with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as encoders:
        # Straight to `large` (in the stored orientation: turning the smaller picture costs less).
        large = display_size(variants[0].size, orientation)
        if picture.size != (large.width, large.height):
            picture = _reduced_in_halves(picture, (large.width, large.height), encoders)
        if orientation in _TRANSPOSES:
            picture = picture.transpose(_TRANSPOSES[orientation])
        encodes = []
        for variant in variants:
            size = (variant.size.width, variant.size.height)
            if picture.size != size:
                last = variant is variants[-1]
                kind = PIL.Image.Resampling.LANCZOS if last else _reduction_filter(picture.size, size)
                picture = picture.resize(size, kind, reducing_gap=REDUCING_GAP.get(kind))
            if transform is not None and variant is variants[0]:
                picture = ImageCms.applyTransform(picture, transform)
                assert picture is not None
            out = Path(workdir, f"{variant.name}.webp")
            encodes.append(encoders.submit(_encode_pillow, picture, out))
            produced.append(Produced(name=variant.name, path=str(out), width=size[0], height=size[1]))
        for encode in encodes:
            encode.result()
    return Rendered(variants=tuple(produced), display=display, warnings=decoded.warnings)


def _reduced_in_halves(picture: PIL.Image.Image, size: tuple[int, int], threads: ThreadPoolExecutor) -> PIL.Image.Image:
    """`picture` reduced to `size`, its upper and lower halves on two threads at once.

    The decode -> large reduction is the one step before any encode can start, so nothing else
    overlaps it: 58 ms wall for 3000 -> 2560 px, 27 ms in halves, for the same CPU. Pillow
    resamples the box of each half with the whole picture's scale and reads past the box for
    the filter's support, so the halves join without a seam (they differ from one reduction by
    at most 1 in 255, the float box edge's rounding).
    """
    width, height = size
    top = height // 2
    split = top * picture.height / height  # the source row where the output's lower half starts
    kind = _reduction_filter(picture.size, size)
    upper = threads.submit(picture.resize, (width, top), kind, (0, 0, picture.width, split))
    lower = threads.submit(picture.resize, (width, height - top), kind, (0, split, picture.width, picture.height))
    joined = PIL.Image.new(picture.mode, size)
    joined.paste(upper.result(), (0, 0))
    joined.paste(lower.result(), (0, top))
    return joined


# EXIF orientation -> the transposition that shows the picture upright.
_TRANSPOSES = {
    2: PIL.Image.Transpose.FLIP_LEFT_RIGHT, 3: PIL.Image.Transpose.ROTATE_180, 4: PIL.Image.Transpose.FLIP_TOP_BOTTOM,
    5: PIL.Image.Transpose.TRANSPOSE, 6: PIL.Image.Transpose.ROTATE_270, 7: PIL.Image.Transpose.TRANSVERSE,
    8: PIL.Image.Transpose.ROTATE_90,
}


def _encode_pillow(picture: PIL.Image.Image, out: Path) -> None:
    """libwebp through Pillow (which releases the GIL while it encodes); no EXIF, XMP or ICC."""
    picture.save(out, "WEBP", quality=WEBP_QUALITY, method=WEBP_METHOD)


def render(
    source: str | Pixels,
    workdir: str,
    *,
    coder: str | None = None,
    stored: Size | None = None,
    orientation: int | None = None,
    profile: bytes | None = None,
) -> Rendered:
    """Decode a file's frame 0 with the named coder, or take decoded pixels; write every variant
    as stripped sRGB WebP.

    `stored` is the picture's size from its header, given for JPEG only: libjpeg then decodes at
    the smallest 1/2, 1/4 or 1/8 scale still at least as large as the largest variant. The
    `orientation` overrides the picture's own (a RAW preview is oriented by the RAW's EXIF), and
    `profile` is the ICC profile when the pixels come without one (HEIC).
    """
    try:
        with Image() as img:
            if isinstance(source, Pixels):
                stored = stored or Size(source.width, source.height)
                _constitute(img, _reduced(source))
            else:
                if stored is not None and coder == "jpeg":
                    hint = decode_hint(stored)
                    img.options["jpeg:size"] = f"{hint.width}x{hint.height}"
                img.read(filename=f"{coder}:{source}[0]")
            warnings = _decoder_warnings(img)
            if stored is None:
                stored = Size(img.width, img.height)
            if orientation in range(1, 9):
                img.orientation = _ORIENTATIONS[orientation - 1]  # type: ignore[operator]
            orientation = _orientation_number(img.orientation)
            img.auto_orient()
            profile = img.profiles["icc"] or profile
            if profile is None and img.colorspace not in ("srgb", "rgb", "gray"):
                img.transform_colorspace("srgb")  # CMYK without a profile: ImageMagick's formula
            img.strip()  # EXIF (GPS), XMP, ICC, comments: nothing travels into a derivative
            display = display_size(stored, orientation)
            produced = _variants(img, workdir, profile)
    except CorruptImageError as exc:
        raise corrupt_content(f"ImageMagick: {exc}") from None
    except WandException as exc:
        if coder == "png" and "did not raise" in str(exc):
            # libpng gave up on broken image data (a bad IDAT, data cut short); ImageMagick 6
            # loses its error message on the way, but a PNG that reads as nothing is damaged.
            raise corrupt_content("libpng found the image data damaged and gave no picture") from None
        raise Unprocessable("decode_failed", f"ImageMagick: {exc}") from None
    return Rendered(variants=produced, display=display, warnings=warnings)


def _variants(source: Image, workdir: str, profile: bytes | None = None) -> tuple[Produced, ...]:
    """Scale the cascade on this thread; encode each variant on another as soon as it exists.

    A picture with an ICC `profile` (already stripped from `source`) is converted to sRGB once,
    on the largest variant: the cascade scales in the picture's own space up to there (as
    libvips' thumbnail does), and the conversion costs a 2560 px picture instead of the decode.

    WebP encoding is the largest cost after the decode, and libwebp runs with the GIL released
    (Wand calls it through ctypes), so `large` encodes on one core while `medium` and `thumb` are
    scaled and encoded on the other, instead of the two taking turns. Every thread works on its
    own image (ImageMagick shares pixels between clones copy-on-write), and each image is closed
    as soon as nothing needs it, by the thread that used it last: freeing the full decode (about
    100 MB for 12 MP) overlaps the encoding instead of following it. That includes `source`, once
    the largest variant has been scaled from it (the caller's `with` closing it again is a no-op).
    """
    variants = plan(Size(source.width, source.height))
    encodes: list[Future[None]] = []
    produced: list[Produced] = []
    current = source
    try:
        with ThreadPoolExecutor(max_workers=ENCODE_THREADS) as encoders:
            for variant in variants:
                scaled = current.clone()
                try:
                    if (scaled.width, scaled.height) != (variant.size.width, variant.size.height):
                        if variant is variants[-1]:
                            scaled.resize(variant.size.width, variant.size.height, filter=FINAL_FILTER)
                        else:
                            scaled.scale(variant.size.width, variant.size.height)
                    if profile is not None and variant is variants[0]:
                        _to_srgb(scaled, profile)
                    encoded = scaled.clone()  # the encoder's own handle; it closes it
                except BaseException:
                    scaled.close()
                    raise
                current.close()  # the next variant is scaled from this one, not from its parent
                current = scaled
                out = Path(workdir, f"{variant.name}.webp")
                encodes.append(encoders.submit(_encode, encoded, out))
                produced.append(Produced(name=variant.name, path=str(out), width=scaled.width, height=scaled.height))
            for encode in encodes:
                encode.result()  # an encoder's WandException surfaces here
    finally:
        current.close()
    return tuple(produced)


def _reduced(pixels: Pixels) -> Pixels:
    """Pixels larger than the largest variant, reduced to it in 8 bits by Pillow (see
    _reduction_filter), before the pixels reach ImageMagick instead of after: 0.07 s CPU for a
    12 MP HEIC (0.04 s for a half-size 24 MP RAW), where ImageMagick takes 0.16 s (0.09 s) on its 16-bit copy, which is also made of the
    full picture instead of the variant.
    """
    target = decode_hint(Size(pixels.width, pixels.height))
    if (target.width, target.height) == (pixels.width, pixels.height):
        return pixels
    mode = _PILLOW_MODES[pixels.channels]
    picture = PIL.Image.frombuffer(mode, (pixels.width, pixels.height), pixels.data, "raw", mode, pixels.stride, 1)  # type: ignore[arg-type]
    reduced = picture.resize((target.width, target.height), _reduction_filter(picture.size, (target.width, target.height)))
    return Pixels(reduced.tobytes(), target.width, target.height, pixels.channels, target.width * len(pixels.channels))


_PILLOW_MODES = {"RGB": "RGB", "RGBA": "RGBA", "I": "L"}


def _constitute(img: Image, pixels: Pixels) -> None:
    """The pixels as `img`'s one frame, copied in by ImageMagick (no coder, no file)."""
    rows = numpy.frombuffer(pixels.data, numpy.uint8).reshape(pixels.height, pixels.stride)  # type: ignore[call-overload]
    packed = numpy.ascontiguousarray(rows[:, : pixels.width * len(pixels.channels)])  # a copy only if rows are padded
    if not library.MagickConstituteImage(
        img.wand, pixels.width, pixels.height, pixels.channels.encode(), _CHAR_PIXEL, packed.ctypes.data
    ):
        img.raise_exception()
        raise Unprocessable("decode_failed", "ImageMagick could not take the decoded pixels")


def _encode(img: Image, out: Path) -> None:
    with img:
        img.compression_quality = WEBP_QUALITY
        img.options["webp:method"] = str(WEBP_METHOD)
        img.save(filename=f"webp:{out}")


_ORIENTATIONS = (
    "top_left", "top_right", "bottom_right", "bottom_left", "left_top", "right_top", "right_bottom", "left_bottom",
)


def _orientation_number(name: str) -> int | None:
    return _ORIENTATIONS.index(name) + 1 if name in _ORIENTATIONS else None


# -- readers ----------------------------------------------------------------------------------


# Where EXIF can be, by family: a JPEG's APP1 comes before its frame, a TIFF RAW's IFDs before
# its preview and sensor data. Reading (and copying) all of a 50 MB RAW for them cost ~0.1 s.
_EXIF_WITHIN = {"jpeg": 2 * 1024**2, "cr2": 4 * 1024**2, "nef": 4 * 1024**2, "arw": 4 * 1024**2,
                "dng": 4 * 1024**2}


def _exif(path: str, family: str) -> ExifTags:
    with open(path, "rb") as file:
        data = file.read(_EXIF_WITHIN.get(family, -1))
    tiff = find_tiff(data, family)
    return read_exif(tiff) if tiff is not None else ExifTags()


def _declared_size(path: str, family: Family) -> Size | None:
    """The header's picture size, read through a map of the file: no copy of a large original."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return None
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return declared_size(mapped, family)


def _raw_preview(raw: rawpy.RawPy, job: Job) -> Decoded | None:
    """The embedded preview, decoded, if large enough for the variants (and not CMYK: no camera's is)."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format == rawpy.ThumbFormat.JPEG:
        size = declared_size(thumb.data, "jpeg")
        if size is None or size.long_edge < PREVIEW_MIN_LONG_EDGE:
            return None
        refuse_oversized(size, job.pixels, "RAW preview")
        return _jpeg(thumb.data)
    height, width = thumb.data.shape[:2]
    if max(width, height) < PREVIEW_MIN_LONG_EDGE or thumb.data.ndim != 3 or thumb.data.shape[2] != 3:
        return None
    return Decoded(_rgb_array(thumb.data))


def _rgb_array(array: numpy.ndarray) -> Pixels:
    """LibRaw's 8-bit RGB array (height x width x 3) as Pixels."""
    height, width = array.shape[:2]
    packed = numpy.ascontiguousarray(array, numpy.uint8)
    return Pixels(packed, width, height, "RGB", width * 3)


# -- damage and colour --------------------------------------------------------------------------


def _warned(metadata: MediaMetadata, warnings: tuple[DecodeWarning, ...]) -> MediaMetadata:
    return msgspec.structs.replace(metadata, warnings=warnings) if warnings else metadata


class _ExceptionInfo(ctypes.Structure):
    # The leading fields of MagickCore 6's ExceptionInfo (severity, error_number, reason, ...).
    _fields_ = [("severity", ctypes.c_int), ("error_number", ctypes.c_int),
                ("reason", ctypes.c_char_p), ("description", ctypes.c_char_p)]


libmagick.AcquireExceptionInfo.argtypes = []
libmagick.AcquireExceptionInfo.restype = ctypes.POINTER(_ExceptionInfo)
libmagick.GetImageException.argtypes = [ctypes.c_void_p, ctypes.POINTER(_ExceptionInfo)]
libmagick.GetImageException.restype = None
libmagick.DestroyExceptionInfo.argtypes = [ctypes.POINTER(_ExceptionInfo)]
libmagick.DestroyExceptionInfo.restype = ctypes.c_void_p
_CHAR_PIXEL = 1  # MagickCore's StorageType CharPixel: one byte a channel
library.MagickProfileImage.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
library.MagickProfileImage.restype = ctypes.c_int
_WARNING_SEVERITIES = range(300, 400)  # ImageMagick's warning band (CorruptImageWarning is 325)
_WHERE = re.compile(r" `[^`']*' @ .*$")  # ImageMagick's " `file' @ warning/jpeg.c/..." suffix


def _decoder_warnings(img: Image) -> tuple[DecodeWarning, ...]:
    """The warning a coder recorded while reading (libjpeg's "Premature end of JPEG file"...).

    ImageMagick 6 keeps a coder's warnings on the image, where Wand never looks: a JPEG cut in
    half reads "successfully" with its lower half grey. The image keeps its most severe one.
    """
    info = libmagick.AcquireExceptionInfo()
    try:
        libmagick.GetImageException(library.GetImageFromMagickWand(img.wand), info)
        severity, reason = info.contents.severity, info.contents.reason
    finally:
        libmagick.DestroyExceptionInfo(info)
    if severity not in _WARNING_SEVERITIES or not reason:
        return ()
    return (decode_warning(_WHERE.sub("", reason.decode("utf-8", "replace"))),)


_FFMPEG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")  # "[h264 @ 0x55d0...] "


def _ffmpeg_warnings(complaints: list[str]) -> tuple[DecodeWarning, ...]:
    """ffmpeg's errors on the way to the poster (at -v error a sound file prints nothing).

    One warning per kind of damage: truncation (the demuxer's "partial file") and corrupt data.
    """
    lines = dict.fromkeys(_FFMPEG_CONTEXT.sub("", line).strip() for line in complaints)
    found: dict[str, DecodeWarning] = {}
    for line in filter(None, lines):
        warning = decode_warning(f"ffmpeg: {line}")
        found.setdefault(warning.code, warning)
    return tuple(found.values())


def _to_srgb(img: Image, profile: bytes) -> None:
    """Convert from the picture's own ICC profile to sRGB (LittleCMS), then drop the profile.

    An RGB picture with an RGB profile (Display P3, Adobe RGB: nearly every tagged photo) goes
    through LittleCMS in 8 bits, by Pillow's ImageCms: there LittleCMS joins the two matrix-shaper
    profiles into one optimised transform, 0.15 s CPU for a 2560 x 1920 variant with the copies
    out of and back into ImageMagick, where ImageMagick 6 takes 1.0 s (16-bit pixels through an
    interpolated table). Any other pair (CMYK, grey) goes through ImageMagick.
    """
    channels = "RGBA" if img.alpha_channel else "RGB"
    transform = _rgb_transform(profile, channels) if img.colorspace == "srgb" else None
    if transform is not None:
        width, height = img.width, img.height
        pixels = bytearray(width * height * len(channels))
        address = ctypes.addressof(ctypes.c_char.from_buffer(pixels))
        if not library.MagickExportImagePixels(img.wand, 0, 0, width, height, channels.encode(), _CHAR_PIXEL, address):
            img.raise_exception()
        converted = ImageCms.applyTransform(PIL.Image.frombuffer(channels, (width, height), pixels, "raw", channels, 0, 1), transform)
        assert converted is not None
        if not library.MagickImportImagePixels(
            img.wand, 0, 0, width, height, channels.encode(), _CHAR_PIXEL, converted.tobytes()
        ):
            img.raise_exception()
        img.strip()
        return
    for icc in (profile, SRGB_PROFILE):
        # The first call attaches the picture's profile; the second converts from it to sRGB.
        if not library.MagickProfileImage(img.wand, b"icc", icc, len(icc)):
            img.raise_exception()
            raise Unprocessable("decode_failed", "ImageMagick could not apply the picture's ICC profile")
    img.strip()


def _rgb_transform(profile: bytes, channels: str) -> ImageCms.ImageCmsTransform | None:
    """LittleCMS' transform from an RGB profile to sRGB, or None for a profile of another kind."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ImageCms.PyCMSError):
        return None  # ImageMagick then says what is wrong with it
    if source.profile.xcolor_space != "RGB ":
        return None
    return ImageCms.buildTransform(source, _SRGB_CMS, channels, channels)


def _ffprobe(path: str, demuxer: str, deadline: float) -> Probe | None:
    result = _run(
        ["ffprobe", "-v", "error", "-protocol_whitelist", "file", "-f", demuxer,
         "-print_format", "json", "-show_format", "-show_streams", path],
        deadline,
        check=False,
    )
    if result.returncode != 0:
        return None
    try:
        return parse_probe(result.stdout)
    except ValueError:
        return None


def _hachoir(path: str) -> HachoirFacts | None:
    """Container header facts where ffprobe gave up (a header-only Matroska, for one)."""
    parser = createParser(path)
    if parser is None:
        return None
    with parser:
        found = extractMetadata(parser)
    if found is None:
        return None

    def get(key: str) -> object:
        return found.get(key) if found.has(key) else None

    duration = get("duration")
    rate = get("frame_rate")
    return HachoirFacts(
        width=_int(get("width")),
        height=_int(get("height")),
        duration_s=duration.total_seconds() if hasattr(duration, "total_seconds") else None,
        frame_rate=float(rate) if isinstance(rate, (int, float)) else None,
        creation_date=get("creation_date") if hasattr(get("creation_date"), "year") else None,
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


_PDF_INFO = re.compile(rb"^(\d+)\s*\n\[\s*([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s+([-\d.]+)\s*\]", re.M)


def _pdf_pages(path: str, deadline: float) -> tuple[int | None, Size | None]:
    """Page count and the first page's MediaBox (points), from Ghostscript's PDF interpreter."""
    script = (
        f"({path}) (r) file runpdfbegin pdfpagecount = "
        "1 pdfgetpage /MediaBox pget { == } { [0 0 0 0] == } ifelse quit"
    )
    result = _run(
        ["gs", "-q", "-dNODISPLAY", "-dSAFER", "-dBATCH", "-dNOPAUSE", f"--permit-file-read={path}", "-c", script],
        deadline,
        check=False,
    )
    match = _PDF_INFO.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise Unprocessable("decode_failed", "Ghostscript could not read the PDF: " + result.stderr.decode("utf-8", "replace")[-300:])
    x0, y0, x1, y1 = (float(v) for v in match.groups()[1:])
    box = Size(round(abs(x1 - x0)), round(abs(y1 - y0)))
    return int(match[1]), box if box.width and box.height else None


def _run(argv: list[str], deadline: float, *, stdout: object = None, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Unprocessable("timeout", f"no time left for {argv[0]}")
    try:
        result = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=remaining,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise Unprocessable("timeout", f"{argv[0]} took longer than {remaining:.0f} s") from None
    if check and result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip()[-500:]
        raise Unprocessable("decode_failed", f"{argv[0]} exited with {result.returncode}: {message}")
    if result.stdout is None:
        result.stdout = b""
    return result
