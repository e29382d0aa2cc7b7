"""Many slow tus clients and a few fast ones on one gateway (issue 21): the scenario that
tests/e2e/test_slow_clients.py asserts on and bench/slow_clients_bench.py measures.

Slow clients reach the gateway through a FaultProxy capping each connection's bandwidth (a phone
on a poor link); each opens a session, creates its tus upload and sends the whole file in one
PATCH, as tus-js-client does by default. Fast clients talk to the gateway directly and send 5 MiB
PATCHes. The fast ones upload alone (unloaded), then while every slow PATCH is streaming
(loaded), then alone again once the slow ones are done. Meanwhile `/readyz` is polled with the
deployed probe's timeout (3 s), more often than a kubelet does, and `/metrics` is read
for the pool's connections in use, its acquire timeouts and the uploads in flight.

Every client is its own user (the gateway limits tus requests per user and replica), a member
of one workspace. File bytes: one random MiB repeated, behind the file type's signature, so
generating them costs no CPU the gateway would miss.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from upload_gateway.auth import mint_dev_token

MIB = 1024 * 1024
TUS_CHUNK = 5 * MIB
_NOISE = os.urandom(MIB)
_MP4_SIGNATURE = b"\x00\x00\x00\x18ftypmp42"
# deploy/k8s/base/upload-gateway.yaml's readinessProbe timeoutSeconds.
PROBE_TIMEOUT_S = 3.0


@functools.cache  # one copy per size, shared by every client sending it (100 x 16 MiB otherwise)
def file_bytes(size: int) -> bytes:
    repeated = _NOISE * (size // MIB + 1)
    return (_MP4_SIGNATURE + repeated)[:size]


@dataclass
class Observed:
    """What the watchers and the clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)  # every answer a client got
    readyz: Counter[str] = field(default_factory=Counter)  # "200", "503", "timeout", ...
    readyz_failures_in_a_row: int = 0  # at most (the deployed probe turns unready at 2)
    pool_in_use: list[tuple[float, float]] = field(default_factory=list)  # (monotonic time, connections)
    pool_max: float = 0.0
    acquire_timeouts: float = 0.0
    in_flight_max: float = 0.0
    errors: list[str] = field(default_factory=list)  # client-side failures (connection errors)

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


@dataclass
class SlowUpload:
    size: int
    patching: asyncio.Event = field(default_factory=asyncio.Event)
    started_at: float = 0.0
    finished_at: float | None = None
    status: int | None = None  # of the PATCH

    @property
    def mib_s(self) -> float:
        assert self.finished_at is not None
        return self.size / MIB / (self.finished_at - self.started_at)


@dataclass
class Report:
    unloaded_mib_s: tuple[float, float]  # the fast clients alone, all together: before and after
    loaded_mib_s: float  # the same, while every slow PATCH streams
    slow_streaming_when_loaded_ended: int  # slow PATCHes still streaming when the loaded round ended
    slow: list[SlowUpload]
    observed: Observed
    streaming: tuple[float, float]  # from every slow PATCH under way to the first one done

    @property
    def pool_in_use_max_while_streaming(self) -> float:
        """Pool connections in use at most while every slow body streamed (the burst of opening
        30 or 100 sessions at once comes before and is not what the issue is about)."""
        start, end = self.streaming
        return max((n for t, n in self.observed.pool_in_use if start <= t <= end), default=0.0)

    @property
    def fast_ratio(self) -> float:
        """Loaded vs unloaded, the unloaded speed being the mean of the rounds before and after
        (the machine's other load drifts over a run)."""
        return self.loaded_mib_s / (sum(self.unloaded_mib_s) / 2)


