"""The production shape under faults (issue 17): a 3-node JetStream cluster with every stream and
KV bucket at replicas 3, PostgreSQL with a synchronous hot standby, two replicas of every
service, each given every NATS URL and a multi-host DSN (`cluster_servers`, devstack/cluster.py).
The nodes run the busauth users: every service connects as its own identity, the janitor's sweep
as the janitor, dead letters are read as the provisioning identity (as an operator does), and the
outside consumer and the test's inspection as the superuser.

Five phases, one fault each, in this order: kill -9 the JetStream meta leader (restarted when
its phase's uploads are done), kill -9 the RAWDRIVE_UPLOADS stream leader (likewise), cut one NATS
node's routes (healed after PARTITION_S), a slow and lossy client link (tus through a fault proxy
with latency, a bandwidth cap and a cut mid-PATCH; the upload then resumes on the other gateway
replica), and promoting the standby while killing the old primary. Each phase runs its share of
the batch, mixed tus and S3 multipart, JPEG / PNG / HEIC / MP4, and fires its fault once a third
of its uploads are committed (fewer when the phase has more uploads than workers: see
`fault_after`). After each phase: every committed upload has exactly one
`asset.created` (one stream message, one event id), none failed or is missing, a janitor run
with every age at zero finds no multipart upload and no orphan, and every dead letter of the
workspace has a reason. Printed per fault: the uploads in flight when it struck, recovery time
(fault to the next `asset.created` the stream stored, and to the one the outside consumer saw)
and the client retries it caused.

Size: RAWDRIVE_E2E_CLUSTER_UPLOADS (default 25: 5 a phase) with RAWDRIVE_E2E_CLUSTER_WORKERS
uploads in flight (default 5). `make test-cluster` runs the issue's 200 in flight: 1,100 uploads,
220 a phase, so that 20 are still queued when the fault fires (after 10 commits) and all 200
workers have an upload in flight when it strikes; each fault's line prints that count.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
import urllib.parse
import uuid
import zlib
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from rawdrive_devkit.devstack.cluster import ClusterServers, kill
from rawdrive_devkit.devstack.faultproxy import FaultProxy, Faults
from rawdrive_devkit.testing import NatsIdentities
from rawdrive_devkit.testkit import dead_letters_of, janitor_pass
from rawdrive_platform import bus
from rawdrive_platform.busauth import PROVISION

UPLOADS = int(os.environ.get("RAWDRIVE_E2E_CLUSTER_UPLOADS", "25"))
WORKERS = int(os.environ.get("RAWDRIVE_E2E_CLUSTER_WORKERS", "5"))
PARTITION_S = 8.0  # longer than a meta election (about 5 s here), so the minority node notices
UPLOAD_TIMEOUT_S = 300.0
CREATED = "com.rawdrive.asset.created.v1"
FAILED = "com.rawdrive.asset.processing_failed.v1"
NO_REASON = "terminated without a reason"
MEDIA = Path(__file__).parents[2] / "services" / "media-processor" / "tests" / "data"
# A slow, lossy mobile link: 20 ms each way, 2 MB/s, and the connection drops after 64 KiB.
SLOW_LINK = Faults(latency_s=0.02, bandwidth_bytes_s=2_000_000, cut_after_bytes=64 * 1024)

pytestmark = pytest.mark.servers


# ---------------------------------------------------------------------------------------------
# Inputs: real files, each made unique (its own hash) in a way its format ignores


def _jpeg(base: bytes, tag: bytes) -> bytes:  # a COM segment after SOI
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(tag) + 2) + tag + base[2:]


def _png(base: bytes, tag: bytes) -> bytes:  # a tEXt chunk after IHDR
    data = b"Comment\x00" + tag
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    ihdr_end = 8 + 8 + 13 + 4
    return base[:ihdr_end] + chunk + base[ihdr_end:]


def _bmff(base: bytes, tag: bytes) -> bytes:  # a trailing `free` box (MP4, HEIC)
    return base + struct.pack(">I", len(tag) + 8) + b"free" + tag


@dataclass(frozen=True)
class Kind:
    file: str
    mime: str
    make: object


SMALL_KINDS = (
    Kind("exiftool_GPS.jpg", "image/jpeg", _jpeg),
    Kind("png_rgba_alpha.png", "image/png", _png),
    Kind("heic_generated.heic", "image/heic", _bmff),
    Kind("mei_with-gps.mp4", "video/mp4", _bmff),
)
# Large enough for the slow link to cut them mid-PATCH.
LARGE_KINDS = (
    Kind("mei_Samsung_SM-J327T1.jpg", "image/jpeg", _jpeg),
    Kind("mei_with-gps.mp4", "video/mp4", _bmff),
)


def make_file(kinds: tuple[Kind, ...], n: int) -> tuple[str, str, bytes]:
    kind = kinds[n % len(kinds)]
    tag = f"cluster upload {n} {uuid.uuid4().hex}".encode()
    suffix = kind.file.rsplit(".", 1)[1]
    return f"FILE_{n:04d}.{suffix}", kind.mime, kind.make((MEDIA / kind.file).read_bytes(), tag)


# ---------------------------------------------------------------------------------------------
# A client with retries, as apps have, counting every retry


class Retry(Exception):
    """A transient answer (5xx, 409 on a moved offset): try again, and count it."""


class Pending(Exception):
    """Not a failure (the commit is still being verified): ask again, without counting a retry."""


RETRYABLE = (Retry, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


@dataclass
class Counters:
    retries: int = 0
    resumed_elsewhere: int = 0
    errors: list[str] = field(default_factory=list)


class ClusterClient:
    def __init__(self, http: aiohttp.ClientSession, ws: str, gateways: list[str], counters: Counters) -> None:
        self.http = http
        self.ws = ws
        self.gateways = gateways  # base URLs, where uploads start in turn (see upload)
        self.counters = counters

    async def patiently(self, step, deadline: float):
        while True:
            try:
                return await step()
            except (Pending, *RETRYABLE) as exc:
                if time.monotonic() > deadline:
                    raise
                if not isinstance(exc, Pending):
                    self.counters.retries += 1
                await asyncio.sleep(0.5)

    async def upload(self, n: int, protocol: str, kinds: tuple[Kind, ...],
                     tus_route: tuple[str, str] | None = None) -> str:
        """Session, bytes, commit; returns the asset id once the session is committed. tus bytes
        go to `tus_route[0]` first and every retry to `tus_route[1]` (default: this gateway)."""
        deadline = time.monotonic() + UPLOAD_TIMEOUT_S
        name, mime, body = make_file(kinds, n)
        request = {"file_name": name, "mime_type": mime, "size_bytes": len(body), "library_id": "lib1",
                   "resumable_protocol": protocol, "sha256": hashlib.sha256(body).hexdigest()}
        # Not by n: worker i starts with upload i through client i % 2, whose list is reversed
        # for odd i, so indexing by n sent every first upload (most of a phase) to gateway 0.
        base = self.gateways[(n // 2) % len(self.gateways)]

        async def create() -> dict:
            async with self.http.post(f"{base}/v1/workspaces/{self.ws}/uploads", json=request) as response:
                if response.status >= 500:
                    raise Retry(await response.text())
                assert response.status == 201, await response.text()
                return await response.json()

        session = await self.patiently(create, deadline)
        if protocol == "tus":
            await self.send_tus(session, body, tus_route or (base, base), deadline)
            commit_body: dict = {}
        else:
            commit_body = {"parts": await self.send_multipart(session, body, base, deadline)}

        async def commit() -> str:
            url = f"{base}/v1/workspaces/{self.ws}/uploads/{session['upload_id']}"
            async with self.http.post(f"{url}/commit", json=commit_body) as response:
                if response.status >= 500:
                    raise Retry(await response.text())
                assert response.status in (200, 202), await response.text()
            async with self.http.get(url) as response:
                if response.status >= 500:
                    raise Retry(await response.text())
                state = (await response.json())["state"]
            assert state in ("verifying", "committed"), f"{name}: {state}"
            if state != "committed":
                raise Pending(state)
            return session["asset_id"]

        return await self.patiently(commit, deadline)

    async def send_tus(self, session: dict, body: bytes, route: tuple[str, str], deadline: float) -> None:
        """tus through `route[0]`; after a broken connection (or any retry), resume on `route[1]`."""
        path = urllib.parse.urlsplit(session["upload_url"]).path
        tus = {**session["headers"], "Tus-Resumable": "1.0.0"}
        attempt = {"n": 0}

        async def send() -> None:
            base = route[0] if attempt["n"] == 0 else route[1]
            attempt["n"] += 1
            if attempt["n"] == 2 and route[1] != route[0]:
                self.counters.resumed_elsewhere += 1
            async with self.http.head(base + path, headers=tus) as response:
                if response.status >= 500:
                    raise Retry(f"HEAD {response.status}")
                offset = int(response.headers["Upload-Offset"]) if response.status == 200 else None
            if offset is None:
                async with self.http.post(base + path, headers={**tus, "Upload-Length": str(len(body))}) as r:
                    if r.status >= 500:
                        raise Retry(await r.text())
                    assert r.status == 201, await r.text()
                offset = 0
            if offset < len(body):
                patch = {**tus, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
                async with self.http.patch(base + path, data=body[offset:], headers=patch) as r:
                    if r.status >= 500 or r.status in (409, 423):  # offset moved, or the cut PATCH still holds it
                        raise Retry(await r.text())
                    assert r.status == 204, await r.text()

        await self.patiently(send, deadline)

    async def send_multipart(self, session: dict, body: bytes, base: str, deadline: float) -> list[dict]:
        part_size, part_count = session["part_size"], session["part_count"]

        async def presign() -> list[dict]:
            url = f"{base}/v1/workspaces/{self.ws}/uploads/{session['upload_id']}/parts"
            async with self.http.post(url, json={"part_numbers": list(range(1, part_count + 1))},
                                      headers=session["headers"]) as response:
                if response.status >= 500:
                    raise Retry(await response.text())
                assert response.status == 200, await response.text()
                return (await response.json())["parts"]

        presigned = await self.patiently(presign, deadline)
        parts = []
        async with aiohttp.ClientSession() as s3:  # no token: presigned URLs carry their own authority
            for part in presigned:
                n = part["part_number"]

                async def put(part=part, n=n) -> dict:
                    async with s3.put(part["url"], data=body[(n - 1) * part_size: n * part_size],
                                      headers=part["headers"]) as response:
                        if response.status >= 500:
                            raise Retry(await response.text())
                        assert response.status == 200, await response.text()
                        return {"part_number": n, "etag": response.headers["ETag"]}

                parts.append(await self.patiently(put, deadline))
        return parts


# ---------------------------------------------------------------------------------------------
# The world: cluster servers, this module's database and bucket, two replicas of every service


@pytest.fixture(scope="module")
def cluster_identities(cluster_servers: ClusterServers) -> NatsIdentities:
    """How to connect to the cluster as each busauth identity (the services, through the harness)."""
    nats = cluster_servers.nats
    assert nats.users.superuser is not None
    return NatsIdentities(url=nats.url, superuser_url=nats.url_as(nats.users.superuser[0]), users=nats.users)


@pytest.fixture(scope="module")
def cluster_env(cluster_service_env) -> dict[str, str]:
    """One user sends every upload: the per-user limit on tus requests sending bytes at once (8
    per gateway replica by default) would answer most of WORKERS with 429 and keep them out of
    flight. Twice the workers: a PATCH retried after a client timeout may meet its abandoned
    predecessor still holding a place. The per-workspace quotas (5,000 open sessions, 100 GiB
    declared) already hold the largest run."""
    return {**cluster_service_env, "RAWDRIVE_MAX_CONCURRENT_PATCHES_PER_USER": str(2 * WORKERS)}


@dataclass
class FaultReport:
    name: str
    recovery_s: float | None = None  # fault to the next asset.created stored in the stream
    seen_after_s: float | None = None  # fault to the next asset.created the outside consumer got
    in_flight: int = 0  # uploads started and not yet committed when the fault struck
    retries: int = 0
    resumed_elsewhere: int = 0
    proxy_cuts: int = 0


def fault_after(count: int) -> int:
    """How many of a phase's `count` uploads are committed when its fault fires: a third, or
    fewer when the phase has more uploads than workers, so that uploads are still queued and all
    WORKERS are in flight when it strikes."""
    if count > WORKERS:
        return max(1, min(count // 3, (count - WORKERS) // 2))
    return max(1, count // 3)


async def run_phase(clients, counters: Counters, name: str, count: int, first_n: int, inject,
                    events, *, kinds=SMALL_KINDS, tus_route: tuple[str, str] | None = None,
                    from_start: bool = False) -> tuple[list[str], FaultReport]:
    """`count` uploads (`WORKERS` at a time, tus and multipart alternating); `inject` fires once
    `fault_after(count)` of them are committed (at once with `from_start`) and returns when its
    fault took effect, if later. Returns the committed asset ids and the fault's report."""
    report = FaultReport(name)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(first_n, first_n + count):
        queue.put_nowait(n)
    committed: list[str] = []
    in_flight = {"uploads": 0}
    progress = asyncio.Event()
    retries_before, resumed_before = counters.retries, counters.resumed_elsewhere

    async def worker(index: int) -> None:
        client = clients[index % len(clients)]
        while not queue.empty():
            n = queue.get_nowait()
            protocol = "tus" if n % 2 == 0 or tus_route else "s3_multipart"
            in_flight["uploads"] += 1
            try:
                committed.append(await client.upload(n, protocol, kinds, tus_route))
            except Exception as exc:  # counted and reported, never silently dropped
                counters.errors.append(f"{name} upload {n} ({protocol}): {exc!r}")
            in_flight["uploads"] -= 1
            progress.set()

    def created_since(moment: float) -> list[float]:
        """When the stream stored each asset.created the outside consumer got, stored after `moment`."""
        return sorted(events.stored_at[seq] for (kind, _), seqs in events.stream_seqs.items() if kind == CREATED
                      for seq in seqs if events.stored_at[seq] >= moment)

    async def fault() -> float:
        while not from_start and len(committed) < fault_after(count):
            progress.clear()
            await progress.wait()
        started, report.in_flight = time.time(), in_flight["uploads"]
        took_effect = await inject()
        if took_effect:  # later than it fired (the lossy link's first cut): count then
            started, report.in_flight = took_effect, in_flight["uploads"]
        try:
            await events.wait(lambda: bool(created_since(started)), timeout_s=UPLOAD_TIMEOUT_S)
        except TimeoutError:
            raise AssertionError(f"{name}: no asset.created within {UPLOAD_TIMEOUT_S:.0f} s of the fault") from None
        report.seen_after_s = time.time() - started
        return started

    injector = asyncio.create_task(fault())
    try:
        await asyncio.gather(*(worker(i) for i in range(WORKERS)))
        fault_at = await asyncio.wait_for(injector, timeout=UPLOAD_TIMEOUT_S)
    finally:
        injector.cancel()
    # "Recovered" is when the pipeline published again: the stream's own time of the first
    # asset.created stored after the fault, as the delivery's metadata gives it (the outside
    # consumer may get it later: a pull request lost in a partition leaves its messages waiting
    # out the consumer's ack wait). Not asked of the servers: just after a partition heals, the
    # cut node can still answer for a stream as its stale leader, without the newest messages.
    report.recovery_s = created_since(fault_at)[0] - fault_at
    report.retries = counters.retries - retries_before
    report.resumed_elsewhere = counters.resumed_elsewhere - resumed_before
    return committed, report


