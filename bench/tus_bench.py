"""Gateway ingest benchmark: tus through the gateway vs boto3 multipart straight to the same S3.

    .venv/bin/python bench/tus_bench.py [--sizes-mib 100 500] [--concurrency 1 20] [--sessions 400] [--json PATH]

Starts its own NATS, PostgreSQL and SeaweedFS (temporary folder, free ports) and a real gateway
process (`python -m upload_gateway`). For each size and concurrency, in the same run:
  - baseline: boto3 multipart upload straight into S3, parts of the gateway's part size;
  - tus: sessions created over the API, then each file sent as 5 MiB PATCHes (tus-js-client's
    chunk size in the seed), through the gateway into S3.
Reports MiB/s of each and the ratio (target >= 0.8x), and the gateway's peak RSS (VmHWM of a
fresh gateway process per scenario) against 80 MiB + 2 x part size x concurrent uploads.
Then session creation: POST /uploads at concurrency 20 against a trivial aiohttp handler that
answers 201 with a small JSON body, on aiohttp's default loop (the issue's baseline, target
>= 0.5x) and on uvloop (the loop our services use), in turns, medians of three.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import aiohttp
import boto3
from bench_stack import JWT_SECRET, bench_stack
from botocore.config import Config

from rawdrive_devkit.devstack.servers import S3Server
from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.tus_session import tus_part_size

MIB = 1024 * 1024
TUS_CHUNK = 5 * MIB
WORKSPACE = "bench"
# One random block, rotated per offset: incompressible, and no file needs to exist on disk.
BLOCK = os.urandom(MIB)


def payload(offset: int, length: int) -> bytes:
    out = bytearray()
    while len(out) < length:
        start = (offset + len(out)) % MIB
        out += BLOCK[start : start + length - len(out)]
    return bytes(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**env, "RAWDRIVE_HTTP_PORT": str(self.port), "RAWDRIVE_PUBLIC_URL": self.url}
        self.process = subprocess.Popen([sys.executable, "-m", "upload_gateway"], env=env,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.url}/readyz", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gateway not ready; see {log}")

    def peak_rss_mib(self) -> float:
        return peak_rss_mib(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def s3_baseline(s3: S3Server, size: int, concurrency: int) -> float:
    conn = s3.connection
    client = boto3.client(
        "s3", endpoint_url=conn.endpoint, region_name=conn.region, aws_access_key_id=conn.access_key_id,
        aws_secret_access_key=conn.secret_access_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}, max_pool_connections=64,
                      request_checksum_calculation="when_required", response_checksum_validation="when_required"),
    )
    part_size = tus_part_size(size)

    def upload(i: int) -> None:
        key = f"baseline/{size}/{concurrency}/{i}"
        upload_id = client.create_multipart_upload(Bucket=conn.bucket, Key=key)["UploadId"]
        parts = []
        for number, offset in enumerate(range(0, size, part_size), start=1):
            body = payload(offset, min(part_size, size - offset))
            etag = client.upload_part(Bucket=conn.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
            parts.append({"PartNumber": number, "ETag": etag})
        client.complete_multipart_upload(Bucket=conn.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts})

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(upload, range(concurrency)))
    return size * concurrency / MIB / (time.perf_counter() - started)


async def tus_upload(http: aiohttp.ClientSession, base: str, size: int) -> None:
    request = {"file_name": "bench.mp4", "mime_type": "video/mp4", "size_bytes": size,  # videos: up to 500 MiB
               "library_id": "lib1", "resumable_protocol": "tus"}
    async with http.post(f"{base}/v1/workspaces/{WORKSPACE}/uploads", json=request) as response:
        assert response.status == 201, await response.text()
        session = await response.json()
    headers = {**session["headers"], "Tus-Resumable": "1.0.0"}
    async with http.post(session["upload_url"], headers={**headers, "Upload-Length": str(size)}) as response:
        assert response.status == 201, await response.text()
    for offset in range(0, size, TUS_CHUNK):
        chunk = payload(offset, min(TUS_CHUNK, size - offset))
        async with http.patch(session["upload_url"], data=chunk, headers={
            **headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}) as response:
            assert response.status == 204, await response.text()


async def tus_run(base: str, token: str, size: int, concurrency: int) -> float:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        started = time.perf_counter()
        await asyncio.gather(*(tus_upload(http, base, size) for _ in range(concurrency)))
        return size * concurrency / MIB / (time.perf_counter() - started)


async def session_rate(url: str, token: str, count: int, concurrency: int = 20) -> float:
    body = {"file_name": "a.jpg", "mime_type": "image/jpeg", "size_bytes": 1000, "library_id": "lib1",
            "resumable_protocol": "tus"}
    remaining = iter(range(count))
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        async def worker() -> None:
            for _ in remaining:
                async with http.post(url, json=body) as response:
                    assert response.status == 201, await response.text()
                    await response.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


# A trivial aiohttp handler, served on aiohttp's default loop (argv[2] == "default") or on
# uvloop, the loop our services run on: the first is the baseline, the second shows what
# is left once the loop is equal.
TRIVIAL_APP = """
import asyncio, sys
import uvloop
from aiohttp import web
async def create(request):
    await request.json()
    return web.json_response({"upload_id": "u", "asset_id": "a", "provider": "r2"}, status=201)
