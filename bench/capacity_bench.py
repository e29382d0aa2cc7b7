"""Per-replica cost of the media processor by format, for the capacity plan (issue 17).

    .venv/bin/python bench/capacity_bench.py [--photos 8] [--videos 3] [--raws 4] [--json PATH]

Inputs made once into bench/.work/, shaped like the plan's mix: a 12 MP phone photo of about
3 MB (JPEG with sensor-like noise, ffmpeg), a 1080p30 H.264 clip of about 50 MB (ffmpeg), and two
24 MP RAWs built like a Nikon NEF by thumbnail_bench.nef (16-bit Bayer sensor data, uncompressed):
one with a full-size 24 MP JPEG preview, as cameras write them (the processor has LibRaw extract
the preview and renders it), and one without (LibRaw demosaics at half size: the worst case). The
corpus has no RAW with sensor data and a full preview. Each file goes through the processor's own path (`Sandbox.process`: a child forked per asset, metadata,
variants, the poster for a video), two at a time as a replica with RAWDRIVE_CONCURRENCY=2 runs
them. Measured: the CPU seconds per file (every child and the programs it ran, read from the
forkserver's reaped-children time, so other load on the machine barely moves it), hence files
per minute per core, and the wall-clock rate of this one replica on this machine.

The baseline, in the same run: the least any decoder must do to see the first picture:
`ffmpeg -i FILE -frames:v 1` to a PPM (for the RAW with a preview, of that preview's JPEG), and
for the RAW without one LibRaw's half-size demosaic alone (rawpy, in a child process timing only
that call). The ratio says how much the variants, WebP encodes and metadata cost on top of one
decode.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from thumbnail_bench import nef  # bench/ is the script's directory

WORK = Path(__file__).parent / ".work"
MB = 1_000_000
RAW_SENSOR = (6000, 4000)  # 24 MP, as the preview


def prepare() -> dict[str, Path]:
    WORK.mkdir(exist_ok=True)
    photo, video = WORK / "photo_12mp_3mb.jpg", WORK / "video_1080p_50mb.mp4"
    preview = WORK / "raw_preview_24mp.jpg"
    if not preview.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=6000x4000",
                        "-vf", "noise=alls=18:allf=u", "-frames:v", "1", "-q:v", "3", "-y", str(preview)],
                       check=True)  # fmt: skip
    if not photo.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=4000x3000",
                        "-vf", "noise=alls=18:allf=u", "-frames:v", "1", "-q:v", "3", "-y", str(photo)],
                       check=True)  # fmt: skip
    if not video.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=30",
                        "-t", "40", "-vf", "noise=alls=8:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
                        "-b:v", "10M", "-maxrate", "10M", "-bufsize", "20M", "-pix_fmt", "yuv420p",
                        "-movflags", "+faststart", "-y", str(video)], check=True)  # fmt: skip
    raw, raw_no_preview = WORK / "raw_24mp_with_preview.nef", WORK / "raw_24mp_sensor_only.nef"
    if not raw.exists():
        nef(raw, RAW_SENSOR, preview.read_bytes())
    if not raw_no_preview.exists():
        nef(raw_no_preview, RAW_SENSOR, None)
    return {"photo": photo, "video": video, "raw": raw, "raw_no_preview": raw_no_preview, "raw_preview": preview}


def forkserver_cpu_s() -> float:
    """CPU seconds of every child the forkserver has reaped (and what they ran)."""
    total = 0.0
    for child in psutil.Process().children():
        if "forkserver" in " ".join(child.cmdline()):
            times = child.cpu_times()
            total += times.children_user + times.children_system
    return total


async def through_sandbox(source: Path, family: str, count: int, concurrency: int) -> tuple[float, float]:
    """(CPU seconds per file, wall seconds for all) of `count` files, `concurrency` at a time."""
    from media_processor.sandbox import Sandbox

    sandbox = Sandbox()
    sandbox.start()
    with tempfile.TemporaryDirectory() as warm:  # the first job pays for imports in the child
        await sandbox.process(str(source), family, warm)  # type: ignore[arg-type]
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            with tempfile.TemporaryDirectory() as workdir:
                await sandbox.process(str(source), family, workdir)  # type: ignore[arg-type]

    cpu_before, started = forkserver_cpu_s(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    wall = time.perf_counter() - started
    return (forkserver_cpu_s() - cpu_before) / count, wall


def ffmpeg_first_frame_cpu_s(source: Path, count: int) -> float:
    """CPU seconds per file of the baseline: decode the first picture to PPM, nothing else."""
    before = os.times()
    with tempfile.TemporaryDirectory() as out:
        for _ in range(count):
            subprocess.run(["ffmpeg", "-v", "error", "-i", str(source), "-frames:v", "1", "-y", f"{out}/f.ppm"],
                           check=True)  # fmt: skip
    after = os.times()
    return (after.children_user - before.children_user + after.children_system - before.children_system) / count


DEMOSAIC_CPU_S = """
import sys, time, rawpy
with rawpy.imread(sys.argv[1]) as raw:
    started = time.process_time()
    raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    print(time.process_time() - started)
"""


def demosaic_cpu_s(source: Path, count: int) -> float:
    """CPU seconds per file of the RAW baseline: LibRaw's half-size demosaic alone."""
    times = [float(subprocess.run([sys.executable, "-c", DEMOSAIC_CPU_S, str(source)], check=True,
                                  capture_output=True, text=True).stdout) for _ in range(count)]
    return sum(times) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--videos", type=int, default=3)
    parser.add_argument("--raws", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2, help="files at once (RAWDRIVE_CONCURRENCY)")
    parser.add_argument("--json", type=Path, metavar="PATH")
    args = parser.parse_args()
    assert shutil.which("ffmpeg"), "ffmpeg is needed (make bootstrap installs it)"
    inputs = prepare()
    print(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures = {}
    kinds = (("photo", "jpeg", args.photos), ("video", "isobmff", args.videos),
             ("raw", "nef", args.raws), ("raw_no_preview", "nef", args.raws))
    for name, family, count in kinds:
        source = inputs[name]
        cpu, wall = asyncio.run(through_sandbox(source, family, count, args.concurrency))
        if name == "raw_no_preview":
            baseline_name, baseline = "LibRaw half-size demosaic", demosaic_cpu_s(source, count)
        else:
            first_frame_of = inputs["raw_preview"] if name == "raw" else source
            baseline_name, baseline = "ffmpeg first frame", ffmpeg_first_frame_cpu_s(first_frame_of, count)
        size = source.stat().st_size / MB
        per_core_min = 60 / cpu
        print(f"{name} ({size:.1f} MB): processor {cpu:.2f} CPU s/file = {per_core_min:.0f} files/min per core "
              f"(baseline {baseline_name} {baseline:.2f} CPU s, ratio {cpu / baseline:.1f}x); "
              f"this replica, {args.concurrency} at a time: {count / wall * 60:.0f} files/min wall", flush=True)
        figures[name] = {"mb": size, "cpu_s_per_file": cpu, "files_per_min_per_core": per_core_min,
                         "baseline_cpu_s_per_file": baseline, "replica_files_per_min_wall": count / wall * 60}
    print(f"load average at end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
