"""Load: concurrent tus uploads of 20 MiB photos through the whole pipeline, commit to asset.created.

    .venv/bin/python bench/load.py [--uploads 50] [--single-rounds 5] [--json PATH]

Starts its own NATS, PostgreSQL and SeaweedFS and the four services as separate processes
(tests/e2e/conftest.py's ServiceProcess, as the e2e suite runs them), and an outside nats-py
subscriber on RAWDRIVE_ASSETS that records when each asset's event arrives. Inputs are real
JPEGs made once with ImageMagick and cached in bench/.work/: a ~20 MiB one (colour noise, so it
does not compress, and it decodes) and a 12 MP one (plasma); each upload gets its own COM
segment so no two uploads have the same bytes.

1. Single photo: a 12 MP JPEG, one upload at a time on an idle pipeline (one warm-up not
   counted): session, tus, then commit -> asset.created p50 (target < 1 s).
2. Batch: `--uploads` concurrent uploads (session + tus 5 MiB PATCHes + commit each). Reported:
   throughput of the batch (bytes / time until the last PATCH was accepted, and bytes / time
   until the last asset.created), p50/p95/p99 from each commit request to its asset.created,
   peak RSS (VmHWM) of the gateway and of the media processor (its own process, and the largest
   of its sandbox children, sampled every 100 ms), and errors: failed requests, rejected commits,
   processing_failed events, assets with no asset.created within the timeout (target: none).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from bench_stack import JWT_SECRET, bench_stack

from upload_gateway.auth import mint_dev_token

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
MIB = 1024 * 1024
TUS_CHUNK = 5 * MIB
SERVICES = ("commit_verifier", "media_processor", "janitor", "upload_gateway")
CREATED = "com.rawdrive.asset.created.v1"
VERIFIED = "com.rawdrive.upload.verified.v1"
FAILED = "com.rawdrive.asset.processing_failed.v1"


def e2e_harness():
    """tests/e2e/conftest.py as a module (it is not importable by name under pytest's importlib mode)."""
    spec = importlib.util.spec_from_file_location("e2e_conftest", ROOT / "tests" / "e2e" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def prepare() -> dict[str, Path]:
    WORK.mkdir(exist_ok=True)
    big, photo = WORK / "load_20mib.jpg", WORK / "photo_12mp.jpg"
    if not big.exists():
        # 4400x2950 colour noise at quality 90: about 20 MiB, incompressible, and a real JPEG.
        subprocess.run(["convert", "-size", "4400x2950", "xc:white", "+noise", "Random", "-quality", "90",
                        str(big)], check=True)
    if not photo.exists():
        subprocess.run(["convert", "-size", "4000x3000", "plasma:", "-quality", "92", str(photo)], check=True)
    return {"big": big, "photo": photo}


def unique(jpeg: bytes, tag: str) -> bytes:
    """The same picture with a COM segment after SOI: other bytes, still a valid JPEG."""
    assert jpeg[:2] == b"\xff\xd8"
    comment = f"rawdrive bench {tag}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + jpeg[2:]


def vm_hwm_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        children: list[str] = []
        for task in Path(f"/proc/{parent}/task").glob("*"):  # a child forked by any thread
            try:
                children += (task / "children").read_text().split()
            except OSError:
                continue
        for child in map(int, children):
            found.append(child)
            queue.append(child)
    return found


class RssSampler:
    """Peak VmHWM of a process and of the largest of its descendants, sampled every 100 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.own = {name: 0.0 for name in pids}
        self.children = {name: 0.0 for name in pids}

    def sample(self) -> None:
        for name, pid in self.pids.items():
            self.own[name] = max(self.own[name], vm_hwm_mib(pid))
            for child in descendants(pid):
                self.children[name] = max(self.children[name], vm_hwm_mib(child))

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(0.1)
        self.sample()


class Arrivals:
    """An outside nats-py subscriber on RAWDRIVE_ASSETS: first arrival time of each event per asset."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.changed = asyncio.Event()

    async def start(self, nats_url: str, workspace: str) -> None:
        import nats

        self.nc = await nats.connect(nats_url, name=f"bench-outside-{workspace}")
        js = self.nc.jetstream()

        async def handle(msg) -> None:
            arrived = time.perf_counter()
            document = json.loads(msg.data)
            key = (document.get("type", ""), document.get("data", {}).get("asset_id", ""))
            self.at.setdefault(key, arrived)
            self.changed.set()

        await js.subscribe(f"rawdrive.asset.*.{workspace}", stream="RAWDRIVE_ASSETS", cb=handle)
        # upload.verified too, to split commit -> asset.created into verification and processing.
        await js.subscribe(f"rawdrive.upload.verified.{workspace}", stream="RAWDRIVE_UPLOADS", cb=handle)

    async def wait_for(self, asset_ids: list[str], timeout_s: float) -> None:
        def done() -> bool:
            return all((CREATED, a) in self.at or (FAILED, a) in self.at for a in asset_ids)

        try:
            async with asyncio.timeout(timeout_s):
                while not done():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            pass

    async def close(self) -> None:
        await self.nc.close()


class Uploader:
    def __init__(self, http: aiohttp.ClientSession, base: str, workspace: str) -> None:
        self.http, self.base, self.ws = http, base, workspace

    async def send(self, body: bytes, name: str) -> dict:
        """Session and bytes by tus (5 MiB PATCHes); returns the session."""
        request = {"file_name": name, "mime_type": "image/jpeg", "size_bytes": len(body), "library_id": "lib1",
                   "resumable_protocol": "tus", "sha256": hashlib.sha256(body).hexdigest()}
        async with self.http.post(f"{self.base}/v1/workspaces/{self.ws}/uploads", json=request) as response:
            if response.status != 201:
                raise RuntimeError(f"session: {response.status} {await response.text()}")
            session = await response.json()
        headers = {**session["headers"], "Tus-Resumable": "1.0.0"}
        url = session["upload_url"]
        async with self.http.post(url, headers={**headers, "Upload-Length": str(len(body))}) as response:
            if response.status != 201:
                raise RuntimeError(f"tus creation: {response.status} {await response.text()}")
            url = urljoin(url, response.headers.get("Location", url))
        for offset in range(0, len(body), TUS_CHUNK):
            async with self.http.patch(url, data=body[offset : offset + TUS_CHUNK], headers={
                    **headers, "Upload-Offset": str(offset),
                    "Content-Type": "application/offset+octet-stream"}) as response:
                if response.status != 204:
                    raise RuntimeError(f"tus PATCH at {offset}: {response.status} {await response.text()}")
        return session

    async def commit(self, session: dict) -> float:
        """Commit; returns when the request was sent (perf_counter)."""
        sent = time.perf_counter()
        async with self.http.post(f"{self.base}/v1/workspaces/{self.ws}/uploads/{session['upload_id']}/commit",
                                  json={}) as response:
            text = await response.text()
            if response.status not in (200, 202):
                raise RuntimeError(f"commit: {response.status} {text}")
        return sent


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return ordered[rank]


async def single_photo(uploader: Uploader, arrivals: Arrivals, photo: bytes,
                       rounds: int) -> tuple[list[float], list[float]]:
    """(commit -> asset.created, commit -> upload.verified) of each counted upload."""
    latencies, verified = [], []
    for round_ in range(rounds + 1):
        session = await uploader.send(unique(photo, f"single-{round_}-{uuid.uuid4().hex}"), "IMG_12MP.JPG")
        sent = await uploader.commit(session)
        await arrivals.wait_for([session["asset_id"]], 120)
        arrived = arrivals.at.get((CREATED, session["asset_id"]))
        if arrived is None:
            raise RuntimeError(f"12 MP photo {session['asset_id']}: no asset.created within 120 s")
        if round_:  # the first one warms the pipeline up
            latencies.append(arrived - sent)
            verified.append(arrivals.at.get((VERIFIED, session["asset_id"]), float("nan")) - sent)
    return latencies, verified


async def batch(uploader: Uploader, arrivals: Arrivals, big: bytes, count: int, upload_timeout_s: float,
                concurrency: int) -> dict:
    errors: list[str] = []
    commits: dict[str, float] = {}
    bytes_done = 0
    last_patch = 0.0

    in_flight = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with in_flight:
            await upload_one(i)

    async def upload_one(i: int) -> None:
        nonlocal bytes_done, last_patch
        body = unique(big, f"load-{i}-{uuid.uuid4().hex}")
        try:
            # A stalled upload is an error, not a hang: the client gives up as a user's would.
            async with asyncio.timeout(upload_timeout_s):
                session = await uploader.send(body, f"IMG_{i:04d}.JPG")
            last_patch = max(last_patch, time.perf_counter())
            bytes_done += len(body)
            commits[session["asset_id"]] = await uploader.commit(session)
        except TimeoutError:
            errors.append(f"upload {i}: session + tus not done after {upload_timeout_s:.0f} s (stalled)")
        except Exception as error:  # counted and reported, the batch goes on
            errors.append(f"upload {i}: {error!r}"[:300])

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    await arrivals.wait_for(list(commits), timeout_s=900)
    latencies, last_event = [], started
    for asset_id, sent in commits.items():
        if (FAILED, asset_id) in arrivals.at:
            errors.append(f"asset {asset_id}: processing_failed")
        created = arrivals.at.get((CREATED, asset_id))
        if created is None:
            errors.append(f"asset {asset_id}: no asset.created within the timeout")
            continue
        latencies.append(created - sent)
        last_event = max(last_event, created)
    return {"errors": errors, "latencies": latencies, "bytes": bytes_done, "upload_seconds": last_patch - started,
            "total_seconds": last_event - started, "committed": len(commits)}


def log_errors(log_dir: Path) -> int:
    count = 0
    for path in log_dir.rglob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"level": "error"' in line.lower() or " ERROR " in line or "Traceback" in line:
                count += 1
    return count


async def run(args: argparse.Namespace, env: dict[str, str], log_dir: Path, inputs: dict[str, Path]) -> dict:
    harness = e2e_harness()
    workspace = f"ws{uuid.uuid4().hex[:12]}"
    services = {}
    for module in SERVICES:
        (log_dir / module).mkdir(parents=True, exist_ok=True)
        service = harness.ServiceProcess(module, env, log_dir / module)
        service.start(ready_timeout_s=60)
        services[module] = service
    for n in range(1, args.processor_replicas):  # more processors share its durable consumer
        (log_dir / f"media_processor-{n}").mkdir(parents=True, exist_ok=True)
        service = harness.ServiceProcess("media_processor", env, log_dir / f"media_processor-{n}")
        service.start(ready_timeout_s=60)
        services[f"media_processor-{n}"] = service
    arrivals = Arrivals()
    try:
        await arrivals.start(env["RAWDRIVE_NATS_URL"], workspace)
        token = mint_dev_token(JWT_SECRET, sub="bench", workspaces={workspace: "admin"}, ttl_s=7200)
        base = f"http://127.0.0.1:{services['upload_gateway'].port}"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, connector=connector,
                                         timeout=aiohttp.ClientTimeout(total=1800)) as http:
            uploader = Uploader(http, base, workspace)
            photo = inputs["photo"].read_bytes()
            single, single_verified = await single_photo(uploader, arrivals, photo, args.single_rounds)
            if single:
                print(f"12 MP JPEG ({len(photo) / MIB:.1f} MiB), commit -> asset.created, {len(single)} uploads one at a "
                      f"time: p50 {statistics.median(single):.2f} s (each: {', '.join(f'{s:.2f}' for s in single)}); "
                      f"of which commit -> upload.verified p50 {statistics.median(single_verified):.2f} s",
                      flush=True)
            sampler = RssSampler({"gateway": services["upload_gateway"].process.pid,
                                  "processor": services["media_processor"].process.pid})
            stop = asyncio.Event()
            sampling = asyncio.create_task(sampler.run(stop))
            big = inputs["big"].read_bytes()
            outcome = await batch(uploader, arrivals, big, args.uploads, args.upload_timeout,
                                  args.concurrency or args.uploads)
            stop.set()
            await sampling
    finally:
        await arrivals.close()
        stop_problems = []
        for module, service in services.items():
            try:
                service.stop()
            except subprocess.TimeoutExpired:
                stop_problems.append(f"{module} did not stop within 30 s of SIGTERM; killed")
                service.kill()
    outcome["errors"] += stop_problems
    outcome["single"] = single
    outcome["single_verified"] = single_verified
    outcome["photo_mib"] = len(photo) / MIB
    outcome["big_mib"] = len(big) / MIB
    outcome["rss"] = {"gateway": sampler.own["gateway"], "processor": sampler.own["processor"],
                      "processor_children": sampler.children["processor"], "gateway_children": sampler.children["gateway"]}
    outcome["log_errors"] = log_errors(log_dir)
    return outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--processor-replicas", type=int, default=1, help="media processor processes")
    parser.add_argument("--single-rounds", type=int, default=5, help="0: skip the single 12 MP photo")
    parser.add_argument("--concurrency", type=int, default=0,
                        help="uploads in flight at once (default: all of them, as the issue asks)")
    parser.add_argument("--upload-timeout", type=float, default=180.0,
                        help="seconds one upload (session + tus) may take before it counts as an error")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here (for run_all.py)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy the services' logs here")
    args = parser.parse_args()
    inputs = prepare()
    print(f"load average at start {os.getloadavg()[0]:.2f}; CPUs {os.cpu_count()}", flush=True)
    with bench_stack("load-bench-") as (work, _, env):
        try:
            outcome = asyncio.run(run(args, env, work / "logs", inputs))
        finally:
            if args.keep_logs:
                subprocess.run(["cp", "-r", str(work / "logs"), str(args.keep_logs)], check=False)

    lat, n = outcome["latencies"], args.uploads
    rss, errors = outcome["rss"], outcome["errors"]
    upload_rate = outcome["bytes"] / MIB / outcome["upload_seconds"] if outcome["bytes"] else 0.0
    e2e_rate = outcome["bytes"] / MIB / outcome["total_seconds"] if outcome["total_seconds"] > 0 else 0.0
    conc = args.concurrency or n
    print(f"batch: {n} tus uploads of {outcome['big_mib']:.1f} MiB JPEGs, {conc} at a time, "
          f"{args.processor_replicas} media processor(s), {outcome['committed']} committed")
    if outcome["bytes"]:
        print(f"  throughput: {upload_rate:.1f} MiB/s until the last PATCH ({outcome['upload_seconds']:.1f} s), "
              f"{e2e_rate:.1f} MiB/s until the last asset.created ({outcome['total_seconds']:.1f} s)")
    else:
        print("  throughput: none (no upload finished)")
    if lat:
        print(f"  commit -> asset.created: p50 {percentile(lat, 50):.2f} s, p95 {percentile(lat, 95):.2f} s, "
              f"p99 {percentile(lat, 99):.2f} s, max {max(lat):.2f} s ({len(lat)} assets)")
    print(f"  peak RSS (VmHWM): gateway {rss['gateway']:.0f} MiB; media processor {rss['processor']:.0f} MiB, "
          f"its largest sandbox child {rss['processor_children']:.0f} MiB (sampled)")
    print(f"  errors: {len(errors)}" + "".join(f"\n    {e}" for e in errors[:20]))
    print(f"  ERROR/Traceback lines in the services' logs: {outcome['log_errors']}")
    print(f"load average at end {os.getloadavg()[0]:.2f}")

    figures = []
    if outcome["single"]:
        single_p50 = statistics.median(outcome["single"])
        figures += [
            {"figure": f"12 MP JPEG commit -> asset.created p50 ({len(outcome['single'])} sequential)", "unit": "s",
             "ours": round(single_p50, 3), "baseline": None, "ratio": None, "target": "< 1 s",
             "met": single_p50 < 1.0},
            {"figure": "12 MP JPEG, of which commit -> upload.verified p50", "unit": "s",
             "ours": round(statistics.median(outcome["single_verified"]), 3), "baseline": None, "ratio": None,
             "target": "", "met": None},
        ]
    replicas = f", {args.processor_replicas} processors" if args.processor_replicas > 1 else ""
    label = f"load ({n} x {outcome['big_mib']:.0f} MiB, {conc} at a time{replicas})"
    figures += [
        {"figure": f"{label}: throughput until last PATCH", "unit": "MiB/s",
         "ours": round(upload_rate, 1), "baseline": None, "ratio": None, "target": "", "met": None},
        {"figure": f"{label}: throughput until last asset.created", "unit": "MiB/s",
         "ours": round(e2e_rate, 1), "baseline": None, "ratio": None, "target": "", "met": None},
        {"figure": f"{label}: uploads committed", "unit": "count", "ours": outcome["committed"], "baseline": None,
         "ratio": None, "target": str(n), "met": outcome["committed"] == n},
    ]
    for p in (50, 95, 99):
        if lat:
            figures.append({"figure": f"{label}: commit -> asset.created p{p}", "unit": "s",
                            "ours": round(percentile(lat, p), 2), "baseline": None, "ratio": None, "target": "",
                            "met": None})
    figures += [
        {"figure": f"{label}: gateway peak RSS (VmHWM)", "unit": "MiB", "ours": round(rss["gateway"], 1), "baseline": None,
         "ratio": None, "target": "", "met": None},
        {"figure": f"{label}: media processor peak RSS (VmHWM, main process)", "unit": "MiB",
         "ours": round(rss["processor"], 1), "baseline": None, "ratio": None, "target": "", "met": None},
        {"figure": f"{label}: media processor largest sandbox child (VmHWM, sampled 100 ms)", "unit": "MiB",
         "ours": round(rss["processor_children"], 1), "baseline": None, "ratio": None, "target": "", "met": None},
        {"figure": f"{label}: errors", "unit": "count", "ours": len(errors), "baseline": None, "ratio": None,
         "target": "0", "met": not errors},
    ]
    if args.json:
        args.json.write_text(json.dumps({"bench": "load", "figures": figures, "errors": errors}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