async def check_phase(pipeline, env: dict[str, str], identities: NatsIdentities, phase: str,
                      committed: list[str], all_committed: list[str]) -> None:
    """The issue's promises after each fault."""
    events = pipeline.events
    await events.wait(lambda: all(events.of(CREATED, a) or events.of(FAILED, a) for a in committed),
                      timeout_s=UPLOAD_TIMEOUT_S)
    failed = {a: events.of(FAILED, a)[0]["data"] for a in committed if events.of(FAILED, a)}
    assert not failed, f"{phase}: committed uploads failed processing: {list(failed.values())[:3]}"
    doubled = {a: sorted(events.stream_seqs[(CREATED, a)]) for a in committed
               if len(events.stream_seqs[(CREATED, a)]) > 1}
    assert not doubled, f"{phase}: asset.created more than once in the stream: {doubled}"
    assert all(len(events.of(CREATED, a)) == 1 for a in committed)
    assert len(events.ids(CREATED)) == len(set(all_committed)) == len(all_committed), phase
    assert events.assets(CREATED) == set(all_committed), phase
    assert not events.invalid, events.invalid[:3]

    report = await asyncio.to_thread(janitor_pass, env, identities)
    orphans = [r for r in report["removals"] if r["reason"] == "orphan"]
    assert not orphans and not report["orphans_kept"] and report["errors"] == 0, (phase, report)
    assert pipeline.multipart_uploads_under("workspaces/") == [], phase

    letters = await dead_letters_of(identities.url_as(PROVISION), pipeline.workspace)
    assert not [d for d in letters if not d.reason or d.reason == NO_REASON], (phase, letters)


