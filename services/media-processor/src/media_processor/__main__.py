"""python -m media_processor: wiring only."""

import asyncio
from functools import partial
from typing import Annotated

import msgspec

from media_processor.dimensions import DEFAULT_MAX_EDGE, DEFAULT_MAX_PIXELS, PixelLimits
from media_processor.handlers import Dependencies, dispatch, dispatch_exhausted
from media_processor.sandbox import Limits, Sandbox
from rawdrive_contracts import UPLOADS_STREAM, UploadVerified, subject_filter
from rawdrive_platform.bus import ConsumerSpec
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
    scratch_dir: str | None = None


# Every replica binds the same durable, so they share the work. The provisioning Job creates it
# before the first start (python -m rawdrive_platform.provision --consumers media_processor.__main__:CONSUMER).
CONSUMER = ConsumerSpec(
    durable="media-processor",
    stream=UPLOADS_STREAM.name,
    filter_subjects=(subject_filter(UploadVerified.spec),),
)


def consumer_spec(settings: Settings) -> ConsumerSpec:
    return msgspec.structs.replace(CONSUMER, max_deliver=settings.max_deliver)


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    js = await runtime.jetstream()
    pixels = PixelLimits(
        max_width=settings.max_image_width, max_height=settings.max_image_height, max_pixels=settings.max_image_pixels
    )
    sandbox = Sandbox(
        Limits(timeout_s=settings.decode_timeout_s, memory_bytes=settings.decode_memory_mib * 1024**2, pixels=pixels),
        temp_dir=settings.scratch_dir,
    )
    await asyncio.to_thread(sandbox.start)  # before consuming: the first asset gets a warm forkserver
    deps = Dependencies(
        js=js,
        storage_for=await runtime.storage_resolver(),
        sandbox=sandbox,
        scratch_dir=settings.scratch_dir,
    )
    runtime.consume(
        js,
        consumer_spec(settings),
        partial(dispatch, deps=deps),
        on_exhausted=partial(dispatch_exhausted, deps=deps),
        concurrency=settings.concurrency,
    )
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("media-processor", Settings, main)
