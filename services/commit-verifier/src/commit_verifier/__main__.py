"""python -m commit_verifier: wiring only."""

from functools import partial
from importlib.resources import files

import msgspec

from commit_verifier.handlers import Dependencies, dispatch, dispatch_exhausted
from commit_verifier.hashing import MiB, ReadSettings
from rawdrive_contracts import UPLOADS_STREAM, CommitRequested, subject_filter
from rawdrive_platform.bus import ConsumerSpec
from rawdrive_platform.config import CommonSettings
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8081
    # Commit requests verified at once by this replica (each holds two read pieces).
    concurrency: int = 4
    max_deliver: int = 5
    read_chunk_mib: int = 4  # see commit_verifier.hashing


# Every replica binds the same durable, so they share the work. The provisioning Job creates it
# before the first start (python -m rawdrive_platform.provision --consumers commit_verifier.__main__:CONSUMER).
CONSUMER = ConsumerSpec(
    durable="commit-verifier",
    stream=UPLOADS_STREAM.name,
    filter_subjects=(subject_filter(CommitRequested.spec),),
)


def consumer_spec(settings: Settings) -> ConsumerSpec:
    return msgspec.structs.replace(CONSUMER, max_deliver=settings.max_deliver)


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    js = await runtime.jetstream()
    pool = await runtime.database("verifier", files("commit_verifier") / "migrations")
    deps = Dependencies(
        pool=pool,
        storage_for=await runtime.storage_resolver(),
        reading=ReadSettings(chunk_size=settings.read_chunk_mib * MiB),
    )
    runtime.consume(
        js,
        consumer_spec(settings),
        partial(dispatch, deps=deps),
        on_exhausted=partial(dispatch_exhausted, deps=deps),
        concurrency=settings.concurrency,
    )
    runtime.relay(pool, js)
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("commit-verifier", Settings, main)
