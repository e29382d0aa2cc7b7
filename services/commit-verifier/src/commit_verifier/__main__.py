"""python -m commit_verifier: wiring only."""

from importlib.resources import files

from commit_verifier.handlers import HANDLERS, Dependencies
from commit_verifier.hashing import MiB, ReadSettings
from rawdrive_platform.config import CommonSettings
from rawdrive_platform.outbox import UnitOfWork
from rawdrive_platform.service import Runtime, run_service


class Settings(CommonSettings, kw_only=True, frozen=True):
    health_port: int = 8081
    # Commit requests verified at once by this replica (each holds two read pieces).
    concurrency: int = 4
    max_deliver: int = 5
    read_chunk_mib: int = 4  # see commit_verifier.hashing


# The provisioning Job creates it before the first start
# (python -m rawdrive_platform.provision --consumers commit_verifier.__main__:CONSUMER).
CONSUMER = HANDLERS.spec


async def main(runtime: Runtime) -> None:
    settings = runtime.settings
    assert isinstance(settings, Settings)
    js = await runtime.jetstream()
    pool = await runtime.database("verifier", files("commit_verifier") / "migrations")
    deps = Dependencies(
        uow=UnitOfWork(pool),
        storage_for=await runtime.storage_resolver(),
        reading=ReadSettings(chunk_size=settings.read_chunk_mib * MiB),
    )
    runtime.handle(js, HANDLERS, deps, max_deliver=settings.max_deliver, concurrency=settings.concurrency)
    runtime.relay(pool, js)
    await runtime.serve_health()


if __name__ == "__main__":
    run_service("commit-verifier", Settings, main)
