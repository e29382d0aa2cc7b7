"""A processor stopped (SIGTERM, as Kubernetes stops a pod) with a decode in hand: the decode gets
the stop timeout (RAWDRIVE_STOP_TIMEOUT_S), then its decoder is killed and the message goes back
to JetStream unacked, which hands it to another replica: the process exits within the pod's
grace period and the asset is still processed, once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec

from media_processor.handlers import HANDLERS
from media_processor.sandbox import Limits, Sandbox
from rawdrive_contracts import AssetCreated, UploadVerified, new_event
from rawdrive_devkit.devstack.servers import S3Connection
from rawdrive_devkit.testkit import consumer_for_test, consuming, jetstream, managed_profile
from rawdrive_platform import bus
from rawdrive_platform.bus import ConsumerSpec
from rawdrive_platform.storage import Storage

from .test_handlers import DATA, Env

STOP_TIMEOUT_S = 3.0
# Past the stop timeout: killing the decoder, closing the health server, draining NATS.
EXIT_MARGIN_S = 20.0
# Longer than the test waits for the redelivery: the stopped replica must hand the message
# back, not let it time out.
ACK_WAIT_S = 120.0

# The processor as `python -m media_processor` runs it (its Settings, main and Runtime), but
# with the test's durable on the test's workspace (the stream holds every other test's uploads)
# and a decode that takes ten minutes (a hostile file, a slow program), in a real decoder.
SLOW_PROCESSOR = """
import sys, time
import msgspec
import media_processor.__main__ as processor
from media_processor.sandbox import Sandbox
from rawdrive_platform.bus import ConsumerSpec
from rawdrive_platform.consumers import HandlerTable
from rawdrive_platform.service import run_service

SPEC = msgspec.json.decode(sys.argv[1], type=ConsumerSpec)

class TestsTable(HandlerTable):
    @property
    def spec(self):
        return SPEC

async def decode_for_ten_minutes(self, path, family, workdir):
    print("decoding", flush=True)
    return await self.call(time.sleep, 600)

processor.HANDLERS = TestsTable(SPEC.durable, processor.HANDLERS.stream, processor.HANDLERS.handlers,
                                processor.HANDLERS.exhausted)
Sandbox.process = decode_for_ten_minutes
run_service("media-processor", processor.Settings, processor.main)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processor_env(nats_url: str, s3: S3Connection, scratch: Path, system_temp: Path) -> dict[str, str]:
    return os.environ | {
        "TMPDIR": str(system_temp),
        "RAWDRIVE_NATS_URL": nats_url,
        "RAWDRIVE_S3_ENDPOINT": s3.endpoint,
        "RAWDRIVE_S3_REGION": s3.region,
        "RAWDRIVE_S3_BUCKET": s3.bucket,
        "RAWDRIVE_S3_ACCESS_KEY_ID": s3.access_key_id,
        "RAWDRIVE_S3_SECRET_ACCESS_KEY": s3.secret_access_key,
        "RAWDRIVE_HEALTH_PORT": str(free_port()),
        "RAWDRIVE_STOP_TIMEOUT_S": str(STOP_TIMEOUT_S),
        "RAWDRIVE_DECODE_TIMEOUT_S": "900",
        "RAWDRIVE_CONSUMER_ACK_WAIT_S": str(ACK_WAIT_S),
        "RAWDRIVE_SCRATCH_DIR": str(scratch),
    }


def start_processor(
    spec: ConsumerSpec, nats_url: str, s3: S3Connection, scratch: Path, system_temp: Path, stderr: int | None = None
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_PROCESSOR, msgspec.json.encode(spec).decode()],
        env=processor_env(nats_url, s3, scratch, system_temp), stdout=subprocess.PIPE, stderr=stderr, text=True,
    )


class Case(msgspec.Struct, frozen=True, kw_only=True):
    """One processor's world: its scratch and system temp folders, the test's durable on the
    test's workspace, and an uploaded photo for it to process."""

    scratch: Path
    system_temp: Path
    env: Env
    spec: ConsumerSpec
    upload: UploadVerified
    nats_url: str
    s3: S3Connection

    def start(self, stderr: int | None = None) -> subprocess.Popen[str]:
        return start_processor(self.spec, self.nats_url, self.s3, self.scratch, self.system_temp, stderr)


