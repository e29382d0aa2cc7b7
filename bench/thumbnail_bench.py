"""Thumbnail benchmark: the processor's decode + three WebP variants against libvips, same inputs, same run.

    .venv/bin/python bench/thumbnail_bench.py [--rounds 3] [--json PATH]

Needs the `bench` extra of the media processor (pyvips with its bundled libvips) and, for the HEIC
baseline, Debian's libvips42 (the bundled libvips has no HEVC decoder; `make bench` installs it).
Inputs look like users' files (issue 22):
- a 24 MP camera-like JPEG (6000x4000: smooth scene, hard edges, fine texture and sensor-like
  noise, quality 92, about 9 MB), generated into bench/.work/;
- a real 12 MP iPhone HEIC with a Display P3 profile (`mei_IMG_1034.heic` of the shared media
  corpus, iPhone 8, 4032x3024 in tiles): both sides convert it to sRGB;
- a 24 MP RAW built like a Nikon NEF (6000x4000 16-bit Bayer sensor data with noise) once with a
  full-size JPEG preview (as cameras write them: the processor uses the preview) and once without
  (a half-size demosaic by LibRaw).

Ours runs as production runs it: `Sandbox.process`, a decoding child forked from the decoders'
forkserver (started and warmed before the clock, as the processor does once), with the
decoders' environment, policy and limits (header check, EXIF, decode, ICC, variants). The
baseline is libvips doing the same work: for JPEG and HEIC the faster of two ways (three
`thumbnail` calls from the file, shrink-on-load each time; or one `thumbnail` to 2560 and the
smaller two from it), for RAW rawpy (the same LibRaw decode) and then libvips. Each measurement
runs in a fresh process, alternating ours and the baseline. Wall time is measured around the
work (imports excluded); CPU time is the decoding child's (as its forkserver reaped it) for ours,
the process's for the baseline; peak RSS is the decoding child's VmHWM (sampled every 10 ms) for
ours, the process's for the baseline. Then the pixel-limit refusal (a few-KB file declaring
gigapixels, through the sandbox: fork, header, refusal) and the service path of a video and a
PDF. Compare figures within one run only: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

WORK = Path(__file__).parent / ".work"
ROOT = Path(__file__).resolve().parents[1]
EDGES = (2560, 1280, 320)
# Targets of issue 22: ours / baseline wall time.
TARGETS = {"jpeg": 1.0, "heic": 1.0, "raw_preview": 1.2, "raw_demosaic": 1.2}
REFUSAL_TARGET_MS = 50.0
LABELS = {
    "jpeg": "24 MP camera JPEG (9 MB)",
    "heic": "12 MP iPhone HEIC, Display P3 -> sRGB",
    "raw_preview": "24 MP RAW with full-size preview",
    "raw_demosaic": "24 MP RAW without preview (half-size demosaic)",
}
FAMILIES = {"jpeg": "jpeg", "heic": "heif", "raw_preview": "nef", "raw_demosaic": "nef"}


# -- inputs -------------------------------------------------------------------------------------


def scene(width: int, height: int, seed: int):  # -> numpy array (height, width, 3) uint8
    """A camera-like picture: smooth light, hard-edged objects, fine texture, sensor noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    picture = np.empty((height, width, 3), np.float32)
    for channel, (fx, fy, phase) in enumerate(((0.0011, 0.0017, 0.3), (0.0013, 0.0009, 1.1), (0.0007, 0.0015, 2.0))):
        picture[..., channel] = 120 + 70 * np.sin(x * fx + phase) * np.cos(y * fy) + 30 * np.sin((x + y) * 0.004 + channel)
    for _ in range(40):
        x0, y0 = rng.integers(0, width - 400), rng.integers(0, height - 400)
        w, h = rng.integers(50, 400, 2)
        picture[y0 : y0 + h, x0 : x0 + w] += rng.normal(0, 40, 3).astype(np.float32)
    texture = rng.normal(0, 8, (height // 2, width // 2)).astype(np.float32)
    picture += np.repeat(np.repeat(texture, 2, 0), 2, 1)[:height, :width, None]
    shot = 2.5 + np.sqrt(np.clip(picture, 0, 255)) * 0.35  # brighter pixels, more photon noise
    picture += rng.normal(0, 1, (height, width, 3)).astype(np.float32) * shot
    return np.clip(picture, 0, 255).astype(np.uint8)


def camera_jpeg(path: Path) -> None:
    from wand.image import Image

    with Image.from_array(scene(6000, 4000, seed=1)) as img:
        img.format = "jpeg"
        img.compression_quality = 92
        img.save(filename=str(path))


def nef(path: Path, sensor: tuple[int, int], preview: bytes | None) -> None:
    """A big-endian NEF-like TIFF (IFD0 -> SubIFDs [JPEG preview,] 16-bit RGGB sensor data)."""
    import numpy as np

    width, height = sensor
    rgb = scene(width, height, seed=3).astype(np.uint16)
    cfa = np.empty((height, width), np.uint16)
    cfa[0::2, 0::2], cfa[0::2, 1::2] = rgb[0::2, 0::2, 0], rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2], cfa[1::2, 1::2] = rgb[1::2, 0::2, 1], rgb[1::2, 1::2, 2]
    noise = np.random.default_rng(4).normal(0, 40, cfa.shape)
    sensor_data = np.clip(cfa.astype(np.float64) * 60 + 600 + noise, 0, 16383).astype(">u2").tobytes()

    entries: dict[str, list[tuple[int, int, list[int] | bytes]]] = {
        "ifd0": [(0x00FE, 4, [1]), (0x010F, 2, b"NIKON CORPORATION\x00"), (0x0110, 2, b"Bench Z\x00"),
                 (0x0112, 3, [1]), (0x014A, 4, [-1] * (2 if preview else 1))],
        "raw": [(0x00FE, 4, [0]), (0x0100, 4, [width]), (0x0101, 4, [height]), (0x0102, 3, [16]),
                (0x0103, 3, [1]), (0x0106, 3, [32803]), (0x0111, 4, [-2]), (0x0115, 3, [1]),
                (0x0116, 4, [height]), (0x0117, 4, [len(sensor_data)]), (0x828D, 3, [2, 2]),
                (0x828E, 1, [0, 1, 1, 2])],
    }
    if preview:
        entries["preview"] = [(0x00FE, 4, [1]), (0x0103, 3, [6]), (0x0201, 4, [-3]), (0x0202, 4, [len(preview)])]
    sizes = {1: "B", 2: "B", 3: "H", 4: "I"}
    layout = ["ifd0", *(["preview"] if preview else []), "raw"]
    offsets: dict[str, int] = {}
    at = 8
    for name in layout:  # IFDs with their out-of-line values, then the preview and sensor data
        offsets[name] = at
        at += 2 + 12 * len(entries[name]) + 4
        for _, kind, value in entries[name]:
            count = len(value)
            at += (count * struct.calcsize(sizes[kind]) + 1) & ~1 if count * struct.calcsize(sizes[kind]) > 4 else 0
    offsets["jpeg"] = at
    at += len(preview or b"") + (len(preview or b"") & 1)
    offsets["cfa"] = at
    pointer = {-1: [offsets[n] for n in layout[1:]], -2: [offsets["cfa"]], -3: [offsets["jpeg"]]}
    out = bytearray(b"MM\x00*" + struct.pack(">I", 8))
    for name in layout:
        table, extra = bytearray(struct.pack(">H", len(entries[name]))), bytearray()
        extra_at = offsets[name] + 2 + 12 * len(entries[name]) + 4
        for tag, kind, value in entries[name]:
            if isinstance(value, list) and value and value[0] < 0:
                value = pointer[value[0]]
            data = bytes(value) if isinstance(value, bytes) else struct.pack(">" + sizes[kind] * len(value), *value)
            count = len(data) // struct.calcsize(sizes[kind])
            if len(data) <= 4:
                table += struct.pack(">HHI", tag, kind, count) + data.ljust(4, b"\x00")
            else:
                table += struct.pack(">HHII", tag, kind, count, extra_at + len(extra))
                extra += data + b"\x00" * (len(data) & 1)
        out += table + struct.pack(">I", 0) + extra
    out += (preview or b"") + b"\x00" * (len(preview or b"") & 1)
    assert len(out) == offsets["cfa"]
    path.write_bytes(bytes(out) + sensor_data)


def corpus_heic() -> Path:
    for parent in (ROOT.parent, ROOT.parent.parent, ROOT):
        candidate = parent / "shared" / "media-corpus" / "real" / "mei_IMG_1034.heic"
        if candidate.exists():
            return candidate
    raise SystemExit("the shared media corpus (shared/media-corpus/real/mei_IMG_1034.heic) is not beside the repository")


def flood_jpeg() -> bytes:
    """A real 64x48 JPEG whose frame header declares 60000x60000 (3.6 gigapixels)."""
    from wand.color import Color
    from wand.image import Image

    with Image(width=64, height=48, background=Color("#336699")) as img:
        img.format = "jpeg"
        data = bytearray(img.make_blob())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def prepare() -> dict[str, Path]:
    WORK.mkdir(exist_ok=True)
    inputs = {
        "jpeg": WORK / "camera_24mp_q92.jpg",
        "heic": corpus_heic(),
        "raw_preview": WORK / "raw_24mp_preview.nef",
        "raw_demosaic": WORK / "raw_24mp_sensor_only.nef",
        "video": WORK / "video_1080p_20s.mp4",
        "pdf": WORK / "doc_3pages.pdf",
        "flood": WORK / "flood_60000x60000.jpg",
    }
    if not inputs["jpeg"].exists():
        camera_jpeg(inputs["jpeg"])
    if not inputs["raw_preview"].exists():
        nef(inputs["raw_preview"], (6000, 4000), inputs["jpeg"].read_bytes())
    if not inputs["raw_demosaic"].exists():
        nef(inputs["raw_demosaic"], (6000, 4000), None)
    if not inputs["flood"].exists():
        inputs["flood"].write_bytes(flood_jpeg())
    if not inputs["video"].exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-t", "20",
             "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-y", str(inputs["video"])],
            check=True,
        )
    if not inputs["pdf"].exists():
        pages = "".join(
            f"/Helvetica findfont 48 scalefont setfont 72 700 moveto (Page {n}) show "
            f"0.2 setlinewidth 72 72 moveto 523 770 lineto stroke showpage\n"
            for n in (1, 2, 3)
        )
        source = WORK / "doc.ps"
        source.write_text("%!PS\n<< /PageSize [595 842] >> setpagedevice\n" + pages)
        subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite",
                        f"-sOutputFile={inputs['pdf']}", str(source)], check=True)
    return inputs


