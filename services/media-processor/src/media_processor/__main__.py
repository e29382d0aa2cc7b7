"""python -m media_processor: wiring only."""

import asyncio
from typing import Annotated

import msgspec

from media_processor import scratch
from media_processor.dimensions import DEFAULT_MAX_EDGE, DEFAULT_MAX_PIXELS, PixelLimits
from media_processor.handlers import HANDLERS, Dependencies
from media_processor.sandbox import Limits, Sandbox
from rawdrive_platform.config import CommonSettings
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    # The processor keeps no state of its own: it needs no database (and so holds no URL to one).
    database_url: str | None = None  # type: ignore[assignment]
    health_port: int = 8082
    # Assets decoded at once by this replica, each in its own child process.
    concurrency: int = 2
    max_deliver: int = 5
    decode_timeout_s: float = 120.0
    decode_memory_mib: int = 2048
    # Pictures (and video frames) declaring more than this are refused before decoding.
    max_image_width: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_EDGE
    max_image_height: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_EDGE
    max_image_pixels: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_MAX_PIXELS
    # Holds a folder of each processor's own (see media_processor.scratch); None: the system's temp dir.
    scratch_dir: str | None = None


# The provisioning Job creates it before the first start
# (python -m rawdrive_platform.provision --consumers media_processor.__main__:CONSUMER).
CONSUMER = HANDLERS.spec


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    js = await runtime.jetstream()
    pixels = PixelLimits(
        max_width=settings.max_image_width, max_height=settings.max_image_height, max_pixels=settings.max_image_pixels
    )
    # Ours alone, for originals and decoders' temp files alike; what a killed processor left goes now.
    scratch_dir = await asyncio.to_thread(scratch.claim, settings.scratch_dir)
    sandbox = Sandbox(
        Limits(timeout_s=settings.decode_timeout_s, memory_bytes=settings.decode_memory_mib * 1024**2, pixels=pixels),
        temp_dir=scratch_dir,
    )
    await asyncio.to_thread(sandbox.start)  # before consuming: the first asset gets a warm forkserver
    deps = Dependencies(
        js=js,
        storage_for=await runtime.storage_resolver(),
        sandbox=sandbox,
        scratch_dir=scratch_dir,
    )
    runtime.handle(js, HANDLERS, deps, max_deliver=settings.max_deliver, concurrency=settings.concurrency)
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("media-processor", Settings, main)
