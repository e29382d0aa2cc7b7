"""Both RAW routes (LibRaw through rawpy), end to end through the sandbox, on RAWs generated here.

No real camera RAW with sensor data fits in the repository (the smallest are several MiB; the
shared corpus has none with sensor data), and the committed `exiftool_Nikon.nef` /
`synthetic_sony_tiff_container.arw` have no decodable picture. So these tests build NEFs the way
Nikon lays them out: a big-endian TIFF whose IFD0 carries Make "NIKON CORPORATION", Model,
Orientation and the EXIF pointer, and whose SubIFDs hold a JPEG preview (NewSubfileType 1,
JPEGInterchangeFormat/Length) and the uncompressed 16-bit Bayer CFA (NewSubfileType 0,
PhotometricInterpretation 32803, RGGB); and DNGs, the same layout with a DNGVersion tag and any
Make. LibRaw reads both: the preview, or the CFA demosaiced at half size. Compressed NEF/ARW/CR2
and CR3 cannot be built here (they need each maker's own encoder): only their sniffing is tested.
"""

from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path

import pytest
from wand.color import Color
from wand.image import Image

from media_processor.dimensions import PixelLimits
from media_processor.magic import check, sniff
from media_processor.sandbox import Limits, Outcome, Sandbox, Unprocessable

MAKE, MODEL = "NIKON CORPORATION", "Synthetic NEF"
TAKEN = "2024:05:17 14:32:05"

_BYTE, _ASCII, _SHORT, _LONG = 1, 2, 3, 4
_PACK = {_BYTE: "B", _SHORT: "H", _LONG: "I"}
Tag = tuple[int, int, "str | list[int | str]"]  # tag, type, value (a str in a list: an offset by name)


def nef(
    *, sensor: tuple[int, int], cfa: bytes, orientation: int, preview: bytes | None, make: str = MAKE, dng: bool = False
) -> bytes:
    """A big-endian NEF-like TIFF: IFD0 -> SubIFDs [preview JPEG,] [16-bit RGGB CFA], EXIF IFD.

    With `dng`, IFD0 also carries DNGVersion 1.4 and UniqueCameraModel: a DNG as phones write them.
    """
    width, height = sensor
    assert len(cfa) == width * height * 2
    subifds: list[int | str] = (["preview"] if preview else []) + ["raw"]
    ifds: list[tuple[str, list[Tag]]] = [
        ("ifd0", [
            (0x00FE, _LONG, [1]),  # NewSubfileType: reduced resolution (as in Nikon's IFD0)
            (0x010F, _ASCII, make),
            (0x0110, _ASCII, MODEL),
            (0x0112, _SHORT, [orientation]),
            (0x014A, _LONG, subifds),
            (0x8769, _LONG, ["exif"]),
            *([(0xC612, _BYTE, [1, 4, 0, 0]), (0xC614, _ASCII, f"{make} {MODEL}")] if dng else []),
        ]),
        ("exif", [(0x9003, _ASCII, TAKEN)]),
    ]
    if preview:
        ifds.append(("preview", [
            (0x00FE, _LONG, [1]),
            (0x0103, _SHORT, [6]),  # old-style JPEG: JPEGInterchangeFormat/Length below
            (0x0201, _LONG, ["jpeg"]),
            (0x0202, _LONG, [len(preview)]),
        ]))
    ifds.append(("raw", [
        (0x00FE, _LONG, [0]),
        (0x0100, _LONG, [width]),
        (0x0101, _LONG, [height]),
        (0x0102, _SHORT, [16]),
        (0x0103, _SHORT, [1]),  # uncompressed
        (0x0106, _SHORT, [32803]),  # CFA
        (0x0111, _LONG, ["cfa"]),
        (0x0115, _SHORT, [1]),
        (0x0116, _LONG, [height]),
        (0x0117, _LONG, [len(cfa)]),
        (0x828D, _SHORT, [2, 2]),  # CFARepeatPatternDim
        (0x828E, _BYTE, [0, 1, 1, 2]),  # CFAPattern: R G / G B
    ]))
    blobs = {"jpeg": preview or b"", "cfa": cfa}

    def encoded(kind: int, value: str | list[int | str], offsets: dict[str, int]) -> bytes:
        if isinstance(value, str):
            return value.encode("ascii") + b"\x00"
        numbers = [offsets.get(v, 0) if isinstance(v, str) else v for v in value]
        return struct.pack(">" + _PACK[kind] * len(numbers), *numbers)

    def layout(offsets: dict[str, int]) -> bytes:
        out = bytearray(b"MM\x00*" + struct.pack(">I", 8))
        for name, tags in ifds:
            offsets[name] = len(out)
            extra_at = len(out) + 2 + 12 * len(tags) + 4
            entries, extras = bytearray(struct.pack(">H", len(tags))), bytearray()
            for tag, kind, value in sorted(tags, key=lambda t: t[0]):
                data = encoded(kind, value, offsets)
                count = len(data) // struct.calcsize(">" + _PACK.get(kind, "B"))
                if len(data) <= 4:
                    entries += struct.pack(">HHI", tag, kind, count) + data.ljust(4, b"\x00")
                else:
                    entries += struct.pack(">HHII", tag, kind, count, extra_at + len(extras))
                    extras += data + b"\x00" * (len(data) & 1)
            out += entries + struct.pack(">I", 0) + extras
        for name, blob in blobs.items():
            offsets[name] = len(out)
            out += blob + b"\x00" * (len(blob) & 1)
        return bytes(out)

    offsets: dict[str, int] = {}
    layout(offsets)  # first pass finds every offset, the second writes them
    return layout(offsets)