# -- one measurement, in its own process --------------------------------------------------------


def worker(kind: str, name: str, source: str, outdir: str) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of every thread, peak RSS in MiB) of the work alone."""
    if kind == "ours":
        return ours(FAMILIES[name], source, outdir)
    if name == "heic":
        sys.modules["_libvips"] = None  # type: ignore[assignment]  # the system libvips: it has HEVC
    import pyvips

    from media_processor.variants import WEBP_METHOD, WEBP_QUALITY

    # Debian's libvips 8.14 (the HEIC baseline) names "keep nothing" strip=True.
    bare = {"keep": "none"} if pyvips.at_least_libvips(8, 15) else {"strip": True}

    def save(image: pyvips.Image, edge: int) -> None:
        image.webpsave(f"{outdir}/{edge}.webp", Q=WEBP_QUALITY, effort=WEBP_METHOD, **bare)

    # Only the tagged input is colour-managed, as the processor does.
    profile = {"export_profile": "srgb"} if name == "heic" else {}
    started, cpu = time.perf_counter(), time.process_time()
    if name.startswith("raw"):
        import rawpy

        with rawpy.imread(source) as raw:
            if name == "raw_preview":
                preview = raw.extract_thumb().data
                load = lambda edge: pyvips.Image.thumbnail_buffer(preview, edge)  # noqa: E731
            else:
                pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
                decoded = pyvips.Image.new_from_memory(pixels.data, pixels.shape[1], pixels.shape[0], 3, "uchar")
                load = lambda edge: decoded.thumbnail_image(edge)  # noqa: E731
    else:
        load = lambda edge: pyvips.Image.thumbnail(source, edge, **profile)  # noqa: E731
    if kind == "vips-each":  # every variant from the source, shrink-on-load each time
        for edge in EDGES:
            save(load(edge), edge)
    else:  # one decode to the largest, the smaller two from it
        large = load(EDGES[0]).copy_memory()
        save(large, EDGES[0])
        for edge in EDGES[1:]:
            save(large.thumbnail_image(edge), edge)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    return wall, cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(family: str, source: str, outdir: str) -> tuple[float, float, float]:
    """The processor's path: a decoding child of the sandbox's forkserver, as in production."""
    from media_processor.sandbox import Limits, Sandbox

    sandbox = Sandbox(Limits(timeout_s=300))
    sandbox.start()  # the forkserver and its import of the decoders: once per processor, not timed
    (forkserver,) = (c for c in children(os.getpid()) if b"forkserver" in Path(f"/proc/{c}/cmdline").read_bytes())
    reaped = reaped_cpu_s(forkserver)
    peak = [0.0]
    done = threading.Event()

    def sample() -> None:  # the decoding child's high-water mark, until it is gone
        while not done.wait(0.01):
            for child in children(forkserver):
                try:
                    status = Path(f"/proc/{child}/status").read_text()
                except OSError:
                    continue
                kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
                peak[0] = max(peak[0], kib / 1024)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    try:
        asyncio.run(sandbox.process(source, family, outdir))  # type: ignore[arg-type]
        wall = time.perf_counter() - started
    finally:
        done.set()
        sampler.join()
    # The child has been joined, so its forkserver has reaped it: its CPU is in the children's.
    return wall, reaped_cpu_s(forkserver) - reaped, peak[0]


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def reaped_cpu_s(pid: int) -> float:
    """CPU seconds of every child `pid` has reaped (cutime + cstime), and of what they ran."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def refusal_ms(source: str) -> float:
    """Median milliseconds of the refusal's own work (header read and compare), in this process."""
    from media_processor import imaging
    from media_processor.jobs import Job, Unprocessable

    own = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(20):
            started = time.perf_counter()
            try:
                imaging.process(Job(path=source, family="jpeg", workdir=workdir, timeout_s=60))
            except Unprocessable:
                pass
            own.append(time.perf_counter() - started)
    return statistics.median(own) * 1000


