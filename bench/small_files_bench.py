"""Small files: 2 MiB photos through the gateway's tus creation endpoint vs @tus/server + @tus/s3-store.

    .venv/bin/python bench/small_files_bench.py [--uploads 200] [--concurrency 16] [--rounds 3]
                                                [--pipeline-uploads 200] [--json PATH]

Issue 19: 200 uploads of 2 MiB, 16 at a time; target: ours >= 1.5x @tus/server's uploads per second.

Starts its own NATS, PostgreSQL and SeaweedFS (bench_stack), a gateway process and a
`node server.mjs` of bench/tus_node_baseline/ (the venv's Node.js; its S3 store writes into the
same SeaweedFS bucket, partSize = minPartSize = the gateway's part size for 2 MiB). The same
aiohttp client code drives both, `--concurrency` uploads in flight: a tus creation POST
(`Upload-Length`, `Upload-Metadata` filename + filetype), then one PATCH with the whole file
(tus-js-client's default chunkSize is unlimited). Ours: `POST /v1/workspaces/{ws}/tus` with a
user token, which opens the upload session, and the gateway commits the upload when its last byte
arrives: the final PATCH is answered only after the session moved to verifying and the commit
request went into the outbox in one transaction, so an upload counts as done when that PATCH is
answered: its commit is accepted. Theirs is done when its PATCH is answered (the object
completed in S3). After each timed batch, outside the clock, every upload is checked: ours by
GET on the session (state verifying or committed, every byte received), theirs by HEAD (offset
at the length).

Inputs look like users' photos: an 8 MP JPEG (3392x2544, ffmpeg test picture with sensor-like
noise, quality 3, about 2 MB) made once into bench/.work/, and per upload a COM segment after SOI
with its own tag and random filler up to exactly `--size-mib`: no two uploads carry the same
bytes, every one decodes.

Rounds alternate which server goes first, after 16 warm-up uploads to each. Printed: uploads/s of
each (median of the rounds), the ratio, p50 of the POST and of the PATCH, and the CPU each process
spent per upload (from /proc: the server, SeaweedFS, PostgreSQL, NATS, this client), which says
where the time goes and moves much less with the machine's other load than the rates do. The
gateway runs with RAWDRIVE_MAX_CONCURRENT_PATCHES_PER_USER = `--concurrency` (default 8: one user
sending 16 at once would get 429s).

Then, unless `--pipeline-uploads 0`, the commit verifier and the media processor are started and
that many more uploads go through the creation endpoint the same way with the whole pipeline
working behind them: uploads/s until the last commit was accepted, until the last asset.created
(seen by an outside subscriber on RAWDRIVE_ASSETS), and commit accepted -> asset.created p50/p95.
The ratio rounds run without those two services: on two shared cores the processor's thumbnails
would take the gateway's CPU, which in production runs on other machines.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urljoin

import aiohttp
from bench_stack import JWT_SECRET, bench_stack
from load import CREATED, FAILED, WORK, Arrivals, descendants, e2e_harness, percentile
from tus_bench import MIB, Gateway, figure
from tus_vs_node import NodeTus, npm_ci

from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.tus_session import tus_part_size

WORKSPACE = "bench"
PIPELINE_WORKSPACE = "benchpipe"
WARM_UP = 16
TARGET = 1.5
PHOTO = WORK / "small_8mp.jpg"
COMMIT_ACCEPTED = ("verifying", "committed")


# -- inputs --------------------------------------------------------------------------------------


def prepare() -> bytes:
    WORK.mkdir(exist_ok=True)
    if not PHOTO.exists():
        # An 8 MP phone-camera frame: sharp test picture plus sensor-like noise, about 2 MB.
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=3392x2544",
                        "-vf", "noise=alls=18:allf=u", "-frames:v", "1", "-q:v", "3", "-y", str(PHOTO)],
                       check=True)
    return PHOTO.read_bytes()


def photo_of_size(jpeg: bytes, tag: str, size: int) -> bytes:
    """The picture with COM segments after SOI (the tag, then random filler) making it exactly
    `size` bytes: other bytes for every tag, still a valid JPEG."""
    assert jpeg[:2] == b"\xff\xd8"
    segments, missing = [], size - len(jpeg)
    text = f"rawdrive bench {tag}".encode()
    while missing:
        if missing < 4 + len(text):
            raise ValueError(f"the base JPEG ({len(jpeg)} bytes) leaves no room for a COM segment in {size}")
        length = min(missing, 65535 + 2)  # marker (2) + length field's value (<= 65535)
        if 0 < missing - length < 4 + len(text):  # leave the last segment enough room
            length = missing - 4 - len(text)
        body = text + os.urandom(length - 4 - len(text))
        segments.append(b"\xff\xfe" + (len(body) + 2).to_bytes(2, "big") + body)
        missing -= length
    photo = jpeg[:2] + b"".join(segments) + jpeg[2:]
    assert len(photo) == size
    return photo


def tus_metadata(**fields: str) -> str:
    return ",".join(f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in fields.items())


# -- the client both servers get ----------------------------------------------------------------


class Uploaded(NamedTuple):
    location: str
    asset_id: str | None  # ours: Upload-Asset-Id
    started: float  # perf_counter
    created: float  # the POST answered 201
    done: float  # the PATCH answered 204


async def send(http: aiohttp.ClientSession, endpoint: str, body: bytes, name: str) -> Uploaded:
    """tus creation POST, then one PATCH with the whole body."""
    started = time.perf_counter()
    headers = {"Tus-Resumable": "1.0.0"}
    async with http.post(endpoint, headers={**headers, "Upload-Length": str(len(body)),
                                            "Upload-Metadata": tus_metadata(filename=name, filetype="image/jpeg")}
                         ) as response:  # fmt: skip
        if response.status != 201:
            raise RuntimeError(f"POST {endpoint}: {response.status} {await response.text()}")
        location = urljoin(endpoint, response.headers["Location"])
    created = time.perf_counter()
    async with http.patch(location, data=body, headers={
            **headers, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"}) as response:
        if response.status != 204:
            raise RuntimeError(f"PATCH {location}: {response.status} {await response.text()}")
        asset_id = response.headers.get("Upload-Asset-Id")
    return Uploaded(location, asset_id, started, created, time.perf_counter())


class Batch(NamedTuple):
    uploads: list[Uploaded]
    seconds: float  # first POST sent -> last PATCH answered

    @property
    def rate(self) -> float:
        return len(self.uploads) / self.seconds


async def batch(http: aiohttp.ClientSession, endpoint: str, photo: bytes, size: int, count: int,
                concurrency: int) -> Batch:  # fmt: skip
    """`count` uploads, `concurrency` in flight; each builds its own bytes as it starts."""
    remaining = iter(range(count))
    run = uuid.uuid4().hex[:8]
    uploads: list[Uploaded] = []

    async def worker() -> None:
        for i in remaining:
            uploads.append(await send(http, endpoint, photo_of_size(photo, f"{run}-{i}", size), f"IMG_{i:04d}.JPG"))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Batch(uploads, max(u.done for u in uploads) - started)


async def check_ours(http: aiohttp.ClientSession, uploads: list[Uploaded], size: int) -> None:
    """Every upload's session accepted its commit with every byte (GET on the session)."""
    for upload in uploads:
        session_url = upload.location.removesuffix("/tus")
        async with http.get(session_url) as response:
            status = await response.json()
        if status.get("state") not in COMMIT_ACCEPTED or status.get("bytes_received") != size:
            raise RuntimeError(f"{session_url}: commit not accepted after the last PATCH: {status}")


