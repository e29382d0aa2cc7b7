"""Child-process side: turn one downloaded original into metadata and WebP variants.

Imported only in decoding children (through the sandbox's forkserver), never by the service
process: importing it points ImageMagick at the project's policy before Wand loads it. Every
ImageMagick read names its coder and frame (`jpeg:/path[0]`), so content is never guessed and
animations give their first frame. Video frames come from ffmpeg, PDF pages from Ghostscript
(-dSAFER) and RAW pictures from dcraw; ImageMagick only ever reads JPEG, PNG, WebP, HEIC or PPM.
"""

from __future__ import annotations

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
from hachoir.metadata import extractMetadata  # noqa: E402
from hachoir.parser import createParser  # noqa: E402
from wand.exceptions import WandException  # noqa: E402
from wand.image import Image  # noqa: E402

from media_processor.exif import ExifTags, find_tiff, read_exif  # noqa: E402
from media_processor.magic import FORMATS, sniff  # noqa: E402
from media_processor.metadata import (  # noqa: E402
    HachoirFacts,
    Probe,
    parse_probe,
    photo_metadata,
    poster_time,
    video_metadata,
)
from media_processor.motion import locate_video  # noqa: E402
from media_processor.sandbox import Job, Outcome, Produced, Unprocessable  # noqa: E402
from media_processor.variants import LONG_EDGES, Size, decode_hint, display_size, fit, plan  # noqa: E402
from rawdrive_contracts import MediaMetadata, MotionPhoto  # noqa: E402

hachoir.core.config.quiet = True

# libwebp's effort (0 fast .. 6 small) and quality. The large encode is on the critical path of
# every photo: method 4 (the default) takes ~0.55 s CPU for a 2560 px variant, method 0 ~0.12 s.
# Method 0 does the least rate-distortion search, so it needs a higher quality for the same fidelity: at 83,
# measured with ffmpeg against the unencoded variant (large and medium of a real phone photo, a
# 12 MP and a 24 MP JPEG), SSIM and PSNR are equal or better than method 4 at 80 everywhere
# (at 82 the 12 MP large falls short). The price is bytes: +21-38% for those variants.
WEBP_QUALITY = 83
WEBP_METHOD = 0
# The big reductions (decoded picture -> large, large -> medium) use ImageMagick's ScaleImage, an
# exact area average (a box integral, so no aliasing when reducing): a single row-order pass, about
# half the time of a Triangle resize here, and for the exact 2x large -> medium step a plain 2x2
# average, sharper than Triangle's 4-pixel support. The last, small step (medium -> thumb) is
# cheap, so it gets Lanczos. Measured against a Lanczos resize of the full decode (SSIM after WebP
# encoding): equal to Triangle for `large`, better for `medium` and `thumb`.
FINAL_FILTER = "lanczos"
# Threads encoding variants beside the one that scales them: one per core of the target machine.
ENCODE_THREADS = 2
# An embedded RAW preview at least this large is good enough for every variant but `large`.
PREVIEW_MIN_LONG_EDGE = 1280
# PDF pages render so that their long edge is about the largest variant, within these bounds.
PDF_MIN_DPI, PDF_MAX_DPI = 18, 300
_DCRAW_ERRORS = ("Corrupt data", "Unexpected end of file", "Cannot decode", "is not a", "has no")


def process(job: Job) -> Outcome:
    deadline = time.monotonic() + job.timeout_s
    route = FORMATS[job.family].route
    if route == "image":
        return with_motion_video(_photo(job), job, deadline)
    if route == "raw":
        return _raw(job, deadline)
    if route == "video":
        return _video(job, deadline)
    return _pdf(job, deadline)


# -- routes -------------------------------------------------------------------------------------


def _photo(job: Job) -> Outcome:
    coder = FORMATS[job.family].coder
    assert coder is not None
    exif = _exif(job.path, job.family)
    variants, display = render(job.path, coder, job.workdir, jpeg_hint=job.family == "jpeg")
    return Outcome(metadata=photo_metadata(exif, display), variants=variants)


def _raw(job: Job, deadline: float) -> Outcome:
    exif = _exif(job.path, job.family)
    preview = Path(job.workdir, "preview")
    with preview.open("wb") as out:
        extracted = _run(["dcraw", "-e", "-c", job.path], deadline, stdout=out, check=False)
    picture = _usable_preview(preview) if extracted.returncode == 0 else None
    if picture is None:
        # No preview worth using: a real decode (half size is still >= every variant for
        # cameras above 10 MP, at a quarter of the work), white balance as shot. `-t 0`: dcraw
        # would otherwise rotate by the RAW's orientation itself, and render() rotates again.
        decoded = Path(job.workdir, "decoded.ppm")
        with decoded.open("wb") as out:
            result = _run(["dcraw", "-c", "-w", "-h", "-t", "0", job.path], deadline, stdout=out, check=False)
        errors = result.stderr.decode("utf-8", "replace")
        if result.returncode != 0 or any(marker in errors for marker in _DCRAW_ERRORS):
            raise Unprocessable("decode_failed", f"dcraw: {errors.strip() or 'no picture'}")
        picture = (decoded, "ppm")
    path, coder = picture
    # Previews and dcraw's output carry no orientation of their own: the RAW's EXIF says it.
    variants, display = render(str(path), coder, job.workdir, jpeg_hint=coder == "jpeg", orientation=exif.orientation)
    sensor = _raw_size(job.path, deadline)
    size = display_size(sensor, exif.orientation) if sensor is not None else display
    return Outcome(metadata=photo_metadata(exif, size), variants=variants)