async def test_uploads_survive_leader_kills_a_partition_a_lossy_link_and_a_database_failover(
    cluster_servers: ClusterServers, cluster_identities: NatsIdentities, cluster_env, tmp_path, pipeline_opener
):
    nats = cluster_servers.nats
    per_phase = max(UPLOADS // 5, 3)
    counters = Counters()
    reports: list[FaultReport] = []
    all_committed: list[str] = []
    started = time.monotonic()

    # aclosing: a failed assertion must still stop the services (the generator's finally).
    async with aclosing(pipeline_opener(cluster_env, tmp_path, replicas=2, identities=cluster_identities)) as opened:
        async for pipeline, _ in opened:
            # Replicas 3 everywhere: every stream and the profiles KV bucket (provisioned by the kit).
            nc = await bus.connect(cluster_identities.superuser_url, name="e2e-cluster-check")
            js = nc.jetstream()
            replicated = ("RAWDRIVE_UPLOADS", "RAWDRIVE_ASSETS", "RAWDRIVE_DEADLETTER", "KV_rawdrive_storage_profiles")
            for stream in replicated:
                info = await js.stream_info(stream)
                assert info.config.num_replicas == 3, (stream, info.config.num_replicas)

            gateways = [f"http://127.0.0.1:{g.port}" for g in pipeline.services["upload_gateway"]]
            link = FaultProxy(upstream_port=pipeline.services["upload_gateway"][0].port)
            link.start()
            headers = {"Authorization": f"Bearer {pipeline.token}"}
            timeout = aiohttp.ClientTimeout(total=120)
            # No cap on connections (aiohttp's default is 100): every worker's request is on the wire.
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(headers=headers, timeout=timeout, connector=connector) as http:
                clients = [ClusterClient(http, pipeline.workspace, gateways, counters),
                           ClusterClient(http, pipeline.workspace, gateways[::-1], counters)]

                killed: list = []  # NATS nodes to bring back once their phase's uploads are done

                async def kill_for_the_phase(node_of) -> None:
                    node = node_of()
                    kill(node)
                    killed.append(node)

                async def restart_killed() -> None:
                    """And, after any fault, wait until every stream has a leader with current
                    replicas again: until then the checks' own requests time out."""
                    while killed:
                        await asyncio.to_thread(killed.pop().start)
                    await asyncio.to_thread(nats.wait_healthy, 120)

                async def partition() -> None:
                    node = nats.nodes[1]
                    nats.partition(node)
                    await asyncio.sleep(PARTITION_S)
                    nats.heal(node)

                async def slow_link() -> float:
                    """On from the phase's start; the fault's moment is the first cut."""
                    link.set_faults(SLOW_LINK)
                    while not link.stats.cuts:
                        await asyncio.sleep(0.05)
                    return time.time()

                async def database_failover() -> None:
                    await asyncio.to_thread(cluster_servers.postgres.fail_over)

                phases = [
                    ("kill -9 meta leader", lambda: kill_for_the_phase(nats.meta_leader), {}),
                    ("kill -9 RAWDRIVE_UPLOADS leader",
                     lambda: kill_for_the_phase(lambda: nats.stream_leader("RAWDRIVE_UPLOADS")), {}),
                    ("partition one NATS node", partition, {}),
                    # The proxy fronts gateway 0; a cut upload resumes on gateway 1.
                    ("slow, lossy tus link", slow_link,
                     {"kinds": LARGE_KINDS, "tus_route": (link.url_base, gateways[1]), "from_start": True}),
                    ("postgres failover", database_failover, {}),
                ]
                try:
                    for index, (name, inject, options) in enumerate(phases):
                        committed, report = await run_phase(clients, counters, name, per_phase, index * per_phase,
                                                            inject, pipeline.events, **options)
                        assert not counters.errors, counters.errors[:3]
                        await restart_killed()
                        if name.startswith("slow"):
                            report.proxy_cuts = link.stats.cuts
                            link.set_faults(Faults())
                        all_committed += committed
                        await check_phase(pipeline, cluster_env, cluster_identities, name, committed, all_committed)
                        reports.append(report)
                        for service in (s for replicas in pipeline.services.values() for s in replicas):
                            assert service.process.poll() is None, f"{service.module} died:\n{service.log_tail()}"
                finally:
                    link.stop()
                    await nc.close()

    assert len(all_committed) == per_phase * len(phases)
    lines = [f"  {r.name} ({r.in_flight} uploads in flight): published again after {r.recovery_s:.1f} s "
             f"(seen by the outside consumer after {r.seen_after_s:.1f} s), {r.retries} client retries"
             + (f", {r.proxy_cuts} connections cut, {r.resumed_elsewhere} resumed on the other gateway"
                if r.proxy_cuts else "") for r in reports]
    print(f"\n{len(all_committed)} uploads ({WORKERS} in flight) through 5 faults in "
          f"{time.monotonic() - started:.1f} s, each announced once:\n" + "\n".join(lines))
    slow = next(r for r in reports if r.name.startswith("slow"))
    assert slow.proxy_cuts > 0 and slow.resumed_elsewhere > 0, "the lossy link cut no upload mid-PATCH"