async def check_theirs(http: aiohttp.ClientSession, uploads: list[Uploaded], size: int) -> None:
    """Every upload is complete at @tus/server (HEAD: offset at the length)."""
    for upload in uploads:
        async with http.head(upload.location, headers={"Tus-Resumable": "1.0.0"}) as response:
            offset = response.headers.get("Upload-Offset")
        if response.status != 200 or offset != str(size):
            raise RuntimeError(f"{upload.location}: HEAD {response.status}, Upload-Offset {offset}, not {size}")


# -- where the CPU goes --------------------------------------------------------------------------


def stack_processes(work: Path) -> dict[str, int]:
    """The pids of the servers bench_stack started in `work` (their command lines name it)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(work) not in command:
            continue
        name = "postgres" if "postgres" in command else "nats" if "nats-server" in command else \
            "seaweedfs" if "weed" in command else None  # fmt: skip
        if name:  # the lowest pid is the parent (PostgreSQL's backends come after it)
            found[name] = min(int(entry.name), found.get(name, 1 << 30))
    return found


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process, its reaped children and its live descendants (PostgreSQL's
    backends)."""
    total = 0.0
    for member in (pid, *descendants(pid)):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15 if member == pid else 13]) / os.sysconf("SC_CLK_TCK")
    return total


def client_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class CpuMeter:
    """CPU seconds per process (group) over a measured block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def read(self) -> dict[str, float]:
        return {name: tree_cpu_s(pid) for name, pid in self.pids.items()} | {"client": client_cpu_s()}

    async def measure(self, block: Callable[[], Awaitable[Batch]]) -> tuple[Batch, dict[str, float]]:
        before = self.read()
        outcome = await block()
        after = self.read()
        return outcome, {name: after[name] - before[name] for name in after}


# -- the runs ------------------------------------------------------------------------------------


class Side(NamedTuple):
    name: str
    endpoint: str
    headers: dict[str, str]
    check: Callable[[aiohttp.ClientSession, list[Uploaded], int], Awaitable[None]]
    server_pid: int


async def ratio_rounds(sides: dict[str, Side], meter_pids: dict[str, int], photo: bytes, args: argparse.Namespace,
                       size: int) -> dict[str, list[tuple[Batch, dict[str, float]]]]:  # fmt: skip
    results: dict[str, list[tuple[Batch, dict[str, float]]]] = {name: [] for name in sides}
    timeout = aiohttp.ClientTimeout(total=600)
    sessions = {name: aiohttp.ClientSession(headers=side.headers, timeout=timeout) for name, side in sides.items()}
    try:
        for name, side in sides.items():
            await batch(sessions[name], side.endpoint, photo, size, WARM_UP, args.concurrency)
        for round_ in range(args.rounds):
            order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
            for name in order:
                side = sides[name]
                meter = CpuMeter({"server": side.server_pid, **meter_pids})
                outcome = await meter.measure(lambda: batch(sessions[name], side.endpoint, photo, size,
                                                            args.uploads, args.concurrency))  # fmt: skip
                await side.check(sessions[name], outcome[0].uploads, size)
                results[name].append(outcome)
                print(f"  round {round_ + 1} {name}: {outcome[0].rate:.1f} uploads/s "
                      f"({len(outcome[0].uploads)} in {outcome[0].seconds:.1f} s)", flush=True)
    finally:
        for session in sessions.values():
            await session.close()
    return results


async def pipeline_run(env: dict[str, str], log_dir: Path, gateway_url: str, photo: bytes, args: argparse.Namespace,
                       size: int) -> dict:  # fmt: skip
    """The same uploads with the commit verifier and the media processor working behind the gateway."""
    harness = e2e_harness()
    services = []
    arrivals = Arrivals()
    try:
        for module in ("commit_verifier", "media_processor"):
            (log_dir / module).mkdir(parents=True, exist_ok=True)
            service = harness.ServiceProcess(module, env, log_dir / module)
            service.start(ready_timeout_s=60)
            services.append(service)
        await arrivals.start(env["RAWDRIVE_NATS_URL"], PIPELINE_WORKSPACE)
        token = mint_dev_token(JWT_SECRET, sub="bench", workspaces={PIPELINE_WORKSPACE: "member"}, ttl_s=7200)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                         timeout=aiohttp.ClientTimeout(total=600)) as http:
            started = time.perf_counter()
            outcome = await batch(http, f"{gateway_url}/v1/workspaces/{PIPELINE_WORKSPACE}/tus", photo, size,
                                  args.pipeline_uploads, args.concurrency)
            await check_ours(http, outcome.uploads, size)
        assets = {u.asset_id: u.done for u in outcome.uploads}
        await arrivals.wait_for(list(assets), timeout_s=900)
    finally:
        await arrivals.close()
        for service in services:
            service.stop()
    failed = [a for a in assets if (FAILED, a) in arrivals.at]
    missing = [a for a in assets if (CREATED, a) not in arrivals.at and a not in failed]
    latencies = [arrivals.at[(CREATED, a)] - done for a, done in assets.items() if (CREATED, a) in arrivals.at]
    last_created = max((arrivals.at[(CREATED, a)] for a in assets if (CREATED, a) in arrivals.at), default=started)
    return {"uploads": len(outcome.uploads), "commit_rate": len(outcome.uploads) / outcome.seconds,
            "created_rate": (len(assets) - len(failed) - len(missing)) / (last_created - started),
            "latencies": latencies, "failed": failed, "missing": missing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=200)
    parser.add_argument("--size-mib", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pipeline-uploads", type=int, default=200, help="0: skip the run with the whole pipeline")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    size = int(args.size_mib * MIB)
    photo = prepare()
    npm_ci()
    figures: list[dict] = []
    print(f"{args.uploads} uploads of {size / MIB:g} MiB ({len(photo) / MIB:.2f} MiB 8 MP JPEG + COM segments), "
          f"{args.concurrency} at a time, {args.rounds} rounds; CPUs: {os.cpu_count()}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)

    with bench_stack("small-files-") as (work, s3, env):
        env = {**env, "RAWDRIVE_MAX_CONCURRENT_PATCHES_PER_USER": str(args.concurrency)}
        gateway = Gateway(env, work / "gateway.log")
        node = NodeTus(s3, tus_part_size(size), work / "node.log")
        try:
            servers = stack_processes(work)
            if args.pipeline_uploads:
                # First, so that the ratio rounds' commits do not queue up ahead of these.
                pipeline = asyncio.run(pipeline_run(env, work / "logs", gateway.url, photo, args, size))
            token = mint_dev_token(JWT_SECRET, sub="bench", workspaces={WORKSPACE: "member"}, ttl_s=7200)
            sides = {
                "@tus/server": Side("@tus/server", node.url, {}, check_theirs, node.process.pid),
                "gateway": Side("gateway", f"{gateway.url}/v1/workspaces/{WORKSPACE}/tus",
                                {"Authorization": f"Bearer {token}"}, check_ours, gateway.process.pid),
            }
            results = asyncio.run(ratio_rounds(sides, servers, photo, args, size))
        finally:
            gateway.stop()
            node.stop()

    rates = {name: statistics.median(b.rate for b, _ in runs) for name, runs in results.items()}
    ours, theirs = rates["gateway"], rates["@tus/server"]
    print(f"\nuploads/s (median of {args.rounds}): @tus/server {theirs:.1f}, gateway {ours:.1f}: "
          f"{ours / theirs:.2f}x (target >= {TARGET}x: {'met' if ours / theirs >= TARGET else 'NOT met'})")
    for name, runs in results.items():
        print(f"  {name} rounds: {', '.join(f'{b.rate:.1f}' for b, _ in runs)}")
    paired = [g.rate / n.rate for (g, _), (n, _) in zip(results["gateway"], results["@tus/server"])]
    print(f"  ratio within each round (the two batches back to back): {', '.join(f'{r:.2f}x' for r in paired)}")
    print("  ours: done = final PATCH answered = commit accepted (session verifying, commit request in the outbox)")
    print(f"{'':>12} {'POST p50':>9} {'PATCH p50':>10}   CPU ms per upload: "
          f"{'server':>7} {'SeaweedFS':>9} {'PostgreSQL':>10} {'NATS':>6} {'client':>7}")
    cpu_of: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        uploads = [u for b, _ in runs for u in b.uploads]
        post = statistics.median(u.created - u.started for u in uploads) * 1000
        patch = statistics.median(u.done - u.created for u in uploads) * 1000
        count = sum(len(b.uploads) for b, _ in runs)
        cpu = {key: sum(c.get(key, 0.0) for _, c in runs) * 1000 / count
               for key in ("server", "seaweedfs", "postgres", "nats", "client")}
        print(f"{name:>12} {post:>7.0f}ms {patch:>8.0f}ms   {'':>18}{cpu['server']:>7.1f} {cpu['seaweedfs']:>9.1f} "
              f"{cpu['postgres']:>10.1f} {cpu['nats']:>6.1f} {cpu['client']:>7.1f}")
        cpu_of[name] = cpu
    ours_cpu, theirs_cpu = cpu_of["gateway"], cpu_of["@tus/server"]
    ours_all, theirs_all = sum(ours_cpu.values()), sum(theirs_cpu.values())
    # When every process waits for the same two cores, uploads/s go as 1 / CPU per upload.
    print(f"CPU per upload, every process above: @tus/server side {theirs_all:.1f} ms, gateway side {ours_all:.1f} ms: "
          f"{theirs_all / ours_all:.2f}x as many uploads per CPU second (what the rates' ratio tends to on saturated "
          f"cores)")
    behind = ("seaweedfs", "postgres", "nats")
    figures += [
        figure("CPU per 2 MiB upload, server process (gateway vs @tus/server)", "ms", ours_cpu["server"],
               theirs_cpu["server"], "", None),
        figure("CPU per 2 MiB upload, SeaweedFS + PostgreSQL + NATS behind each", "ms",
               sum(ours_cpu[k] for k in behind), sum(theirs_cpu[k] for k in behind), "", None),
        figure("CPU per 2 MiB upload, every process (server, SeaweedFS, PostgreSQL, NATS, client)", "ms", ours_all,
               theirs_all, "", None),
    ]
    label = f"small files: {args.uploads} x {size / MIB:g} MiB, {args.concurrency} at a time, creation endpoint"
    figures.insert(0, figure(f"{label} to commit accepted (vs @tus/server + s3-store)", "uploads/s", ours, theirs,
                             f">= {TARGET}x", ours / theirs >= TARGET))

    if args.pipeline_uploads:
        lat = pipeline["latencies"]
        print(f"\nwhole pipeline (verifier + media processor running), {pipeline['uploads']} uploads, "
              f"{args.concurrency} at a time: {pipeline['commit_rate']:.1f} uploads/s to commit accepted, "
              f"{pipeline['created_rate']:.1f} uploads/s to the last asset.created")
        if lat:
            print(f"  commit accepted -> asset.created: p50 {percentile(lat, 50):.2f} s, "
                  f"p95 {percentile(lat, 95):.2f} s, max {max(lat):.2f} s ({len(lat)} assets)")
        print(f"  processing_failed: {len(pipeline['failed'])}, no asset.created within 900 s: "
              f"{len(pipeline['missing'])}")
        pipe = f"small files, whole pipeline: {pipeline['uploads']} x {size / MIB:g} MiB, {args.concurrency} at a time"
        figures.append(figure(f"{pipe}: to commit accepted", "uploads/s", pipeline["commit_rate"], None, "", None))
        figures.append(figure(f"{pipe}: to the last asset.created", "uploads/s", pipeline["created_rate"], None, "",
                              None))
        if lat:
            figures.append(figure(f"{pipe}: commit accepted -> asset.created p50", "s", percentile(lat, 50), None,
                                  "", None))
            figures.append(figure(f"{pipe}: commit accepted -> asset.created p95", "s", percentile(lat, 95), None,
                                  "", None))
        errors = len(pipeline["failed"]) + len(pipeline["missing"])
        figures.append(figure(f"{pipe}: assets failed or never announced", "count", errors, None, "0", errors == 0))
    if args.json:
        args.json.write_text(json.dumps({"bench": "small_files_bench", "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