def measure(kind: str, name: str, source: Path) -> tuple[float, float, float]:
    """(seconds, peak RSS in MiB, CPU seconds) of one run in a fresh process."""
    with tempfile.TemporaryDirectory() as outdir:
        made = subprocess.run([sys.executable, __file__, "--worker", kind, name, str(source), outdir],
                              stdout=subprocess.PIPE, check=False)
        if made.returncode != 0:
            raise SystemExit(f"{kind} worker for {name} failed with status {made.returncode}")
    wall, cpu, peak = (float(field) for field in made.stdout.split())
    return wall, peak, cpu


async def sandboxed(source: Path, family: str, rounds: int = 1, **limits: int) -> list[float]:
    from media_processor.dimensions import PixelLimits
    from media_processor.sandbox import Limits, Sandbox, Unprocessable

    sandbox = Sandbox(Limits(pixels=PixelLimits(**limits)))
    await asyncio.to_thread(sandbox.start)
    times = []
    for _ in range(rounds + 1):  # the first warms the forkserver up
        with tempfile.TemporaryDirectory() as workdir:
            started = time.perf_counter()
            try:
                await sandbox.process(str(source), family, workdir)  # type: ignore[arg-type]
            except Unprocessable as exc:
                if exc.cause != "too_many_pixels":
                    raise
            times.append(time.perf_counter() - started)
    return times[1:]