def _video(job: Job, deadline: float) -> Outcome:
    demuxer = FORMATS[job.family].demuxer
    assert demuxer is not None
    probe = _ffprobe(job.path, demuxer, deadline)
    metadata = video_metadata(probe, None if probe is not None else _hachoir(job.path))
    frame = Path(job.workdir, "poster.ppm")
    for at in dict.fromkeys((poster_time(metadata.duration_s), 0.0)):
        # -ss before -i: seek in the container, then decode one frame; ffmpeg applies rotation.
        _run(
            ["ffmpeg", "-nostdin", "-v", "error", "-threads", "2", "-protocol_whitelist", "file",
             "-ss", f"{at:.3f}", "-f", demuxer, "-i", job.path,
             "-frames:v", "1", "-an", "-sn", "-dn", "-f", "image2", "-c:v", "ppm", "-y", str(frame)],
            deadline,
            check=False,
        )
        if frame.exists() and frame.stat().st_size > 0:
            break
    else:
        raise Unprocessable("decode_failed", "ffmpeg could not decode a single video frame")
    variants, _ = render(str(frame), "ppm", job.workdir, jpeg_hint=False)
    return Outcome(metadata=metadata, variants=variants)


def _pdf(job: Job, deadline: float) -> Outcome:
    pages, box = _pdf_pages(job.path, deadline)
    dpi: float = PDF_MIN_DPI
    if box is not None and box.long_edge > 0:
        dpi = min(PDF_MAX_DPI, max(PDF_MIN_DPI, LONG_EDGES[0][1] * 72 / box.long_edge))
    page = Path(job.workdir, "page1.ppm")
    _run(
        ["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-dNOPROMPT", "-dNOINTERPOLATE",
         "-sDEVICE=ppmraw", f"-r{dpi:.2f}", "-dFirstPage=1", "-dLastPage=1",
         "-dTextAlphaBits=4", "-dGraphicsAlphaBits=4", f"-sOutputFile={page}", "-f", job.path],
        deadline,
    )
    if not page.exists() or page.stat().st_size == 0:
        raise Unprocessable("decode_failed", "Ghostscript rendered no page")
    variants, _ = render(str(page), "ppm", job.workdir, jpeg_hint=False)
    return Outcome(metadata=MediaMetadata(page_count=pages), variants=variants)


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


def render(
    path: str, coder: str, workdir: str, *, jpeg_hint: bool, orientation: int | None = None
) -> tuple[tuple[Produced, ...], Size]:
    """Decode frame 0 with the named coder; write every variant as stripped sRGB WebP.

    `orientation` overrides the picture's own (a RAW preview is oriented by the RAW's EXIF).
    Returns the variants and the picture's display size.
    """
    source = f"{coder}:{path}[0]"
    try:
        with Image() as img:
            if jpeg_hint:
                with Image.ping(filename=source) as header:
                    hint = decode_hint(Size(header.width, header.height))
                    stored = Size(header.width, header.height)
                img.options["jpeg:size"] = f"{hint.width}x{hint.height}"
            img.read(filename=source)
            if not jpeg_hint:
                stored = Size(img.width, img.height)
            if orientation in range(1, 9):
                img.orientation = _ORIENTATIONS[orientation - 1]  # type: ignore[operator]
            orientation = _orientation_number(img.orientation)
            img.auto_orient()
            if img.colorspace not in ("srgb", "rgb", "gray"):
                img.transform_colorspace("srgb")
            img.strip()  # EXIF (GPS), XMP, ICC, comments: nothing travels into a derivative
            display = display_size(stored, orientation)
            produced = _variants(img, workdir)
    except WandException as exc:
        raise Unprocessable("decode_failed", f"ImageMagick: {exc}") from None
    return tuple(produced), display


def _variants(source: Image, workdir: str) -> tuple[Produced, ...]:
    """Scale the cascade on this thread; encode each variant on another as soon as it exists.

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


def _exif(path: str, family: str) -> ExifTags:
    tiff = find_tiff(Path(path).read_bytes(), family)
    return read_exif(tiff) if tiff is not None else ExifTags()


def _usable_preview(path: Path) -> tuple[Path, str] | None:
    head = path.read_bytes()[:64] if path.exists() else b""
    coder = "jpeg" if sniff(head) == "jpeg" else "ppm" if head.startswith(b"P6") else None
    if coder is None:
        return None
    try:
        with Image.ping(filename=f"{coder}:{path}[0]") as header:
            long_edge = max(header.width, header.height)
    except WandException:
        return None
    return (path, coder) if long_edge >= PREVIEW_MIN_LONG_EDGE else None


_DCRAW_SIZE = re.compile(r"Output size:\s+(\d+) x (\d+)")


def _raw_size(path: str, deadline: float) -> Size | None:
    """The sensor picture's size as dcraw would output it (before orientation: `-t 0`)."""
    result = _run(["dcraw", "-i", "-v", "-t", "0", path], deadline, check=False)
    match = _DCRAW_SIZE.search(result.stdout.decode("utf-8", "replace"))
    return Size(int(match[1]), int(match[2])) if match else None


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