app = web.Application()
app.router.add_post("/v1/workspaces/{ws}/uploads", create)
loop = asyncio.new_event_loop() if sys.argv[2] == "default" else uvloop.new_event_loop()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, loop=loop)
"""


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


class SessionFigures(NamedTuple):
    rate: float  # sessions/s, median of the rounds
    server_cpu_us: float  # CPU the server process spent per session, median of the rounds


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def session_rates(gateway: Gateway, token: str, count: int, rounds: int = 3) -> dict[str, SessionFigures]:
    """The gateway's and both trivial handlers' sessions/s and server CPU per session, measured
    in turns. The CPU figure does not depend on how much of the machine the client and the
    servers behind the gateway take, which the rates do."""
    servers: list[subprocess.Popen[bytes]] = []
    targets = {"gateway": (f"{gateway.url}/v1/workspaces/{WORKSPACE}/uploads", gateway.process.pid)}
    for loop in ("default", "uvloop"):
        port = free_port()
        servers.append(subprocess.Popen([sys.executable, "-c", TRIVIAL_APP, str(port), loop]))
        targets[f"trivial ({loop} loop)"] = (f"http://127.0.0.1:{port}/v1/workspaces/{WORKSPACE}/uploads", servers[-1].pid)
    try:
        time.sleep(1.5)
        for url, _ in targets.values():
            asyncio.run(session_rate(url, token, 100))  # warm up
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu_us: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, (url, pid) in targets.items():
                before = process_cpu_s(pid)
                rates[name].append(asyncio.run(session_rate(url, token, count)))
                cpu_us[name].append((process_cpu_s(pid) - before) * 1e6 / count)
        return {name: SessionFigures(statistics.median(rates[name]), statistics.median(cpu_us[name])) for name in targets}
    finally:
        for server in servers:
            server.terminate()
            server.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="*", default=[100, 500])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 20])
    parser.add_argument("--sessions", type=int, default=400)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    figures: list[dict] = []

    with bench_stack("tus-bench-") as (work, s3, env):
        token = mint_dev_token(JWT_SECRET, sub="bench", workspaces={WORKSPACE: "member"}, ttl_s=7200)
        print(f"{'size':>8} {'conc':>4} {'boto3 MiB/s':>12} {'tus MiB/s':>10} {'ratio':>6} "
              f"{'gateway peak RSS':>17} {'RSS budget':>11}")
        for size_mib in args.sizes_mib:
            size = size_mib * MIB
            part_size = tus_part_size(size)
            for concurrency in args.concurrency:
                baseline = s3_baseline(s3, size, concurrency)
                gateway = Gateway(env, work / "gateway.log")
                try:
                    tus = asyncio.run(tus_run(gateway.url, token, size, concurrency))
                    peak = gateway.peak_rss_mib()
                finally:
                    gateway.stop()
                budget = 80 + 2 * part_size / MIB * concurrency
                print(f"{size_mib:>6}Mi {concurrency:>4} {baseline:>12.1f} {tus:>10.1f} {tus / baseline:>5.2f}x "
                      f"{peak:>13.1f} MiB {budget:>7.0f} MiB", flush=True)
                figures.append(figure(f"tus ingest {size_mib} MiB x {concurrency} (vs boto3 multipart)", "MiB/s",
                                      tus, baseline, ">= 0.8x", tus / baseline >= 0.8))
                figures.append(figure(f"gateway peak RSS, {size_mib} MiB x {concurrency}", "MiB", peak, None,
                                      f"<= {budget:.0f} MiB", peak <= budget))

        gateway = Gateway(env, work / "gateway.log")
        try:
            measured = session_rates(gateway, token, args.sessions)
        finally:
            gateway.stop()
        ours = measured.pop("gateway")
        print(f"session creation: gateway {ours.rate:.0f}/s, {ours.server_cpu_us:.0f} us server CPU per session "
              f"(medians of 3 x {args.sessions}, concurrency 20)")
        for name, theirs in measured.items():
            print(f"  vs {name} {theirs.rate:.0f}/s: {ours.rate / theirs.rate:.2f}x; "
                  f"{theirs.server_cpu_us:.0f} us server CPU per session")
        default = measured["trivial (default loop)"]
        figures.append(figure("session creation, concurrency 20 (vs trivial aiohttp handler)", "sessions/s",
                              ours.rate, default.rate, ">= 0.5x", ours.rate / default.rate >= 0.5))
        figures.append(figure("server CPU per session created (vs trivial aiohttp handler)", "us",
                              ours.server_cpu_us, default.server_cpu_us, "none (explains the rate)", None))
    if args.json:
        args.json.write_text(json.dumps({"bench": "tus_bench", "figures": figures}, indent=2))
    return 0


def figure(name: str, unit: str, ours: float, baseline: float | None, target: str, met: bool | None) -> dict:
    """One row of bench/RESULTS.md (the shape every benchmark's --json uses)."""
    return {"figure": name, "unit": unit, "ours": round(ours, 2),
            "baseline": None if baseline is None else round(baseline, 2),
            "ratio": None if baseline is None else round(ours / baseline, 3), "target": target, "met": met}


if __name__ == "__main__":
    sys.exit(main())