def cfa(width: int, height: int, bright_rows: int) -> bytes:
    """Sensor data: a bright band over the first `bright_rows` stored rows, mid grey below."""
    bright = struct.pack(">H", 60000) * width
    dim = struct.pack(">H", 12000) * width
    return bright * bright_rows + dim * (height - bright_rows)


def jpeg(display: tuple[int, int], stored_rotation: int, colour: str = "#1d3557") -> bytes:
    """A JPEG whose upright picture has a red bar on top, stored rotated by `stored_rotation`."""
    width, height = display
    with Image(width=width, height=height, background=Color(colour)) as img:
        with Image(width=width, height=height // 10, background=Color("#d62828")) as bar:
            img.composite(bar, 0, 0)
        img.rotate(stored_rotation)
        img.format = "jpeg"
        img.compression_quality = 85
        return img.make_blob()


async def decode(sandbox: Sandbox, source: Path, tmp_path: Path, expected: str = "nef") -> Outcome:
    # The upload path's own check: a generic type with a .NEF name, content sniffed as Nikon.
    family = check(source.read_bytes()[:65536], "application/octet-stream", source.name)
    assert family == sniff(source.read_bytes()[:65536]) == expected
    work = tmp_path / "work"
    work.mkdir()
    return await sandbox.process(str(source), family, str(work))


def sizes(outcome: Outcome) -> dict[str, tuple[int, int]]:
    return {v.name: (v.width, v.height) for v in outcome.variants}


def rgb(path: str, x: float, y: float) -> tuple[float, float, float]:
    """The colour (0..1) at a relative position of a WebP variant."""
    with Image(filename=f"webp:{path}") as img:
        pixel = img[int(x * (img.width - 1)), int(y * (img.height - 1))]
        return (pixel.red, pixel.green, pixel.blue)


def is_red(colour: tuple[float, float, float]) -> bool:
    r, g, b = colour
    return r > 0.6 and g < 0.35 and b < 0.35


async def test_a_nef_with_a_full_size_preview_uses_it_oriented_with_the_raw_exif(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Held in portrait: the 2000x3000 scene is stored 3000x2000 (sensor and preview alike) with
    # Orientation 6. The preview is the only thing with red in it: the sensor data is grey.
    source = tmp_path / "DSC_0001.NEF"
    source.write_bytes(
        nef(sensor=(3000, 2000), cfa=cfa(3000, 2000, 0), orientation=6, preview=jpeg((2000, 3000), 270))
    )
    outcome = await decode(sandbox, source, tmp_path)

    # 2000x3000 scaled to long edges 2560/1280/320: aspect 2:3 kept, portrait.
    assert sizes(outcome) == {"large": (1707, 2560), "medium": (853, 1280), "thumb": (213, 320)}
    thumb = next(v.path for v in outcome.variants if v.name == "thumb")
    assert is_red(rgb(thumb, 0.5, 0.02))  # the red bar is on top: Orientation 6 honoured
    assert not is_red(rgb(thumb, 0.98, 0.5)) and not is_red(rgb(thumb, 0.5, 0.98))
    meta = outcome.metadata
    assert (meta.camera_make, meta.camera_model, meta.orientation) == (MAKE, MODEL, 6)
    assert meta.taken_at == datetime(2024, 5, 17, 14, 32, 5)
    assert (meta.width, meta.height) == (2000, 3000)  # the sensor's size, as displayed


async def test_a_nef_whose_preview_is_too_small_is_decoded_from_its_sensor_data(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # A 160x107 preview (solid red) is below the 1280 px bar, so LibRaw demosaics the 1200x800
    # CFA at half size: 600x400 stored, 400x600 displayed. The sensor's bright band lies along
    # the stored top edge, which Orientation 6 turns to the right-hand side.
    source = tmp_path / "DSC_0002.NEF"
    source.write_bytes(
        nef(sensor=(1200, 800), cfa=cfa(1200, 800, 200), orientation=6, preview=jpeg((160, 107), 0, "#d62828"))
    )
    outcome = await decode(sandbox, source, tmp_path)

    # Never upscaled: a half-size decode of a small sensor gives variants no larger than itself.
    assert sizes(outcome) == {"large": (400, 600), "medium": (400, 600), "thumb": (213, 320)}
    thumb = next(v.path for v in outcome.variants if v.name == "thumb")
    right, left = rgb(thumb, 0.95, 0.5), rgb(thumb, 0.05, 0.5)
    assert not is_red(right) and not is_red(left)  # pixels from the sensor, not the preview
    assert sum(right) > sum(left) + 0.6  # the bright band on the right: oriented once, correctly
    meta = outcome.metadata
    assert (meta.camera_make, meta.camera_model, meta.orientation) == (MAKE, MODEL, 6)
    assert (meta.width, meta.height) == (800, 1200)  # full sensor size, as displayed


async def test_a_phone_dng_without_a_preview_is_demosaiced_at_half_size(sandbox: Sandbox, tmp_path: Path) -> None:
    # A DNG from a maker dcraw never knew: LibRaw decodes any DNG from its tags alone.
    source = tmp_path / "IMG_0001.DNG"
    source.write_bytes(
        nef(sensor=(1600, 1200), cfa=cfa(1600, 1200, 300), orientation=1, preview=None, make="Apple", dng=True)
    )
    outcome = await decode(sandbox, source, tmp_path, expected="dng")

    assert sizes(outcome) == {"large": (800, 600), "medium": (800, 600), "thumb": (320, 240)}
    thumb = next(v.path for v in outcome.variants if v.name == "thumb")
    top, bottom = rgb(thumb, 0.5, 0.05), rgb(thumb, 0.5, 0.95)
    assert sum(top) > sum(bottom) + 0.6  # the bright band stays on top (orientation 1)
    meta = outcome.metadata
    assert (meta.camera_make, meta.camera_model, meta.width, meta.height) == ("Apple", MODEL, 1600, 1200)
    assert meta.taken_at == datetime(2024, 5, 17, 14, 32, 5)


async def test_a_raw_whose_sensor_declares_too_many_pixels_is_refused_before_unpacking(tmp_path: Path) -> None:
    source = tmp_path / "DSC_0003.NEF"
    source.write_bytes(nef(sensor=(1200, 800), cfa=cfa(1200, 800, 0), orientation=1, preview=None))
    strict = Sandbox(Limits(timeout_s=60, pixels=PixelLimits(max_pixels=900_000)))
    with pytest.raises(Unprocessable) as failure:
        await decode(strict, source, tmp_path)
    assert failure.value.cause == "too_many_pixels"
    assert "nef sensor" in failure.value.detail