# -- report -------------------------------------------------------------------------------------


def figure(name: str, unit: str, ours: float, baseline: float | None = None, target: str = "",
           met: bool | None = None) -> dict:
    ratio = round(ours / baseline, 3) if baseline else None
    return {"figure": name, "unit": unit, "ours": round(ours, 3), "baseline": baseline and round(baseline, 3),
            "ratio": ratio, "target": target, "met": met}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the figures here (bench/run_all.py's format)")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "NAME", "SOURCE", "OUTDIR"))
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, _, source, _ = args.worker
        print(refusal_ms(source) if kind == "refusal" else " ".join(map(str, worker(*args.worker))))
        return
    if args.prepare:
        print(json.dumps({name: str(path) for name, path in prepare().items()}))
        return
    # Generated in a child: the inputs' arrays (GBs) must not be in the address space every
    # measurement process is forked from (wait4's peak RSS counts a child's pages before exec).
    made = subprocess.run([sys.executable, __file__, "--prepare"], check=True, capture_output=True, text=True)
    inputs = {name: Path(path) for name, path in json.loads(made.stdout).items()}
    figures: list[dict] = []
    cpu_ours: dict[str, float] = {}
    for name, label in LABELS.items():
        kinds = ["ours", "vips-cascade"] + ([] if name == "raw_demosaic" else ["vips-each"])
        runs: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:  # interleaved, so load on the machine hits all alike
                runs[kind].append(measure(kind, name, inputs[name]))
        median = {kind: statistics.median(t for t, _, _ in r) for kind, r in runs.items()}
        for kind, r in runs.items():
            print(f"{label}: {kind:12s} median {median[kind]:.2f} s  (runs {', '.join(f'{t:.2f}' for t, _, _ in r)})  "
                  f"peak RSS {max(m for _, m, _ in r):.0f} MiB  CPU median {statistics.median(c for _, _, c in r):.2f} s")
        baseline = min((k for k in kinds if k != "ours"), key=lambda k: median[k])
        ratio = median["ours"] / median[baseline]
        cpu = {kind: statistics.median(c for _, _, c in r) for kind, r in runs.items()}
        # CPU seconds swing far less than wall time when other work shares the cores.
        print(f"  ratio ours/{baseline}: {ratio:.2f}x wall (target <= {TARGETS[name]:.1f}x), "
              f"{cpu['ours'] / cpu[baseline]:.2f}x CPU")
        cpu_ours[name] = cpu["ours"]
        baseline_name = "rawpy + libvips" if name.startswith("raw") else f"libvips ({baseline})"
        figures.append(figure(f"{label} -> 3 WebP variants, wall (ours vs {baseline_name})", "s", median["ours"],
                              median[baseline], f"<= {TARGETS[name]:.1f}x", ratio <= TARGETS[name]))
        figures.append(figure(f"{label}, CPU (ours vs {baseline_name})", "s", cpu["ours"], cpu[baseline]))
        figures.append(figure(f"{label}, peak RSS (ours vs {baseline_name})", "MiB",
                              max(m for _, m, _ in runs["ours"]), max(m for _, m, _ in runs[baseline])))

    # The refusal's own work, what it costs besides the sandbox's fork: in a process of its own,
    # because importing the decoders' module loads their ImageMagick policy into that process.
    refusal = subprocess.run([sys.executable, __file__, "--worker", "refusal", "flood", str(inputs["flood"]), "-"],
                             check=True, capture_output=True, text=True)
    ms = float(refusal.stdout)
    print(f"pixel-limit refusal in-process (header read and compare only), gigapixel JPEG: median {ms:.2f} ms")
    figures.append(figure("pixel-limit refusal in-process, gigapixel JPEG", "ms", ms, None,
                          f"< {REFUSAL_TARGET_MS:.0f} ms", ms < REFUSAL_TARGET_MS))
    refusals = {
        "gigapixel JPEG (60000x60000 declared, 1 KB)": (inputs["flood"], "jpeg", {}),
        "24 MP RAW over a 20 MP limit (LibRaw header)": (inputs["raw_demosaic"], "nef", {"max_pixels": 20_000_000}),
        "1080p MP4 over a 1 MP limit (track header)": (inputs["video"], "isobmff", {"max_pixels": 1_000_000}),
    }
    for label, (source, family, limits) in refusals.items():
        times = asyncio.run(sandboxed(source, family, rounds=10, **limits))
        ms = statistics.median(times) * 1000
        print(f"pixel-limit refusal through the sandbox, {label}: median {ms:.1f} ms (max {max(times) * 1000:.1f} ms; "
              f"target < {REFUSAL_TARGET_MS:.0f} ms)")
        figures.append(figure(f"pixel-limit refusal (sandbox), {label}", "ms", ms, None,
                              f"< {REFUSAL_TARGET_MS:.0f} ms", ms < REFUSAL_TARGET_MS))

    for label, (source, family) in {
        "service path (sandbox: fork + metadata + variants), 24 MP camera JPEG": (inputs["jpeg"], "jpeg"),
        "1080p 20 s video poster + variants (sandbox)": (inputs["video"], "isobmff"),
        "3-page PDF page 1 + variants (sandbox)": (inputs["pdf"], "pdf"),
    }.items():
        seconds = asyncio.run(sandboxed(source, family))[0]
        print(f"{label}: {seconds:.2f} s")
        figures.append(figure(label, "s", seconds))
    cores = os.cpu_count() or 1
    print(f"photos per minute, one worker per core ({cores} cores), from our CPU median: "
          + ", ".join(f"{name} {60 * cores / cpu:.0f}" for name, cpu in cpu_ours.items()))
    if args.json:
        args.json.write_text(json.dumps({"figures": figures}, indent=2))


if __name__ == "__main__":
    main()