class _Clients:
    def __init__(self, gateway_url: str, slow_url: str, secret: str, workspace: str, observed: Observed) -> None:
        self.gateway_url = gateway_url
        self.slow_url = slow_url
        self.secret = secret
        self.workspace = workspace
        self.observed = observed

    def http(self, user: str) -> aiohttp.ClientSession:
        token = mint_dev_token(self.secret, sub=user, workspaces={self.workspace: "member"}, ttl_s=3600)
        # No total timeout: a slow client's PATCH lasts as long as its link needs.
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=120)
        return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    async def _answer(self, response: aiohttp.ClientResponse, expected: int, what: str) -> None:
        self.observed.statuses[response.status] += 1
        if response.status != expected:
            raise AssertionError(f"{what}: {response.status} {await response.text()}")

    async def open_upload(self, http: aiohttp.ClientSession, base: str, size: int) -> tuple[str, dict[str, str]]:
        """A session and its tus upload: (upload URL, headers for tus requests)."""
        request = {"file_name": "clip.mp4", "mime_type": "video/mp4", "size_bytes": size,
                   "library_id": "lib1", "resumable_protocol": "tus"}  # fmt: skip
        async with http.post(f"{base}/v1/workspaces/{self.workspace}/uploads", json=request) as response:
            await self._answer(response, 201, "open session")
            session = await response.json()
        # The session answers with the gateway's public URL; a slow client goes through its link.
        url = session["upload_url"].replace(self.gateway_url, base, 1)
        headers = {**session["headers"], "Tus-Resumable": "1.0.0"}
        async with http.post(url, headers={**headers, "Upload-Length": str(size)}) as response:
            await self._answer(response, 201, "tus creation")
        return url, headers

    async def patch(self, http: aiohttp.ClientSession, url: str, headers: dict[str, str], offset: int,
                    body: bytes) -> int:  # fmt: skip
        patch_headers = {**headers, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
        async with http.patch(url, data=body, headers=patch_headers) as response:
            await self._answer(response, 204, "tus PATCH")
            return response.status

    async def slow_upload(self, index: int, upload: SlowUpload) -> None:
        try:
            async with self.http(f"slow-{index}") as http:
                url, headers = await self.open_upload(http, self.slow_url, upload.size)
                upload.started_at = time.monotonic()
                upload.patching.set()
                upload.status = await self.patch(http, url, headers, 0, file_bytes(upload.size))
                upload.finished_at = time.monotonic()
        except Exception as error:  # noqa: BLE001 - recorded and asserted on by the caller
            self.observed.errors.append(f"slow-{index}: {error!r}")
            upload.patching.set()

    async def fast_round(self, clients: int, size: int) -> float:
        """`clients` fast users each upload one file in 5 MiB PATCHes, at once; MiB/s of all."""
        body = file_bytes(size)

        async def one(index: int) -> None:
            async with self.http(f"fast-{index}") as http:
                url, headers = await self.open_upload(http, self.gateway_url, size)
                for offset in range(0, size, TUS_CHUNK):
                    await self.patch(http, url, headers, offset, body[offset : offset + TUS_CHUNK])

        started = time.monotonic()
        await asyncio.gather(*(one(i) for i in range(clients)))
        return clients * size / MIB / (time.monotonic() - started)


async def _watch_readiness(gateway_url: str, observed: Observed, stop: asyncio.Event) -> None:
    in_a_row = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as http:
        while not stop.is_set():
            try:
                async with http.get(f"{gateway_url}/readyz") as response:
                    answer = str(response.status)
            except TimeoutError:
                answer = "timeout"
            except aiohttp.ClientError as error:
                answer = type(error).__name__
            observed.readyz[answer] += 1
            in_a_row = 0 if answer == "200" else in_a_row + 1
            observed.readyz_failures_in_a_row = max(observed.readyz_failures_in_a_row, in_a_row)
            await asyncio.sleep(0.5)


async def _watch_metrics(gateway_url: str, observed: Observed, stop: asyncio.Event) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        while True:
            try:
                async with http.get(f"{gateway_url}/metrics") as response:
                    text = await response.text()
            except (TimeoutError, aiohttp.ClientError) as error:
                observed.errors.append(f"/metrics: {error!r}")
                text = ""
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "rawdrive_db_pool_connections" and sample.labels.get("schema") == "gateway":
                        if sample.labels["state"] == "in_use":
                            observed.pool_in_use.append((time.monotonic(), sample.value))
                        else:
                            observed.pool_max = sample.value
                    elif sample.name == "rawdrive_db_pool_acquire_timeouts_total":
                        observed.acquire_timeouts = max(observed.acquire_timeouts, sample.value)
                    elif sample.name == "rawdrive_gateway_uploads_in_flight":
                        observed.in_flight_max = max(observed.in_flight_max, sample.value)
            if stop.is_set():
                return  # one last reading after the clients finished
            await asyncio.sleep(0.2)


async def run(
    gateway_url: str, slow_url: str, *, secret: str, workspace: str, slow: int, slow_size: int, fast: int,
    fast_size: int, phase: Callable[[str], None] = lambda name: None,
) -> Report:
    """The scenario: `slow_url` is the FaultProxy in front of `gateway_url`. `phase(name)` is
    called as each phase starts: unloaded, opening (the slow sessions), loaded, draining (the
    slow bodies finish), unloaded_after, end."""
    observed = Observed()
    clients = _Clients(gateway_url, slow_url, secret, workspace, observed)
    stop = asyncio.Event()
    watchers = [asyncio.create_task(_watch_readiness(gateway_url, observed, stop)),
                asyncio.create_task(_watch_metrics(gateway_url, observed, stop))]  # fmt: skip
    try:
        phase("unloaded")
        unloaded = await clients.fast_round(fast, fast_size)
        phase("opening")
        uploads = [SlowUpload(slow_size) for _ in range(slow)]
        slow_tasks = [asyncio.create_task(clients.slow_upload(i, u)) for i, u in enumerate(uploads)]
        await asyncio.gather(*(u.patching.wait() for u in uploads))
        await asyncio.sleep(1.0)  # every slow body is on its way
        all_streaming_from = time.monotonic()
        phase("loaded")
        loaded = await clients.fast_round(fast, fast_size)
        streaming = sum(1 for task in slow_tasks if not task.done())
        phase("draining")
        await asyncio.gather(*slow_tasks)
        phase("unloaded_after")
        unloaded_after = await clients.fast_round(fast, fast_size)
        phase("end")
    finally:
        stop.set()
        await asyncio.gather(*watchers, return_exceptions=True)
    first_done = min((u.finished_at for u in uploads if u.finished_at is not None), default=time.monotonic())
    return Report((unloaded, unloaded_after), loaded, streaming, uploads, observed, (all_streaming_from, first_done))
