"""Thumbnail benchmark: our Wand pipeline against libvips on the same inputs, in the same run.

    .venv/bin/python bench/thumbnail_bench.py [--rounds 5]

Needs the `bench` extra of the media processor (pyvips). Inputs are generated into bench/.work/:
a 24 MP JPEG (6000x4000), a 20 s 1080p H.264 video and a 3-page PDF. Each measurement of a
picture pipeline runs in a fresh process, so its peak RSS (from wait4) is that pipeline's alone;
wall and CPU time (every thread of the process) are measured inside that process around the work
(imports excluded): for both, decode + three resizes + three WebP encodes. Both may use every
core (ImageMagick's OpenMP, libvips' worker threads); the CPU seconds show what that costs, and
photos per minute with one worker per core come from them (busy workers compete for the cores, so
wall time would overstate it). The machine is shared: compare the two only within one run, from
medians. The service's cost per asset, fork from the preloaded forkserver included, is measured
through the Sandbox.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORK = Path(__file__).parent / ".work"
EDGES = (2560, 1280, 320)


def prepare() -> dict[str, Path]:
    WORK.mkdir(exist_ok=True)
    photo, video, pdf = WORK / "photo_24mp.jpg", WORK / "video_1080p_20s.mp4", WORK / "doc_3pages.pdf"
    if not photo.exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=6000x4000", "-frames:v", "1",
             "-q:v", "3", "-y", str(photo)],
            check=True,
        )
    if not video.exists():
        subprocess.run(
            ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30", "-t", "20",
             "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-y", str(video)],
            check=True,
        )
    if not pdf.exists():
        pages = "".join(
            f"/Helvetica findfont 48 scalefont setfont 72 700 moveto (Page {n}) show "
            f"0.2 setlinewidth 72 72 moveto 523 770 lineto stroke showpage\n"
            for n in (1, 2, 3)
        )
        source = WORK / "doc.ps"
        source.write_text("%!PS\n<< /PageSize [595 842] >> setpagedevice\n" + pages)
        subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite",
                        f"-sOutputFile={pdf}", str(source)], check=True)
    return {"photo": photo, "video": video, "pdf": pdf}


# -- one measurement, in its own process --------------------------------------------------------


def worker(kind: str, source: str, outdir: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds of every thread) of the work alone."""
    if kind == "wand":
        from media_processor import imaging

        started, cpu = time.perf_counter(), time.process_time()
        imaging.render(source, "jpeg", outdir, jpeg_hint=True)
        return time.perf_counter() - started, time.process_time() - cpu
    import pyvips

    from media_processor.imaging import WEBP_METHOD, WEBP_QUALITY

    started, cpu = time.perf_counter(), time.process_time()
    for edge in EDGES:
        # thumbnail() from the file: shrink-on-load in libjpeg (leaving at least 2x for the
        # reduce, so the 2560 variant decodes the full picture), then a lanczos3 reduce.
        pyvips.Image.thumbnail(source, edge).webpsave(
            f"{outdir}/{edge}.webp", Q=WEBP_QUALITY, effort=WEBP_METHOD, keep="none"
        )
    return time.perf_counter() - started, time.process_time() - cpu


def measure(kind: str, source: Path) -> tuple[float, float, float]:
    """(seconds, peak RSS in MiB, CPU seconds) of one run in a fresh process."""
    with tempfile.TemporaryDirectory() as outdir:
        process = subprocess.Popen(
            [sys.executable, __file__, "--worker", kind, str(source), outdir], stdout=subprocess.PIPE
        )
        assert process.stdout is not None
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        if status != 0:
            raise SystemExit(f"{kind} worker failed with status {status}")
    wall, cpu = (float(field) for field in output.split())
    return wall, usage.ru_maxrss / 1024, cpu


async def sandboxed(source: Path, family: str) -> float:
    from media_processor.sandbox import Sandbox

    sandbox = Sandbox()
    with tempfile.TemporaryDirectory() as workdir:
        await sandbox.process(str(source), family, workdir)  # warms the forkserver up
    with tempfile.TemporaryDirectory() as workdir:
        started = time.perf_counter()
        await sandbox.process(str(source), family, workdir)  # type: ignore[arg-type]
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "SOURCE", "OUTDIR"))
    args = parser.parse_args()
    if args.worker:
        print(*worker(*args.worker))
        return
    inputs = prepare()
    results: dict[str, list[tuple[float, float, float]]] = {"wand": [], "vips": []}
    for _ in range(args.rounds):
        for kind in results:  # interleaved, so load on the machine hits both alike
            results[kind].append(measure(kind, inputs["photo"]))
    median = {kind: statistics.median(t for t, _, _ in runs) for kind, runs in results.items()}
    cpu = {kind: statistics.median(c for _, _, c in runs) for kind, runs in results.items()}
    for kind, runs in results.items():
        times = ", ".join(f"{t:.2f}" for t, _, _ in runs)
        print(f"24 MP JPEG -> 2560/1280/320 WebP  {kind:5s} median {median[kind]:.2f} s  "
              f"(runs {times})  peak RSS {max(r for _, r, _ in runs):.0f} MiB  "
              f"CPU median {cpu[kind]:.2f} s")
    print(f"ratio wand/vips: {median['wand'] / median['vips']:.2f}x (target <= 1.3x)")
    print(f"service path (sandbox: fork + metadata + variants), 24 MP JPEG: {asyncio.run(sandboxed(inputs['photo'], 'jpeg')):.2f} s")
    print(f"1080p 20 s video poster + variants (sandbox): {asyncio.run(sandboxed(inputs['video'], 'isobmff')):.2f} s")
    print(f"3-page PDF page 1 + variants (sandbox): {asyncio.run(sandboxed(inputs['pdf'], 'pdf')):.2f} s")
    cores = os.cpu_count() or 1
    print(f"photos per minute, one worker per core ({cores} cores), from the CPU median: "
          f"wand {60 * cores / cpu['wand']:.0f}, vips {60 * cores / cpu['vips']:.0f}")


if __name__ == "__main__":
    main()
