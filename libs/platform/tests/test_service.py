"""The Runtime's stop: workers get RAWDRIVE_STOP_TIMEOUT_S after the stop signal, then are
cancelled. No servers: workers here are plain coroutines."""

from __future__ import annotations

import asyncio
import time

from rawdrive_platform.config import CommonSettings, load_settings
from rawdrive_platform.service import Runtime

REQUIRED = {
    "RAWDRIVE_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none",
    "RAWDRIVE_S3_BUCKET": "b",
    "RAWDRIVE_S3_ACCESS_KEY_ID": "a",
    "RAWDRIVE_S3_SECRET_ACCESS_KEY": "s",
}


def settings(stop_timeout_s: float) -> CommonSettings:
    return load_settings(CommonSettings, REQUIRED | {"RAWDRIVE_STOP_TIMEOUT_S": str(stop_timeout_s)})


def test_the_stop_timeout_comes_from_the_environment_and_defaults_to_a_minute():
    assert load_settings(CommonSettings, REQUIRED).stop_timeout_s == 60.0
    assert load_settings(CommonSettings, REQUIRED | {"RAWDRIVE_STOP_TIMEOUT_S": "150"}).stop_timeout_s == 150.0


async def test_a_worker_finishing_within_the_stop_timeout_finishes_and_one_past_it_is_cancelled():
    runtime = Runtime("test", settings(stop_timeout_s=0.5))
    finished, cancelled = [], []

    async def quick(stop: asyncio.Event) -> None:
        await stop.wait()
        await asyncio.sleep(0.1)  # the message in hand
        finished.append("quick")

    async def stuck(stop: asyncio.Event) -> None:
        await stop.wait()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append("stuck")
            raise

    runtime.start(quick, name="quick")
    runtime.start(stuck, name="stuck")
    asyncio.get_running_loop().call_later(0.05, runtime.stop.set)
    started = time.monotonic()
    status = await runtime.run()
    elapsed = time.monotonic() - started

    assert status == 0
    assert finished == ["quick"] and cancelled == ["stuck"]
    assert 0.5 <= elapsed < 5  # waited the configured timeout, not the default minute
    await runtime.aclose()