@contextlib.asynccontextmanager
async def stopping_case(nats_url: str, s3: S3Connection, tmp_path: Path, name: str) -> AsyncIterator[Case]:
    scratch, system_temp = tmp_path / "scratch", tmp_path / "tmp"
    scratch.mkdir()
    system_temp.mkdir()
    storage = await Storage.open(managed_profile(s3))
    try:
        async with jetstream(nats_url, name) as js:
            env = Env(js=js, storage=storage, sandbox=Sandbox(Limits(timeout_s=60)), workspace=f"ws{uuid.uuid4().hex[:12]}")
            yield Case(
                scratch=scratch, system_temp=system_temp, env=env, nats_url=nats_url, s3=s3,
                spec=consumer_for_test(HANDLERS, env.workspace, ack_wait_s=ACK_WAIT_S),
                upload=await env.upload((DATA / "exiftool_GPS.jpg").read_bytes(), "beach.jpg", "image/jpeg"),
            )
    finally:
        await storage.close()


async def decoding(service: subprocess.Popen[str]) -> None:
    async with asyncio.timeout(60):
        assert service.stdout is not None
        while (await asyncio.to_thread(service.stdout.readline)).strip() != "decoding":
            assert service.poll() is None, "the processor ended before decoding"


async def test_a_stopped_processor_abandons_its_decode_in_time_and_another_replica_gets_the_asset(
    nats_url: str, s3_server: S3Connection, tmp_path: Path
) -> None:
    async with stopping_case(nats_url, s3_server, tmp_path, "test-media-processor-stop") as case:
        service = case.start()
        try:
            await bus.publish(case.env.js, new_event(case.upload, source="test"))
            await decoding(service)
            stopped_at = time.monotonic()
            service.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(service.wait, STOP_TIMEOUT_S + EXIT_MARGIN_S)
            took = time.monotonic() - stopped_at
        finally:
            if service.poll() is None:
                service.kill()
        assert status == 0
        assert STOP_TIMEOUT_S <= took < STOP_TIMEOUT_S + EXIT_MARGIN_S
        assert list(case.scratch.iterdir()) == []  # the original, the decoder's folder: gone
        assert list(case.system_temp.iterdir()) == []  # the forkserver's folder too
        assert await case.env.announced() == []  # no verdict about the asset from the stopped one

        # Another replica, on the same durable, gets the message without waiting for its ack
        # wait to pass, and processes it.
        async with consuming(case.env.js, HANDLERS, case.env.deps, case.spec):
            announced = await case.env.wait_announced(2, timeout=ACK_WAIT_S / 2)
        [created] = [event.data for event in announced if isinstance(event.data, AssetCreated)]
        assert created.asset_id == case.upload.asset_id and created.variants.thumb is not None


async def test_what_a_killed_processor_left_on_scratch_goes_when_the_next_one_starts(
    nats_url: str, s3_server: S3Connection, tmp_path: Path
) -> None:
    # SIGKILL, as the kernel's OOM killer or the kubelet past the grace period end a processor:
    # no code of its own runs, and scratch (an emptyDir) outlives it when its container restarts.
    async with stopping_case(nats_url, s3_server, tmp_path, "test-media-processor-kill") as case:
        scratch = case.scratch
        killed = case.start()
        following: subprocess.Popen[str] | None = None
        try:
            await bus.publish(case.env.js, new_event(case.upload, source="test"))
            await decoding(killed)
            async with asyncio.timeout(30):  # "decoding" comes just before the decoder's folder
                while not list(scratch.rglob("rawdrive-decode-*")):
                    await asyncio.sleep(0.05)
            killed.kill()
            await asyncio.to_thread(killed.wait, 30)
            # Left behind: the original in the handler's work folder, and the decoder's folder.
            assert len(list(scratch.rglob("original"))) == 1
            assert len(list(scratch.rglob("rawdrive-decode-*"))) == 1

            following = case.start(stderr=subprocess.PIPE)
            async with asyncio.timeout(60):  # its log says so once it serves (and has cleaned up)
                assert following.stderr is not None
                while "service started" not in (line := await asyncio.to_thread(following.stderr.readline)):
                    assert line, f"the next processor ended (status {following.wait(30)})"
            assert list(scratch.rglob("original")) == list(scratch.rglob("rawdrive-decode-*")) == []
            [folder] = scratch.iterdir()  # the next one's own, empty
            assert list(folder.iterdir()) == []
            following.send_signal(signal.SIGTERM)
            status = await asyncio.to_thread(following.wait, STOP_TIMEOUT_S + EXIT_MARGIN_S)
        finally:
            for service in (killed, following):
                if service is not None and service.poll() is None:
                    service.kill()
        assert status == 0
        assert list(scratch.iterdir()) == []
